//! Delivery events: one record per event (see `record`) — reception,
//! rejection, delivery, transient failure, bounce, expiry, delay warning,
//! hand-off, queue administration — always written to the log as one
//! JSON line under the `mailrelay::event` target, and, for the events a
//! configured webhook wants (see `route`), to the event log in the spool
//! directory that the webhook senders read (see `log`, `webhook`).
//!
//! Durability, and why it costs no fsync of its own on the way to a 250
//! or a delivery:
//! - The event log is one ordered log; a line's sequence number is fixed
//!   when it is appended. An emitted event goes to an in-memory buffer,
//!   which the log's own thread writes (one write, one fdatasync) every
//!   few tens of milliseconds — never awaited by a delivery.
//! - An event that precedes a spool step removing or changing a message
//!   (a delivery, bounce, deferral, expiry, delay warning) is emitted
//!   before that step is handed to the spool writer, on the same task
//!   ([`Events::emit_before_step`]). The spool writer puts every line the
//!   log has not synced yet (and no earlier batch carried) into the
//!   step's batch, as one record before the step's (`spool::StepLog`):
//!   the one fdatasync that makes the step durable makes its events
//!   durable too — a power loss finds both or neither, never the step
//!   without its event. At start-up the log takes back, in order, the
//!   carried lines it lacks ([`Events::restore`]); a spool segment that
//!   carries lines is deleted only once the log holds them. So a step
//!   costs no fdatasync beyond the spool's own (before this, the log's
//!   sync came first and the step waited for it: two syncs in series).
//!   Hand-off and administration, rare and off that path, still wait
//!   for their events ([`Events::emit_durable`]).
//! - A Reception is appended before the 250 but not awaited: waiting for
//!   a second fsync after the spool's would double the latency of every
//!   message. Instead, because the log is ordered — and the Reception is
//!   appended before delivery hears of the message
//!   (`Spool::commit_then`) — the Reception of a message is durable as
//!   soon as any later event of it is; and a
//!   message with no later event is still in the spool with every
//!   recipient pending, so at start-up ([`Events::recover`]) its
//!   Reception is emitted again from what the spool holds. Its id is the
//!   same (see [`record::event_id`]), so a receiver that saw it before
//!   can drop it. What a rebuilt Reception lacks is what the spool does
//!   not keep in memory: the listener, the TLS details and the
//!   Message-ID (reading every body at start-up would slow a restart).
//! - A Rejection concerns no queued message: it is appended and becomes
//!   durable with the next step's batch or the log's next flush (at most
//!   about a tenth of a second); a crash in between can lose it. The
//!   client was refused either way.
//! - Webhook senders only ever see lines after their fdatasync: a line
//!   sent and then lost would hand its sequence number, which a cursor
//!   may have passed, to another event.

pub(crate) mod build;
pub(crate) mod hooks;
mod json;
mod lines;
mod log;
pub(crate) mod metrics;
pub(crate) mod outcomes;
pub mod record;
mod route;
mod sign;
mod webhook;

#[cfg(test)]
pub(crate) mod testing;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use mailrelay_crds::config::WebhookConfig;
use mailrelay_crds::events::WebhookUrl;
use tokio::sync::oneshot;
use tokio_rustls::rustls::ClientConfig;

pub use self::lines::{EventLines, TARGET};
pub use self::log::LogError;
use self::log::{Append, EventLog};
use self::metrics::EventMetrics;
pub use self::record::{Event, EventType, Reply, Tls};
use crate::config::Current;
use crate::config::runtime::Runtime;

/// How often the senders are matched against the config in force.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);

/// Where events go. Cloned freely; one per relay process.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    relay: String,
    pod: String,
    /// `None`: the log line only (tests, the offline commands).
    log: Option<EventLog>,
    /// Tells apart events that concern no queued message.
    serial: AtomicU64,
    /// The config in force, for callers that have none in hand.
    current: std::sync::OnceLock<Current>,
}

static DISABLED: LazyLock<Events> =
    LazyLock::new(|| Events::disabled(String::new(), String::new()));

impl Events {
    /// Events that go to the log only.
    pub fn disabled(relay: String, pod: String) -> Events {
        Events {
            inner: Arc::new(Inner {
                relay,
                pod,
                log: None,
                serial: AtomicU64::new(0),
                current: std::sync::OnceLock::new(),
            }),
        }
    }

    /// A shared log-only instance, for a spool that was given none.
    pub(crate) fn log_only() -> &'static Events {
        &DISABLED
    }

    /// Open (and recover) the event log in `dir`.
    pub fn open(dir: &Path, relay: String, pod: String) -> Result<Events, LogError> {
        Ok(Events {
            inner: Arc::new(Inner {
                relay,
                pod,
                log: Some(EventLog::open(dir)?),
                serial: AtomicU64::new(0),
                current: std::sync::OnceLock::new(),
            }),
        })
    }

    /// [`Events::open`] with the log's own flushes put off by `lazy`.
    #[cfg(test)]
    pub(crate) fn open_lazily(
        dir: &Path,
        relay: String,
        pod: String,
        lazy: Duration,
    ) -> Result<Events, LogError> {
        Ok(Events {
            inner: Arc::new(Inner {
                relay,
                pod,
                log: Some(EventLog::open_with(dir, log::SEGMENT_BYTES, lazy)?),
                serial: AtomicU64::new(0),
                current: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Route events by the config in `current` where a caller has no
    /// runtime in hand (hand-off, queue administration). Set once.
    pub(crate) fn follow(&self, current: Current) {
        let _ = self.inner.current.set(current);
    }

    /// [`Events::emit_durable`] under the config in force.
    pub(crate) async fn record(&self, events: &[Event]) {
        match self.inner.current.get() {
            Some(current) => self.emit_durable(&current.get(), events).await,
            None => {
                for e in events {
                    self.line(e);
                }
            }
        }
    }

    /// The config in force, when `follow` was called.
    pub(crate) fn runtime(&self) -> Option<Arc<Runtime>> {
        self.inner.current.get().map(Current::get)
    }

    /// The log line only.
    pub(crate) fn log(&self, event: &Event) {
        self.line(event);
    }

    /// The log line of `event`; its JSON.
    fn line(&self, event: &Event) -> String {
        let json = json::to_json(event);
        // Written as it is by `EventLines` (see `lines`).
        tracing::info!(target: "mailrelay::event", event = json.as_str());
        json
    }

    /// A new event of `kind` with `id`, stamped with the time, relay and pod.
    pub(crate) fn event(&self, kind: EventType, id: String) -> Event {
        Event {
            version: record::EVENT_VERSION,
            id,
            kind,
            time: jiff::Timestamp::now().to_string(),
            relay: self.inner.relay.clone(),
            pod: self.inner.pod.clone(),
            queue_id: None,
            message_id: None,
            sender: None,
            recipient: None,
            listener: None,
            client_ip: None,
            auth_user: None,
            size: None,
            route: None,
            remote_host: None,
            remote_ip: None,
            reply: None,
            class: None,
            attempt: None,
            tls: None,
            dkim_signed: None,
            queued_seconds: None,
            action: None,
        }
    }

    /// An id for an event that concerns no queued message (a rejection):
    /// unique in this process and across restarts (the pod and the start
    /// time are in it).
    pub(crate) fn fresh_id(&self, kind: EventType, detail: &str) -> String {
        let n = self.inner.serial.fetch_add(1, Ordering::Relaxed);
        record::event_id(
            &format!("{}@{}", self.inner.pod, *STARTED),
            Some(usize::try_from(n).unwrap_or(usize::MAX)),
            kind,
            0,
            detail,
        )
    }

    /// Write `event` to the log, and to the event log when a webhook
    /// wants it. Returns without waiting: the line is written by the
    /// next spool step that removes or changes a message, or lazily
    /// (see the module comment).
    pub(crate) fn emit(&self, rt: &Runtime, event: &Event) {
        self.append(rt, event, None);
    }

    /// Emit `events` ahead of the spool step they are about (a delivery,
    /// deferral, bounce, expiry): no wait here — the spool writer makes
    /// them durable before it writes that step (see the module comment).
    pub(crate) fn emit_before_step(&self, rt: &Runtime, events: &[Event]) {
        for e in events {
            self.emit(rt, e);
        }
    }

    /// Whether `event` went to the event log (`done` told when durable).
    fn append(
        &self,
        rt: &Runtime,
        event: &Event,
        done: Option<oneshot::Sender<Result<(), ()>>>,
    ) -> bool {
        let json = self.line(event);
        let Some(log) = self.inner.log.as_ref() else {
            return false;
        };
        let webhooks = &rt.config.events.webhooks;
        if webhooks.is_empty() {
            return false;
        }
        let owner = route::owner(event, |d| rt.domain(d).map(|c| c.name.as_str()));
        let targets: log::Targets = route::targets(webhooks, event, owner)
            .into_iter()
            .map(Arc::<str>::from)
            .collect();
        if targets.is_empty() {
            return false;
        }
        let appended = log.append(Append {
            time: jiff::Timestamp::now().as_second(),
            targets,
            json: Arc::from(json),
            done,
        });
        match appended {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, id = %event.id, "event not queued for webhooks");
                false
            }
        }
    }

    /// Emit `events` and return once those for webhooks are durable (one
    /// wait: the log is written in order). For the rare steps taken
    /// outside the delivery path (hand-off, administration).
    pub(crate) async fn emit_durable(&self, rt: &Runtime, events: &[Event]) {
        let mut last = None;
        for e in events {
            // Each asks for a flush now: the last one a webhook wants may
            // be any of them.
            let (done, durable) = oneshot::channel();
            if self.append(rt, e, Some(done)) {
                last = Some(durable);
            }
        }
        if let Some(durable) = last
            && !matches!(durable.await, Ok(Ok(())))
        {
            tracing::error!(
                events = events.len(),
                "events not durable in the event log; a crash now would lose them"
            );
        }
    }

    /// What the spool writer asks before it writes a step that events
    /// may precede. `None` without an event log.
    pub(crate) fn step_barrier(&self) -> Option<std::sync::Arc<dyn crate::spool::StepLog>> {
        let tail = self.inner.log.as_ref()?.tail();
        Some(tail)
    }

    /// Take back, at start-up and before anything is appended, the lines
    /// the spool carried that the event log lacks (`carried`: per events
    /// record, its first sequence number and its lines), in order, and
    /// sync them. Returns how many.
    pub(crate) fn restore(&self, carried: Vec<(u64, Vec<u8>)>) -> usize {
        let Some(log) = self.inner.log.as_ref() else {
            return 0;
        };
        let tail = log.tail();
        let from = crate::spool::StepLog::durable(&*tail);
        let mut lines = BTreeMap::new();
        for (first, bytes) in &carried {
            for (seq, line) in (*first..).zip(bytes.split(|b| *b == b'\n')) {
                if seq < from || line.is_empty() {
                    continue;
                }
                match log::decode(line) {
                    Some(decoded) => {
                        lines.entry(seq).or_insert(decoded);
                    }
                    None => {
                        tracing::error!(seq, "a carried event line does not verify; it is skipped")
                    }
                }
            }
        }
        if let Some(&first) = lines.keys().next()
            && first != from
        {
            tracing::warn!(
                expected = from,
                found = first,
                "carried event lines do not follow the event log; some events were lost"
            );
        }
        let n = lines.len();
        let now = jiff::Timestamp::now().as_second();
        for (_, (targets, json)) in lines {
            let appended = log.append(Append {
                time: now,
                targets,
                json,
                done: None,
            });
            if let Err(e) = appended {
                tracing::error!(error = %e, "cannot take back carried event lines");
                return 0;
            }
        }
        if n > 0 {
            tail.barrier(from + n as u64);
            tracing::info!(
                events = n,
                "event lines carried by the spool taken back into the event log"
            );
        }
        n
    }

    /// Emit again, at start-up, the arrival event of every message whose
    /// recipients are all still pending (see the module's comment).
    pub(crate) fn recover(&self, rt: &Runtime, spool: &crate::spool::Spool) -> usize {
        if self.inner.log.is_none() || rt.config.events.webhooks.is_empty() {
            return 0;
        }
        let mut n = 0;
        // A notice the relay wrote itself (null sender, our own name as
        // HELO) never had a Reception: it gets none now either.
        let own_notice = |q: &crate::spool::Queued| {
            q.envelope.sender.is_empty() && q.envelope.helo == rt.config.hostname
        };
        for q in spool.queued().iter().filter(|q| {
            !own_notice(q)
                && q.recipients
                    .iter()
                    .all(|s| matches!(s, crate::spool::RecipientState::Pending))
        }) {
            for e in build::arrival(self, q) {
                self.emit(rt, &e);
                n += 1;
            }
        }
        n
    }

    /// Keep one sender per configured webhook running, following config
    /// changes (a webhook added, removed or changed; its key rotated).
    pub(crate) fn start_senders(
        &self,
        current: Current,
        metrics: Arc<EventMetrics>,
        tls: Arc<ClientConfig>,
    ) {
        let Some(log) = &self.inner.log else {
            return;
        };
        let backlog = Arc::clone(&log.backlog);
        tokio::spawn(async move {
            let mut running: BTreeMap<
                String,
                (WebhookConfig, Vec<u8>, tokio::task::JoinHandle<()>),
            > = BTreeMap::new();
            let mut complained = std::collections::BTreeSet::new();
            loop {
                let rt = current.get();
                let events = &rt.config.events;
                let wanted: BTreeMap<&str, &WebhookConfig> = events
                    .webhooks
                    .iter()
                    .map(|w| (w.name.as_str(), w))
                    .collect();
                running.retain(|name, (config, secret, task)| {
                    let keep = wanted.get(name.as_str()).is_some_and(|w| *w == config)
                        && read_secret(&rt, config).is_ok_and(|s| s == *secret);
                    if !keep {
                        task.abort();
                        backlog.unregister(name);
                    }
                    keep
                });
                for (name, w) in wanted {
                    if running.contains_key(name) {
                        continue;
                    }
                    let (secret, url) = match read_secret(&rt, w)
                        .and_then(|s| WebhookUrl::parse(&w.url).map(|u| (s, u)))
                    {
                        Ok(ok) => ok,
                        Err(e) => {
                            if complained.insert(name.to_string()) {
                                tracing::error!(webhook = name, error = %e, "event webhook not started; its events wait in the event log");
                            }
                            continue;
                        }
                    };
                    complained.remove(name);
                    let sender = webhook::Sender {
                        config: w.clone(),
                        url,
                        key: sign::key(&secret),
                        backlog: Arc::clone(&backlog),
                        metrics: Arc::clone(&metrics),
                        retention_secs: events.retention_secs,
                        tls: Arc::clone(&tls),
                    };
                    let task = tokio::spawn(sender.run());
                    running.insert(name.to_string(), (w.clone(), secret, task));
                }
                tokio::time::sleep(SUPERVISE_EVERY).await;
            }
        });
    }
}

/// The process's start time, in the ids of events about no message.
static STARTED: LazyLock<i64> = LazyLock::new(|| jiff::Timestamp::now().as_nanosecond() as i64);

fn read_secret(rt: &Runtime, w: &WebhookConfig) -> Result<Vec<u8>, String> {
    let path = w.secret.path(&rt.config.secrets_dir);
    std::fs::read(&path).map_err(|e| format!("cannot read the signing key {}: {e}", path.display()))
}

#[cfg(test)]
#[path = "schema_tests.rs"]
mod schema_tests;

#[cfg(test)]
#[path = "recover_tests.rs"]
mod recover_tests;

#[cfg(test)]
#[path = "step_tests.rs"]
mod step_tests;
