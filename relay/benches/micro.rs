//! Criterion micro-benchmarks of the hot paths (issue 8): the SMTP command
//! parser and the DATA reader, blocklist lookups, `compile()` for 10,000
//! MailDomains and for 100,000 blocklist entries, and the spool's commit
//! path (group commit under 20 concurrent committers).
//!
//! `cargo bench -p mailrelay --bench micro` (add `-- --quick` for a short
//! run). Timings are measurements, never assertions.

mod common;

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mailrelay::policy::{NameRole, Policy};
use mailrelay::smtp::data::DataReader;
use mailrelay::spool::{Envelope, Spool};
use smtp_proto::Request;

const COMMANDS: [&[u8]; 6] = [
    b"EHLO client.example.test\r\n",
    b"MAIL FROM:<sender@example.test> SIZE=1024 BODY=8BITMIME\r\n",
    b"RCPT TO:<recipient@example.test>\r\n",
    b"DATA\r\n",
    b"RSET\r\n",
    b"QUIT\r\n",
];

/// A message body as a client sends it: CRLF lines, some dot-stuffed,
/// ending with the `.` line.
fn wire_message(size: usize) -> Vec<u8> {
    let mut out = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: bench\r\n\r\n".to_vec();
    let mut n = 0;
    while out.len() < size {
        if n % 10 == 0 {
            out.extend_from_slice(b"..a line that starts with a dot\r\n");
        } else {
            out.extend_from_slice(&[b'x'; 76]);
            out.extend_from_slice(b"\r\n");
        }
        n += 1;
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn smtp(c: &mut Criterion) {
    let mut g = c.benchmark_group("smtp");
    g.throughput(Throughput::Elements(COMMANDS.len() as u64));
    g.bench_function("parse 6 commands", |b| {
        b.iter(|| {
            for line in COMMANDS {
                let _ = black_box(Request::parse(&mut black_box(line).iter()));
            }
        })
    });
    for size in [1024, 100 * 1024] {
        let wire = wire_message(size);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(
            format!("DATA reader {} KiB in 4 KiB reads", size / 1024),
            |b| {
                b.iter(|| {
                    let mut reader = DataReader::new(10 << 20);
                    let mut end = None;
                    for chunk in wire.chunks(4096) {
                        end = reader.feed(chunk);
                    }
                    black_box((end, reader.finish().map(|b| b.len())))
                })
            },
        );
    }
    g.finish();
}

fn blocklists(c: &mut Criterion) {
    let n = 50_000;
    let cidrs = common::cidrs(n, 3);
    let names = common::names(n);
    let probe_ips: Vec<IpAddr> = cidrs
        .iter()
        .take(1000)
        .filter_map(|c| c.split('/').next().and_then(|s| s.parse().ok()))
        .chain((0..1000u32).map(|i| IpAddr::from((i.wrapping_mul(2_654_435_761)).to_be_bytes())))
        .collect();
    let probe_names: Vec<String> = (0..2000)
        .map(|i| match i % 3 {
            0 => format!("mail.w{}.example", (i / 3) * 3),
            1 => format!("h{i}.p{}.example", i % 97),
            _ => format!("x{i}.unlisted.example"),
        })
        .collect();
    let relay = common::relay();
    let blocklist = [common::blocklist(cidrs, names)];
    let policy = match mailrelay_crds::compile(&relay, &[], &blocklist) {
        Ok(c) => Policy::build(&c.config.policy, 0),
        Err(p) => panic!("bench relay: {p:?}"),
    };
    let mut g = c.benchmark_group("blocklist (100,000 entries)");
    g.throughput(Throughput::Elements(probe_ips.len() as u64));
    g.bench_function("check_ip, half listed", |b| {
        b.iter(|| {
            probe_ips
                .iter()
                .filter(|ip| policy.check_ip(**ip).is_some())
                .count()
        })
    });
    g.throughput(Throughput::Elements(probe_names.len() as u64));
    g.bench_function("check_name, a third listed", |b| {
        b.iter(|| {
            probe_names
                .iter()
                .filter(|n| policy.check_name(NameRole::Helo, n).is_some())
                .count()
        })
    });
    g.finish();
}

fn compile(c: &mut Criterion) {
    let relay = common::relay();
    let domains = common::domains(10_000);
    let blocklist = [common::blocklist(
        common::cidrs(50_000, 5),
        common::names(50_000),
    )];
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("10,000 MailDomains", |b| {
        b.iter(|| mailrelay_crds::compile(&relay, &domains, &[]).map(|c| c.config.domains.len()))
    });
    g.bench_function("100,000 blocklist entries (+ Policy::build)", |b| {
        b.iter(|| {
            mailrelay_crds::compile(&relay, &[], &blocklist)
                .map(|c| Policy::build(&c.config.policy, 0).entry_count())
        })
    });
    g.finish();
}

fn envelope() -> Envelope {
    Envelope {
        sender: "a@example.test".into(),
        recipients: vec!["b@example.test".into()],
        received_at: 1_700_000_000,
        client_ip: IpAddr::from([127, 0, 0, 1]),
        helo: "client.example.test".into(),
        auth: None,
        tls: false,
        size: 1024,
        smtputf8: false,
        body_8bit: false,
        handed_off: None,
    }
}

/// `Spool::commit` of 1 KiB messages by 20 concurrent committers (as 20
/// sessions would), each commit durable (fdatasync) before it returns.
fn spool(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let spool = match rt.block_on(Spool::open(dir.path())) {
        Ok((s, _)) => s,
        Err(e) => panic!("spool: {e}"),
    };
    let body: Arc<Vec<u8>> = Arc::new(wire_message(1024));
    let mut g = c.benchmark_group("spool");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    g.bench_function("commit 1 KiB, 20 committers (per message)", |b| {
        b.iter_custom(|iters| {
            let spool = spool.clone();
            let body = Arc::clone(&body);
            rt.block_on(async move {
                let t = Instant::now();
                let per = iters.div_ceil(20);
                let tasks: Vec<_> = (0..20)
                    .map(|_| {
                        let spool = spool.clone();
                        let body = Arc::clone(&body);
                        tokio::spawn(async move {
                            for _ in 0..per {
                                let id = spool.new_id();
                                if let Err(e) = spool.commit(&id, &envelope(), &body).await {
                                    panic!("commit: {e}");
                                }
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    let _ = task.await;
                }
                t.elapsed()
            })
        })
    });
    g.throughput(Throughput::Elements(200));
    g.bench_function("remove 200 messages, 20 removers", |b| {
        b.iter_batched(
            || {
                rt.block_on(async {
                    let mut ids = Vec::new();
                    for _ in 0..200 {
                        let id = spool.new_id();
                        if let Err(e) = spool.commit(&id, &envelope(), &body).await {
                            panic!("commit: {e}");
                        }
                        ids.push(id);
                    }
                    ids
                })
            },
            |ids| {
                rt.block_on(async {
                    let tasks: Vec<_> = ids
                        .chunks(10)
                        .map(|chunk| {
                            let spool = spool.clone();
                            let chunk = chunk.to_vec();
                            tokio::spawn(async move {
                                for id in chunk {
                                    let _ = spool.remove(&id).await;
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        let _ = task.await;
                    }
                })
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, smtp, blocklists, compile, spool);
criterion_main!(benches);
