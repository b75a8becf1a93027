//! ferd: facial-expression recognition for small Linux boards.
//!
//! The library holds every pipeline stage and the daemon's wiring
//! ([`daemon`]); the `ferd` binary only parses arguments. One frame flows
//! one way:
//!
//! ```text
//! source ─► frame ─► vision (detector, classifier) ─► track (+ driver) ─► rules ─► sink
//! ```
//!
//! See `docs/ARCHITECTURE.md` for the module map.

#![warn(missing_docs)]

pub mod bench;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod driver;
pub mod eval;
pub mod events;
pub mod expression;
pub mod frame;
pub mod permissions;
pub mod pipeline;
pub mod rules;
pub mod sink;
pub mod source;
pub mod systemd;
pub mod track;
pub mod vision;

/// The message of a caught panic (`&str` or `String` payloads), for the
/// error that replaces it.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}
