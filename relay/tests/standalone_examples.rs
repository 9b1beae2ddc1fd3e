//! The try-out from the README: `mailrelay run --manifests crds/examples`
//! with no other flag, as an unprivileged user, greets on 127.0.0.1:2525
//! and answers /readyz on 127.0.0.1:9725, with a self-signed certificate.
//!
//! It uses the fixed default ports, so it is alone in this file. It runs
//! in a network namespace of its own (`unshare --net`, loopback only): the
//! example manifests name a public DNSBL and the relay uses the system's
//! resolver, so no lookup can leave the machine, and the fixed ports
//! cannot collide with anything else on it.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::MAILRELAY;
use common::peers::require;
use common::process::Guard;
use common::smtp::Reply;
use serde::Deserialize;

const NOBODY: u32 = 65534;

/// Waits (up to a minute) for /readyz and the greeting, inside the
/// relay's network namespace.
const PROBE: &str = r#"
import http.client, json, socket, time
out = {"greeting": None, "readyz": None, "error": None}
deadline = time.time() + 60
while time.time() < deadline:
    try:
        http_conn = http.client.HTTPConnection("127.0.0.1", 9725, timeout=5)
        http_conn.request("GET", "/readyz")
        status = http_conn.getresponse().status
        if status != 200:
            raise OSError("/readyz answered %d" % status)
        s = socket.create_connection(("127.0.0.1", 2525), timeout=30)
        line = s.makefile("rb").readline().decode().rstrip("\r\n")
        s.sendall(b"QUIT\r\n")
        s.close()
        out.update(greeting={"code": int(line[:3]), "text": line[4:]}, readyz=status, error=None)
        break
    except (OSError, ValueError) as e:
        out["error"] = repr(e)
        time.sleep(0.1)
print(json.dumps(out))
"#;

#[derive(Debug, Deserialize)]
struct Probe {
    #[serde(deserialize_with = "common::peers::reply", default)]
    greeting: Option<Reply>,
    readyz: Option<u16>,
    error: Option<String>,
}

#[test]
fn the_examples_run_unprivileged_with_no_flags_and_greet_on_the_default_ports() {
    for (path, what) in [
        ("/usr/bin/unshare", "unshare (util-linux)"),
        ("/usr/bin/nsenter", "nsenter (util-linux)"),
        ("/usr/bin/setpriv", "setpriv (util-linux)"),
        ("/usr/sbin/ip", "ip (iproute2)"),
    ] {
        require(path, what);
    }
    let examples = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crds/examples")
        .canonicalize()
        .expect("crds/examples");
    // The working directory belongs to nobody, so ./mailrelay-spool can be made.
    let cwd = tempfile::Builder::new()
        .prefix("mailrelay-examples-")
        .tempdir()
        .expect("a temporary directory");
    std::os::unix::fs::chown(cwd.path(), Some(NOBODY), Some(NOBODY))
        .expect("chown the working directory");
    let logs = tempfile::tempdir().expect("a temporary directory");
    let log = logs.path().join("relay.log");

    let mut command = Command::new("unshare");
    command
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            r#"ip link set lo up && exec "$@""#,
            "sh",
        ])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(MAILRELAY)
        .arg("run")
        .arg("--manifests")
        .arg(&examples)
        .current_dir(cwd.path())
        // The Secrets it writes land in the working directory, removed with it.
        .env("TMPDIR", cwd.path())
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(logs.path().join("relay.err")).expect("log"));
    let mut relay = Guard::spawn("mailrelay run --manifests crds/examples", &mut command);
    let output = || {
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        let err = std::fs::read_to_string(logs.path().join("relay.err")).unwrap_or_default();
        format!("{out}{err}")
    };

    // unshare, sh and setpriv exec in turn: the relay keeps this pid. Its
    // namespace is new only once unshare has made it.
    let netns = format!("/proc/{}/ns/net", relay.id());
    let ours = std::fs::read_link("/proc/self/ns/net").expect("our network namespace");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_link(&netns).ok().as_ref() == Some(&ours) {
        assert_eq!(relay.exited(), None, "unshare exited:\n{}", output());
        assert!(
            Instant::now() < deadline,
            "unshare made no network namespace:\n{}",
            output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let netns = format!("--net={netns}");
    let probe = Command::new("nsenter")
        .args([&netns, "--", "python3", "-c", PROBE])
        .output()
        .expect("run the probe with nsenter");
    let stdout = String::from_utf8_lossy(&probe.stdout);
    let seen: Probe = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "probe printed {stdout:?} ({e}); stderr: {}\nrelay:\n{}",
            String::from_utf8_lossy(&probe.stderr),
            output()
        )
    });
    assert_eq!(relay.exited(), None, "the relay exited:\n{}", output());
    assert_eq!(
        seen.readyz,
        Some(200),
        "/readyz on 127.0.0.1:9725 (last error {:?}):\n{}",
        seen.error,
        output()
    );
    let greeting = seen.greeting.as_ref().expect("a greeting");
    assert_eq!(greeting.code, 220, "{greeting}");
    assert!(
        greeting.text().starts_with("mx.example.com "),
        "the Relay's hostname: {greeting}"
    );

    let uid = std::fs::read_to_string(format!("/proc/{}/status", relay.id()))
        .expect("the relay's /proc status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:").map(str::to_string))
        .expect("a Uid line");
    let uids: Vec<&str> = uid.split_whitespace().collect();
    assert!(
        uids.iter().all(|u| *u == "65534"),
        "the relay runs as nobody: Uid {uid}"
    );
    let spool = cwd.path().join("mailrelay-spool");
    assert_eq!(
        std::fs::metadata(&spool).map(|m| m.uid()).ok(),
        Some(NOBODY),
        "the default spool ./mailrelay-spool belongs to nobody"
    );

    relay.kill();
    let text = output();
    assert!(
        text.contains("self-signed certificate"),
        "the missing TLS Secret is reported:\n{text}"
    );
}
