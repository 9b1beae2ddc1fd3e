//! The `Received:` trace header (RFC 5321 §4.4), with the protocol
//! keywords of RFC 3848 / RFC 6531 and the TLS facts RFC 8314 §7 asks for.

use jiff::Timestamp;

use super::ConnInfo;
use super::address::Address;

pub(crate) struct Trace<'a> {
    pub conn: &'a ConnInfo,
    pub helo: &'a str,
    pub esmtp: bool,
    pub authenticated: bool,
    pub smtputf8: bool,
    pub hostname: &'a str,
    pub queue_id: &'a str,
    /// Named in a `for` clause only when there is exactly one.
    pub recipients: &'a [Address],
    pub now: Timestamp,
}

/// `Received: ...` with CRLF line endings, folded, ready to prepend.
pub(crate) fn header(t: &Trace) -> String {
    let mut proto = String::new();
    if t.smtputf8 {
        proto.push_str("UTF8");
    }
    proto.push_str(if t.esmtp || t.smtputf8 {
        "ESMTP"
    } else {
        "SMTP"
    });
    if t.smtputf8 && !t.esmtp {
        proto = "UTF8SMTP".into();
    }
    if t.conn.tls {
        proto.push('S');
    }
    if t.authenticated {
        proto.push('A');
    }
    let name = t.conn.client_name.as_deref().unwrap_or("unknown");
    let helo: String = t
        .helo
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    let mut h = format!(
        "Received: from {helo} ({name} [{ip}])\r\n\tby {host} (mailrelay) with {proto}",
        ip = t.conn.client_ip,
        host = t.hostname
    );
    if let Some(tls) = &t.conn.tls_info {
        h.push_str(&format!(" (using {tls})"));
    }
    h.push_str(&format!("\r\n\tid {}", t.queue_id));
    if let [one] = t.recipients {
        h.push_str(&format!("\r\n\tfor <{}>", one.as_string()));
    }
    // In UTC with an explicit +0000: -0000 would mean "offset unknown".
    let date = jiff::fmt::rfc2822::to_string(&t.now.to_zoned(jiff::tz::TimeZone::UTC))
        .unwrap_or_else(|_| t.now.to_string());
    h.push_str(&format!("; {date}\r\n"));
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailrelay_crds::relay::ListenerName;

    #[test]
    fn header_names_client_tls_auth_id_and_recipient() {
        let conn = ConnInfo {
            listener: ListenerName::Submission,
            client_ip: "192.0.2.10".parse().unwrap(),
            client_name: Some("client.example".into()),
            tls: true,
            tls_info: Some("TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384".into()),
            connect_block: None,
        };
        let to = [Address {
            local: "bob".into(),
            domain: "example.com".into(),
        }];
        let h = header(&Trace {
            conn: &conn,
            helo: "laptop",
            esmtp: true,
            authenticated: true,
            smtputf8: false,
            hostname: "mx.example.com",
            queue_id: "01ABC",
            recipients: &to,
            now: "2026-11-30T08:00:00Z".parse().unwrap(),
        });
        assert_eq!(
            h,
            "Received: from laptop (client.example [192.0.2.10])\r\n\tby mx.example.com (mailrelay) with ESMTPSA (using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)\r\n\tid 01ABC\r\n\tfor <bob@example.com>; Mon, 30 Nov 2026 08:00:00 +0000\r\n"
        );
    }
}
