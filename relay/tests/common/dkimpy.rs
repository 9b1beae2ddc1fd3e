//! dkimpy, an independent DKIM and ARC implementation, run from the test
//! venv against the test's dnsmasq (through dnspython).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The start of every script: the message from `argv[1]`, and `dnsfunc`
/// asking the dnsmasq on 127.0.0.1, port `argv[2]`.
const PRELUDE: &str = r#"
import sys, dkim, dns.resolver
message = open(sys.argv[1], "rb").read()
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = int(sys.argv[2])
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    try:
        answer = resolver.resolve(name, "TXT", lifetime=timeout)
    except Exception as e:
        print("lookup of %s failed: %r" % (name, e), file=sys.stderr)
        return None
    return b"".join(answer[0].strings)
"#;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv tests/lib/deps.sh makes, with dkimpy; made here the same way
/// when it lacks it.
pub fn venv_python() -> PathBuf {
    let venv = workspace().join("target/tests-venv");
    let python = venv.join("bin/python");
    let has_dkimpy = || {
        Command::new(&python)
            .args(["-c", "import dkim, nacl, dns.resolver"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_dkimpy() {
        if !python.exists() {
            let made = Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv)
                .status();
            assert!(
                made.is_ok_and(|s| s.success()),
                "cannot make {}",
                venv.display()
            );
        }
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "-r"])
            .arg(workspace().join("tests/requirements.txt"))
            .status();
        assert!(
            installed.is_ok_and(|s| s.success()) && has_dkimpy(),
            "dkimpy is not installed in {} and could not be installed: run tests/run",
            venv.display()
        );
    }
    python
}

/// Run `script` (after [`PRELUDE`]) on `message`, written to a file in
/// `dir`, with DNS from `dns`; its standard output, trimmed.
pub fn run(script: &str, dir: &Path, dns: SocketAddr, message: &[u8]) -> String {
    let file = dir.join("verify.eml");
    std::fs::write(&file, message).unwrap();
    let out = Command::new(venv_python())
        .arg("-c")
        .arg(format!("{PRELUDE}{script}"))
        .arg(&file)
        .arg(dns.port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dkimpy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
