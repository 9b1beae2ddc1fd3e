use crate::common::{Fixture, MINIMAL, big_blocklists};

#[test]
fn the_relay_may_read_its_config_configmaps_and_nothing_else() {
    let objects = Fixture::relay(MINIMAL).objects();
    let rules = objects.role.rules.clone().unwrap();
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(
        rule.resources.as_deref(),
        Some(&["configmaps".to_string()][..])
    );
    assert_eq!(rule.verbs, ["get", "list", "watch"]);
    assert_eq!(
        rule.resource_names.as_deref(),
        Some(&["edge-config".to_string()][..])
    );
    let binding = &objects.role_binding;
    assert_eq!(binding.role_ref.name, "edge-config-reader");
    assert_eq!(binding.role_ref.kind, "Role");
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (subject.kind.as_str(), subject.name.as_str()),
        ("ServiceAccount", "edge")
    );
}

#[test]
fn a_sharded_config_is_readable_shard_by_shard() {
    let objects = big_blocklists(Fixture::relay(MINIMAL), 8, 100_000).objects();
    let names: Vec<String> = objects
        .config_maps
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert!(names.len() > 1);
    assert_eq!(
        objects.role.rules.unwrap()[0].resource_names.as_ref(),
        Some(&names)
    );
}
