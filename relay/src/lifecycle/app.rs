//! `mailrelay run` in named phases — load the config, open the spool,
//! bind the listeners, start delivery, start the hand-off listener, serve
//! HTTP — giving a [`Running`] relay that runs until SIGTERM, SIGINT or a
//! drain request, and then drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mailrelay_crds::config::RelayConfig;
use mailrelay_crds::relay::ListenerName;
use tokio::net::TcpListener;

use crate::config::Current;
use crate::config::runtime::Runtime;
use crate::config::standalone;
use crate::events::Events;
use crate::events::metrics::EventMetrics;
use crate::lifecycle::drain::{DirectionLabel, DrainMetrics, Running};
use crate::lifecycle::handoff::{self, DrainArgs};
use crate::ops::http::{self, Health};
use crate::ops::internal::Internal;
use crate::ops::metrics::Metrics;
use crate::ops::reports::Reports;
use crate::policy::limits::Limiter;
use crate::policy::{self, DnsblChecker};
use crate::queue::manager::{Concurrency, Manager};
use crate::server::conn::ConnCtx;
use crate::server::listener::{Shared, accept_loop};
use crate::server::tls::Tls;
use crate::spool::{Spool, SpoolOptions};

/// Remote MX hosts listen here (RFC 5321 §4.5.4.2 / IANA).
const SMTP_PORT: u16 = 25;

/// Where the config comes from.
pub enum Source {
    /// YAML manifests, compiled here (standalone mode).
    Manifests { dir: PathBuf, relay: Option<String> },
    /// A `RelayConfig` compiled by the operator (in a pod): the file is
    /// read at start; changes come from `watch` when set (the pod's own
    /// ConfigMaps through the API), else from polling the file.
    Config(PathBuf, Option<ConfigMaps>),
}

/// The ConfigMaps holding a pod's config.
#[derive(Clone, Debug)]
pub struct ConfigMaps {
    pub namespace: String,
    pub names: Vec<String>,
}

pub struct RunOptions {
    pub source: Source,
    pub listen: Vec<(ListenerName, SocketAddr)>,
    pub spool: Option<PathBuf>,
    /// Bytes past which spool segments roll over (default 64 MiB).
    pub spool_segment_size: Option<u64>,
    /// PEM CA certificates trusted besides the Mozilla roots for outbound
    /// TLS: MTA-STS policy fetches and verified STARTTLS to MX hosts and
    /// smarthosts.
    pub tls_ca: Option<PathBuf>,
    /// DNSKEY records (zone-file format) trusted for DNSSEC validation
    /// for DANE, instead of the root's keys.
    pub dnssec_trust_anchor: Option<PathBuf>,
    pub http: Option<SocketAddr>,
    pub dns: Option<SocketAddr>,
    pub drain: DrainArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Standalone(#[from] standalone::StandaloneError),
    #[error(transparent)]
    Config(#[from] crate::config::reload::ReloadError),
    #[error("--listen {0}: the Relay has no such listener")]
    NoSuchListener(ListenerName),
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    #[error("outbound TLS: {0}")]
    OutboundTls(#[from] crate::delivery::tls_policy::TlsPolicyError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::server::tls::TlsError),
    #[error("DNS: {0}")]
    Dns(#[from] policy::ResolverError),
    #[error(transparent)]
    Handoff(#[from] handoff::HandoffError),
    #[error("event log: {0}")]
    Events(#[from] crate::events::LogError),
    #[error("report aggregates: {0}")]
    Reports(#[from] crate::ops::reports::StoreError),
    #[error("cannot create {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Load the config and apply the command-line overrides. The guard keeps a
/// standalone run's private secrets directory alive.
fn load(
    opts: &RunOptions,
) -> Result<(RelayConfig, Vec<String>, Option<tempfile::TempDir>), RunError> {
    let (mut config, warnings, guard) = match &opts.source {
        Source::Manifests { dir, relay } => {
            let secrets = tempfile::Builder::new()
                .prefix("mailrelay-secrets-")
                .tempdir()
                .map_err(|source| RunError::Dir {
                    path: std::env::temp_dir(),
                    source,
                })?;
            let p = standalone::prepare(dir, relay.as_deref(), secrets.path())?;
            (p.config, p.warnings, Some(secrets))
        }
        Source::Config(path, _) => {
            let (config, _) = crate::config::reload::load(path)?;
            (config, Vec::new(), None)
        }
    };
    apply_listen(&mut config, &opts.listen)?;
    Ok((config, warnings, guard))
}

/// Replace listener addresses as `--listen` says.
fn apply_listen(
    config: &mut RelayConfig,
    listen: &[(ListenerName, SocketAddr)],
) -> Result<(), RunError> {
    for (name, addr) in listen {
        let listener = config
            .listeners
            .iter_mut()
            .find(|l| l.name == *name)
            .ok_or(RunError::NoSuchListener(*name))?;
        listener.address = *addr;
    }
    Ok(())
}

fn default_spool(source: &Source) -> PathBuf {
    match source {
        Source::Manifests { .. } => PathBuf::from("mailrelay-spool"),
        Source::Config(..) => PathBuf::from("/var/spool/mailrelay"),
    }
}

fn default_http(source: &Source) -> SocketAddr {
    match source {
        Source::Manifests { .. } => SocketAddr::from(([127, 0, 0, 1], 9725)),
        Source::Config(..) => SocketAddr::from(([0, 0, 0, 0], 9090)),
    }
}

/// The config and what is built from it before anything listens.
struct Loaded {
    runtime: Runtime,
    listeners: Vec<mailrelay_crds::config::ListenerConfig>,
    dns: policy::HickoryDns,
    outbound_tls: crate::delivery::tls_policy::OutboundTls,
    tls: Option<Tls>,
    key: Option<ring::hmac::Key>,
    /// The internal API's key, from the same secret.
    internal_key: Option<ring::hmac::Key>,
    secrets: Option<tempfile::TempDir>,
}

pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    let mut signals = StopSignals::install();
    let loaded = load_config(&opts)?;
    let spool = open_spool(&opts).await?;
    let running = start(&opts, loaded, spool).await?;
    tracing::info!(hostname = %running.hostname, "mailrelay ready");
    // A drain request (the pod's annotation) drains like SIGTERM, but the
    // relay stays up, not ready, until it is stopped.
    let requested = async {
        match &opts.drain.drain_request_file {
            Some(path) => crate::lifecycle::drain::until_requested(path).await,
            None => std::future::pending().await,
        }
    };
    let stopped = tokio::select! {
        _ = signals.recv() => true,
        _ = requested => false,
    };
    running.drain(&opts.drain).await;
    if !stopped {
        signals.recv().await;
    }
    Ok(())
}

/// Phase 1: the config, its runtime, resolvers and TLS material.
fn load_config(opts: &RunOptions) -> Result<Loaded, RunError> {
    let (config, warnings, secrets) = load(opts)?;
    let dns = policy::resolver(&config.dns, opts.dns)?;
    let extra_roots = match &opts.tls_ca {
        Some(path) => crate::delivery::tls_policy::read_ca_bundle(path)?,
        None => Vec::new(),
    };
    let outbound_tls = crate::delivery::tls_policy::OutboundTls::new(
        dns.clone(),
        extra_roots,
        crate::delivery::tls_policy::HTTPS_PORT,
    )?
    .with_dane(crate::delivery::tls_policy::dane::DaneDns::new(
        &opts
            .dns
            .map_or_else(|| config.dns.nameservers.clone(), |s| vec![s]),
        Duration::from_millis(config.dns.timeout_ms.max(1)),
        opts.dnssec_trust_anchor.as_deref(),
    )?);
    let tls = match &config.tls {
        Some(files) => {
            let tls = Tls::new(
                &files.cert.path(&config.secrets_dir),
                &files.key.path(&config.secrets_dir),
            )?;
            tls.clone().watch(Duration::from_secs(10));
            Some(tls)
        }
        None => None,
    };
    let listeners = config.listeners.clone();
    let (runtime, runtime_warnings) = Runtime::build(config, jiff::Timestamp::now().as_second());
    for w in warnings.iter().chain(&runtime_warnings) {
        tracing::warn!("{w}");
    }
    let secret = opts
        .drain
        .handoff_secret_file
        .as_deref()
        .map(handoff::load_secret)
        .transpose()?;
    let key = secret.as_deref().map(handoff::wire::key);
    let internal_key = secret.as_deref().map(mailrelay_crds::reports::internal_key);
    Ok(Loaded {
        runtime,
        listeners,
        dns,
        outbound_tls,
        tls,
        key,
        internal_key,
        secrets,
    })
}

/// Phase 2: the spool, recovered.
async fn open_spool(opts: &RunOptions) -> Result<Spool, RunError> {
    let dir = opts
        .spool
        .clone()
        .unwrap_or_else(|| default_spool(&opts.source));
    let mut options = SpoolOptions::default();
    if let Some(bytes) = opts.spool_segment_size {
        options = options.segment_bytes(bytes);
    }
    let (spool, recovery) = Spool::open_with(&dir, options).await?;
    tracing::info!(
        spool = %dir.display(),
        messages = recovery.messages,
        truncated_bytes = recovery.truncated_bytes,
        "spool loaded"
    );
    Ok(spool)
}

/// Phases 3 to 6: listeners, delivery, hand-off, HTTP; then ready.
async fn start(opts: &RunOptions, loaded: Loaded, spool: Spool) -> Result<Running, RunError> {
    let mut metrics = Metrics::new();
    let drain_metrics = DrainMetrics::register(&mut metrics.registry);
    let event_metrics = Arc::new(EventMetrics::register(&mut metrics.registry));
    let report_metrics = crate::ops::reports::register_metrics(&mut metrics.registry);
    if let Some(tls) = &loaded.tls {
        metrics.tls_expiry(tls.expiry());
    }
    let metrics = Arc::new(metrics);
    let hostname = loaded.runtime.config.hostname.clone();
    let shared = Shared {
        current: Current::new(loaded.runtime),
        limiter: Limiter::system(),
        conn: ConnCtx {
            spool: spool.clone(),
            tls: loaded.tls,
            metrics: Arc::clone(&metrics),
            dkim: crate::dkim::DkimKeys::default(),
            // The relay's own resolver; three lookups' worth per check.
            inbound_auth: Arc::new(crate::smtp::inbound_auth::Checker::new(
                loaded.dns.inner().clone(),
                loaded.dns.deadline().saturating_mul(3),
            )),
        },
        dnsbl: Arc::new(DnsblChecker::new(loaded.dns.clone(), 100_000)),
    };
    start_events(
        &shared.current,
        &spool,
        &loaded.outbound_tls,
        Arc::clone(&event_metrics),
    )?;
    let reports = start_reports(&spool, report_metrics)?;
    let accepting = bind_listeners(loaded.listeners, &shared).await?;
    let manager = start_delivery(&shared, &spool, loaded.dns, loaded.outbound_tls, &metrics);
    let handoff_listener =
        start_handoff(opts, &loaded.key, &shared, &spool, &drain_metrics).await?;
    let internal = loaded.internal_key.map(|key| {
        Arc::new(Internal {
            key,
            current: shared.current.clone(),
            spool: spool.clone(),
            reports: reports.clone(),
            events: event_metrics,
            dkim: shared.conn.dkim.clone(),
            guard: Default::default(),
        })
    });
    let health = serve_http(opts, &metrics, &spool, &manager, internal).await?;
    background(opts, &shared, &spool, &metrics).await;
    health.set_ready(true);
    Ok(Running {
        health,
        accepting,
        handoff_listener,
        limiter: Arc::clone(&shared.limiter),
        manager,
        spool,
        key: loaded.key,
        hostname,
        metrics: drain_metrics,
        reports,
        _secrets: loaded.secrets,
    })
}

/// The event log beside the spool, the arrival events a crash may have
/// lost (before delivery starts, so they come before any later event of
/// their message), and the webhook senders.
fn start_events(
    current: &Current,
    spool: &Spool,
    outbound_tls: &crate::delivery::tls_policy::OutboundTls,
    metrics: Arc<EventMetrics>,
) -> Result<(), RunError> {
    let rt = current.get();
    let pod = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| rt.config.hostname.clone());
    let relay = format!("{}/{}", rt.config.relay.namespace, rt.config.relay.name);
    let events = Events::open(&spool.dir().join("events"), relay, pod)?;
    events.follow(current.clone());
    spool.set_events(events.clone());
    let again = events.recover(&rt, spool);
    if again > 0 {
        tracing::info!(
            events = again,
            "arrival events of messages never attempted emitted again"
        );
    }
    events.start_senders(current.clone(), metrics, outbound_tls.https());
    Ok(())
}

/// The report aggregates in the spool's `reports/`, loaded, counted into
/// from now on and written every few seconds.
fn start_reports(
    spool: &Spool,
    dropped: prometheus_client::metrics::family::Family<
        crate::ops::reports::KindLabel,
        prometheus_client::metrics::counter::Counter,
    >,
) -> Result<Reports, RunError> {
    let store = crate::ops::reports::Store::open(&spool.dir().join("reports"))?;
    let reports = Reports::open(store, dropped);
    spool.set_reports(reports.clone());
    tokio::spawn(reports.clone().run());
    Ok(reports)
}

async fn bind_listeners(
    listeners: Vec<mailrelay_crds::config::ListenerConfig>,
    shared: &Shared,
) -> Result<Vec<tokio::task::JoinHandle<()>>, RunError> {
    let mut accepting = Vec::new();
    for l in listeners {
        let listener = bind(l.name.as_str(), l.address).await?;
        tracing::info!(listener = %l.name, address = %l.address, "listening");
        accepting.push(tokio::spawn(accept_loop(listener, l, shared.clone())));
    }
    Ok(accepting)
}

fn start_delivery(
    shared: &Shared,
    spool: &Spool,
    dns: policy::HickoryDns,
    outbound_tls: crate::delivery::tls_policy::OutboundTls,
    metrics: &Arc<Metrics>,
) -> Arc<Manager> {
    let manager = Manager::new(
        spool.clone(),
        shared.current.clone(),
        dns,
        Arc::clone(metrics),
        SMTP_PORT,
        Concurrency::default(),
        outbound_tls,
    );
    tokio::spawn(Arc::clone(&manager).run());
    manager
}

async fn start_handoff(
    opts: &RunOptions,
    key: &Option<ring::hmac::Key>,
    shared: &Shared,
    spool: &Spool,
    drain_metrics: &DrainMetrics,
) -> Result<Option<tokio::task::JoinHandle<()>>, RunError> {
    let (Some(addr), Some(key)) = (opts.drain.handoff_listen, key) else {
        return Ok(None);
    };
    let receiver = handoff::server::Receiver {
        spool: spool.clone(),
        current: shared.current.clone(),
        key: key.clone(),
        received: drain_metrics
            .handoffs
            .get_or_create(&DirectionLabel {
                direction: "received",
            })
            .clone(),
        reports: spool.reports().cloned(),
    };
    let listener = bind("handoff", addr).await?;
    tracing::info!(address = %addr, "listening for queue hand-offs from peers");
    Ok(Some(tokio::spawn(handoff::server::serve(
        listener,
        Arc::new(receiver),
    ))))
}

async fn serve_http(
    opts: &RunOptions,
    metrics: &Arc<Metrics>,
    spool: &Spool,
    manager: &Arc<Manager>,
    internal: Option<Arc<Internal>>,
) -> Result<Health, RunError> {
    let addr = opts.http.unwrap_or_else(|| default_http(&opts.source));
    let listener = http::bind(addr).await.map_err(|source| RunError::Bind {
        name: "http".into(),
        addr,
        source,
    })?;
    tracing::info!(address = %addr, "serving /metrics, /healthz, /readyz, /queue");
    let health = Health::default();
    // Health and metrics keep answering while sessions drain.
    tokio::spawn(http::serve(
        listener,
        Arc::clone(metrics),
        health.clone(),
        spool.clone(),
        Arc::clone(manager) as Arc<dyn crate::ops::destinations::QueueControl>,
        internal,
    ));
    Ok(health)
}

/// Gauges, blocklist expiry, DKIM keys and the config watch.
async fn background(opts: &RunOptions, shared: &Shared, spool: &Spool, metrics: &Arc<Metrics>) {
    tokio::spawn(spool_gauges(spool.clone(), Arc::clone(metrics)));
    tokio::spawn(expire_entries(shared.current.clone()));
    // DKIM keys: read now (problems logged at start), then on change.
    shared.conn.dkim.refresh(&shared.current.get()).await;
    (shared.conn.dkim.clone()).watch(shared.current.clone(), crate::dkim::keys::REFRESH);
    watch_config(opts, &shared.current);
}

/// Connections the kernel may queue before we accept them: a burst of
/// clients (or 10,000 opening at once, W5 in BENCHMARKS.md) must not
/// overflow the default 1,024 and see SYN retries. The kernel caps it at
/// net.core.somaxconn.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    let bound = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // What std's and tokio's own bind do, so a restart can bind at once.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bound().map_err(|source| RunError::Bind {
        name: name.to_string(),
        addr,
        source,
    })
}

/// Follow config changes: through the API when the pod names its
/// ConfigMaps, else by polling the file. Standalone runs do not reload.
fn watch_config(opts: &RunOptions, current: &Current) {
    if let Source::Config(path, maps) = &opts.source {
        let hash = crate::config::reload::load(path)
            .map(|(_, h)| h)
            .unwrap_or_default();
        let listen = opts.listen.clone();
        let adjust = move |c: &mut RelayConfig| {
            let _ = apply_listen(c, &listen);
        };
        match maps {
            Some(maps) => {
                tracing::info!(namespace = %maps.namespace, configmaps = ?maps.names, "watching the config through the API");
                tokio::spawn(crate::config::watch::watch(
                    maps.namespace.clone(),
                    maps.names.clone(),
                    current.clone(),
                    hash,
                    adjust,
                ));
            }
            None => {
                tokio::spawn(crate::config::reload::watch(
                    path.clone(),
                    current.clone(),
                    hash,
                    adjust,
                ));
            }
        }
    }
}

/// Blocklist entries with an expiry stop applying on time: rebuild the
/// runtime when the next one is due.
async fn expire_entries(current: Current) {
    loop {
        // Looked at again every minute: a reload may bring new expiries.
        let wait = match current.get().policy.next_expiry() {
            Some(next) => next
                .saturating_sub(jiff::Timestamp::now().as_second())
                .clamp(1, 60),
            None => 60,
        };
        tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap_or(60))).await;
        let rt = current.get();
        if rt
            .policy
            .next_expiry()
            .is_some_and(|next| next <= jiff::Timestamp::now().as_second())
        {
            let (fresh, _) = Runtime::build(rt.config.clone(), jiff::Timestamp::now().as_second());
            current.set(fresh);
            tracing::info!("expired blocklist entries removed");
        }
    }
}

/// The spool's gauges, queue states included: from counts the spool
/// keeps, so cheap every second, and still running while a drain has
/// stopped the delivery manager.
async fn spool_gauges(spool: Spool, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut disk_failing = false;
    loop {
        tick.tick().await;
        let (tally, oldest) = spool.tally();
        let now = jiff::Timestamp::now().as_second();
        metrics.spool(
            &spool.stats(),
            &tally,
            oldest.map_or(0, |t| (now - t).max(0)),
        );
        // A failing statvfs keeps the last figures; logged once, not every second.
        match crate::ops::disk::disk_space(spool.dir()) {
            Ok(space) => {
                metrics.spool_disk(&space);
                disk_failing = false;
            }
            Err(e) if !disk_failing => {
                tracing::warn!(error = %e, spool = %spool.dir().display(), "spool disk space unknown");
                disk_failing = true;
            }
            Err(_) => {}
        }
    }
}

/// SIGTERM and SIGINT, listened for from start-up on: one that arrives
/// while a requested drain runs is not lost.
struct StopSignals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl StopSignals {
    fn install() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignals(
            signal(SignalKind::terminate())
                .ok()
                .zip(signal(SignalKind::interrupt()).ok()),
        )
    }

    async fn recv(&mut self) {
        match &mut self.0 {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // Without signal handlers, Ctrl-C through tokio's fallback.
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
