//! The appliance side of tether: the session server every containerVM's channel connects to,
//! its log store and records, and (in later modules) the docker API and CLI.

pub mod container;
pub mod home;
pub mod logstore;
pub mod records;
pub mod server;
