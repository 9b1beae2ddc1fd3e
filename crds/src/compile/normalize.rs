//! Turning user text into canonical values. Every function is total: any
//! input gives a value or a reason a user can act on, never a panic.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};

/// Longest domain name (RFC 1035 §2.3.4, without the final dot).
const MAX_NAME: usize = 253;
/// Longest label.
const MAX_LABEL: usize = 63;

/// A domain name as a lower-case A-label name without a trailing dot.
/// Underscores are allowed (they occur in real HELO names and zones).
pub fn domain_name(input: &str) -> Result<String, String> {
    if input.is_empty() {
        return Err("is empty".into());
    }
    if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{input:?} contains a space or control character"));
    }
    if input.contains('@') {
        return Err(format!("{input:?} is an address, not a domain name"));
    }
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    let ascii = idna::domain_to_ascii(trimmed)
        .map_err(|_| format!("{input:?} is not a valid internationalised domain name"))?;
    if ascii.is_empty() {
        return Err(format!("{input:?} is not a domain name"));
    }
    if ascii.len() > MAX_NAME {
        return Err(format!(
            "{input:?} is {} characters long; a domain name has at most {MAX_NAME}",
            ascii.len()
        ));
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(format!("{input:?} has an empty label"));
        }
        if label.len() > MAX_LABEL {
            return Err(format!(
                "{input:?} has a label longer than {MAX_LABEL} characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "{input:?} may contain only letters, digits, '-' and '_' in each label"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("{input:?} has a label starting or ending with '-'"));
        }
    }
    if ascii.parse::<IpAddr>().is_ok() {
        return Err(format!("{input:?} is an IP address, not a domain name"));
    }
    Ok(ascii)
}

/// A host to connect to: an IP address (kept as written in canonical form)
/// or a domain name.
pub fn host(input: &str) -> Result<String, String> {
    let bare = input
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(input);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    domain_name(input)
}

/// An IP address or network in canonical form: host bits cleared, an
/// IPv4-mapped IPv6 network turned into the IPv4 network it means, a bare
/// address as a /32 or /128.
pub fn network(input: &str) -> Result<IpNet, String> {
    let net = if let Ok(net) = input.parse::<IpNet>() {
        net
    } else if let Ok(ip) = input.parse::<IpAddr>() {
        IpNet::from(ip)
    } else if let Some((addr, len)) = input.split_once('/') {
        let max = match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => 32,
            Ok(IpAddr::V6(_)) => 128,
            Err(_) => return Err(format!("{input:?}: {addr:?} is not an IP address")),
        };
        return Err(format!(
            "{input:?}: prefix length {len:?} is not a number from 0 to {max}"
        ));
    } else {
        return Err(format!("{input:?} is not an IP address or CIDR"));
    };
    Ok(unmap(net.trunc()))
}

/// `::ffff:a.b.c.d/N` (N >= 96) is the IPv4 network `a.b.c.d/(N-96)`:
/// clients arrive as IPv4 after the same unmapping, so both forms match.
fn unmap(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n.trunc());
    }
    net
}

/// The IPv4 address an IPv4-mapped IPv6 client address stands for.
pub fn unmap_addr(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// A local part (before `@`), lower-cased for comparison.
pub fn local_part(input: &str) -> Result<String, String> {
    if input.is_empty() {
        return Err("is empty".into());
    }
    if input.len() > 64 {
        return Err(format!(
            "{input:?} is longer than 64 octets (RFC 5321 §4.5.3.1.1)"
        ));
    }
    if let Some(c) = input
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '@' | '<' | '>' | '"' | '\\'))
    {
        return Err(format!(
            "{input:?} contains {c:?}, which a local part here may not"
        ));
    }
    Ok(input.to_lowercase())
}

/// An address `local@domain`, lower-cased, its domain in A-labels.
pub fn address(input: &str) -> Result<String, String> {
    let Some((local, domain)) = input.rsplit_once('@') else {
        return Err(format!(
            "{input:?} is not an address such as user@example.com"
        ));
    };
    let local = local_part(local).map_err(|e| format!("{input:?}: local part {e}"))?;
    let domain = domain_name(domain).map_err(|e| format!("{input:?}: domain {e}"))?;
    Ok(format!("{local}@{domain}"))
}

/// An address, or `*@domain` for a whole domain.
pub fn address_pattern(input: &str) -> Result<String, String> {
    match input.strip_prefix("*@") {
        Some(domain) => Ok(format!("*@{}", domain_name(domain)?)),
        None => address(input),
    }
}

/// A domain or host name, or `*.name` for every name below it.
pub fn name_pattern(input: &str) -> Result<String, String> {
    match input.strip_prefix("*.") {
        Some(rest) => Ok(format!("*.{}", domain_name(rest)?)),
        None => domain_name(input),
    }
}

/// A rate such as `200/s`, `50/m` or `1000/h`: (count, seconds).
pub fn rate(input: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{input:?} is not a rate such as 200/s, 50/m or 1000/h");
    let (count, unit) = input.split_once('/').ok_or_else(bad)?;
    let per_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(bad()),
    };
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match count.parse::<u32>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok((n, per_secs)),
        _ => Err(format!("{input:?}: the count must be from 1 to 1000000")),
    }
}

/// A duration such as `5m`, `1h30m`, `250ms` or `5d`.
pub fn duration(input: &str) -> Result<Duration, String> {
    let bad = || format!("{input:?} is not a duration such as 30s, 5m, 1h30m or 5d");
    if input.is_empty() {
        return Err(bad());
    }
    let mut total_ms: u64 = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.bytes().next() {
                Some(b's') => (1_000, 1),
                Some(b'm') => (60_000, 1),
                Some(b'h') => (3_600_000, 1),
                Some(b'd') => (86_400_000, 1),
                _ => return Err(bad()),
            }
        };
        rest = &rest[len..];
        total_ms = value
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("{input:?} is too long a duration"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// A size in bytes from a quantity such as `25Mi`, `10M` or `1048576`.
pub fn size(input: &str) -> Result<u64, String> {
    let digits = input.bytes().take_while(u8::is_ascii_digit).count();
    let bad = || format!("{input:?} is not a size such as 25Mi, 10M or 1048576");
    if digits == 0 {
        return Err(bad());
    }
    let value: u64 = input[..digits].parse().map_err(|_| bad())?;
    let factor: u64 = match &input[digits..] {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(bad()),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("{input:?} is too large"))
}

/// A resolver address, `IP` (port 53) or `IP:PORT` / `[IPv6]:PORT`.
pub fn nameserver(input: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = input.parse::<SocketAddr>() {
        return Ok(addr);
    }
    input
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{input:?} is not an address such as 10.0.0.10 or 10.0.0.10:53"))
}

/// A name Kubernetes accepts for a Secret (RFC 1123 subdomain).
pub fn object_name(input: &str) -> Result<(), String> {
    let ok = !input.is_empty()
        && input.len() <= MAX_NAME
        && input.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{input:?} is not a valid object name (lower-case letters, digits, '-' and '.')"
        ))
    }
}

/// A key Kubernetes accepts in a Secret's data.
pub fn secret_key(input: &str) -> Result<(), String> {
    let ok = !input.is_empty()
        && input.len() <= MAX_NAME
        && input
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok && input != "." && input != ".." {
        Ok(())
    } else {
        Err(format!(
            "{input:?} is not a valid Secret key (letters, digits, '-', '_' and '.')"
        ))
    }
}

/// Reply text that goes into an SMTP reply line: printable ASCII only, so
/// it can neither break the reply into extra lines nor smuggle commands.
pub fn reply_text(input: &str) -> Result<String, String> {
    if input.len() > 200 {
        return Err("is longer than 200 characters".into());
    }
    if let Some(c) = input.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "contains {c:?}; reply text must be printable ASCII on one line"
        ));
    }
    Ok(input.trim().to_string())
}

/// The default DNSBL answers that count as listed.
pub fn default_dnsbl_codes() -> Vec<IpNet> {
    vec![IpNet::V4(
        Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 24).unwrap_or_default(),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names_are_lower_case_a_labels_without_trailing_dot() {
        for (input, want) in [
            ("Example.COM", "example.com"),
            ("example.com.", "example.com"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("BÜCHER.example.", "xn--bcher-kva.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("mail_relay.example", "mail_relay.example"),
            ("localhost", "localhost"),
        ] {
            assert_eq!(domain_name(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad_domain_names_say_why() {
        for (input, why) in [
            ("", "empty"),
            ("a..b", "empty label"),
            ("user@example.com", "address"),
            ("exa mple.com", "space"),
            ("-a.example", "'-'"),
            ("a!.example", "only letters"),
            ("192.0.2.1", "IP address"),
            (".", "not a domain name"),
        ] {
            let err = domain_name(input).expect_err(input);
            assert!(err.contains(why), "{input}: {err}");
        }
        let long = format!("{}.example", "a".repeat(64));
        assert!(domain_name(&long).expect_err("long label").contains("63"));
        let long = ["abcdefghij"; 26].join(".");
        assert!(domain_name(&long).expect_err("long name").contains("253"));
    }

    #[test]
    fn networks_are_canonical() {
        for (input, want) in [
            ("192.0.2.7", "192.0.2.7/32"),
            ("198.51.100.77/24", "198.51.100.0/24"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("2001:DB8::1", "2001:db8::1/128"),
            ("2001:db8:1:2::5/32", "2001:db8::/32"),
            ("::ffff:192.0.2.9", "192.0.2.9/32"),
            ("::ffff:192.0.2.0/120", "192.0.2.0/24"),
            ("0.0.0.0/0", "0.0.0.0/0"),
        ] {
            assert_eq!(
                network(input).map(|n| n.to_string()).as_deref(),
                Ok(want),
                "{input}"
            );
        }
    }

    #[test]
    fn bad_networks_say_why() {
        assert!(network("10.0.0.0/33").expect_err("33").contains("0 to 32"));
        assert!(
            network("2001:db8::/129")
                .expect_err("129")
                .contains("0 to 128")
        );
        assert!(
            network("10.0.0/8")
                .expect_err("bad addr")
                .contains("not an IP")
        );
        assert!(
            network("example.com")
                .expect_err("name")
                .contains("not an IP")
        );
        assert!(network("").is_err());
    }

    #[test]
    fn addresses_are_lower_case_with_a_label_domains() {
        assert_eq!(
            address("Alice@Bücher.Example").as_deref(),
            Ok("alice@xn--bcher-kva.example")
        );
        assert_eq!(
            address("a@b@example.com").map_err(|e| e.contains("'@'")),
            Err(true)
        );
        assert!(address("nobody").is_err());
        assert!(address("@example.com").is_err());
        assert!(address("a\r\n@example.com").is_err());
        assert_eq!(
            address_pattern("*@Example.com").as_deref(),
            Ok("*@example.com")
        );
    }

    #[test]
    fn rates_and_name_patterns() {
        assert_eq!(rate("200/s"), Ok((200, 1)));
        assert_eq!(rate("50/m"), Ok((50, 60)));
        assert_eq!(rate("1000/h"), Ok((1000, 3600)));
        for bad in [
            "",
            "/s",
            "20",
            "20/d",
            "0/s",
            "-1/s",
            "1.5/s",
            "2000000/s",
            " 5/s",
        ] {
            assert!(rate(bad).is_err(), "{bad}");
        }
        assert_eq!(name_pattern("*.Google.COM."), Ok("*.google.com".into()));
        assert_eq!(name_pattern("MX.example"), Ok("mx.example".into()));
        for bad in ["*", "*.", "a.*.b", "**.x", "a b"] {
            assert!(name_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("5d"), Ok(Duration::from_secs(432_000)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "5", "m", "5x", "1h 30m", "-5m", "99999999999999999999d"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
        assert_eq!(size("25Mi"), Ok(26_214_400));
        assert_eq!(size("10M"), Ok(10_000_000));
        assert_eq!(size("1048576"), Ok(1_048_576));
        for bad in ["", "Mi", "10m", "1.5Mi", "99999999999999999999Gi"] {
            assert!(size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reply_text_cannot_break_the_reply_line() {
        assert_eq!(
            reply_text(" Listed, see https://example.com ").as_deref(),
            Ok("Listed, see https://example.com")
        );
        assert!(reply_text("a\r\n250 ok").is_err());
        assert!(reply_text("tab\there").is_err());
        assert!(reply_text("ü").is_err());
    }

    #[test]
    fn nameservers_default_to_port_53() {
        assert_eq!(
            nameserver("10.0.0.10"),
            Ok("10.0.0.10:53".parse().expect("addr"))
        );
        assert_eq!(
            nameserver("127.0.0.1:5353"),
            Ok("127.0.0.1:5353".parse().expect("addr"))
        );
        assert_eq!(
            nameserver("[::1]:5353"),
            Ok("[::1]:5353".parse().expect("addr"))
        );
        assert!(nameserver("dns.example").is_err());
    }
}
