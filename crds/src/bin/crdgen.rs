//! Prints the mailrelay CRDs as YAML, or with `--write` writes them to
//! `crds/generated/` (one file per kind).

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let write = std::env::args().nth(1).as_deref() == Some("--write");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("generated");
    for (file, crd) in mailrelay_crds::crdgen::all() {
        let yaml = match mailrelay_crds::crdgen::to_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(e) => {
                eprintln!("crdgen: cannot serialise {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        if write {
            let path = dir.join(file);
            if let Err(e) = std::fs::write(&path, yaml) {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            println!("wrote {}", path.display());
        } else {
            println!("---\n{yaml}");
        }
    }
    ExitCode::SUCCESS
}
