//! Where containerVMs run: today QEMU on this host.

pub mod qemu;
