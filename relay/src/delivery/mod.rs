//! Delivery transports: how one message leaves the relay (DESIGN.md §1,
//! steps 4 and 5).
//!
//! - [`mx`] routes a remote domain to the hosts to try, from DNS
//!   ([`mx_cache`] keeps those answers for a few seconds);
//! - [`smtp`] speaks SMTP to a remote MX or a smarthost (lettre, driven
//!   command by command so each recipient has its own reply);
//! - [`lmtp`] speaks LMTP (RFC 2033) to a hosted domain's mailbox server;
//! - [`maildir`] writes into a maildir on a mounted volume.
//!
//! Each gives one typed [`Outcome`] per recipient; what to do with it
//! (dequeue, retry with backoff, bounce) is the queue's business.

pub(crate) mod lmtp;
pub(crate) mod maildir;
pub(crate) mod mx;
pub(crate) mod mx_cache;
mod mx_hickory;
pub(crate) mod outbound;
pub(crate) mod outcome;
pub(crate) mod smtp;
mod smtp_pipeline;
mod smtp_steps;
mod timeouts;
pub mod tls_policy;
pub mod wire;

pub use lmtp::LmtpClient;
pub use maildir::Maildir;
pub use mx::{MxDns, RouteError, Target, resolve_host, route};
pub use mx_cache::CachedDns;
pub use outbound::{Credentials, OutboundConfig, Security};
pub use outcome::Outcome;
pub use smtp::SmtpClient;
pub use timeouts::Timeouts;

#[cfg(test)]
mod lmtp_tests;
#[cfg(test)]
mod mx_dnsmasq_tests;
#[cfg(test)]
mod mx_tests;
#[cfg(test)]
mod peers;
#[cfg(test)]
mod smtp_tests;
#[cfg(test)]
pub(crate) mod test_server;
