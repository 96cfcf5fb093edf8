//! The containerVM toolchain: the initramfs that holds tether, the bootstrap ISO, image disks.
//!
//! Modules depend on one another in one direction only (lower ones first):
//! `error`, `paths`, `digest`, `cpio` depend on no other module; `initramfs` on `cpio`; `iso` on
//! `error`; `spec_toml` on none; `dirtimes` on `paths` and `error`; `disk` on `dirtimes`,
//! `digest` and `error`; `image` on `disk`, `dirtimes`, `paths`, `digest` and `error`.

#![forbid(unsafe_code)]

pub mod cpio;
pub mod digest;
pub mod dirtimes;
pub mod disk;
pub mod error;
pub mod image;
pub mod initramfs;
pub mod iso;
pub mod paths;
pub mod spec_toml;
