//! `--apply-crds`: the operator applies its own CustomResourceDefinitions
//! at start-up. Helm installs a chart's `crds/` once and never upgrades
//! them; this is how a `helm upgrade` brings new CRDs along.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use crate::apply::{ApiError, FIELD_MANAGER};

/// Apply every mailrelay CRD with server-side apply.
pub async fn apply_all(client: &Client) -> Result<(), ApiError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in mailrelay_crds::crdgen::all() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|e| ApiError::new("apply", format!("CustomResourceDefinition {name}"), e))?;
        tracing::info!(crd = %name, "applied");
    }
    Ok(())
}
