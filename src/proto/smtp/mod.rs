//! SMTP pieces shared by the submission front end, the inbound server and
//! the delivery worker: line framing and the client that hands a message
//! to a backend's inbound endpoint (SMTP or LMTP).

pub mod client;
pub mod lines;
pub mod reply;
