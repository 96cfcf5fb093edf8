//! What the appliance keeps on disk under `$TETHER_HOME`: container records, their state, exec
//! instances and every stream's log. Nothing here knows about channels, VMs or HTTP.

pub mod atomic;
pub mod endpoints;
pub mod execs;
pub mod images;
pub mod logline;
pub mod logs;
pub mod networks;
pub mod records;
pub mod state;
pub mod volumes;
