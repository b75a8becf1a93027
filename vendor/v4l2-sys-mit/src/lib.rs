//! Raw V4L2 bindings: v4l2-sys-mit 0.3.0 with its bindgen output, which
//! upstream's build script generated at build time (with libclang), committed
//! for each supported target. `regenerate.sh` rewrites the files under
//! `bindings/`; `regenerate.sh --check` verifies them.
#![allow(clippy::all)]
#![allow(deref_nullptr)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(non_upper_case_globals)]
// Upstream also allowed `unaligned_references`, a lint that rustc has since
// removed (naming it is now a warning of its own).

// One file per target: struct layouts and constants differ between them
// (32-bit ARM: 4-byte pointers and longs, 32-bit time_t in glibc's timeval).
// The ARM file, generated for armv7, also serves ARMv6 gnueabihf: same ABI.
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    target_arch = "x86_64",
    target_pointer_width = "64",
    target_endian = "little"
))]
include!("bindings/x86_64-linux-gnu.rs");

#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    target_arch = "aarch64",
    target_pointer_width = "64",
    target_endian = "little"
))]
include!("bindings/aarch64-linux-gnu.rs");

#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    target_arch = "arm",
    target_abi = "eabihf",
    target_pointer_width = "32",
    target_endian = "little"
))]
include!("bindings/arm-linux-gnueabihf.rs");

#[cfg(not(all(
    target_os = "linux",
    target_env = "gnu",
    target_endian = "little",
    any(
        all(target_arch = "x86_64", target_pointer_width = "64"),
        all(target_arch = "aarch64", target_pointer_width = "64"),
        all(
            target_arch = "arm",
            target_abi = "eabihf",
            target_pointer_width = "32"
        )
    )
)))]
compile_error!(
    "v4l2-sys-mit (vendor/v4l2-sys-mit) has committed V4L2 bindings only for \
     x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu and \
     armv7-unknown-linux-gnueabihf. For another target, add it to \
     vendor/v4l2-sys-mit/regenerate.sh (its Rust target and a sysroot with its \
     kernel and libc headers) and to src/lib.rs, then run \
     vendor/v4l2-sys-mit/regenerate.sh."
);
