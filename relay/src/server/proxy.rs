//! PROXY protocol header parsing, v1 (text) and v2 (binary), as pure
//! functions over the bytes received so far. The spec is HAProxy's
//! doc/proxy-protocol.txt; section numbers below refer to it.
//!
//! The listener reads into a buffer and calls [`parse`] until it returns
//! `Complete`, then drops `consumed` bytes and starts SMTP on the rest. It
//! must only do so on listeners configured for the protocol and for peers
//! in the configured proxy networks (§2: never guess whether a header is
//! present; that would let anyone spoof their address).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// §2.1: the longest v1 line, CRLF included.
pub(crate) const V1_MAX: usize = 107;
/// §2.2: the v2 signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// §2.2: the fixed part of a v2 header.
const V2_HEADER: usize = 16;
/// Bytes of TLVs we accept after the v2 address block: far more than any
/// proxy sends in practice (AWS/GCP add a few dozen), and small enough that
/// a peer cannot make us buffer 64 KiB before the first SMTP byte.
pub const V2_MAX_TLVS: usize = 512;

/// What the buffer holds so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyParse {
    /// A valid prefix of a header: read more.
    Incomplete,
    /// A whole header of `consumed` bytes. `source` is the original
    /// client; `None` (LOCAL command, UNKNOWN or unsupported family) means
    /// use the connection's own peer address.
    Complete {
        source: Option<SocketAddr>,
        consumed: usize,
    },
}

/// Why the bytes are not a PROXY header. Any of these means: close the
/// connection (§2.1, "must be discarded and cause the receiver to abort").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 line has no CRLF within {V1_MAX} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2 version {0:#x} is not 2")]
    V2Version(u8),
    #[error("PROXY v2 command {0:#x} is neither LOCAL nor PROXY")]
    V2Command(u8),
    #[error("PROXY v2 family/protocol byte {0:#04x} is not valid")]
    V2Family(u8),
    #[error("PROXY v2 address block of {len} bytes is shorter than {need}")]
    V2ShortAddress { len: usize, need: usize },
    #[error("PROXY v2 header carries {tlvs} bytes of TLVs; at most {V2_MAX_TLVS} are accepted")]
    V2TooLong { tlvs: usize },
}

/// Parse a PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    match buf.first() {
        None => Ok(ProxyParse::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::NotProxy),
    }
}

/// `PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n` (§2.1).
fn parse_v1(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    const PREFIX: &[u8] = b"PROXY ";
    let head = &buf[..buf.len().min(PREFIX.len())];
    if !PREFIX.starts_with(head) {
        return Err(ProxyError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    // §2.1: "must not tolerate a single CR or LF character to end the
    // line"; a bare LF, or a CR not followed by LF, is refused outright.
    let Some(cr) = memchr::memchr2(b'\r', b'\n', window) else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(ProxyParse::Incomplete)
        };
    };
    if window[cr] == b'\n' {
        return Err(ProxyError::V1Malformed("bare LF"));
    }
    match window.get(cr + 1) {
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::V1Malformed("CR without LF")),
        None if buf.len() < V1_MAX => return Ok(ProxyParse::Incomplete),
        None => return Err(ProxyError::V1TooLong),
    }
    let line = std::str::from_utf8(&window[PREFIX.len().min(cr)..cr])
        .map_err(|_| ProxyError::V1Malformed("not ASCII"))?;
    let consumed = cr + 2;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        // §2.1: the receiver must ignore anything after UNKNOWN.
        return Ok(ProxyParse::Complete {
            source: None,
            consumed,
        });
    }
    // Exactly one space between fields (§2.1): `split(' ')` turns a double
    // space into an empty field, which then fails to parse.
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    let (src, dst, sport, dport) = match (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) {
        (Some(s), Some(d), Some(sp), Some(dp), None) => (s, d, sp, dp),
        _ => return Err(ProxyError::V1Malformed("wrong number of fields")),
    };
    // The destination is checked as strictly as the source, though only
    // the source is used: a line that does not match exactly is refused.
    let src = match family {
        // Rust's Ipv4Addr parser refuses leading zeros, as §2.1 does.
        "TCP4" => src
            .parse::<Ipv4Addr>()
            .ok()
            .filter(|_| dst.parse::<Ipv4Addr>().is_ok())
            .map(IpAddr::V4),
        "TCP6" => src
            .parse::<Ipv6Addr>()
            .ok()
            .filter(|_| dst.parse::<Ipv6Addr>().is_ok())
            .map(IpAddr::V6),
        _ => {
            return Err(ProxyError::V1Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    }
    .ok_or(ProxyError::V1Malformed(
        "address not of the protocol's family",
    ))?;
    let sport = port(sport)?;
    port(dport)?;
    Ok(ProxyParse::Complete {
        source: Some(SocketAddr::new(src, sport)),
        consumed,
    })
}

/// §2.1: a decimal port 0..=65535 without leading zeros.
fn port(field: &str) -> Result<u16, ProxyError> {
    let bad = ProxyError::V1Malformed("bad port");
    if field.is_empty()
        || !field.bytes().all(|b| b.is_ascii_digit())
        || (field.len() > 1 && field.starts_with('0'))
    {
        return Err(bad);
    }
    field.parse().map_err(|_| bad)
}

/// The binary header (§2.2).
fn parse_v2(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    let head = &buf[..buf.len().min(V2_SIG.len())];
    if !V2_SIG.starts_with(head) {
        return Err(ProxyError::NotProxy);
    }
    let [ver_cmd, fam, hi, lo] = match buf.get(V2_SIG.len()..V2_HEADER) {
        Some(&[a, b, c, d]) => [a, b, c, d],
        _ => return Ok(ProxyParse::Incomplete),
    };
    // The version must be 2; the command LOCAL (0) or PROXY (1); any other
    // value must make the receiver drop the connection.
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        c => return Err(ProxyError::V2Command(c)),
    };
    // Family 0..=3 (UNSPEC, INET, INET6, UNIX) and protocol 0..=2 (UNSPEC,
    // STREAM, DGRAM); other values "must be rejected as invalid".
    let need = match (fam >> 4, fam & 0x0f) {
        (f, p) if f > 3 || p > 2 => return Err(ProxyError::V2Family(fam)),
        (1, _) => 12,
        (2, _) => 36,
        (3, _) => 216,
        _ => 0,
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    // Checked before waiting for the body, so an oversized header is
    // refused on its first 16 bytes.
    let tlvs = len.saturating_sub(need);
    if tlvs > V2_MAX_TLVS {
        return Err(ProxyError::V2TooLong { tlvs });
    }
    let consumed = V2_HEADER + len;
    let Some(block) = buf.get(V2_HEADER..consumed) else {
        return Ok(ProxyParse::Incomplete);
    };
    // LOCAL: health checks from the proxy itself; the block is skipped
    // whatever its family, and the real endpoints are used.
    if local {
        return Ok(ProxyParse::Complete {
            source: None,
            consumed,
        });
    }
    if block.len() < need {
        return Err(ProxyError::V2ShortAddress {
            len: block.len(),
            need,
        });
    }
    // Only TCP over IPv4/IPv6 carries a client we can use. The rest falls
    // back to UNSPEC ("use the real connection endpoints"), as the spec
    // allows for combinations a receiver does not implement.
    Ok(ProxyParse::Complete {
        source: inet_source(fam, block),
        consumed,
    })
}

/// The source of a TCP over IPv4 (0x11) or IPv6 (0x21) address block:
/// source address, destination address, source port, destination port.
fn inet_source(fam: u8, block: &[u8]) -> Option<SocketAddr> {
    let (ip, port_at) = match fam {
        0x11 => (IpAddr::from(<[u8; 4]>::try_from(block.get(..4)?).ok()?), 8),
        0x21 => (
            IpAddr::from(<[u8; 16]>::try_from(block.get(..16)?).ok()?),
            32,
        ),
        _ => return None,
    };
    let port = block.get(port_at..port_at + 2)?;
    Some(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("socket address"))
    }

    fn done(source: Option<SocketAddr>, consumed: usize) -> Result<ProxyParse, ProxyError> {
        Ok(ProxyParse::Complete { source, consumed })
    }

    fn malformed(why: &'static str) -> Result<ProxyParse, ProxyError> {
        Err(ProxyError::V1Malformed(why))
    }

    #[test]
    fn v1_lines() {
        let family = "address not of the protocol's family";
        let long_unknown = format!("PROXY UNKNOWN {}\r\n", "f".repeat(91));
        let too_long = format!("PROXY UNKNOWN {}\r\n", "f".repeat(92));
        let no_crlf = "PROXY UNKNOWN ".to_string() + &"f".repeat(V1_MAX);
        let cases: Vec<(&str, Result<ProxyParse, ProxyError>)> = vec![
            (
                "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n",
                done(sa("192.0.2.1:56324"), 44),
            ),
            // Whatever follows the header is left for SMTP.
            (
                "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO x\r\n",
                done(sa("192.0.2.1:56324"), 44),
            ),
            (
                "PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n",
                done(sa("[2001:db8::1]:0"), 44),
            ),
            ("PROXY UNKNOWN\r\n", done(None, 15)),
            ("PROXY UNKNOWN 1.2.3.4 garbage\r\nQUIT\r\n", done(None, 31)),
            (long_unknown.as_str(), done(None, V1_MAX)),
            (too_long.as_str(), Err(ProxyError::V1TooLong)),
            (no_crlf.as_str(), Err(ProxyError::V1TooLong)),
            // Prefixes of a valid line: wait for more.
            ("", Ok(ProxyParse::Incomplete)),
            ("P", Ok(ProxyParse::Incomplete)),
            ("PROXY TCP4 192.0", Ok(ProxyParse::Incomplete)),
            (
                "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r",
                Ok(ProxyParse::Incomplete),
            ),
            // Not a PROXY line at all.
            ("EHLO client.example\r\n", Err(ProxyError::NotProxy)),
            ("GET / HTTP/1.1\r\n", Err(ProxyError::NotProxy)),
            (
                "proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
                Err(ProxyError::NotProxy),
            ),
            ("PROXX", Err(ProxyError::NotProxy)),
            ("PROXYTCP4", Err(ProxyError::NotProxy)),
            // Line endings: CRLF only (smuggling a second line via bare LF).
            (
                "PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",
                malformed("bare LF"),
            ),
            (
                "PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\r\n",
                malformed("CR without LF"),
            ),
            (
                "PROXY UNKNOWN\nPROXY TCP4 6.6.6.6 1.1.1.1 1 2\r\n",
                malformed("bare LF"),
            ),
            // Field syntax.
            (
                "PROXY  TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
                malformed("wrong number of fields"),
            ),
            (
                "PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n",
                malformed("wrong number of fields"),
            ),
            (
                "PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",
                malformed("wrong number of fields"),
            ),
            (
                "PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",
                malformed("wrong number of fields"),
            ),
            ("PROXY \r\n", malformed("wrong number of fields")),
            (
                "PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",
                malformed("protocol is not TCP4, TCP6 or UNKNOWN"),
            ),
            (
                "PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
                malformed(family),
            ),
            (
                "PROXY TCP4 192.0.2.1 2001:db8::2 1 2\r\n",
                malformed(family),
            ),
            (
                "PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
                malformed(family),
            ),
            (
                "PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",
                malformed(family),
            ),
            (
                "PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n",
                malformed(family),
            ),
            (
                "PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",
                malformed("bad port"),
            ),
            (
                "PROXY TCP4 192.0.2.1 198.51.100.2 1 65536\r\n",
                malformed("bad port"),
            ),
            (
                "PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",
                malformed("bad port"),
            ),
            (
                "PROXY TCP4 192.0.2.1 198.51.100.2 1 \r\n",
                malformed("bad port"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input.as_bytes()), want, "{input:?}");
        }
    }

    /// A v2 header: version/command, family/protocol, address block.
    fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIG.to_vec();
        out.push(ver_cmd);
        out.push(fam);
        out.extend_from_slice(&u16::try_from(block.len()).expect("len").to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    fn inet4() -> Vec<u8> {
        let mut b = vec![192, 0, 2, 1, 198, 51, 100, 2];
        b.extend_from_slice(&56324u16.to_be_bytes());
        b.extend_from_slice(&25u16.to_be_bytes());
        b
    }

    fn inet6() -> Vec<u8> {
        let mut b = "2001:db8::1"
            .parse::<Ipv6Addr>()
            .expect("ip")
            .octets()
            .to_vec();
        b.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().expect("ip").octets());
        b.extend_from_slice(&4000u16.to_be_bytes());
        b.extend_from_slice(&587u16.to_be_bytes());
        b
    }

    #[test]
    fn v2_headers() {
        let with_tlvs = |n: usize| [inet4(), vec![0; n]].concat();
        let cases: Vec<(Vec<u8>, Result<ProxyParse, ProxyError>)> = vec![
            (v2(0x21, 0x11, &inet4()), done(sa("192.0.2.1:56324"), 28)),
            (v2(0x21, 0x21, &inet6()), done(sa("[2001:db8::1]:4000"), 52)),
            // TLVs are skipped, up to the bound.
            (
                v2(0x21, 0x11, &with_tlvs(7)),
                done(sa("192.0.2.1:56324"), 35),
            ),
            (
                v2(0x21, 0x11, &with_tlvs(V2_MAX_TLVS)),
                done(sa("192.0.2.1:56324"), 28 + 512),
            ),
            (
                v2(0x21, 0x11, &with_tlvs(V2_MAX_TLVS + 1)),
                Err(ProxyError::V2TooLong { tlvs: 513 }),
            ),
            // LOCAL: use the real endpoints, but skip the whole block.
            (v2(0x20, 0x11, &inet4()), done(None, 28)),
            (v2(0x20, 0x00, &[]), done(None, 16)),
            (v2(0x20, 0x00, &[1, 2, 3]), done(None, 19)),
            // UNSPEC, UDP and UNIX fall back to the real endpoints.
            (v2(0x21, 0x00, &[]), done(None, 16)),
            (v2(0x21, 0x12, &inet4()), done(None, 28)),
            (v2(0x21, 0x22, &inet6()), done(None, 52)),
            (v2(0x21, 0x31, &[0; 216]), done(None, 232)),
            // Invalid version, command, family or protocol.
            (v2(0x11, 0x11, &inet4()), Err(ProxyError::V2Version(1))),
            (v2(0x31, 0x11, &inet4()), Err(ProxyError::V2Version(3))),
            (v2(0x22, 0x11, &inet4()), Err(ProxyError::V2Command(2))),
            (v2(0x2f, 0x11, &inet4()), Err(ProxyError::V2Command(0xf))),
            (v2(0x21, 0x41, &inet4()), Err(ProxyError::V2Family(0x41))),
            (v2(0x21, 0x13, &inet4()), Err(ProxyError::V2Family(0x13))),
            // An address block too short for its family.
            (
                v2(0x21, 0x11, &[192, 0, 2, 1]),
                Err(ProxyError::V2ShortAddress { len: 4, need: 12 }),
            ),
            (
                v2(0x21, 0x21, &inet4()),
                Err(ProxyError::V2ShortAddress { len: 12, need: 36 }),
            ),
            // A broken signature.
            (b"\r\n\r\n\x01".to_vec(), Err(ProxyError::NotProxy)),
            (b"\r\nQUIT\r\n".to_vec(), Err(ProxyError::NotProxy)),
        ];
        for (input, want) in cases {
            assert_eq!(parse(&input), want, "{input:02x?}");
        }
    }

    #[test]
    fn an_oversized_v2_header_is_refused_on_its_first_16_bytes() {
        let mut header = V2_SIG.to_vec();
        header.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(
            parse(&header),
            Err(ProxyError::V2TooLong { tlvs: 65535 - 12 })
        );
    }

    #[test]
    fn every_prefix_of_a_valid_header_is_incomplete() {
        let headers = [
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(0x21, 0x11, &inet4()),
            v2(0x21, 0x21, &[inet6(), vec![1; 40]].concat()),
            v2(0x20, 0x00, &[]),
        ];
        for header in headers {
            for n in 0..header.len() {
                assert_eq!(
                    parse(&header[..n]),
                    Ok(ProxyParse::Incomplete),
                    "{:02x?}",
                    &header[..n]
                );
            }
            assert!(matches!(
                parse(&header),
                Ok(ProxyParse::Complete { consumed, .. }) if consumed == header.len()
            ));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(ProxyParse::Complete { consumed, .. }) = parse(&buf) {
                prop_assert!(consumed <= buf.len());
            }
        }

        #[test]
        fn arbitrary_bytes_after_the_signature_never_panic(
            v1 in any::<bool>(),
            rest in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut buf = if v1 { b"PROXY ".to_vec() } else { V2_SIG.to_vec() };
            buf.extend_from_slice(&rest);
            if let Ok(ProxyParse::Complete { consumed, .. }) = parse(&buf) {
                prop_assert!(consumed <= buf.len());
            }
        }

        #[test]
        fn what_follows_a_header_does_not_change_it(
            rest in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            for header in [
                b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n".to_vec(),
                v2(0x21, 0x11, &inet4()),
            ] {
                let whole = parse(&header);
                let buf = [header, rest.clone()].concat();
                prop_assert_eq!(parse(&buf), whole);
            }
        }
    }
}
