//! The containerVM toolchain: the initramfs that holds tether, and image disks.

pub mod cpio;
pub mod disk;
pub mod initramfs;
