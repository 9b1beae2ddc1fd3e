use crate::common::{Fixture, MINIMAL};

#[test]
fn the_service_account_is_the_relays_own_and_mounts_no_token() {
    let sa = Fixture::relay(MINIMAL).objects().service_account;
    assert_eq!(sa.metadata.name.as_deref(), Some("edge"));
    assert_eq!(sa.automount_service_account_token, Some(false));
    assert!(sa.secrets.is_none() && sa.image_pull_secrets.is_none());
}
