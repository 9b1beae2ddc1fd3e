use k8s_openapi::api::networking::v1::{NetworkPolicyEgressRule, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::common::{Fixture, LMTP_DOMAIN, MINIMAL, WITH_TLS};

fn ports(list: &Option<Vec<NetworkPolicyPort>>) -> Vec<(String, i32)> {
    list.iter()
        .flatten()
        .map(|p| {
            let IntOrString::Int(n) = p.port.clone().unwrap() else {
                panic!("numeric port expected")
            };
            (p.protocol.clone().unwrap(), n)
        })
        .collect()
}

fn open_egress(rules: &[NetworkPolicyEgressRule]) -> Vec<(String, i32)> {
    rules
        .iter()
        .filter(|r| r.to.is_none())
        .flat_map(|r| ports(&r.ports))
        .collect()
}

#[test]
fn listeners_are_open_to_all_metrics_to_the_cluster_and_handoff_to_peers() {
    let np = Fixture::relay(WITH_TLS).objects().network_policy;
    let spec = np.spec.unwrap();
    assert_eq!(spec.policy_types.unwrap(), ["Ingress", "Egress"]);
    let ingress = spec.ingress.unwrap();
    assert!(ingress[0].from.is_none());
    assert_eq!(
        ports(&ingress[0].ports),
        [
            ("TCP".into(), 2525),
            ("TCP".into(), 5870),
            ("TCP".into(), 4650)
        ]
    );
    let from = ingress[1].from.as_ref().unwrap();
    assert!(from[0].namespace_selector.is_some() && from[0].ip_block.is_none());
    assert_eq!(ports(&ingress[1].ports), [("TCP".into(), 9090)]);
    // Hand-off only from the Relay's own pods.
    let from = ingress[2].from.as_ref().unwrap();
    assert_eq!(
        from[0].pod_selector.as_ref().unwrap().match_labels,
        spec.pod_selector.as_ref().unwrap().match_labels
    );
    assert!(from[0].namespace_selector.is_none());
    assert_eq!(ports(&ingress[2].ports), [("TCP".into(), 10025)]);
    assert_eq!(ingress.len(), 3);
}

#[test]
fn egress_allows_dns_mx_delivery_and_peers_and_nothing_else() {
    let np = Fixture::relay(MINIMAL)
        .domain("example", LMTP_DOMAIN)
        .objects()
        .network_policy;
    let egress = np.spec.unwrap().egress.unwrap();
    assert_eq!(
        open_egress(&egress),
        [
            ("UDP".into(), 53),
            ("TCP".into(), 53),
            ("TCP".into(), 24),
            ("TCP".into(), 25),
            ("TCP".into(), 443),
            ("TCP".into(), 6443)
        ]
    );
    let peers = egress.iter().find(|r| r.to.is_some()).unwrap();
    assert!(peers.to.as_ref().unwrap()[0].pod_selector.is_some());
    // Peers only on their hand-off listener.
    assert_eq!(ports(&peers.ports), [("TCP".into(), 10025)]);
    // 443/6443: the API server, for the watch on the config ConfigMaps.
}

#[test]
fn a_smarthost_replaces_port_25_and_a_resolver_on_another_port_gets_its_own_rule() {
    let np = Fixture::relay(
        "hostname: mx.example.com
smarthost: {host: smtp.provider.example, port: 2587}
dns: {nameservers: [\"10.0.0.10:5353\", \"10.0.0.11\"]}",
    )
    .objects()
    .network_policy;
    let egress = np.spec.unwrap().egress.unwrap();
    assert_eq!(
        open_egress(&egress),
        [
            ("UDP".into(), 53),
            ("TCP".into(), 53),
            ("TCP".into(), 2587),
            ("TCP".into(), 443),
            ("TCP".into(), 6443)
        ]
    );
    let resolver = egress
        .iter()
        .find(|r| r.to.as_ref().is_some_and(|t| t[0].ip_block.is_some()))
        .unwrap();
    assert_eq!(
        resolver.to.as_ref().unwrap()[0]
            .ip_block
            .as_ref()
            .unwrap()
            .cidr,
        "10.0.0.10/32"
    );
    assert_eq!(
        ports(&resolver.ports),
        [("UDP".into(), 5353), ("TCP".into(), 5353)]
    );
}

#[test]
fn a_maildomains_smarthost_port_is_allowed_beside_mx_delivery_and_the_relays_smarthost() {
    let tenant = "domain: tenant.example
inbound: {localParts: [a]}
delivery: {lmtp: {host: dovecot.mail.svc, port: 24}}
outbound: {smarthost: {host: smtp.tenant-provider.example, port: 2525}}";
    let egress = |relay: &str| {
        let np = Fixture::relay(relay)
            .domain("tenant", tenant)
            .objects()
            .network_policy;
        open_egress(&np.spec.unwrap().egress.unwrap())
    };
    let dns_and_api = |delivery: &[i32]| {
        let mut want = vec![("UDP".to_string(), 53), ("TCP".into(), 53)];
        want.extend(delivery.iter().map(|p| ("TCP".to_string(), *p)));
        want.extend([("TCP".to_string(), 443), ("TCP".into(), 6443)]);
        want
    };
    // Other senders' mail still goes by MX: port 25 stays open.
    assert_eq!(egress(MINIMAL), dns_and_api(&[24, 25, 2525]));
    // The Relay's smarthost takes the rest.
    assert_eq!(
        egress("hostname: mx.example.com\nsmarthost: {host: smtp.provider.example, port: 2587}"),
        dns_and_api(&[24, 2525, 2587])
    );
}

#[test]
fn egress_reaches_each_event_webhook_by_address_or_else_by_port() {
    let np = Fixture::relay(
        "hostname: mx.example.com\nevents:\n  webhooks:\n  - {url: 'https://hooks.example.com:8443/mail', secret: {name: hook, key: k}}\n  - {url: 'http://10.1.2.3:8080/e', secret: {name: hook, key: k}}",
    )
    .domain(
        "example",
        &format!(
            "{LMTP_DOMAIN}\nevents:\n  webhook: {{url: 'https://[2001:db8::5]:9443/x', secret: {{name: t, key: k}}}}"
        ),
    )
    .objects()
    .network_policy;
    let egress = np.spec.unwrap().egress.unwrap();
    let by_ip: Vec<(String, Vec<(String, i32)>)> = egress
        .iter()
        .filter_map(|r| {
            let block = r.to.as_ref()?[0].ip_block.as_ref()?;
            Some((block.cidr.clone(), ports(&r.ports)))
        })
        .collect();
    assert_eq!(
        by_ip,
        [
            ("10.1.2.3/32".into(), vec![("TCP".into(), 8080)]),
            ("2001:db8::5/128".into(), vec![("TCP".into(), 9443)]),
        ]
    );
    // hooks.example.com: a policy cannot name a host, so its port is open.
    assert!(open_egress(&egress).contains(&("TCP".into(), 8443)));
    let without = Fixture::relay("hostname: mx.example.com")
        .objects()
        .network_policy;
    let plain = without.spec.unwrap().egress.unwrap();
    assert!(
        plain
            .iter()
            .all(|r| r.to.as_ref().is_none_or(|t| t[0].ip_block.is_none()))
    );
}
