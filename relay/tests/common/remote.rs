//! A remote MX that misbehaves on purpose: it hangs up in the middle of
//! DATA, hangs up after the final dot without a reply, or answers slowly
//! (a tarpit). smtp-sink cannot do these. Each connection follows the
//! next step of a script (the last step repeats), so a test can make the
//! first attempts fail and a later one succeed. Runs on `127.0.0.N:25`
//! (the faults tests use 127.0.0.60-69, free in the rest of the suite).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::sink::MX_PORT;

/// What the server does on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Read the first bytes of the message after 354, then close.
    DropMidData,
    /// Read the whole message up to the final dot, then close without a reply.
    DropAfterDot,
    /// Greet, then say nothing at all until the client gives up.
    SilentAfterGreeting,
    /// Read the whole message, then say nothing until the client gives up
    /// (a tarpit at the worst moment: the message may count as sent).
    SilentAfterDot,
    /// Behave, but wait this long before every reply.
    Slow(Duration),
    /// Behave: 250 to everything, keep the message.
    Accept,
    /// Greet with `421` and close: a host that takes no mail at all.
    Refuse421,
    /// Behave, but answer RCPT for a recipient whose local part is one of
    /// these with its reply line (others get 250).
    Answers(&'static [(&'static str, &'static str)]),
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Connections, in order, with the step each followed.
    pub connections: Vec<Step>,
    /// Message contents read to the final dot (acknowledged or not).
    pub complete: Vec<String>,
    /// Message contents answered with 250.
    pub acknowledged: Vec<String>,
}

pub struct Remote {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

impl Remote {
    /// Listen on `ip:25` and follow `script`, one step per connection.
    pub fn start(ip: Ipv4Addr, script: &[Step]) -> Remote {
        assert!(!script.is_empty(), "a script needs a step");
        let addr = SocketAddr::new(IpAddr::V4(ip), MX_PORT);
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let script = script.to_vec();
        let thread = {
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            std::thread::spawn(move || serve(&listener, &script, &stop, &seen))
        };
        Remote {
            addr,
            stop,
            seen,
            thread: Some(thread),
        }
    }

    pub fn seen<T>(&self, look: impl FnOnce(&Seen) -> T) -> T {
        look(&self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: &TcpListener, script: &[Step], stop: &AtomicBool, seen: &Mutex<Seen>) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let step = script[n.min(script.len() - 1)];
                n += 1;
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .connections
                    .push(step);
                // One connection at a time is all these tests need: the
                // relay's next attempt comes after this one ended.
                let _ = converse(stream, step, stop, seen);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// A line reader that gives up when the test ends.
struct Conn<'a> {
    reader: BufReader<TcpStream>,
    stop: &'a AtomicBool,
    delay: Duration,
}

impl Conn<'_> {
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) if line.ends_with('\n') => return Some(line),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if self.stop.load(Ordering::SeqCst) {
                        return None;
                    }
                }
                Err(_) => return None,
            }
        }
    }

    fn reply(&mut self, text: &str) -> Option<()> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let stream = self.reader.get_mut();
        stream.write_all(format!("{text}\r\n").as_bytes()).ok()?;
        stream.flush().ok()
    }

    /// The message content up to the final dot (dot-stuffing left in).
    fn content(&mut self) -> Option<String> {
        let mut content = String::new();
        loop {
            let line = self.line()?;
            if line == ".\r\n" {
                return Some(content);
            }
            content.push_str(&line);
        }
    }

    /// Wait until the client hangs up (or the test ends).
    fn wait_for_close(&mut self) {
        let mut buf = [0u8; 512];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if self.stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}

fn converse(stream: TcpStream, step: Step, stop: &AtomicBool, seen: &Mutex<Seen>) -> Option<()> {
    stream.set_nonblocking(false).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .ok()?;
    let delay = match step {
        Step::Slow(d) => d,
        _ => Duration::ZERO,
    };
    let mut c = Conn {
        reader: BufReader::new(stream),
        stop,
        delay,
    };
    if step == Step::Refuse421 {
        return c.reply("421 4.3.2 misbehaving.test Service not available, try again later");
    }
    c.reply("220 misbehaving.test ESMTP")?;
    if step == Step::SilentAfterGreeting {
        c.wait_for_close();
        return Some(());
    }
    loop {
        let line = c.line()?;
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => c.reply("250 misbehaving.test")?,
            "RCPT" => match answer_for(step, &line) {
                Some(reply) => c.reply(reply)?,
                None => c.reply("250 2.0.0 Ok")?,
            },
            "MAIL" | "RSET" | "NOOP" => c.reply("250 2.0.0 Ok")?,
            "QUIT" => {
                c.reply("221 2.0.0 Bye")?;
                return Some(());
            }
            "DATA" => {
                c.reply("354 End data with <CR><LF>.<CR><LF>")?;
                if step == Step::DropMidData {
                    // The first line of the content, then hang up.
                    c.line()?;
                    return Some(());
                }
                let content = c.content()?;
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                s.complete.push(content.clone());
                if step == Step::DropAfterDot {
                    return Some(());
                }
                if step == Step::SilentAfterDot {
                    drop(s);
                    c.wait_for_close();
                    return Some(());
                }
                s.acknowledged.push(content);
                drop(s);
                c.reply("250 2.0.0 Ok: queued")?;
            }
            _ => c.reply("502 5.5.2 Command not recognized")?,
        }
    }
}

/// The scripted reply to `RCPT TO:<local@domain>`, if any.
fn answer_for(step: Step, line: &str) -> Option<&'static str> {
    let Step::Answers(answers) = step else {
        return None;
    };
    let address = line.split_once('<')?.1.split_once('>')?.0;
    let local = address.split_once('@').map_or(address, |(l, _)| l);
    answers
        .iter()
        .find(|(who, _)| who.eq_ignore_ascii_case(local))
        .map(|(_, reply)| *reply)
}
