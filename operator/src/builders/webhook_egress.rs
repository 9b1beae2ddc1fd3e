//! Egress to the event webhooks (`spec.events` of the Relay and of its
//! MailDomains): to the address itself when the URL names an IP, else
//! to the port only — a NetworkPolicy cannot name a host.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mailrelay_crds::config::RelayConfig;
use mailrelay_crds::events::WebhookUrl;

/// One rule per webhook address given as an IP, one for the ports of the
/// webhooks given by name; none without webhooks.
pub(crate) fn rules(config: &RelayConfig) -> Vec<NetworkPolicyEgressRule> {
    let mut by_ip: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
    let mut by_name: BTreeSet<u16> = BTreeSet::new();
    // compile() checked every URL; one that does not parse opens nothing.
    for url in config
        .events
        .webhooks
        .iter()
        .filter_map(|w| WebhookUrl::parse(&w.url).ok())
    {
        match url.host.parse::<IpAddr>() {
            Ok(ip) => by_ip.insert((ip, url.port)),
            Err(_) => by_name.insert(url.port),
        };
    }
    let mut rules: Vec<NetworkPolicyEgressRule> = by_ip
        .into_iter()
        .map(|(ip, port)| {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: format!("{ip}/{bits}"),
                        except: None,
                    }),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![tcp(port)]),
            }
        })
        .collect();
    if !by_name.is_empty() {
        rules.push(NetworkPolicyEgressRule {
            to: None,
            ports: Some(by_name.into_iter().map(tcp).collect()),
        });
    }
    rules
}

fn tcp(port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".into()),
        end_port: None,
    }
}
