//! Sinks: where observations and alert changes leave the pipeline.

pub mod bus;
pub mod display;
pub mod events;
pub mod framebuffer;
pub mod gpio;
pub mod homeassistant;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod png;
pub mod socket;
pub mod spool;
#[cfg(feature = "ssd1306")]
pub mod ssd1306;

pub use display::{Display, DriverLine, Fanout, StatusScreen};
pub use events::{EventSink, JsonLines, SinkError};
pub use gpio::GpioSink;
