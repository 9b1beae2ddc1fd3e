//! The Relay's own part of the config. Every problem here is fatal.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use ipnet::IpNet;

use super::normalize;
use super::selector::Selector;
use super::{Problem, Report, namespace_of};
use crate::common::{ObjectRef, SecretKeyRef};
use crate::config::{
    AutoscalingConfig, CONFIG_VERSION, ClassRuleConfig, DEFAULT_SECRETS_DIR, DnsConfig,
    DomainTlsConfig, LimitsConfig, ListenerConfig, OutboundTlsConfig, PolicyConfig, QueueConfig,
    QueueStorageConfig, RelayConfig, ScalingConfig, SecretFile, SmarthostConfig, TlsFiles,
};
use crate::relay::{ListenerName, Relay, RelaySpec};

/// The compiled size a classification pattern may take (the relay builds
/// it with the same limit): ample for a rule, not for a runaway one.
pub const CLASSIFICATION_REGEX_BYTES: usize = 1 << 20;

pub(super) struct Base {
    pub config: RelayConfig,
    pub domain_selector: Selector,
    pub blocklist_selector: Selector,
}

pub(super) fn compile_relay(relay: &Relay) -> Result<Base, Vec<Problem>> {
    let object = ObjectRef::new(
        "Relay",
        namespace_of(relay),
        relay.metadata.name.as_deref().unwrap_or_default(),
    );
    let mut problems = Vec::new();
    let mut r = Report {
        object: &object,
        problems: &mut problems,
    };
    let spec = &relay.spec;

    if object.name.is_empty() {
        r.add("metadata.name", "a Relay needs a name");
    }
    let hostname = r.check("spec.hostname", normalize::domain_name(&spec.hostname));
    let domain_selector = r.selector("spec.domainSelector", spec.domain_selector.as_ref());
    let blocklist_selector = r.selector("spec.blocklistSelector", spec.blocklist_selector.as_ref());
    let listeners = r.listeners(spec);
    let tls = spec.tls.as_ref().and_then(|tls| {
        r.check(
            "spec.tls.secretName",
            normalize::object_name(&tls.secret_name),
        )
        .map(|()| TlsFiles {
            cert: SecretFile::new(&tls.secret_name, "tls.crt"),
            key: SecretFile::new(&tls.secret_name, "tls.key"),
        })
    });
    let trusted_networks = r.networks("spec.trustedNetworks", &spec.trusted_networks);
    if spec.relay_from_trusted_networks && spec.trusted_networks.is_empty() {
        r.add(
            "spec.trustedNetworks",
            "relayFromTrustedNetworks needs at least one trusted network",
        );
    }
    if trusted_networks.iter().any(|n| n.prefix_len() == 0) && spec.relay_from_trusted_networks {
        r.add(
            "spec.trustedNetworks",
            "a /0 network with relayFromTrustedNetworks would make an open relay",
        );
    }
    let limits = r.limits(spec);
    let queue = r.queue(spec);
    let smarthost = r.smarthost(spec);
    let dns = r.dns(spec);
    let outbound_tls = r.outbound_tls(spec);
    let classification = r.classification(spec);
    let shaping = r.shaping(spec);
    let scaling = r.scaling(spec);
    let events = super::events::relay_events(&mut r, &spec.events);
    let reports = r.reports(spec);

    match (
        hostname,
        domain_selector,
        blocklist_selector,
        limits,
        queue,
        dns,
        scaling,
        events,
    ) {
        (
            Some(hostname),
            Some(domain_selector),
            Some(blocklist_selector),
            Some(limits),
            Some(queue),
            Some(dns),
            Some(scaling),
            Some(events),
        ) if problems.is_empty() => Ok(Base {
            config: RelayConfig {
                version: CONFIG_VERSION,
                relay: object,
                hostname,
                listeners,
                tls,
                secrets_dir: DEFAULT_SECRETS_DIR.to_string(),
                trusted_networks,
                relay_from_trusted_networks: spec.relay_from_trusted_networks,
                limits,
                domains: Vec::new(),
                policy: PolicyConfig::default(),
                queue,
                smarthost: smarthost.flatten(),
                dns,
                outbound_tls,
                classification,
                shaping,
                scaling,
                events,
                reports,
            },
            domain_selector,
            blocklist_selector,
        }),
        _ => {
            problems.sort();
            Err(problems)
        }
    }
}

impl Report<'_> {
    fn selector(
        &mut self,
        field: &str,
        s: Option<&crate::common::LabelSelector>,
    ) -> Option<Selector> {
        Selector::parse(s)
            .map_err(|(sub, why)| self.add(format!("{field}.{sub}"), why))
            .ok()
    }

    fn networks(&mut self, field: &str, list: &[String]) -> Vec<IpNet> {
        let set: BTreeSet<IpNet> = list
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.check(format!("{field}[{i}]"), normalize::network(n)))
            .collect();
        set.into_iter().collect()
    }

    pub(super) fn port(&mut self, field: String, port: i32) -> Option<u16> {
        let ok = u16::try_from(port).ok().filter(|p| *p != 0);
        if ok.is_none() {
            self.add(field, format!("{port} is not a port from 1 to 65535"));
        }
        ok
    }

    fn listeners(&mut self, spec: &RelaySpec) -> Vec<ListenerConfig> {
        if spec.listeners.is_empty() {
            self.add("spec.listeners", "a Relay needs at least one listener");
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, l) in spec.listeners.iter().enumerate() {
            let field = format!("spec.listeners[{i}]");
            if !seen.insert(l.name) {
                self.add(
                    format!("{field}.name"),
                    format!("listener {} is listed twice", l.name),
                );
                continue;
            }
            if l.name != ListenerName::Smtp && spec.tls.is_none() {
                self.add(
                    "spec.tls",
                    format!(
                        "the {} listener needs spec.tls: AUTH is only offered over TLS",
                        l.name
                    ),
                );
            }
            let port = match l.port {
                Some(p) => self.port(format!("{field}.port"), p),
                None => Some(l.name.default_port()),
            };
            let service_port = match l.service_port {
                Some(p) => self.port(format!("{field}.servicePort"), p),
                None => Some(l.name.default_service_port()),
            };
            let proxy_protocol = l.proxy_protocol.as_ref().map(|p| {
                if p.trusted_networks.is_empty() {
                    self.add(
                        format!("{field}.proxyProtocol.trustedNetworks"),
                        "PROXY protocol needs the load balancers' networks",
                    );
                }
                self.networks(
                    &format!("{field}.proxyProtocol.trustedNetworks"),
                    &p.trusted_networks,
                )
            });
            if let (Some(port), Some(service_port)) = (port, service_port) {
                out.push(ListenerConfig {
                    name: l.name,
                    address: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
                    service_port,
                    proxy_protocol,
                });
            }
        }
        let mut ports = BTreeSet::new();
        for l in &out {
            if !ports.insert(l.address.port()) {
                self.add(
                    "spec.listeners",
                    format!("port {} is used by two listeners", l.address.port()),
                );
            }
        }
        out.sort_by_key(|l| l.name);
        out
    }

    fn secs(&mut self, field: &str, text: &str) -> Option<u64> {
        self.check(field, normalize::duration(text))
            .map(|d| d.as_secs())
    }

    fn positive_secs(&mut self, field: &str, text: &str) -> Option<u64> {
        match self.secs(field, text)? {
            0 => {
                self.add(field, format!("{text:?} must be longer than 0 seconds"));
                None
            }
            s => Some(s),
        }
    }

    fn count(&mut self, field: &str, value: i32, min: u32) -> Option<u32> {
        let ok = u32::try_from(value).ok().filter(|v| *v >= min);
        if ok.is_none() {
            self.add(field, format!("{value} is less than {min}"));
        }
        ok
    }

    fn limits(&mut self, spec: &RelaySpec) -> Option<LimitsConfig> {
        let l = &spec.limits;
        let t = &l.timeouts;
        // Every field is checked before any is given up on, so one run
        // reports all the problems.
        let size = self.check(
            "spec.limits.maxMessageSize",
            normalize::size(&l.max_message_size),
        );
        if size.is_some_and(|s| s < 1024) {
            self.add("spec.limits.maxMessageSize", "must be at least 1Ki");
        }
        // RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients.
        let recipients = self.count("spec.limits.maxRecipients", l.max_recipients, 100);
        let connections = self.count("spec.limits.maxConnections", l.max_connections, 1);
        let per_ip = self.count(
            "spec.limits.maxConnectionsPerIp",
            l.max_connections_per_ip,
            1,
        );
        let rate = self.count(
            "spec.limits.messagesPerMinutePerIp",
            l.messages_per_minute_per_ip,
            1,
        );
        let auth = self.count(
            "spec.limits.maxAuthFailuresPerIp",
            l.max_auth_failures_per_ip,
            1,
        );
        let command = self.positive_secs("spec.limits.timeouts.command", &t.command);
        let data = self.positive_secs("spec.limits.timeouts.data", &t.data);
        let session = self.positive_secs("spec.limits.timeouts.session", &t.session);
        Some(LimitsConfig {
            max_message_size: size?,
            max_recipients: recipients?,
            max_connections: connections?,
            max_connections_per_ip: per_ip?,
            messages_per_minute_per_ip: rate?,
            max_auth_failures_per_ip: auth?,
            command_timeout_secs: command?,
            data_timeout_secs: data?,
            session_timeout_secs: session?,
        })
    }

    fn queue(&mut self, spec: &RelaySpec) -> Option<QueueConfig> {
        let q = &spec.queue;
        if q.retry_schedule.is_empty() {
            self.add("spec.queue.retrySchedule", "needs at least one wait");
        }
        let schedule: Vec<Option<u64>> = q
            .retry_schedule
            .iter()
            .enumerate()
            .map(|(i, d)| self.positive_secs(&format!("spec.queue.retrySchedule[{i}]"), d))
            .collect();
        let jitter_percent = u8::try_from(q.jitter_percent).ok().filter(|j| *j <= 100);
        if jitter_percent.is_none() {
            self.add("spec.queue.jitterPercent", "must be from 0 to 100");
        }
        let lifetime_secs = self.positive_secs("spec.queue.lifetime", &q.lifetime);
        let delay_warning = self.secs("spec.queue.delayWarning", &q.delay_warning);
        let d = &q.destinations;
        let suspend_after = u32::try_from(d.suspend_after_failures)
            .ok()
            .filter(|n| (1..=1000).contains(n));
        if suspend_after.is_none() {
            self.add(
                "spec.queue.destinations.suspendAfterFailures",
                "must be from 1 to 1000",
            );
        }
        let probe = self.positive_secs("spec.queue.destinations.probeInterval", &d.probe_interval);
        let max_probe = self.positive_secs(
            "spec.queue.destinations.maxProbeInterval",
            &d.max_probe_interval,
        );
        if let (Some(p), Some(m)) = (probe, max_probe)
            && m < p
        {
            self.add(
                "spec.queue.destinations.maxProbeInterval",
                "must not be shorter than probeInterval",
            );
        }
        let storage = q.storage.as_ref().map(|s| {
            self.check("spec.queue.storage.size", normalize::size(&s.size));
            QueueStorageConfig {
                size: s.size.clone(),
                storage_class_name: s.storage_class_name.clone(),
            }
        });
        Some(QueueConfig {
            retry_schedule_secs: schedule.into_iter().collect::<Option<Vec<_>>>()?,
            jitter_percent: jitter_percent?,
            lifetime_secs: lifetime_secs?,
            delay_warning_secs: delay_warning.filter(|s| *s > 0),
            storage,
            suspend_after: suspend_after?,
            probe_secs: probe?,
            max_probe_secs: max_probe.filter(|m| *m >= probe.unwrap_or(0))?,
        })
    }

    pub(super) fn secret(&mut self, field: &str, r: &SecretKeyRef) -> Option<SecretFile> {
        let name = self.check(format!("{field}.name"), normalize::object_name(&r.name));
        let key = self.check(format!("{field}.key"), normalize::secret_key(&r.key));
        name.and(key).map(|()| SecretFile::new(&r.name, &r.key))
    }

    /// `Some(None)`: no smarthost; `None`: a broken one.
    fn smarthost(&mut self, spec: &RelaySpec) -> Option<Option<SmarthostConfig>> {
        match &spec.smarthost {
            None => Some(None),
            Some(s) => super::smarthost::compile(self, "spec.smarthost", s).map(Some),
        }
    }

    /// `spec.reports`: the period and the kinds the pods count.
    fn reports(&mut self, spec: &RelaySpec) -> Option<crate::reports::ReportsConfig> {
        use crate::reports::ReportKind;
        let reports = spec.reports.as_ref()?;
        let period = self.check("spec.reports.period", normalize::duration(&reports.period));
        let period_secs = period.map(|d| d.as_secs()).unwrap_or(0);
        if period.is_some() && period_secs < 10 {
            self.add("spec.reports.period", "a reporting period is at least 10s");
        }
        for (field, value) in [("from", &reports.from), ("contact", &reports.contact)] {
            self.check(format!("spec.reports.{field}"), normalize::address(value));
        }
        if reports.kinds.is_empty() {
            self.add("spec.reports.kinds", "name at least one of Dmarc, TlsRpt");
        }
        Some(crate::reports::ReportsConfig {
            period_secs,
            dmarc: reports.kinds.contains(&ReportKind::Dmarc),
            tls_rpt: reports.kinds.contains(&ReportKind::TlsRpt),
        })
    }

    /// `spec.delivery.tls`: domains normalised, sorted, each once.
    fn outbound_tls(&mut self, spec: &RelaySpec) -> OutboundTlsConfig {
        let tls = &spec.delivery.tls;
        let mut domains: Vec<DomainTlsConfig> = Vec::with_capacity(tls.domains.len());
        for (i, d) in tls.domains.iter().enumerate() {
            let field = format!("spec.delivery.tls.domains[{i}].domain");
            let Some(domain) = self.check(field.clone(), normalize::domain_name(&d.domain)) else {
                continue;
            };
            if domains.iter().any(|e| e.domain == domain) {
                self.add(field, format!("{domain} is listed more than once"));
                continue;
            }
            domains.push(DomainTlsConfig {
                domain,
                policy: d.policy,
            });
        }
        domains.sort_by(|a, b| a.domain.cmp(&b.domain));
        OutboundTlsConfig {
            policy: tls.policy,
            domains,
        }
    }

    /// `spec.delivery.classification`: each pattern must compile, within
    /// the size the relay allows, so a rule never fails in the pod.
    fn classification(&mut self, spec: &RelaySpec) -> Vec<ClassRuleConfig> {
        let mut rules = Vec::new();
        for (i, rule) in spec.delivery.classification.iter().enumerate() {
            let field = format!("spec.delivery.classification[{i}].match");
            match regex::RegexBuilder::new(&rule.pattern)
                .size_limit(CLASSIFICATION_REGEX_BYTES)
                .build()
            {
                Ok(_) => rules.push(ClassRuleConfig {
                    pattern: rule.pattern.clone(),
                    class: rule.class,
                }),
                Err(e) => self.add(field, format!("not a valid regular expression: {e}")),
            }
        }
        rules
    }

    fn dns(&mut self, spec: &RelaySpec) -> Option<DnsConfig> {
        let nameservers: Vec<_> = spec
            .dns
            .nameservers
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                self.check(
                    format!("spec.dns.nameservers[{i}]"),
                    normalize::nameserver(n),
                )
            })
            .collect();
        let timeout = self.check("spec.dns.timeout", normalize::duration(&spec.dns.timeout))?;
        if timeout.is_zero() {
            self.add("spec.dns.timeout", "must be longer than 0");
        }
        Some(DnsConfig {
            nameservers,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        })
    }

    fn scaling(&mut self, spec: &RelaySpec) -> Option<ScalingConfig> {
        let replicas = match spec.replicas {
            Some(r) => self.count("spec.replicas", r, 0)?,
            None => 1,
        };
        let autoscaling = match &spec.autoscaling {
            None => None,
            Some(a) => {
                let min = self.count("spec.autoscaling.minReplicas", a.min_replicas, 1)?;
                let max = self.count("spec.autoscaling.maxReplicas", a.max_replicas, 1)?;
                if min > max {
                    self.add(
                        "spec.autoscaling.minReplicas",
                        format!("minReplicas ({min}) must not be greater than maxReplicas ({max})"),
                    );
                }
                let cpu = self.count(
                    "spec.autoscaling.targetCpuUtilization",
                    a.target_cpu_utilization,
                    1,
                )?;
                let depth = match a.target_queue_depth {
                    Some(d) => Some(self.count("spec.autoscaling.targetQueueDepth", d, 1)?),
                    None => None,
                };
                Some(AutoscalingConfig {
                    engine: a.engine,
                    min_replicas: min,
                    max_replicas: max,
                    target_cpu_utilization: cpu,
                    target_queue_depth: depth,
                })
            }
        };
        Some(ScalingConfig {
            replicas,
            autoscaling,
        })
    }
}
