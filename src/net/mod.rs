//! Transport: listeners, TLS, the stream type, backend connections and the
//! byte bridge (with zero-copy for large literals between plain sockets).

pub mod backend;
pub mod bridge;
pub mod dns;
pub mod health;
pub mod listener;
pub mod per_ip;
pub mod proxy_header;
pub mod stream;
pub mod throttle;
pub mod tls;
pub mod tls_server;
pub mod zerocopy;
