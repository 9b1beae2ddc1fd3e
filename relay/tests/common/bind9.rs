//! A real bind9 for DNSSEC: zone `test.` signed with a KSK and a ZSK of
//! its own (dnssec-keygen, dnssec-signzone), unsigned child zones
//! delegated from it without DS records (insecure), and the KSK as the
//! trust anchor file the relay is given. `named` runs on a free loopback
//! port of its own, in the test's directory, killed when dropped.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{Guard, free_udp_tcp_port};
use super::wait_for;

const NAMED: &str = "/usr/sbin/named";
const KEYGEN: &str = "/usr/bin/dnssec-keygen";
const SIGNZONE: &str = "/usr/bin/dnssec-signzone";

pub struct Bind9 {
    pub addr: SocketAddr,
    /// The DNSKEY records of `test.` (zone-file format).
    pub trust_anchor: PathBuf,
    _named: Guard,
}

/// What the zones hold; names relative to the zone.
pub struct Zones<'a> {
    /// Records of `test.` (signed).
    pub signed: &'a str,
    /// Unsigned zones below `test.`: (label, records).
    pub unsigned: &'a [(&'a str, &'a str)],
    /// Text replaced in the signed zone file after signing, so the
    /// signatures of those records no longer validate: (from, to).
    pub tamper: &'a [(&'a str, &'a str)],
}

fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (bind9-utils installed?): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Bind9 {
    pub fn start(parent: &Path, zones: &Zones<'_>) -> Bind9 {
        let dir = parent.join("bind9");
        std::fs::create_dir_all(&dir).expect("bind9 dir");
        let ksk = run(
            &dir,
            KEYGEN,
            &["-q", "-a", "ECDSAP256SHA256", "-f", "KSK", "test"],
        );
        let zsk = run(&dir, KEYGEN, &["-q", "-a", "ECDSAP256SHA256", "test"]);
        let soa = |zone: &str| {
            format!(
                "$TTL 300\n@ IN SOA ns.{zone}. admin.test. 1 3600 600 86400 300\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
            )
        };
        let mut parent_zone = soa("test");
        for (label, records) in zones.unsigned {
            // A delegation without DS: the child is provably insecure.
            parent_zone.push_str(&format!(
                "{label} IN NS ns.{label}.test.\nns.{label} IN A 127.0.0.1\n"
            ));
            let child = format!("{}{records}\n", soa(&format!("{label}.test")));
            std::fs::write(dir.join(format!("db.{label}")), child).expect("child zone");
        }
        parent_zone.push_str(zones.signed);
        parent_zone.push_str(&format!("\n$INCLUDE {ksk}.key\n$INCLUDE {zsk}.key\n"));
        std::fs::write(dir.join("db.test"), parent_zone).expect("zone");
        run(
            &dir,
            SIGNZONE,
            &["-q", "-o", "test", "-N", "INCREMENT", "db.test"],
        );
        let signed_path = dir.join("db.test.signed");
        let mut signed = std::fs::read_to_string(&signed_path).expect("signed zone");
        for (from, to) in zones.tamper {
            assert!(
                signed.contains(from),
                "{from} not in the signed zone:\n{signed}"
            );
            signed = signed.replace(from, to);
        }
        std::fs::write(&signed_path, signed).expect("tampered zone");
        // The trust anchor: the zone's DNSKEY records, the ZSK's too:
        // hickory 0.26 trusts a DNSKEY RRset below the root only when every
        // key in it is an anchor, and would look for a DS of `test.` else.
        let mut anchor = String::new();
        for key in [&ksk, &zsk] {
            let text = std::fs::read_to_string(dir.join(format!("{key}.key"))).expect("key");
            for line in text.lines().filter(|l| !l.starts_with(';')) {
                anchor.push_str(line);
                anchor.push('\n');
            }
        }
        let trust_anchor = dir.join("trust-anchor.key");
        std::fs::write(&trust_anchor, anchor).expect("anchor");

        let port = free_udp_tcp_port();
        let d = dir.display();
        let mut conf = format!(
            "options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; recursion no; }};\nzone \"test\" {{ type primary; file \"{d}/db.test.signed\"; }};\n"
        );
        for (label, _) in zones.unsigned {
            conf.push_str(&format!(
                "zone \"{label}.test\" {{ type primary; file \"{d}/db.{label}\"; }};\n"
            ));
        }
        std::fs::write(dir.join("named.conf"), conf).expect("named.conf");
        let log = std::fs::File::create(dir.join("named.log")).expect("named log");
        let mut named = Guard::spawn(
            "named",
            Command::new(NAMED)
                .args(["-g", "-u", "root", "-c"])
                .arg(dir.join("named.conf"))
                .stdout(log.try_clone().expect("log"))
                .stderr(log),
        );
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        wait_for(
            Duration::from_secs(30),
            || {
                assert!(
                    named.exited().is_none(),
                    "named exited:\n{}",
                    Self::log(&dir)
                );
                let up = TcpStream::connect(addr).is_ok();
                (up && Self::log(&dir).contains("running")).then_some(())
            },
            || format!("named did not start:\n{}", Self::log(&dir)),
        );
        Bind9 {
            addr,
            trust_anchor,
            _named: named,
        }
    }

    fn log(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("named.log")).unwrap_or_default()
    }
}
