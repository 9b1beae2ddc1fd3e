//! The NetworkPolicy of the relay pods: only what the relay does is allowed.
//!
//! Ingress: the listeners from anywhere (mail comes from the internet;
//! policy is the relay's job), the HTTP port (/metrics, probes) from
//! inside the cluster, and the hand-off port from the Relay's own pods.
//! Kubelet probes come from the node, which network plugins let through
//! regardless.
//!
//! Egress: DNS (resolver, MX and DNSBL lookups); SMTP port 25 to any MX
//! host, unless the Relay's smarthost takes all outgoing mail; the
//! Relay's and the MailDomains' smarthosts; the mailbox servers'
//! LMTP/SMTP ports; the event webhooks; the peers' hand-off port; the API
//! server's ports (the watch on the pod's own config ConfigMaps).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mailrelay_crds::config::{DeliveryConfig, RelayConfig};

use super::{handoff, object_meta, pod, pod_selector};
use crate::model::Model;

/// RFC 5321 §4.5.4.2 / IANA: where remote MX hosts listen.
const SMTP_PORT: u16 = 25;
const DNS_PORT: u16 = 53;

/// The Relay's NetworkPolicy.
pub(crate) fn build(model: &Model) -> NetworkPolicy {
    let config = &model.config;
    let listener_ports: Vec<NetworkPolicyPort> = config
        .listeners
        .iter()
        .map(|l| tcp(l.address.port()))
        .collect();
    let ingress = vec![
        NetworkPolicyIngressRule {
            from: None,
            ports: Some(listener_ports),
        },
        NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector::default()),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![port("TCP", IntOrString::Int(pod::HTTP_PORT))]),
        },
        // Queue hand-off: only from the Relay's own pods.
        NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(pod_selector(model)),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![port("TCP", IntOrString::Int(handoff::PORT))]),
        },
    ];
    let mut egress = vec![NetworkPolicyEgressRule {
        to: None,
        ports: Some(vec![udp(DNS_PORT), tcp(DNS_PORT)]),
    }];
    egress.extend(nameserver_rules(&config.dns.nameservers));
    egress.push(NetworkPolicyEgressRule {
        to: None,
        ports: Some(delivery_ports(config).into_iter().map(tcp).collect()),
    });
    // The API server, for the watch on the config ConfigMaps. Its address
    // is the cluster's business (and often outside the pod network), so
    // only the ports are pinned: 443 for the `kubernetes` Service, 6443
    // where a policy engine sees the endpoint behind it.
    egress.push(NetworkPolicyEgressRule {
        to: None,
        ports: Some(vec![tcp(443), tcp(6443)]),
    });
    egress.extend(super::webhook_egress::rules(config));
    egress.push(NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(pod_selector(model)),
            ..NetworkPolicyPeer::default()
        }]),
        ports: Some(vec![port("TCP", IntOrString::Int(handoff::PORT))]),
    });
    NetworkPolicy {
        metadata: object_meta(model, &model.relay.name),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector(model)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}

/// TCP ports the relay delivers to, sorted.
pub(crate) fn delivery_ports(config: &RelayConfig) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    match &config.smarthost {
        Some(s) => {
            ports.insert(s.port);
        }
        None => {
            ports.insert(SMTP_PORT);
        }
    }
    for d in &config.domains {
        match &d.delivery {
            DeliveryConfig::Lmtp { port, .. } | DeliveryConfig::Smtp { port, .. } => {
                ports.insert(*port);
            }
            DeliveryConfig::Maildir { .. } => {}
        }
        if let Some(s) = &d.smarthost {
            ports.insert(s.port);
        }
    }
    ports
}

/// Configured resolvers on other ports than 53, each to its own address.
fn nameserver_rules(nameservers: &[SocketAddr]) -> Vec<NetworkPolicyEgressRule> {
    nameservers
        .iter()
        .filter(|a| a.port() != DNS_PORT)
        .map(|a| {
            let bits = if a.is_ipv4() { 32 } else { 128 };
            NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: format!("{}/{bits}", a.ip()),
                        except: None,
                    }),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![udp(a.port()), tcp(a.port())]),
            }
        })
        .collect()
}

fn tcp(p: u16) -> NetworkPolicyPort {
    port("TCP", IntOrString::Int(i32::from(p)))
}

fn udp(p: u16) -> NetworkPolicyPort {
    port("UDP", IntOrString::Int(i32::from(p)))
}

fn port(protocol: &str, p: IntOrString) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(p),
        protocol: Some(protocol.into()),
        end_port: None,
    }
}
