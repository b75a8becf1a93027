//! Sinks: where observations and alert changes leave the pipeline.

pub mod display;
pub mod events;
pub mod framebuffer;
pub mod gpio;
pub mod png;

pub use display::{Display, StatusScreen};
pub use events::{EventSink, JsonLines};
