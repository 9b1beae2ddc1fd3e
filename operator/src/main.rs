//! `mailrelay-operator`: the control plane's command line. Parses the
//! arguments and wires them to the library; nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailrelay_operator::render::render_dir;
use mailrelay_operator::{Settings, model};

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
    /// Print every object the operator would create for every Relay in a
    /// manifest directory, as multi-document YAML (like `helm template`).
    Render {
        /// Directory of YAML manifests (Relay, MailDomain, Blocklist, Secret).
        #[arg(long)]
        manifests: PathBuf,
        /// Relay image for Relays that name none.
        #[arg(long, default_value_t = Settings::default().default_image)]
        image: String,
        /// Prometheus URL for KEDA's queue-depth trigger.
        #[arg(long, default_value = model::DEFAULT_PROMETHEUS_URL)]
        prometheus_url: String,
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
        Command::Render {
            manifests,
            image,
            prometheus_url,
        } => {
            let settings = Settings {
                default_image: image,
                prometheus_url,
            };
            match render_dir(&manifests, &settings) {
                Ok(rendered) => {
                    for w in &rendered.warnings {
                        eprintln!("warning: {w}");
                    }
                    print!("{}", rendered.yaml);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    for line in e.to_string().lines() {
                        eprintln!("error: {line}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
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
