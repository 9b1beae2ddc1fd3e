use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::common::{Fixture, MINIMAL};

#[test]
fn the_budget_lets_one_pod_go_at_a_time_even_with_a_single_replica() {
    let pdb = Fixture::relay(MINIMAL).objects().pdb;
    let spec = pdb.spec.unwrap();
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert!(
        spec.min_available.is_none(),
        "a minimum would block drains of one replica"
    );
    assert_eq!(
        spec.unhealthy_pod_eviction_policy.as_deref(),
        Some("AlwaysAllow")
    );
    let labels = spec.selector.unwrap().match_labels.unwrap();
    assert_eq!(labels["app.kubernetes.io/instance"], "edge");
    assert_eq!(labels["app.kubernetes.io/name"], "mailrelay");
    assert_eq!(labels.len(), 2);
}
