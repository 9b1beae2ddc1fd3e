//! The SMTP server's I/O: listeners, the connection loop, TLS, the PROXY
//! header from trusted load balancers and the per-client limits.

pub mod conn;
pub mod limits;
pub mod listener;
pub mod proxy;
pub mod stream;
pub mod tls;
