//! Inbound mail authentication on the `smtp` listener: SPF for the HELO
//! and MAIL FROM identities (RFC 7208), DKIM verification (RFC 6376) and
//! DMARC with alignment (RFC 7489), run with mail-auth over the relay's
//! resolver at the end of DATA, before the spool commit.
//!
//! The pipeline: [`check`] gathers the results (DNS, the only I/O),
//! [`verdict::decide`] turns results and the recipients' MailDomain
//! policy into an action, [`header`] writes `Authentication-Results:`
//! (RFC 8601) and removes forged ones that name our host.

pub(crate) mod arc;
pub mod arparse;
pub(crate) mod check;
pub(crate) mod header;
pub(crate) mod metrics;
pub(crate) mod results;
pub(crate) mod verdict;

use std::borrow::Cow;

use mailrelay_crds::maildomain::InboundAuthPolicy;
use mailrelay_crds::relay::ListenerName;
use mailrelay_crds::reports::DmarcRow;

pub(crate) use check::{Checker, Subject};
pub(crate) use metrics::AuthMetrics;
use verdict::Action;

use crate::config::runtime::Recipient;
use crate::ops::reports::Reports;
use crate::smtp::reply::Reply;
use crate::smtp::session::{Accepted, Session};

/// What to spool: header fields to put after our `Received:`, and the
/// content (without forged `Authentication-Results:`).
#[derive(Debug)]
pub(crate) struct Stamped<'a> {
    pub headers: String,
    pub content: Cow<'a, [u8]>,
    /// For an ARC sealer; `None` when nothing was checked.
    pub arc: Option<arc::Verdict>,
    /// The message's DMARC report row, to count once it is spooled.
    pub report: Option<Uncounted>,
}

/// A DMARC report row waiting for its message to be ours: counted before
/// the spool commit, a later 4xx (ARC sealing, DKIM signing, a full
/// spool) would have the sender retry and the message count twice.
pub(crate) struct Uncounted {
    reports: Reports,
    row: DmarcRow,
}

impl Uncounted {
    /// Count the row (the message is on disk), under the config then in
    /// force.
    pub(crate) fn count(self, rt: &crate::config::runtime::Runtime) {
        let now = jiff::Timestamp::now().as_second();
        self.reports
            .dmarc(rt.config.reports.as_ref(), now, self.row);
    }
}

impl std::fmt::Debug for Uncounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uncounted").field("row", &self.row).finish()
    }
}

/// Check an accepted message and decide. `Err` is the reply that refuses
/// it (550 for a DMARC `p=reject` failure, 451 when DNS did not answer).
/// Mail on the submission listeners, from authenticated clients and from
/// the Relay's trusted networks is not checked and passes unchanged.
pub(crate) async fn stamp<'a>(
    checker: &Checker,
    metrics: &AuthMetrics,
    session: &Session,
    accepted: &'a Accepted,
    queue_id: &str,
    reports: Option<&Reports>,
) -> Result<Stamped<'a>, Reply> {
    let rt = session.runtime();
    if session.conn.listener != ListenerName::Smtp
        || session.authenticated().is_some()
        || rt.is_trusted(session.conn.client_ip)
    {
        return Ok(Stamped {
            headers: String::new(),
            content: Cow::Borrowed(&accepted.content),
            arc: None,
            report: None,
        });
    }
    // Boxed: the checks' futures (mail-auth's DNS lookups) are large, and
    // inlined they would make every session's future — which `tokio::spawn`
    // copies per connection — that much bigger, checked mail or not.
    Box::pin(check(
        checker, metrics, session, accepted, queue_id, reports,
    ))
    .await
}

async fn check<'a>(
    checker: &Checker,
    metrics: &AuthMetrics,
    session: &Session,
    accepted: &'a Accepted,
    queue_id: &str,
    reports: Option<&Reports>,
) -> Result<Stamped<'a>, Reply> {
    let rt = session.runtime();
    let tx = &accepted.transaction;
    let policy = verdict::strictest(tx.recipients.iter().filter_map(|to| {
        match rt.recipient(&to.local, &to.domain) {
            Recipient::Hosted(d) | Recipient::UnknownUser(d) | Recipient::InboundDisabled(d) => {
                Some(d.inbound_auth)
            }
            Recipient::Remote => None,
        }
    }));
    let hostname = rt.config.hostname.as_str();
    let (content, forged) = header::strip_ours(&accepted.content, hostname);
    if forged > 0 {
        tracing::info!(
            queue_id,
            removed = forged,
            "removed Authentication-Results fields that claim to be ours"
        );
    }
    if policy == InboundAuthPolicy::Accept {
        metrics.action("unchecked");
        tracing::info!(queue_id, policy = ?policy, action = "unchecked", "inbound auth");
        return Ok(Stamped {
            headers: header::authentication_results(hostname, None),
            content: Cow::Owned(content),
            arc: None,
            report: None,
        });
    }
    let sender = tx.sender.as_ref().map(|a| a.as_string());
    let results = checker
        .check(&Subject {
            // An IPv4 client on a dual-stack socket is checked as IPv4.
            client_ip: mailrelay_crds::compile::normalize::unmap_addr(session.conn.client_ip),
            helo: session.helo().unwrap_or_default(),
            sender: sender.as_deref(),
            hostname,
            // DKIM is verified over the message exactly as it came.
            content: &accepted.content,
        })
        .await;
    let action = verdict::decide(policy, &results);
    metrics.record(&results, &action);
    let mut report = reports
        .filter(|_| rt.config.reports.as_ref().is_some_and(|c| c.dmarc))
        .and_then(|reports| {
            let row = crate::ops::reports::dmarc::row(
                &results,
                &action,
                mailrelay_crds::compile::normalize::unmap_addr(session.conn.client_ip),
                sender.as_deref(),
            )?;
            Some(Uncounted {
                reports: reports.clone(),
                row,
            })
        });
    // A rejection is final (the sender does not retry a 5xx): it counts
    // now. The rest counts once spooled (`Uncounted`).
    if let Action::Reject(_) = action
        && let Some(r) = report.take()
    {
        r.count(rt);
    }
    tracing::info!(
        queue_id,
        client = %session.conn.client_ip,
        from_domain = results.dmarc.from_domain.as_deref().unwrap_or(""),
        spf_helo = results.spf_helo.result.as_str(),
        spf_mailfrom = results.spf_mailfrom.result.as_str(),
        dkim = %results.dkim.iter().map(|d| d.result.as_str()).collect::<Vec<_>>().join(","),
        dmarc = results.dmarc.result.as_str(),
        dmarc_policy = results.dmarc.policy.map_or("", |p| p.as_str()),
        arc = results.arc.result.as_str(),
        policy = ?policy,
        action = action.as_str(),
        "inbound auth"
    );
    let mut headers = header::authentication_results(hostname, Some(&results));
    let arc = Some(arc::Verdict {
        chain: results.arc.result,
        results: headers.clone(),
    });
    match action {
        Action::Reject(reply) | Action::Defer(reply) => return Err(reply),
        Action::Quarantine => headers.push_str(header::SPAM_FLAG),
        Action::Accept => {}
    }
    Ok(Stamped {
        headers,
        content: Cow::Owned(content),
        arc,
        report,
    })
}
