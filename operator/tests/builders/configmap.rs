use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::core::v1::ConfigMap;
use mailrelay_crds::configformat::hex_sha256;
use mailrelay_crds::configformat::{self, GZIP_KEY, HASH_KEY, JSON_KEY};
use mailrelay_operator::builders::configmap::CONFIG_HASH_ANNOTATION;

use crate::common::{Fixture, MINIMAL, big_blocklists, pod_spec};

/// The API server's limit for a whole object, metadata included.
const OBJECT_LIMIT: usize = 1_048_576;

/// The files the pod sees in its config directory.
fn mounted_files(maps: &[ConfigMap]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for m in maps {
        for (k, v) in m.data.iter().flatten() {
            assert!(
                files.insert(k.clone(), v.clone().into_bytes()).is_none(),
                "{k} twice"
            );
        }
        for (k, v) in m.binary_data.iter().flatten() {
            assert!(files.insert(k.clone(), v.0.clone()).is_none(), "{k} twice");
        }
    }
    files
}

fn serialised_len(m: &ConfigMap) -> usize {
    serde_json::to_vec(m).unwrap().len()
}

#[test]
fn a_small_config_is_one_configmap_with_the_json_and_its_hash() {
    let model = Fixture::relay(MINIMAL).model();
    let objects = mailrelay_operator::build_all(&model).unwrap();
    let [map] = &objects.config_maps[..] else {
        panic!("expected one ConfigMap");
    };
    assert_eq!(map.metadata.name.as_deref(), Some("edge-config"));
    let data = map.data.as_ref().unwrap();
    assert_eq!(data[JSON_KEY], model.config_json);
    assert_eq!(data[HASH_KEY], hex_sha256(model.config_json.as_bytes()));
    assert!(map.binary_data.is_none());
    assert_eq!(
        map.metadata.annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION],
        model.config_hash
    );
    assert_eq!(
        configformat::assemble(&mounted_files(&objects.config_maps)).unwrap(),
        model.config_json
    );
}

#[test]
fn a_config_change_changes_the_configmap_but_never_the_pod_template() {
    // The relay reloads its mounted config; a changed template would
    // restart every pod on every Blocklist change.
    let before = Fixture::relay(MINIMAL)
        .blocklist("b", "ips: [{value: 192.0.2.1}]")
        .objects();
    let after = Fixture::relay(MINIMAL)
        .blocklist("b", "ips: [{value: 192.0.2.2}]")
        .objects();
    assert_ne!(before.config_maps, after.config_maps);
    assert_eq!(before.workload, after.workload);
    let hash =
        &before.config_maps[0].metadata.annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION];
    let template = serde_json::to_string(&pod_spec(&before)).unwrap();
    assert!(!template.contains(hash.as_str()));
}

#[test]
fn a_config_over_900_kib_is_gzipped_into_one_configmap_while_that_fits() {
    // Sequential addresses: large, but they compress well.
    let ips: String = (0..24_000)
        .map(|i| format!("  - {{value: \"10.{}.{}.1\"}}\n", i / 256, i % 256))
        .collect();
    let model = Fixture::relay(MINIMAL)
        .blocklist("seq", &format!("ips:\n{ips}"))
        .model();
    assert!(configformat::escaped_len(&model.config_json) > configformat::MAX_PAYLOAD_BYTES);
    let objects = mailrelay_operator::build_all(&model).unwrap();
    let [map] = &objects.config_maps[..] else {
        panic!("expected one ConfigMap, got {}", objects.config_maps.len());
    };
    assert_eq!(map.metadata.name.as_deref(), Some("edge-config"));
    assert!(map.binary_data.as_ref().unwrap().contains_key(GZIP_KEY));
    assert!(!map.data.as_ref().unwrap().contains_key(JSON_KEY));
    assert!(serialised_len(map) < OBJECT_LIMIT);
    assert_eq!(
        configformat::assemble(&mounted_files(&objects.config_maps)).unwrap(),
        model.config_json
    );
}

#[test]
fn a_hundred_thousand_blocklist_entries_shard_into_configmaps_under_the_size_limit() {
    let start = Instant::now();
    let model = big_blocklists(Fixture::relay(MINIMAL), 8, 100_000).model();
    assert_eq!(model.config.policy.entry_count(), 100_000);
    let objects = mailrelay_operator::build_all(&model).unwrap();
    let maps = &objects.config_maps;
    eprintln!(
        "100,000 entries: {} bytes of JSON in {} ConfigMaps ({:?})",
        model.config_json.len(),
        maps.len(),
        start.elapsed()
    );
    assert!(
        maps.len() >= 2,
        "the test must exercise sharding: {} ConfigMap(s)",
        maps.len()
    );
    for (i, m) in maps.iter().enumerate() {
        assert_eq!(
            m.metadata.name.as_deref(),
            Some(format!("edge-config-{i}").as_str())
        );
        let len = serialised_len(m);
        assert!(
            len < OBJECT_LIMIT,
            "edge-config-{i} serialises to {len} bytes"
        );
        let keys: Vec<&String> = m.binary_data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, [&format!("{GZIP_KEY}.{i:03}")]);
        assert_eq!(
            m.metadata.annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION],
            model.config_hash
        );
    }
    // Concatenated in key order, the shards are the gzip stream of the JSON.
    let files = mounted_files(maps);
    let json = configformat::assemble(&files).unwrap();
    assert!(
        json.as_bytes() == model.config_json.as_bytes(),
        "not byte-identical"
    );
    // The pod projects every shard, in order, into one directory.
    let config = pod_spec(&objects)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "config")
        .unwrap();
    let names: Vec<String> = config
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap()
        .iter()
        .map(|s| s.config_map.as_ref().unwrap().name.clone())
        .collect();
    let expected: Vec<String> = (0..maps.len())
        .map(|i| format!("edge-config-{i}"))
        .collect();
    assert_eq!(names, expected);
}
