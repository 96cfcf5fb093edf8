//! Test support (feature `testing`): a simulated guest, the API fuzz target's body and the
//! tests' checks of the commands they run. Not part of the appliance a user runs.

pub mod fuzzing;
pub mod process;
pub mod sim;
pub mod vmotion;
