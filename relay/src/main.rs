//! `mailrelay`: the relay's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailrelay::lifecycle::app::{ConfigMaps, RunOptions, Source};
use mailrelay::ops::admin::{QueueCommand, execute};
use mailrelay::ops::destinations;
use mailrelay::spool::QueueId;
use mailrelay_crds::relay::ListenerName;

#[derive(Parser)]
#[command(name = "mailrelay", version, about = "A Kubernetes-native mail relay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
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
    /// Look at or change the queue of a relay (a stopped one; for a running
    /// relay `list` and `show` work, changes go through its HTTP endpoint).
    Queue {
        /// Spool directory of the relay.
        #[arg(long, default_value = "mailrelay-spool")]
        spool: PathBuf,
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Run the relay: from manifests (standalone, on loopback) or from a
    /// config compiled by the operator.
    Run {
        /// Directory of YAML manifests to compile and run.
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        manifests: Option<PathBuf>,
        /// The Relay to run when the manifests hold several.
        #[arg(long, requires = "manifests")]
        relay: Option<String>,
        /// A compiled RelayConfig (JSON), as the operator writes it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Follow changes of the config through a watch on these ConfigMaps
        /// (the pod's own, in --namespace) instead of polling --config.
        #[arg(long = "config-map", requires = "config")]
        config_maps: Vec<String>,
        /// Namespace of the --config-map ConfigMaps.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
        /// Replace a listener's address: smtp=ADDR, submission=ADDR or submissions=ADDR.
        #[arg(long, value_parser = parse_listen)]
        listen: Vec<(ListenerName, SocketAddr)>,
        /// Spool directory (default ./mailrelay-spool standalone, /var/spool/mailrelay otherwise).
        #[arg(long)]
        spool: Option<PathBuf>,
        /// Spool segment files roll over past this many bytes (default 64 MiB).
        /// Smaller segments are compacted and deleted sooner, in smaller steps.
        #[arg(long, value_name = "BYTES")]
        spool_segment_size: Option<u64>,
        /// Address for /metrics, /healthz and /readyz (default 127.0.0.1:9725 standalone, 0.0.0.0:9090 otherwise).
        #[arg(long)]
        http: Option<SocketAddr>,
        /// DNS server to use instead of the configured or system ones (ADDR:PORT).
        #[arg(long)]
        dns: Option<SocketAddr>,
        /// PEM file of CA certificates trusted besides the Mozilla roots for
        /// outbound TLS (MTA-STS policy fetches, required STARTTLS to MX hosts,
        /// smarthosts).
        #[arg(long, env = "MAILRELAY_TLS_CA")]
        tls_ca: Option<PathBuf>,
        /// DNSSEC trust anchor for DANE: a file of DNSKEY records in zone-file
        /// format (the root's keys when absent).
        #[arg(long, env = "MAILRELAY_DNSSEC_TRUST_ANCHOR")]
        dnssec_trust_anchor: Option<PathBuf>,
        /// Log as JSON lines (the default with --config, as in a pod).
        #[arg(long)]
        json_logs: bool,
        #[command(flatten)]
        drain: mailrelay::lifecycle::handoff::DrainArgs,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// Every queued message with each recipient's state (like postqueue -p).
    List,
    /// One message: envelope, recipient states and headers.
    Show { id: QueueId },
    /// Make deferred recipients due now: one message, or all.
    Flush { id: Option<QueueId> },
    /// Remove a message without bouncing it.
    Delete { id: QueueId },
    /// Keep a message from being delivered until released.
    Hold { id: QueueId },
    /// Let a held message be delivered again.
    Release { id: QueueId },
    /// Where mail waits in a running relay: each destination's state
    /// (active or suspended), depth, last error and next probe.
    Destinations {
        /// The relay's --http address (its admin API answers on loopback).
        #[arg(long, default_value = "127.0.0.1:9725")]
        http: SocketAddr,
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// What a queue action asks of: the spool, or a running relay.
enum QueueTarget {
    Spool(QueueCommand),
    Destinations { http: SocketAddr, json: bool },
}

impl From<QueueAction> for QueueTarget {
    fn from(a: QueueAction) -> Self {
        QueueTarget::Spool(match a {
            QueueAction::List => QueueCommand::List,
            QueueAction::Show { id } => QueueCommand::Show(id),
            QueueAction::Flush { id } => QueueCommand::Flush(id),
            QueueAction::Delete { id } => QueueCommand::Delete(id),
            QueueAction::Hold { id } => QueueCommand::Hold(id),
            QueueAction::Release { id } => QueueCommand::Release(id),
            QueueAction::Destinations { http, json } => {
                return QueueTarget::Destinations { http, json };
            }
        })
    }
}

/// `mailrelay queue …`: the text to print, or the error.
async fn queue(spool: &std::path::Path, target: QueueTarget) -> Result<String, String> {
    match target {
        QueueTarget::Spool(command) => {
            let now = jiff::Timestamp::now().as_second();
            execute(spool, &command, now)
                .await
                .map_err(|e| e.to_string())
        }
        QueueTarget::Destinations { http, json } => {
            let rows = destinations::fetch(http).await.map_err(|e| e.to_string())?;
            if json {
                serde_json::to_string_pretty(&rows)
                    .map(|j| j + "\n")
                    .map_err(|e| e.to_string())
            } else {
                Ok(destinations::format(&rows))
            }
        }
    }
}

fn parse_listen(s: &str) -> Result<(ListenerName, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or("expected NAME=ADDR, for example smtp=127.0.0.1:2525")?;
    let name = match name {
        "smtp" => ListenerName::Smtp,
        "submission" => ListenerName::Submission,
        "submissions" => ListenerName::Submissions,
        other => return Err(format!("{other:?} is not smtp, submission or submissions")),
    };
    let addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    Ok((name, addr))
}

fn init_logs(json: bool) {
    use mailrelay::events::EventLines;
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: a log file or a
        // pod's log gets plain text, and the per-event cost of the ANSI
        // formatting (≈10 % of the instructions per message) goes away.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Delivery events are JSON lines of their own (`events::lines`).
    let logs = tracing_subscriber::registry().with(filter).with(EventLines);
    if json {
        logs.with(
            fmt.json()
                .flatten_event(true)
                .with_filter(filter_fn(EventLines::others)),
        )
        .init();
    } else {
        logs.with(fmt.with_filter(filter_fn(EventLines::others)))
            .init();
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { manifests, relay } => {
            let report = mailrelay::ops::check::check(&manifests, relay.as_deref());
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
        Command::Queue { spool, action } => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("mailrelay: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(queue(&spool, action.into())) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mailrelay queue: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            manifests,
            relay,
            config,
            config_maps,
            namespace,
            listen,
            spool,
            spool_segment_size,
            http,
            dns,
            tls_ca,
            dnssec_trust_anchor,
            json_logs,
            drain,
        } => {
            let source = match (manifests, config) {
                (Some(dir), _) => Source::Manifests { dir, relay },
                (None, Some(file)) => {
                    let maps = (!config_maps.is_empty()).then_some(ConfigMaps {
                        namespace,
                        names: config_maps,
                    });
                    Source::Config(file, maps)
                }
                (None, None) => {
                    eprintln!("mailrelay run: give --manifests DIR or --config FILE");
                    return ExitCode::from(2);
                }
            };
            init_logs(json_logs || matches!(source, Source::Config(..)));
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("mailrelay: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(mailrelay::lifecycle::app::run(RunOptions {
                source,
                listen,
                spool,
                spool_segment_size,
                tls_ca,
                dnssec_trust_anchor,
                http,
                dns,
                drain,
            })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mailrelay: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
