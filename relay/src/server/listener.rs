//! Accepting connections: connection limits, the PROXY header from trusted
//! load balancers, the checks made once per client (IP lists, DNSBL,
//! reverse DNS), then the session.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use mailrelay_crds::compile::normalize;
use mailrelay_crds::config::ListenerConfig;
use mailrelay_crds::relay::ListenerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::conn::{ConnCtx, serve};
use crate::config::Current;
use crate::config::runtime::Runtime;
use crate::ops::metrics::{ListenerLabel, ResultLabel};
use crate::policy::limits::{ConnRefused, LimitSettings, Limiter};
use crate::policy::{DnsblChecker, HickoryDns, NameRole, reverse_name};
use crate::server::proxy::{self, ProxyParse};
use crate::smtp::reply::Reply;
use crate::smtp::session::Session;
use crate::smtp::{ConnInfo, policy_reply};

/// Everything the accept loops share.
#[derive(Clone)]
pub(crate) struct Shared {
    pub current: Current,
    pub limiter: Arc<Limiter>,
    pub conn: ConnCtx,
    pub dnsbl: Arc<DnsblChecker<HickoryDns>>,
}

/// How long a load balancer may take to send its PROXY header.
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept connections until the task is dropped.
pub(crate) async fn accept_loop(listener: TcpListener, config: ListenerConfig, shared: Shared) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, listener = %config.name, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (config, shared) = (config.clone(), shared.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(stream, peer, &config, &shared).await {
                tracing::debug!(%peer, listener = %config.name, error = %e, "session ended with an error");
            }
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    config: &ListenerConfig,
    shared: &Shared,
) -> Result<(), super::conn::ConnError> {
    let _ = stream.set_nodelay(true);
    let metrics = &shared.conn.metrics;
    let mut initial = Vec::new();
    let mut client_ip = normalize::unmap_addr(peer.ip());
    if let Some(trusted) = &config.proxy_protocol {
        match read_proxy(&mut stream, peer.ip(), trusted).await {
            Ok((source, rest)) => {
                client_ip = source.map_or(client_ip, |s| normalize::unmap_addr(s.ip()));
                initial = rest;
            }
            Err(reason) => {
                tracing::info!(%peer, reason, "PROXY header refused");
                metrics
                    .connections_refused
                    .get_or_create(&ResultLabel { result: "proxy" })
                    .inc();
                let reply = Reply::new(
                    421,
                    "4.7.0",
                    "PROXY protocol header required from a trusted load balancer",
                );
                let _ = stream.write_all(&reply.to_bytes()).await;
                return Ok(());
            }
        }
    }
    let rt = shared.current.get();
    let settings = LimitSettings::from(&rt.config.limits);
    let _slot = match shared.limiter.open(client_ip, &settings) {
        Ok(slot) => slot,
        Err(why) => {
            let (label, text) = match why {
                ConnRefused::Total => ("total", "Too many connections; try again later"),
                ConnRefused::PerIp => (
                    "per_ip",
                    "Too many connections from your address; try again later",
                ),
            };
            metrics
                .connections_refused
                .get_or_create(&ResultLabel { result: label })
                .inc();
            let reply = Reply::new(421, "4.7.0", format!("{} {text}", rt.config.hostname));
            let _ = stream.write_all(&reply.to_bytes()).await;
            return Ok(());
        }
    };
    metrics
        .sessions
        .get_or_create(&ListenerLabel {
            listener: config.name.as_str(),
        })
        .inc();
    metrics.sessions_open.inc();
    let (client_name, connect_block) = connect_checks(&rt, shared, config.name, client_ip).await;
    let conn = ConnInfo {
        listener: config.name,
        client_ip,
        client_name,
        tls: false,
        tls_info: None,
        connect_block,
    };
    let session = Session::new(
        Arc::clone(&rt),
        Arc::clone(&shared.limiter),
        conn,
        shared.conn.tls.is_some(),
    );
    let implicit_tls = config.name == ListenerName::Submissions;
    let result = serve(stream, session, &shared.conn, implicit_tls, initial).await;
    metrics.sessions_open.dec();
    result
}

/// The checks made once per connection. Returns the client's reverse DNS
/// name and the reply that refuses it, if any, to be given at MAIL.
async fn connect_checks(
    rt: &Runtime,
    shared: &Shared,
    listener: ListenerName,
    ip: IpAddr,
) -> (Option<String>, Option<Reply>) {
    if let Some(hit) = rt.policy.check_ip(ip) {
        tracing::info!(%ip, "client address blocked");
        return (None, Some(policy_reply(&hit.reply())));
    }
    // DNSBLs and host-name rules judge strangers delivering inbound mail;
    // submission clients (often on dynamic addresses that DNSBLs list)
    // authenticate instead, and trusted networks are ours.
    if listener != ListenerName::Smtp || rt.is_trusted(ip) {
        return (None, None);
    }
    let zones = rt.policy.dnsbl_zones();
    let (listing, name) = tokio::join!(
        async {
            if zones.is_empty() {
                Ok(None)
            } else {
                shared.dnsbl.check(zones, ip).await
            }
        },
        reverse_name(shared.dnsbl.dns(), ip)
    );
    let name = name.ok().flatten();
    let block = match listing {
        Ok(Some(hit)) => Some(policy_reply(&hit.reply())),
        Err(e) => Some(policy_reply(&e.reply())),
        Ok(None) => name
            .as_deref()
            .and_then(|n| rt.policy.check_name(NameRole::ReverseDns, n))
            .map(|hit| policy_reply(&hit.reply())),
    };
    (name, block)
}

/// Read the PROXY header; `Ok((source, bytes after the header))`.
async fn read_proxy(
    stream: &mut TcpStream,
    peer: IpAddr,
    trusted: &[IpNet],
) -> Result<(Option<SocketAddr>, Vec<u8>), &'static str> {
    let peer = normalize::unmap_addr(peer);
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return Err("connection is not from a trusted load balancer");
    }
    let mut buf = Vec::with_capacity(256);
    let read = async {
        loop {
            match proxy::parse(&buf) {
                Ok(ProxyParse::Complete { source, consumed }) => {
                    return Ok((source, buf[consumed..].to_vec()));
                }
                Ok(ProxyParse::Incomplete) => {}
                Err(_) => return Err("malformed PROXY header"),
            }
            let mut chunk = [0u8; 256];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err("connection closed before the PROXY header"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(PROXY_TIMEOUT, read)
        .await
        .unwrap_or(Err("PROXY header timed out"))
}
