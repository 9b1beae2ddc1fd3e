//! `mailrelay-operator`: the control plane's command line. Parses the
//! arguments and wires them to the library; nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use kube::runtime::events::Reporter;
use mailrelay_crds::resolver::ResolverError;
use mailrelay_operator::apply::ApiError;
use mailrelay_operator::http::Health;
use mailrelay_operator::leader::{Elector, Leadership, Timing};
use mailrelay_operator::metrics::Metrics;
use mailrelay_operator::mx::MxChecker;
use mailrelay_operator::render::render_dir;
use mailrelay_operator::{Settings, controller, model};

#[derive(Parser)]
#[command(name = "mailrelay-operator", version, about = "The mailrelay operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers against the cluster of the current kubeconfig
    /// (or the in-cluster service account).
    Run(RunArgs),
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

#[derive(clap::Args)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Run only while holding the leader Lease (for more than one replica).
    #[arg(long)]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "mailrelay-operator")]
    lease_name: String,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease and in Events (default: $POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Relay image for Relays that name none.
    #[arg(long, default_value_t = Settings::default().default_image)]
    default_image: String,
    /// Prometheus URL for KEDA's queue-depth trigger.
    #[arg(long, default_value = model::DEFAULT_PROMETHEUS_URL)]
    prometheus_url: String,
    /// Apply the mailrelay CRDs with server-side apply at start-up (the
    /// upgrade path for CRDs, which Helm never upgrades).
    #[arg(long)]
    apply_crds: bool,
    /// Nameserver for the MailDomains' MX check (default: /etc/resolv.conf).
    #[arg(long)]
    dns: Option<SocketAddr>,
    /// How often the relay pods are asked about their event webhooks and
    /// for finished report periods.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pod_poll_interval: std::time::Duration,
    /// CA certificates (PEM) trusted besides the Web PKI's for `https`
    /// TLS-RPT destinations (a private PKI's).
    #[arg(long)]
    report_ca: Option<PathBuf>,
    /// Do not check MailDomains' MX records.
    #[arg(long)]
    no_mx_check: bool,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `mailrelay_operator=debug`.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// Why a command failed; each variant names what it was doing.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("cannot serialise: {0}")]
    SerialiseCrds(#[source] serde_saphyr::SerializeError),
    #[error("{}: {source}", path.display())]
    WriteCrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--log-level {filter:?}: {source}")]
    LogFilter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot set up logging: {0}")]
    Logging(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("--http-addr {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the Kubernetes API: {0}")]
    Connect(#[source] kube::Error),
    #[error("--report-ca: {0}")]
    ReportCa(String),
    #[error("DNS resolver (--dns): {0}")]
    MxCheck(#[source] ResolverError),
    #[error("--leader-elect needs --lease-namespace or $POD_NAMESPACE")]
    NoLeaseNamespace,
    #[error("--apply-crds: {0}")]
    ApplyCrds(#[source] ApiError),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("mailrelay-operator run: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "mailrelay-operator stopped");
                    eprintln!("mailrelay-operator run: {e}");
                    ExitCode::FAILURE
                }
            }
        }
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

fn crd(out: Option<PathBuf>) -> Result<(), Error> {
    let rendered = mailrelay_crds::crdgen::render_all().map_err(Error::SerialiseCrds)?;
    for (file, yaml) in rendered {
        match &out {
            Some(dir) => {
                let path = dir.join(file);
                if let Err(source) = std::fs::write(&path, yaml) {
                    return Err(Error::WriteCrd { path, source });
                }
                eprintln!("wrote {}", path.display());
            }
            None => println!("---\n{yaml}"),
        }
    }
    Ok(())
}

/// How long one query for a report destination (`rua`) may take.
const REPORT_DNS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn duration(s: &str) -> Result<std::time::Duration, String> {
    mailrelay_crds::compile::normalize::duration(s)
}

fn init_logs(format: LogFormat, filter: &str) -> Result<(), Error> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|source| Error::LogFilter {
            filter: filter.to_string(),
            source,
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(Error::Logging)
}

async fn run(args: RunArgs) -> Result<(), Error> {
    init_logs(args.log_format, &args.log_level)?;
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "mailrelay-operator".to_string());
    let metrics = Arc::new(Metrics::new());
    let health = Health::default();
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|source| Error::Listen {
            addr: args.http_addr,
            source,
        })?;
    tokio::spawn(mailrelay_operator::http::serve(
        listener,
        metrics.clone(),
        health.clone(),
    ));

    let client = kube::Client::try_default().await.map_err(Error::Connect)?;
    let version = client.apiserver_version().await.map_err(Error::Connect)?;
    tracing::info!(server = %version.git_version, identity, "connected");
    let fleet = controller::FleetSettings {
        interval: args.pod_poll_interval,
        resolver: Some(
            mailrelay_crds::resolver::resolver(args.dns.as_slice(), REPORT_DNS_TIMEOUT)
                .map_err(Error::MxCheck)?,
        ),
        report_tls: match &args.report_ca {
            Some(path) => Some(
                mailrelay_operator::fleet::http::with_extra_roots(path).map_err(Error::ReportCa)?,
            ),
            None => None,
        },
    };
    let mx = if args.no_mx_check {
        None
    } else {
        Some(MxChecker::new(args.dns.as_slice()).map_err(Error::MxCheck)?)
    };
    health.set_ready(true);

    let mut leadership = if args.leader_elect {
        let ns = args
            .lease_namespace
            .clone()
            .ok_or(Error::NoLeaseNamespace)?;
        let elector = Elector::new(
            client.clone(),
            &ns,
            &args.lease_name,
            &identity,
            Timing::default(),
        );
        match Leadership::elect(elector, shutdown_signal()).await {
            Some(leadership) => leadership,
            None => return Ok(()),
        }
    } else {
        Leadership::unelected()
    };
    metrics.set_leader(true);
    // After the election: only the leader writes, CRDs included.
    if args.apply_crds {
        mailrelay_operator::crds::apply_all(&client)
            .await
            .map_err(Error::ApplyCrds)?;
    }

    let settings = Settings {
        default_image: args.default_image,
        prometheus_url: args.prometheus_url,
    };
    let reporter = Reporter {
        controller: "mailrelay-operator".into(),
        instance: Some(identity),
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = done_rx.await;
    };
    let controllers = tokio::spawn(controller::run(
        client,
        settings,
        reporter,
        metrics.clone(),
        mx,
        fleet,
        shutdown,
    ));
    tokio::select! {
        () = shutdown_signal() => {}
        () = leadership.lost() => {
            // Stop at once: reconciles still running would write against a
            // plan the new leader may already be replacing.
            tracing::error!("lost the leader lease; exiting so a fresh process can stand again");
            std::process::exit(1);
        }
    }
    let _ = done_tx.send(());
    let _ = controllers.await;
    metrics.set_leader(false);
    leadership.release().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM (the kubelet) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
