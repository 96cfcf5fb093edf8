//! The appliance side of tether: the session server every containerVM's channel connects to, its
//! log store and records, and the docker Engine API subset served from them.

pub mod api;
mod api_exec;
pub mod attach;
pub mod body;
pub mod cli;
pub mod container;
pub mod execs;
pub mod follow;
pub mod framing;
#[doc(hidden)]
pub mod fuzzing;
pub mod home;
mod logline;
pub mod logs;
pub mod logs_client;
pub mod logstore;
pub mod records;
pub mod run;
pub mod server;
#[doc(hidden)]
pub mod sim;
pub mod vm;
