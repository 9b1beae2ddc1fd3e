//! The SMTP server's I/O: listeners, the connection loop, TLS and the
//! PROXY header from trusted load balancers.

pub mod conn;
pub mod listener;
pub mod proxy;
pub mod stream;
pub mod tls;
