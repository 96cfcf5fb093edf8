//! The containerVM toolchain: the initramfs that holds tether, the bootstrap ISO, image disks.

#![forbid(unsafe_code)]

pub mod cpio;
pub mod dirtimes;
pub mod disk;
pub mod image;
pub mod initramfs;
pub mod iso;
pub mod spec_toml;
