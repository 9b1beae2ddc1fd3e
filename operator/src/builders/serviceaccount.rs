//! The relay pods' ServiceAccount: its own, so RBAC and cloud identities can
//! be granted to one Relay and no other. The relay needs no Kubernetes API
//! access (its config and Secrets are mounted files), so no token is
//! mounted, and the operator grants it no role.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::object_meta;
use crate::model::Model;

/// The Relay's ServiceAccount.
pub fn build(model: &Model) -> ServiceAccount {
    ServiceAccount {
        metadata: object_meta(model, &model.relay.name),
        automount_service_account_token: Some(false),
        image_pull_secrets: None,
        secrets: None,
    }
}
