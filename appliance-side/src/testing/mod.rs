//! Test support (feature `testing`): a simulated guest and the API fuzz target's body. Not part of
//! the appliance a user runs.

pub mod fuzzing;
pub mod sim;
