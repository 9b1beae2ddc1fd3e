//! A smarthost into its config: the Relay's (`spec.smarthost`) and a
//! MailDomain's (`spec.outbound.smarthost`) are checked alike.

use super::{Report, normalize};
use crate::common::Smarthost;
use crate::config::SmarthostConfig;
use crate::maildomain::TlsMode;

/// `s`, whose fields are under `field`; `None` with its problems reported
/// when it cannot be used.
pub(super) fn compile(r: &mut Report, field: &str, s: &Smarthost) -> Option<SmarthostConfig> {
    let host = r.check(format!("{field}.host"), normalize::host(&s.host));
    let port = r.port(format!("{field}.port"), s.port);
    let (username, password) = match &s.credentials {
        Some(c) => (
            r.secret(&format!("{field}.credentials.username"), &c.username),
            r.secret(&format!("{field}.credentials.password"), &c.password),
        ),
        None => (None, None),
    };
    if s.credentials.is_some() && s.tls == TlsMode::None {
        r.add(
            format!("{field}.tls"),
            "credentials are never sent without TLS: use Required or Implicit",
        );
        return None;
    }
    if s.credentials.is_some() && (username.is_none() || password.is_none()) {
        // Without them the smarthost would refuse the mail, or take it
        // unauthenticated as another sender: neither is what was asked.
        return None;
    }
    Some(SmarthostConfig {
        host: host?,
        port: port?,
        tls: s.tls,
        username,
        password,
    })
}
