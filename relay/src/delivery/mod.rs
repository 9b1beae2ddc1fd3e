//! How one message leaves the relay (DESIGN.md §1, steps 4 and 5): MX
//! routing from DNS ([`mx`]), SMTP to an MX or smarthost ([`smtp`]), LMTP
//! to a mailbox server ([`lmtp`]), a maildir ([`maildir`]), under the
//! outbound TLS policy ([`tls_policy`]). Each gives one typed [`Outcome`]
//! per recipient; what to do with it is the queue's business.

pub(crate) mod classify;
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
