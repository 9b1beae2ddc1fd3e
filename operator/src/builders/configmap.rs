//! The compiled config as ConfigMaps, in the format of
//! [`mailrelay_crds::configformat`] (format and loader):
//!
//! - plain or compressed: one ConfigMap `RELAY-config` with data key
//!   `relay.json`, or binaryData key `relay.json.gz`;
//! - sharded: ConfigMaps `RELAY-config-0` … `RELAY-config-N`, the i-th with
//!   binaryData key `relay.json.gz.00i`.
//!
//! The first ConfigMap also holds `relay.json.sha256`; every one carries the
//! hash as annotation [`CONFIG_HASH_ANNOTATION`], so status can report
//! which config is stored without reading it.
//!
//! The hash is deliberately *not* put on the pod template: the relay
//! reloads its mounted config in place, and a changed pod template would
//! restart every pod on every Blocklist change.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;

use super::object_meta;
use crate::model::Model;
use mailrelay_crds::configformat::{self, FormatError, GZIP_KEY, HASH_KEY, JSON_KEY, Payload};

/// Annotation holding the hex SHA-256 of the compiled JSON.
pub const CONFIG_HASH_ANNOTATION: &str = "mailrelay.io/config-hash";

/// Name of the single ConfigMap.
pub(crate) fn name(relay: &str) -> String {
    format!("{relay}-config")
}

/// Name of shard `i`.
pub(crate) fn shard_name(relay: &str, i: usize) -> String {
    format!("{relay}-config-{i}")
}

/// The ConfigMaps holding the model's config, in order.
pub(crate) fn build(model: &Model) -> Result<Vec<ConfigMap>, FormatError> {
    let relay = &model.relay.name;
    let hash = || BTreeMap::from([(HASH_KEY.to_string(), model.config_hash.clone())]);
    let maps = match configformat::encode(&model.config_json)? {
        Payload::Plain => {
            let mut data = hash();
            data.insert(JSON_KEY.to_string(), model.config_json.clone());
            vec![config_map(model, name(relay), Some(data), None)]
        }
        Payload::Compressed(gz) => {
            let binary = BTreeMap::from([(GZIP_KEY.to_string(), ByteString(gz))]);
            vec![config_map(model, name(relay), Some(hash()), Some(binary))]
        }
        Payload::Sharded(shards) => shards
            .into_iter()
            .enumerate()
            .map(|(i, shard)| {
                let binary = BTreeMap::from([(configformat::shard_key(i), ByteString(shard))]);
                let data = (i == 0).then(hash);
                config_map(model, shard_name(relay, i), data, Some(binary))
            })
            .collect(),
    };
    Ok(maps)
}

fn config_map(
    model: &Model,
    name: String,
    data: Option<BTreeMap<String, String>>,
    binary_data: Option<BTreeMap<String, ByteString>>,
) -> ConfigMap {
    let mut metadata = object_meta(model, name);
    metadata.annotations = Some(BTreeMap::from([(
        CONFIG_HASH_ANNOTATION.to_string(),
        model.config_hash.clone(),
    )]));
    ConfigMap {
        metadata,
        data,
        binary_data,
        // Not immutable: the relay reloads the mounted files in place, and
        // an immutable ConfigMap is never refreshed in a running pod.
        immutable: None,
    }
}
