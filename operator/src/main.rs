//! `mailrelay-operator`: the control plane's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mailrelay-operator", version, about = "The mailrelay operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML, ready for `kubectl apply -f -`.
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd { out } => match crd(out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mailrelay-operator crd: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn crd(out: Option<PathBuf>) -> Result<(), String> {
    let rendered =
        mailrelay_crds::crdgen::render_all().map_err(|e| format!("cannot serialise: {e}"))?;
    for (file, yaml) in rendered {
        match &out {
            Some(dir) => {
                let path = dir.join(file);
                std::fs::write(&path, yaml).map_err(|e| format!("{}: {e}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            None => println!("---\n{yaml}"),
        }
    }
    Ok(())
}
