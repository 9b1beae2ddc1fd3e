//! A remote MX that counts what shaping is about: connections open at
//! once (the most ever seen), messages per connection, and when each
//! connection opened and each message arrived. A connection counts as
//! open from accept until the client's QUIT or hang-up. It can answer
//! every RCPT with one reply (a `421` closes the connection after it, as
//! RFC 5321 §3.8 has a server do). One thread per connection, on
//! `127.0.0.N:25`.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::sink::MX_PORT;

/// One connection as the server saw it.
#[derive(Clone, Debug)]
pub struct Connection {
    pub opened: Instant,
    /// End of data of each message it answered with 250.
    pub messages: Vec<Instant>,
    /// No longer counted as open.
    pub closed: bool,
}

#[derive(Debug, Default)]
pub struct Counts {
    pub connections: Vec<Connection>,
    pub open: usize,
    pub most_open: usize,
    /// RCPT commands answered with the scripted reply.
    pub refused: usize,
}

pub struct CountingMx {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
    thread: Option<JoinHandle<()>>,
}

impl CountingMx {
    /// Listen on `ip:25`; answer every RCPT with `rcpt_reply`, or 250.
    pub fn start(ip: Ipv4Addr, rcpt_reply: Option<&'static str>) -> CountingMx {
        CountingMx::start_slow(ip, rcpt_reply, Duration::ZERO)
    }

    /// Like `start`, taking `per_message` before each message's 250 (a
    /// receiver that needs more than one connection to keep up).
    pub fn start_slow(
        ip: Ipv4Addr,
        rcpt_reply: Option<&'static str>,
        per_message: Duration,
    ) -> CountingMx {
        let addr = SocketAddr::new(IpAddr::V4(ip), MX_PORT);
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let thread = {
            let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let index = {
                                let mut c = counts.lock().unwrap();
                                c.connections.push(Connection {
                                    opened: Instant::now(),
                                    messages: Vec::new(),
                                    closed: false,
                                });
                                c.open += 1;
                                c.most_open = c.most_open.max(c.open);
                                c.connections.len() - 1
                            };
                            let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
                            std::thread::spawn(move || {
                                let _ = converse(
                                    stream,
                                    index,
                                    rcpt_reply,
                                    per_message,
                                    &stop,
                                    &counts,
                                );
                                let mut c = counts.lock().unwrap();
                                if !c.connections[index].closed {
                                    c.connections[index].closed = true;
                                    c.open -= 1;
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        CountingMx {
            addr,
            stop,
            counts,
            thread: Some(thread),
        }
    }

    pub fn counts<T>(&self, look: impl FnOnce(&Counts) -> T) -> T {
        look(&self.counts.lock().unwrap())
    }
}

impl Drop for CountingMx {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn converse(
    stream: TcpStream,
    index: usize,
    rcpt_reply: Option<&str>,
    per_message: Duration,
    stop: &AtomicBool,
    counts: &Mutex<Counts>,
) -> Option<()> {
    stream.set_nonblocking(false).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .ok()?;
    let mut writer = stream.try_clone().ok()?;
    let mut reader = BufReader::new(stream);
    let mut reply = |text: &str| writer.write_all(format!("{text}\r\n").as_bytes()).ok();
    reply("220 counting.test ESMTP")?;
    let mut line = String::new();
    let mut read_line = |line: &mut String| -> Option<()> {
        line.clear();
        loop {
            match reader.read_line(line) {
                Ok(0) => return None,
                Ok(_) if line.ends_with('\n') => return Some(()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stop.load(Ordering::SeqCst) {
                        return None;
                    }
                }
                Err(_) => return None,
            }
        }
    };
    loop {
        read_line(&mut line)?;
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => reply("250 counting.test")?,
            "MAIL" | "RSET" | "NOOP" => reply("250 2.0.0 Ok")?,
            "RCPT" => match rcpt_reply {
                Some(text) => {
                    counts.lock().unwrap().refused += 1;
                    reply(text)?;
                    if text.starts_with("421") {
                        return Some(());
                    }
                }
                None => reply("250 2.0.0 Ok")?,
            },
            "QUIT" => {
                // Closed as far as the count goes before the client hears
                // 221 (and may connect again): the client is done.
                {
                    let mut c = counts.lock().unwrap();
                    c.connections[index].closed = true;
                    c.open -= 1;
                }
                reply("221 2.0.0 Bye")?;
                return Some(());
            }
            "DATA" => {
                reply("354 go ahead")?;
                loop {
                    read_line(&mut line)?;
                    if line == ".\r\n" {
                        break;
                    }
                }
                std::thread::sleep(per_message);
                counts.lock().unwrap().connections[index]
                    .messages
                    .push(Instant::now());
                reply("250 2.0.0 Ok: queued")?;
            }
            _ => reply("502 5.5.2 Command not recognized")?,
        }
    }
}
