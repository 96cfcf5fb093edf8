//! The appliance side of tether: the session server every containerVM's channel connects to, its
//! log store and records, the engine that owns container state, and the docker Engine API subset
//! served from them. The module map and the direction of imports are in docs/architecture.md:
//! `daemon` (serve) and `cli` -> `api` -> `engine` -> (`server`, `backend`) -> `store` -> `home`.

pub mod api;
pub mod backend;
pub mod cli;
pub mod daemon;
pub mod engine;
pub mod home;
pub mod logging;
pub mod path_io;
pub mod registry;
pub mod server;
pub mod store;
#[cfg(test)]
mod testdir;
#[cfg(feature = "testing")]
pub mod testing;
