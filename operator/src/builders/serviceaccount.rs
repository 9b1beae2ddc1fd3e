//! The relay pods' ServiceAccount: its own, so RBAC and cloud identities can
//! be granted to one Relay and no other. The operator grants it read access
//! to the Relay's config ConfigMaps only ([`super::rbac`]). The token is
//! not mounted by default; the relay pod template asks for it explicitly.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::object_meta;
use crate::model::Model;

/// The Relay's ServiceAccount.
pub(crate) fn build(model: &Model) -> ServiceAccount {
    ServiceAccount {
        metadata: object_meta(model, &model.relay.name),
        automount_service_account_token: Some(false),
        image_pull_secrets: None,
        secrets: None,
    }
}
