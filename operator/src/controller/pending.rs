//! What the pending gauge counts: objects whose current version no
//! reconcile has begun with yet.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::Resource;
use kube::runtime::reflector::Store;

/// (kind, namespace, name) of an object.
type Key = (&'static str, String, String);

/// The resourceVersion each object had when its last reconcile began.
#[derive(Default)]
pub(crate) struct Pending {
    begun: Mutex<HashMap<Key, String>>,
}

fn key<K: Resource>(kind: &'static str, obj: &K) -> Key {
    let meta = obj.meta();
    (
        kind,
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl Pending {
    /// Note that a reconcile of `obj` begins at its current version.
    pub(crate) fn begin<K: Resource>(&self, kind: &'static str, obj: &K) {
        let version = obj.meta().resource_version.clone().unwrap_or_default();
        if let Ok(mut map) = self.begun.lock() {
            map.insert(key(kind, obj), version);
        }
    }

    /// Forget an object that was deleted.
    pub(crate) fn forget(&self, kind: &'static str, ns: String, name: String) {
        if let Ok(mut map) = self.begun.lock() {
            map.remove(&(kind, ns, name));
        }
    }

    /// Objects of `store` whose version no reconcile has begun with.
    pub(crate) fn count<K: Resource<DynamicType = ()> + Clone>(
        &self,
        kind: &'static str,
        store: &Store<K>,
    ) -> usize {
        let Ok(map) = self.begun.lock() else {
            return 0;
        };
        store
            .state()
            .iter()
            .filter(|o| {
                let current = o.meta().resource_version.clone().unwrap_or_default();
                map.get(&key(kind, &***o)) != Some(&current)
            })
            .count()
    }
}
