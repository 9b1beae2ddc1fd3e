//! A DMARC report row from the inbound checks of one message, pure.

use std::net::IpAddr;

use mailrelay_crds::reports::{Disposition, DkimAuth, DmarcRow, SpfAuth};

use crate::smtp::inbound_auth::results::{AuthResults, Dmarc};
use crate::smtp::inbound_auth::verdict::Action;

/// The row for a message from `source_ip` with envelope sender `sender`
/// (`None`: the null sender) whose checks gave `r` and on which the relay
/// took `action`. `None` when there is nobody to report to (no DMARC
/// record for the From: domain), or nothing was decided yet (a deferral
/// for DNS trouble: the sender will try again and be counted then).
pub(crate) fn row(
    r: &AuthResults,
    action: &Action,
    source_ip: IpAddr,
    sender: Option<&str>,
) -> Option<DmarcRow> {
    let header_from = r.dmarc.from_domain.clone()?;
    let policy = r.dmarc.published.clone()?;
    if matches!(r.dmarc.result, Dmarc::TempError | Dmarc::None) {
        return None;
    }
    let disposition = match action {
        Action::Accept => Disposition::None,
        Action::Quarantine => Disposition::Quarantine,
        Action::Reject(_) => Disposition::Reject,
        Action::Defer(_) => return None,
    };
    let envelope_from = sender
        .and_then(|s| s.rsplit_once('@'))
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default();
    // RFC 7489 Appendix C: SPF of MAIL FROM, or of HELO for the null sender.
    let spf = match sender {
        Some(_) => SpfAuth {
            domain: envelope_from.clone(),
            scope: "mfrom".into(),
            result: r.spf_mailfrom.result.as_str().into(),
        },
        None => SpfAuth {
            domain: r.spf_helo.identity.to_ascii_lowercase(),
            scope: "helo".into(),
            result: r.spf_helo.result.as_str().into(),
        },
    };
    let dkim = r
        .dkim
        .iter()
        .filter_map(|d| {
            Some(DkimAuth {
                domain: d.domain.clone()?,
                selector: d.selector.clone().unwrap_or_default(),
                result: d.result.as_str().into(),
            })
        })
        .collect();
    Some(DmarcRow {
        header_from,
        envelope_from,
        source_ip,
        policy,
        disposition,
        dkim_aligned: r.dmarc.dkim_aligned,
        spf_aligned: r.dmarc.spf_aligned,
        dkim,
        spf,
        count: 1,
    })
}
