//! Queue hand-off between a Relay's pods (see the relay's `handoff`): the
//! Secret holding the shared key, and where the pods find it and each
//! other.
//!
//! The Secret is the one object the operator creates and never applies:
//! its value is random, so applying a fresh one on every reconcile would
//! rotate the key under running pods. It is created once when missing
//! (an existing one, the operator's or a user's, is left alone) and goes
//! with the Relay by its controller reference.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use mailrelay_crds::configformat::hex;

use super::object_meta;
use crate::model::Model;

/// The hand-off listener's container port.
pub(crate) const PORT: i32 = 10025;
/// Name of that port.
pub(crate) const PORT_NAME: &str = "handoff";
/// Where the pod mounts the Secret.
pub(crate) const DIR: &str = "/etc/mailrelay/handoff";
/// The Secret's key holding the shared secret.
pub(crate) const KEY: &str = "secret";
/// Bytes of randomness in a generated secret (hex encoded in the Secret).
pub(crate) const SECRET_BYTES: usize = 32;

/// Name of the Relay's hand-off Secret.
pub(crate) fn secret_name(relay: &str) -> String {
    format!("{relay}-handoff")
}

/// The Secret with `random` as its key, hex encoded.
pub(crate) fn secret(model: &Model, random: &[u8; SECRET_BYTES]) -> Secret {
    Secret {
        metadata: object_meta(model, secret_name(&model.relay.name)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            KEY.to_string(),
            ByteString(hex(random).into_bytes()),
        )])),
        ..Secret::default()
    }
}
