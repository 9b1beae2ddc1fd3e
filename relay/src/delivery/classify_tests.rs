use super::*;

/// Where each reply text below comes from. The texts are the receivers'
/// own reply lines as they document them or as they appear in bounces
/// (addresses and IPs replaced); continuation lines (`550-5.1.1 …`) are
/// joined the way the relay records a multi-line reply.
const GMAIL: &str = "Google Workspace Admin Help, \"Gmail SMTP errors and codes\" (support.google.com/a/answer/3726730)";
const YAHOO: &str = "Yahoo Sender Hub, \"SMTP error codes\" (senders.yahooinc.com/smtp-error-codes), and Yahoo deferrals as quoted in bounces";
const MICROSOFT: &str =
    "Microsoft Learn, \"Email non-delivery reports and SMTP errors in Exchange Online\"";
const POSTFIX: &str =
    "Postfix smtpd/cleanup reject texts (postconf(5), Postfix source), as a Postfix MX answers";
const DOVECOT: &str = "Dovecot LMTP replies (lmtp_rcpt_check_quota, user lookup)";
const RELAY: &str =
    "mailrelay's own words for failures without a reply (delivery/smtp.rs, mx.rs, tls_policy)";

/// (source, reply, class): at least 40 real texts from large receivers
/// and common software.
const CORPUS: &[(&str, &str, BounceClass)] = &[
    (
        GMAIL,
        "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces.",
        InvalidRecipient,
    ),
    (
        GMAIL,
        "552-5.2.2 The email account that you tried to reach is over quota.",
        MailboxFull,
    ),
    (
        GMAIL,
        "452-4.2.2 The email account that you tried to reach is over quota. Please direct the recipient to this article.",
        MailboxFull,
    ),
    (
        GMAIL,
        "552-5.3.4 Your message exceeded Google's message size limits.",
        MessageTooLarge,
    ),
    (
        GMAIL,
        "550-5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM.",
        AuthenticationFailure,
    ),
    (
        GMAIL,
        "550-5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy.",
        AuthenticationFailure,
    ),
    (
        GMAIL,
        "421-4.7.0 Try again later, closing connection.",
        Throttled,
    ),
    (
        GMAIL,
        "421-4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address.",
        Throttled,
    ),
    (
        GMAIL,
        "421-4.7.0 Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily blocked.",
        Throttled,
    ),
    (
        GMAIL,
        "450-4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered. Please resend your message at a later time.",
        Throttled,
    ),
    (
        GMAIL,
        "450-4.2.1 The user you are trying to contact is receiving mail too quickly. Please resend your message at a later time.",
        Throttled,
    ),
    (GMAIL, "421-4.4.5 Server busy, try again later.", Throttled),
    (
        GMAIL,
        "452-4.5.3 Your message has too many recipients.",
        Throttled,
    ),
    (
        GMAIL,
        "550-5.7.1 Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked.",
        SpamBlock,
    ),
    (
        GMAIL,
        "421-4.7.0 TLS required for RCPT domain, closing connection.",
        TlsFailure,
    ),
    (
        GMAIL,
        "530-5.7.0 Must issue a STARTTLS command first.",
        TlsFailure,
    ),
    (
        GMAIL,
        "451-4.4.2 Timeout - closing connection.",
        NetworkFailure,
    ),
    (
        GMAIL,
        "451-4.5.0 SMTP protocol violation, see RFC 2821.",
        ProtocolError,
    ),
    (
        GMAIL,
        "550-5.7.1 This message violates example.com email policy.",
        PolicyRejection,
    ),
    (
        GMAIL,
        "421-4.7.0 IP not in whitelist for RCPT domain, closing connection.",
        PolicyRejection,
    ),
    (
        YAHOO,
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        Throttled,
    ),
    (
        YAHOO,
        "421 4.7.0 [TS02] Messages from 192.0.2.1 temporarily deferred due to user complaints - 4.16.55.1",
        Throttled,
    ),
    (
        YAHOO,
        "421 4.7.1 [TS03] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed.",
        SpamBlock,
    ),
    (
        YAHOO,
        "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes",
        SpamBlock,
    ),
    (
        YAHOO,
        "554 5.7.9 Message not accepted for policy reasons. See https://postmaster.yahooinc.com/error-codes",
        PolicyRejection,
    ),
    (
        YAHOO,
        "550 5.7.9 This mail has been blocked because the sender is unauthenticated. Yahoo requires all senders to authenticate with either SPF or DKIM.",
        AuthenticationFailure,
    ),
    (
        YAHOO,
        "554 delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0] - mta1234.mail.bf1.yahoo.com",
        InvalidRecipient,
    ),
    (
        YAHOO,
        "552 1 Requested mail action aborted, mailbox not found",
        InvalidRecipient,
    ),
    (
        YAHOO,
        "451 Message temporarily deferred due to unresolvable RFC.5321 from domain; see https://postmaster.yahooinc.com/error-codes",
        BadDomain,
    ),
    (
        MICROSOFT,
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        InvalidRecipient,
    ),
    (
        MICROSOFT,
        "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)",
        InvalidRecipient,
    ),
    (
        MICROSOFT,
        "550 5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus. To request removal from this list see https://www.spamhaus.org/query/ip/192.0.2.1",
        SpamBlock,
    ),
    (
        MICROSOFT,
        "550 5.7.606 Access denied, banned sending IP [192.0.2.1].",
        SpamBlock,
    ),
    (
        MICROSOFT,
        "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.",
        SpamBlock,
    ),
    (
        MICROSOFT,
        "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77719)",
        Throttled,
    ),
    (
        MICROSOFT,
        "550 5.7.509 Access denied, sending domain example.com does not pass DMARC verification and has a DMARC policy of reject.",
        AuthenticationFailure,
    ),
    (
        MICROSOFT,
        "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded",
        MailboxFull,
    ),
    (
        MICROSOFT,
        "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains.",
        PolicyRejection,
    ),
    (
        MICROSOFT,
        "552 5.3.4 Message size exceeds fixed maximum message size",
        MessageTooLarge,
    ),
    (
        MICROSOFT,
        "550 5.7.1 Delivery not authorized, message refused",
        PolicyRejection,
    ),
    (
        POSTFIX,
        "550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown in local recipient table",
        InvalidRecipient,
    ),
    (
        POSTFIX,
        "554 5.7.1 <bob@example.com>: Relay access denied",
        PolicyRejection,
    ),
    (
        POSTFIX,
        "450 4.1.8 <alice@example.org>: Sender address rejected: Domain not found",
        BadDomain,
    ),
    (
        POSTFIX,
        "552 5.3.4 Message size exceeds fixed limit",
        MessageTooLarge,
    ),
    (
        POSTFIX,
        "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        SpamBlock,
    ),
    (
        POSTFIX,
        "450 4.2.0 <bob@example.com>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.com.html",
        Throttled,
    ),
    (
        POSTFIX,
        "421 4.3.2 Service not available, try again later",
        Throttled,
    ),
    (
        DOVECOT,
        "552 5.2.2 <bob@example.com> Quota exceeded (mailbox for user is full)",
        MailboxFull,
    ),
    (
        DOVECOT,
        "550 5.1.1 <bob@example.com> User doesn't exist: bob@example.com",
        InvalidRecipient,
    ),
    (RELAY, "connection refused by 127.0.0.3:25", NetworkFailure),
    (
        RELAY,
        "connection to mx.example.net[127.0.0.3]:25 timed out",
        NetworkFailure,
    ),
    (
        RELAY,
        "example.invalid publishes a null MX (RFC 7505): it takes no mail",
        BadDomain,
    ),
    (RELAY, "unexpected reply: 354 go ahead", ProtocolError),
    (
        RELAY,
        "TLS handshake with mx.example.net failed: invalid peer certificate: UnknownIssuer",
        TlsFailure,
    ),
];

#[test]
fn the_built_in_table_classifies_the_corpus() {
    assert!(CORPUS.len() >= 40, "{} texts", CORPUS.len());
    let mut wrong = Vec::new();
    for (source, reply, want) in CORPUS {
        let got = builtin(reply);
        if got != *want {
            wrong.push(format!(
                "{got:?} (want {want:?}) for {reply:?} from {source}"
            ));
        }
    }
    assert!(wrong.is_empty(), "misclassified:\n{}", wrong.join("\n"));
}

#[test]
fn every_class_but_other_is_reached_by_the_corpus() {
    for class in BounceClass::ALL {
        if class == Other {
            continue;
        }
        assert!(
            CORPUS.iter().any(|(_, _, c)| *c == class),
            "no corpus text for {class:?}"
        );
    }
}

#[test]
fn a_specific_code_wins_over_the_text_and_a_generic_one_does_not() {
    // 5.1.1 means no such mailbox even when the text talks of policy.
    assert_eq!(builtin("550 5.1.1 rejected by policy"), InvalidRecipient);
    // 5.7.1 says little: the text decides, then the subject (policy).
    assert_eq!(builtin("550 5.7.1 listed at dnsbl.example"), SpamBlock);
    assert_eq!(builtin("550 5.7.1 go away"), PolicyRejection);
    assert_eq!(builtin("450 4.7.1 wait"), Throttled);
    assert_eq!(builtin("550 5.0.0 nope"), Other);
    assert_eq!(builtin(""), Other);
    assert_eq!(builtin("hello"), Other);
}

#[test]
fn codes_are_read_from_the_start_of_a_reply() {
    assert_eq!(codes("550 5.1.1 x"), (Some(550), Some((5, "1.1"))));
    assert_eq!(codes("550-5.7.26 x"), (Some(550), Some((5, "7.26"))));
    assert_eq!(codes("421 try later"), (Some(421), None));
    assert_eq!(codes("5.1.1 x"), (None, Some((5, "1.1"))));
    assert_eq!(codes("connection refused"), (None, None));
    assert_eq!(codes("550 9.1.1 x"), (Some(550), None));
    assert_eq!(codes("550 5.1111.1 x"), (Some(550), None));
}

#[test]
fn a_relays_rules_come_first_in_order() {
    let rules = [
        ClassRuleConfig {
            pattern: "(?i)mailbox unavailable".into(),
            class: MailboxFull,
        },
        ClassRuleConfig {
            pattern: "unavailable".into(),
            class: SpamBlock,
        },
        ClassRuleConfig {
            pattern: "(unclosed".into(),
            class: Other,
        },
    ];
    let c = Classifier::new(&rules);
    assert_eq!(c.classify("550 5.1.1 Mailbox unavailable"), MailboxFull);
    assert_eq!(c.classify("550 5.7.1 Service unavailable"), SpamBlock);
    assert_eq!(c.classify("550 5.1.1 no"), InvalidRecipient, "built in");
    assert_eq!(
        Classifier::default().classify("550 5.1.1 x"),
        InvalidRecipient
    );
}
