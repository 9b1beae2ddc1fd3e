//! Idle outbound connections kept for the next message to the same
//! destination, so a queue of mail for one MX or mailbox server does not
//! pay a TCP, EHLO and TLS handshake per message. Bounded per destination
//! and in total; a connection idle longer than [`IDLE_LIMIT`] is closed
//! (remote servers drop idle clients, and holding theirs is impolite).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::router::Route;
use crate::delivery::{LmtpClient, SmtpClient};

/// Postfix keeps cached connections for 2 s by default; a little longer
/// here still frees them long before a server's 5-minute timeout.
pub(crate) const IDLE_LIMIT: Duration = Duration::from_secs(5);

pub(crate) enum Client {
    // Boxed: both clients carry large buffers, and pools hold many of these.
    Smtp(Box<SmtpClient>),
    Lmtp(Box<LmtpClient<TcpStream>>),
}

impl Client {
    fn broken(&self) -> bool {
        match self {
            Client::Smtp(c) => c.broken().is_some(),
            Client::Lmtp(c) => c.broken().is_some(),
        }
    }

    pub(crate) async fn quit(self) {
        match self {
            Client::Smtp(c) => c.quit().await,
            Client::Lmtp(c) => c.quit().await,
        }
    }
}

pub(crate) struct Pool {
    idle: Mutex<HashMap<Route, Vec<(Client, Instant)>>>,
    per_destination: usize,
    total: usize,
}

impl Pool {
    pub(crate) fn new(per_destination: usize, total: usize) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            per_destination,
            total,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Route, Vec<(Client, Instant)>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection to `route`, if one is fresh enough.
    pub(crate) fn take(&self, route: &Route) -> Option<Client> {
        let mut idle = self.lock();
        let list = idle.get_mut(route)?;
        while let Some((client, since)) = list.pop() {
            if since.elapsed() < IDLE_LIMIT {
                return Some(client);
            }
            tokio::spawn(client.quit());
        }
        None
    }

    /// Keep `client` for the next message to `route`, or close it.
    pub(crate) fn put(&self, route: &Route, client: Client) {
        if client.broken() {
            tokio::spawn(client.quit());
            return;
        }
        let mut idle = self.lock();
        let total: usize = idle.values().map(Vec::len).sum();
        let list = idle.entry(route.clone()).or_default();
        if list.len() >= self.per_destination || total >= self.total {
            drop(idle);
            tokio::spawn(client.quit());
            return;
        }
        list.push((client, Instant::now()));
    }

    /// Close the connections that have been idle too long.
    pub(crate) fn expire(&self) {
        let mut idle = self.lock();
        for list in idle.values_mut() {
            let (fresh, stale): (Vec<_>, Vec<_>) = std::mem::take(list)
                .into_iter()
                .partition(|(_, since)| since.elapsed() < IDLE_LIMIT);
            *list = fresh;
            for (client, _) in stale {
                tokio::spawn(client.quit());
            }
        }
        idle.retain(|_, list| !list.is_empty());
    }
}
