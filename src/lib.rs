//! ferd: facial-expression recognition for small Linux boards.
//!
//! The library holds every pipeline stage; the `ferd` binary is a thin
//! command line over it. One frame flows one way:
//!
//! ```text
//! source ─► frame ─► vision (detector, classifier) ─► track ─► rules ─► sink
//! ```
//!
//! See `docs/ARCHITECTURE.md` for the module map.

#![warn(missing_docs)]

pub mod config;
pub mod eval;
pub mod events;
pub mod expression;
pub mod frame;
pub mod pipeline;
pub mod rules;
pub mod sink;
pub mod source;
pub mod systemd;
pub mod track;
pub mod vision;
