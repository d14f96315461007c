//! The shared test harness: real Dovecot backends, a test CA, ponte run
//! through its public API, and the real clients that drive it.
#![allow(dead_code)]

pub mod admin;
pub mod certs;
pub mod clients;
pub mod dnsmasq;
pub mod dovecot;
pub mod net;
pub mod ponte;
pub mod postgres;
pub mod process;
pub mod smtp_sink;
pub mod webdriver;
pub mod world;
