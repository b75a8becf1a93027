//! A display backend for the SSD1306 128×64 OLED over I²C (feature
//! `ssd1306`): the status screen drawn straight into the `ssd1306`
//! driver's buffered graphics mode (an embedded-graphics `DrawTarget`),
//! then flushed; on Linux the bus is an i2c-dev node
//! (`--display ssd1306:/dev/i2c-1@0x3c`).
//!
//! The backend is generic over any embedded-hal I²C bus, so the tests run
//! the real driver over a recording bus and rebuild the panel's memory from
//! the bytes it sent.

use embedded_hal::i2c::I2c;
use ssd1306::mode::BufferedGraphicsMode;
use ssd1306::prelude::*;
use ssd1306::{I2CDisplayInterface, Ssd1306};

use super::display::{Canvas, Display, DisplayError, StatusScreen};

/// The usual I²C address of SSD1306 modules (0x3d on some).
pub const DEFAULT_ADDRESS: u8 = 0x3c;

type Panel<I> =
    Ssd1306<I2CInterface<I>, DisplaySize128x64, BufferedGraphicsMode<DisplaySize128x64>>;

/// The SSD1306 backend.
pub struct Ssd1306Display<I: I2c> {
    panel: Panel<I>,
    target: String,
    canvas: Canvas,
    written: Option<Canvas>,
}

impl<I: I2c> Ssd1306Display<I> {
    /// Initialises the panel at `address` on `i2c`; `target` names it in
    /// errors (e.g. `/dev/i2c-1@0x3c`).
    pub fn new(i2c: I, address: u8, target: String) -> Result<Self, DisplayError> {
        let interface = I2CDisplayInterface::new_custom_address(i2c, address);
        let mut panel = Ssd1306::new(interface, DisplaySize128x64, DisplayRotation::Rotate0)
            .into_buffered_graphics_mode();
        panel.init().map_err(|e| DisplayError {
            target: target.clone(),
            message: format!("cannot initialise the SSD1306 (wrong bus or address?): {e:?}"),
        })?;
        Ok(Ssd1306Display {
            panel,
            target,
            canvas: Canvas::default(),
            written: None,
        })
    }

    fn err(&self, what: &str, e: impl std::fmt::Debug) -> DisplayError {
        DisplayError {
            target: self.target.clone(),
            message: format!("{what}: {e:?}"),
        }
    }
}

impl<I: I2c> Display for Ssd1306Display<I> {
    fn show(&mut self, screen: &StatusScreen) -> Result<(), DisplayError> {
        let Ok(()) = screen.draw(&mut self.canvas);
        if self.written.as_ref() == Some(&self.canvas) {
            return Ok(());
        }
        screen
            .draw(&mut self.panel)
            .map_err(|e| self.err("draw failed", e))?;
        self.panel
            .flush()
            .map_err(|e| self.err("write failed", e))?;
        self.written = Some(self.canvas.clone());
        Ok(())
    }

    /// Blanks the panel and switches it off: a stopped daemon shows
    /// nothing stale (and an OLED does not burn in).
    fn shutdown(&mut self) -> Result<(), DisplayError> {
        self.panel.clear_buffer();
        self.panel
            .flush()
            .map_err(|e| self.err("write failed", e))?;
        self.written = None;
        self.panel
            .set_display_on(false)
            .map_err(|e| self.err("cannot switch off", e))
    }
}

/// `PATH[@ADDRESS]` of a `ssd1306:` display spec: the i2c-dev node and
/// the 7-bit address (hex with `0x`, or decimal; default 0x3c).
pub fn parse_target(spec: &str) -> Result<(&str, u8), String> {
    let (path, address) = match spec.rsplit_once('@') {
        Some((p, a)) => {
            let parsed = match a.strip_prefix("0x").or_else(|| a.strip_prefix("0X")) {
                Some(hex) => u8::from_str_radix(hex, 16),
                None => a.parse(),
            };
            match parsed {
                Ok(v) if v < 0x80 => (p, v),
                _ => return Err(format!("bad I²C address {a:?} (expected e.g. 0x3c)")),
            }
        }
        None => (spec, DEFAULT_ADDRESS),
    };
    if path.is_empty() {
        return Err("missing I²C bus, e.g. ssd1306:/dev/i2c-1".into());
    }
    Ok((path, address))
}

/// Opens the panel on a Linux i2c-dev bus.
pub fn open(
    path: &std::path::Path,
    address: u8,
) -> Result<Ssd1306Display<linux_embedded_hal::I2cdev>, DisplayError> {
    let target = format!("{}@{address:#04x}", path.display());
    let bus = linux_embedded_hal::I2cdev::new(path).map_err(|e| DisplayError {
        target: target.clone(),
        message: format!("cannot open the I²C bus: {e}"),
    })?;
    Ssd1306Display::new(bus, address, target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expression::{Expression, Probs};
    use embedded_hal::i2c::{ErrorKind, ErrorType, Operation};
    use std::sync::{Arc, Mutex};

    /// One I²C write: (address, bytes).
    type Write = (u8, Vec<u8>);

    /// An I²C bus that records every write.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Write>>>,
        fail: bool,
    }

    impl ErrorType for Recorder {
        type Error = ErrorKind;
    }

    impl I2c for Recorder {
        fn transaction(
            &mut self,
            address: u8,
            operations: &mut [Operation<'_>],
        ) -> Result<(), Self::Error> {
            if self.fail {
                return Err(ErrorKind::NoAcknowledge(
                    embedded_hal::i2c::NoAcknowledgeSource::Address,
                ));
            }
            let mut bytes = Vec::new();
            for op in operations {
                if let Operation::Write(b) = op {
                    bytes.extend_from_slice(b);
                }
            }
            self.writes.lock().unwrap().push((address, bytes));
            Ok(())
        }
    }

    /// The controller's display RAM, rebuilt from the bytes on the bus:
    /// commands (control byte 0x00) set the column and page windows
    /// (0x21, 0x22), data (control byte 0x40) fills it in horizontal
    /// addressing mode, and 0xAE/0xAF switch the panel off/on.
    struct Panel {
        ram: [[u8; 128]; 8],
        window: (u8, u8, u8, u8),
        at: (u8, u8),
        on: bool,
    }

    impl Panel {
        fn replay(writes: &[Write], address: u8) -> Panel {
            let mut p = Panel {
                ram: [[0; 128]; 8],
                window: (0, 127, 0, 7),
                at: (0, 0),
                on: false,
            };
            for (a, bytes) in writes {
                assert_eq!(*a, address, "every write goes to the panel's address");
                match bytes[0] {
                    0x00 => match bytes[1..] {
                        [0x21, c0, c1, ..] => {
                            p.window.0 = c0;
                            p.window.1 = c1;
                            p.at.0 = c0;
                        }
                        [0x22, p0, p1, ..] => {
                            p.window.2 = p0;
                            p.window.3 = p1;
                            p.at.1 = p0;
                        }
                        [0xAE, ..] => p.on = false,
                        [0xAF, ..] => p.on = true,
                        _ => {}
                    },
                    0x40 => {
                        for &b in &bytes[1..] {
                            p.ram[p.at.1 as usize][p.at.0 as usize] = b;
                            if p.at.0 == p.window.1 {
                                p.at.0 = p.window.0;
                                p.at.1 = if p.at.1 == p.window.3 {
                                    p.window.2
                                } else {
                                    p.at.1 + 1
                                };
                            } else {
                                p.at.0 += 1;
                            }
                        }
                    }
                    other => panic!("unexpected control byte {other:#x}"),
                }
            }
            p
        }

        fn pixel(&self, x: u32, y: u32) -> bool {
            self.ram[(y / 8) as usize][x as usize] & (1 << (y % 8)) != 0
        }
    }

    fn screen() -> StatusScreen {
        let mut p = [0.02; 7];
        p[Expression::Sad.index()] = 0.7;
        p[Expression::Fear.index()] = 0.18;
        StatusScreen {
            faces: 1,
            probs: Some(Probs(p)),
            alerts: vec!["distress".into()],
            degraded: false,
            driver: None,
        }
    }

    #[test]
    fn panel_memory_matches_the_renderer() {
        let bus = Recorder::default();
        let mut d = Ssd1306Display::new(bus.clone(), 0x3d, "test".into()).unwrap();
        let s = screen();
        d.show(&s).unwrap();
        let panel = Panel::replay(&bus.writes.lock().unwrap(), 0x3d);
        assert!(panel.on, "init switches the panel on");
        let mut expected = Canvas::default();
        let Ok(()) = s.draw(&mut expected);
        let mut lit = 0;
        for y in 0..64 {
            for x in 0..128 {
                assert_eq!(panel.pixel(x, y), expected.get(x, y), "pixel ({x}, {y})");
                lit += usize::from(expected.get(x, y));
            }
        }
        assert!(lit > 500, "the screen has content ({lit} pixels lit)");

        // An unchanged screen sends nothing; a changed one only what changed,
        // and the panel still matches.
        let n = bus.writes.lock().unwrap().len();
        d.show(&s).unwrap();
        assert_eq!(bus.writes.lock().unwrap().len(), n);
        let calm = StatusScreen {
            alerts: vec![],
            ..s
        };
        d.show(&calm).unwrap();
        let panel = Panel::replay(&bus.writes.lock().unwrap(), 0x3d);
        let mut expected = Canvas::default();
        let Ok(()) = calm.draw(&mut expected);
        assert!((0..64).all(|y| (0..128).all(|x| panel.pixel(x, y) == expected.get(x, y))));

        // Shutdown blanks the memory and switches the panel off.
        d.shutdown().unwrap();
        let panel = Panel::replay(&bus.writes.lock().unwrap(), 0x3d);
        assert!(!panel.on);
        assert!(panel.ram.iter().all(|page| page.iter().all(|&b| b == 0)));
    }

    #[test]
    fn a_silent_bus_is_an_error_naming_the_target() {
        let bus = Recorder {
            fail: true,
            ..Recorder::default()
        };
        let err = Ssd1306Display::new(bus, 0x3c, "/dev/i2c-1@0x3c".into())
            .err()
            .unwrap();
        assert!(err.to_string().contains("/dev/i2c-1@0x3c"), "{err}");
    }

    #[test]
    fn targets_parse() {
        assert_eq!(parse_target("/dev/i2c-1"), Ok(("/dev/i2c-1", 0x3c)));
        assert_eq!(parse_target("/dev/i2c-1@0x3d"), Ok(("/dev/i2c-1", 0x3d)));
        assert_eq!(parse_target("/dev/i2c-0@61"), Ok(("/dev/i2c-0", 61)));
        assert!(parse_target("/dev/i2c-1@0x100").is_err());
        assert!(parse_target("/dev/i2c-1@zz").is_err());
        assert!(parse_target("@0x3c").is_err());
    }
}
