//! The SMTP server's I/O: listeners, the connection loop, TLS.

pub mod conn;
pub mod listener;
pub mod stream;
pub mod tls;
