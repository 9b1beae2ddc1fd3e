//! The status cache: the status the operator last wrote for each object.
//! The watch cache a reconcile reads its object from can lag the
//! operator's own status write (the next reconcile often starts before the
//! watch delivers it): comparing with this too keeps that pass from
//! writing — and announcing — the same status twice.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The status last written, per object uid.
#[derive(Default)]
pub(crate) struct StatusCache {
    written: Mutex<HashMap<String, serde_json::Value>>,
}

impl StatusCache {
    /// The newest status known for `obj`: the one last written, when the
    /// watch cache has not caught up with it.
    pub(crate) fn newest<K: Resource, S: DeserializeOwned>(&self, obj: &K) -> Option<S> {
        let uid = obj.meta().uid.clone()?;
        let w = self.written.lock().ok()?;
        serde_json::from_value(w.get(&uid)?.clone()).ok()
    }

    /// Remember the status written for `obj`.
    pub(crate) fn wrote<K: Resource, S: Serialize>(&self, obj: &K, status: &S) {
        if let (Some(uid), Ok(json), Ok(mut w)) = (
            obj.meta().uid.clone(),
            serde_json::to_value(status),
            self.written.lock(),
        ) {
            w.insert(uid, json);
        }
    }
}
