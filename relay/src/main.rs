//! `mailrelay`: the relay's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mailrelay", version, about = "A Kubernetes-native mail relay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the manifests in a directory: print every problem and exit
    /// non-zero if there is one.
    Check {
        /// Directory of YAML manifests (MailDomain, Relay, Blocklist, Secret).
        #[arg(long)]
        manifests: PathBuf,
        /// Check only the Relay of this name.
        #[arg(long)]
        relay: Option<String>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { manifests, relay } => {
            let report = mailrelay::check::check(&manifests, relay.as_deref());
            for note in &report.notes {
                println!("{note}");
            }
            for problem in &report.problems {
                eprintln!("error: {problem}");
            }
            if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("{} problem(s) found", report.problems.len());
                ExitCode::FAILURE
            }
        }
    }
}
