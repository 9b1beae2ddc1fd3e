//! A webhook receiver for the event tests: `webhook_receiver.py` (Python's
//! `http.server`), checking each request's signature with the key it is
//! given and each event against `relay/events.schema.json`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::process::Guard;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/common/webhook_receiver.py"
);
const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/events.schema.json");

/// One request as the receiver saw it.
#[derive(Debug)]
pub struct Request {
    pub valid: bool,
    pub reason: String,
    pub events: Vec<Value>,
    pub schema_errors: Vec<String>,
}

pub struct Receiver {
    process: Option<Guard>,
    pub addr: SocketAddr,
    key_file: PathBuf,
    out: PathBuf,
    log: PathBuf,
}

impl Receiver {
    /// Listen on `addr`, checking signatures with `key`, recording into `dir`.
    pub fn start(addr: SocketAddr, dir: &Path, key: &str) -> Receiver {
        std::fs::create_dir_all(dir).expect("receiver directory");
        let key_file = dir.join("key");
        std::fs::write(&key_file, key).expect("receiver key");
        let mut r = Receiver {
            process: None,
            addr,
            key_file,
            out: dir.join("requests.jsonl"),
            log: dir.join("receiver.log"),
        };
        r.resume();
        r
    }

    /// Start again on the same address (after `stop`).
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("receiver log");
        let mut command = Command::new("python3");
        command
            .arg(SCRIPT)
            .arg(self.addr.ip().to_string())
            .arg(self.addr.port().to_string())
            .arg(&self.key_file)
            .arg(SCHEMA)
            .arg(&self.out)
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let mut guard = Guard::spawn("webhook receiver", &mut command);
        super::wait_for(
            Duration::from_secs(30),
            || {
                assert!(
                    guard.exited().is_none(),
                    "the webhook receiver exited (is python3 with jsonschema on PATH? tests/lib/deps.sh install_python_tools):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
                std::net::TcpStream::connect(self.addr).ok().map(|_| ())
            },
            || format!("the webhook receiver on {} did not listen", self.addr),
        );
        self.process = Some(guard);
    }

    /// Kill it: the relay's requests fail until `resume`.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("a receiver line");
                Request {
                    valid: v["valid"].as_bool().unwrap_or(false),
                    reason: v["reason"].as_str().unwrap_or_default().to_string(),
                    events: v["events"].as_array().cloned().unwrap_or_default(),
                    schema_errors: v["schemaErrors"]
                        .as_array()
                        .map(|a| a.iter().map(|e| e.to_string()).collect())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }
}

/// The test's signature check over everything received: every request
/// signed with the key the receiver holds.
pub fn check_signatures(requests: &[Request]) -> Result<(), String> {
    let bad: Vec<&str> = requests
        .iter()
        .filter(|r| !r.valid)
        .map(|r| r.reason.as_str())
        .collect();
    if requests.is_empty() {
        return Err("no request arrived".into());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} requests without a valid signature: {:?}",
            bad.len(),
            requests.len(),
            &bad[..bad.len().min(5)]
        ))
    }
}
