//! In a pod, config changes arrive through a watch on the relay's own
//! ConfigMaps: the API server tells us within a second or so, where the
//! kubelet's refresh of a mounted ConfigMap takes up to a minute or more
//! (its sync period plus its cache). The mounted file is still read at
//! start, so a pod starts without the API; after that only the watch
//! counts, so a kubelet catching up late can never roll a config back.
//!
//! The pod's ServiceAccount may read exactly these ConfigMaps and nothing
//! else (a Role with `resourceNames`, which for list and watch requires the
//! `metadata.name` field selector each watch here sends).
//!
//! A sharded config changes one ConfigMap at a time; until every shard
//! agrees with the hash in the first one the set is torn and ignored
//! (`configformat::assemble` refuses it), so a half-updated config is
//! never loaded.

use std::collections::BTreeMap;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use mailrelay_crds::config::RelayConfig;
use mailrelay_crds::configformat;

use crate::config::Current;
use crate::config::reload;

/// A change to one of the watched ConfigMaps: its new content, or `None`
/// when it was deleted.
pub(crate) type Change = (String, Option<ConfigMap>);

/// The config files held by `maps`, by key, as the mounted volume would
/// show them: `data` as UTF-8 bytes, `binaryData` as is.
pub(crate) fn files_of(maps: &BTreeMap<String, ConfigMap>) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for cm in maps.values() {
        for (k, v) in cm.data.iter().flatten() {
            files.insert(k.clone(), v.clone().into_bytes());
        }
        for (k, v) in cm.binary_data.iter().flatten() {
            files.insert(k.clone(), v.0.clone());
        }
    }
    files
}

/// Follow `changes`, swapping in each complete config whose hash differs
/// from the running one's (`hash`). Returns when the stream ends.
pub(crate) async fn follow<S>(
    changes: S,
    current: Current,
    mut hash: [u8; 32],
    adjust: impl Fn(&mut RelayConfig),
) where
    S: Stream<Item = Change>,
{
    let mut maps: BTreeMap<String, ConfigMap> = BTreeMap::new();
    let mut changes = std::pin::pin!(changes);
    while let Some((name, cm)) = changes.next().await {
        match cm {
            Some(cm) => maps.insert(name, cm),
            None => maps.remove(&name),
        };
        let json = match configformat::assemble(&files_of(&maps)) {
            Ok(json) => json,
            Err(e) => {
                // Torn (shards mid-update) or incomplete: wait for the rest.
                tracing::debug!(error = %e, "config set not complete yet");
                continue;
            }
        };
        let (mut config, new_hash) = match reload::parse(&json) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "config not reloaded; keeping the running one");
                continue;
            }
        };
        if new_hash == hash {
            continue;
        }
        hash = new_hash;
        adjust(&mut config);
        reload::swap(&current, config).await;
    }
}

/// Watch ConfigMaps `names` of `namespace` and follow them, until the task
/// is dropped. Watch errors are retried with backoff and logged.
pub(crate) async fn watch(
    namespace: String,
    names: Vec<String>,
    current: Current,
    hash: [u8; 32],
    adjust: impl Fn(&mut RelayConfig),
) {
    let client = loop {
        match Client::try_default().await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the Kubernetes API to watch the config; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }
    };
    follow(changes(client, &namespace, &names), current, hash, adjust).await;
}

/// The changes of ConfigMaps `names`, one watch each.
pub(crate) fn changes(
    client: Client,
    namespace: &str,
    names: &[String],
) -> impl Stream<Item = Change> + use<> {
    let streams = names.iter().map(|name| {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let name = name.clone();
        watcher::watcher(api, config)
            .default_backoff()
            .filter_map(move |event| {
                let name = name.clone();
                async move {
                    match event {
                        Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                            Some((name, Some(cm)))
                        }
                        Ok(watcher::Event::Delete(_)) => Some((name, None)),
                        // A relist begins: forget the old copy, so one
                        // deleted while the watch was down does not linger
                        // (the relist's InitApply brings back what exists).
                        Ok(watcher::Event::Init) => Some((name, None)),
                        Ok(watcher::Event::InitDone) => None,
                        Err(e) => {
                            tracing::warn!(configmap = %name, error = %e, "config watch");
                            None
                        }
                    }
                }
            })
            .boxed()
    });
    futures::stream::select_all(streams)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn cm(data: &[(&str, &str)], binary: &[(&str, &[u8])]) -> ConfigMap {
        ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            binary_data: Some(
                binary
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    fn gzip(text: &str) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    fn other_config(json: &str) -> String {
        let mut c = RelayConfig::from_json(json).unwrap();
        c.hostname = "changed.example".into();
        c.to_json().unwrap()
    }

    #[tokio::test]
    async fn a_sharded_change_is_swapped_in_only_once_every_shard_agrees() {
        let (rt, _dir) = crate::testutil::runtime();
        let old_json = rt.config.to_json().unwrap();
        let (_, old_hash) = reload::parse(&old_json).unwrap();
        let current = Current::new(rt);
        let new_json = other_config(&old_json);
        let gz = gzip(&new_json);
        let (a, b) = gz.split_at(gz.len() / 2);
        let sha = configformat::hex_sha256(new_json.as_bytes());
        let old_gz = gzip(&old_json);
        let (_, old_b) = old_gz.split_at(old_gz.len() / 2);

        let changes = vec![
            // The first shard (with the new hash) arrives while the second
            // is still the old one: torn, ignored.
            (
                "c-0".to_string(),
                Some(cm(
                    &[("relay.json.sha256", &sha)],
                    &[("relay.json.gz.000", a)],
                )),
            ),
            (
                "c-1".to_string(),
                Some(cm(&[], &[("relay.json.gz.001", old_b)])),
            ),
        ];
        let cur = current.clone();
        follow(futures::stream::iter(changes), cur, old_hash, |_| {}).await;
        assert_ne!(
            current.get().config.hostname,
            "changed.example",
            "a torn set is never loaded"
        );

        let changes = vec![
            (
                "c-0".to_string(),
                Some(cm(
                    &[("relay.json.sha256", &sha)],
                    &[("relay.json.gz.000", a)],
                )),
            ),
            (
                "c-1".to_string(),
                Some(cm(&[], &[("relay.json.gz.001", b)])),
            ),
        ];
        follow(
            futures::stream::iter(changes),
            current.clone(),
            old_hash,
            |_| {},
        )
        .await;
        assert_eq!(current.get().config.hostname, "changed.example");
    }

    #[tokio::test]
    async fn a_plain_config_applies_with_the_overrides_and_an_unchanged_one_is_skipped() {
        let (rt, _dir) = crate::testutil::runtime();
        let old_json = rt.config.to_json().unwrap();
        let (_, old_hash) = reload::parse(&old_json).unwrap();
        let current = Current::new(rt);
        let before = std::sync::Arc::as_ptr(&current.get());
        let same = vec![("c".to_string(), Some(cm(&[("relay.json", &old_json)], &[])))];
        follow(
            futures::stream::iter(same),
            current.clone(),
            old_hash,
            |_| {},
        )
        .await;
        assert_eq!(
            std::sync::Arc::as_ptr(&current.get()),
            before,
            "same content: no swap"
        );

        let new_json = other_config(&old_json);
        let changed = vec![("c".to_string(), Some(cm(&[("relay.json", &new_json)], &[])))];
        follow(
            futures::stream::iter(changed),
            current.clone(),
            old_hash,
            |c| c.hostname = "adjusted.example".into(),
        )
        .await;
        assert_eq!(current.get().config.hostname, "adjusted.example");
    }

    #[tokio::test]
    async fn each_configmap_is_watched_by_name_so_a_role_limited_to_it_allows_the_watch() {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let uri = req.uri().to_string();
                seen2.lock().unwrap().push(uri.clone());
                let body = if uri.contains("watch=true") {
                    Vec::new()
                } else {
                    serde_json::to_vec(&serde_json::json!({
                        "apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": "7"},
                        "items": [{"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "edge-config", "namespace": "mail", "resourceVersion": "7"},
                            "data": {"relay.json": "{}"}}]
                    }))
                    .unwrap()
                };
                send.send_response(
                    Response::builder()
                        .status(200)
                        .body(Body::from(body))
                        .unwrap(),
                );
            }
        });
        let client = Client::new(service, "mail");
        let mut stream = std::pin::pin!(changes(client, "mail", &["edge-config".to_string()]));
        // The relist starts by forgetting the old copy, then brings it.
        let (name, reset) = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((name.as_str(), reset.is_none()), ("edge-config", true));
        let (name, cm) = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(name, "edge-config");
        assert_eq!(cm.unwrap().data.unwrap()["relay.json"], "{}");
        let first = seen.lock().unwrap()[0].clone();
        assert!(
            first.starts_with("/api/v1/namespaces/mail/configmaps?"),
            "{first}"
        );
        assert!(
            first.contains("fieldSelector=metadata.name%3Dedge-config"),
            "{first}"
        );
    }
}
