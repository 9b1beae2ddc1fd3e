//! The SMTP server's I/O: listeners, the connection loop, TLS and the
//! PROXY header from trusted load balancers.

pub(crate) mod conn;
pub mod listener;
pub mod proxy;
pub(crate) mod stream;
pub(crate) mod tls;
