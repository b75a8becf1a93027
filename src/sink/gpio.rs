//! GPIO outputs: buzzers, LEDs and relays driven by alerts, and an optional
//! "healthy" heartbeat line.
//!
//! Each output is an `embedded-hal` [`OutputPin`]; on Linux it is a line of
//! a GPIO character device requested through `linux-embedded-hal` (feature
//! `gpio`). Levels are computed from logical states and inverted here for
//! active-low wiring, so the kernel request is a plain output.
//!
//! Safety rule: an alarm is never stuck. [`GpioOutputs::safe_state`] drives
//! every output inactive; it runs on every exit path, including `Drop`
//! (so a panic that unwinds through the owner releases the buzzer too).

use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use embedded_hal::digital::OutputPin;

pub use crate::config::{GpioConfig, PatternConfig};

/// A GPIO failure, naming the output and the device.
#[derive(Debug, thiserror::Error)]
#[error("gpio output {name} ({chip} line {line}): {message}")]
pub struct GpioError {
    /// Output name.
    pub name: String,
    /// Chip path.
    pub chip: String,
    /// Line offset.
    pub line: u32,
    /// What failed.
    pub message: String,
}

/// What an output follows.
#[derive(Debug, Clone, PartialEq)]
enum Role {
    Alerts(Vec<String>),
    Heartbeat,
}

/// One driven line.
struct Output<P> {
    cfg: GpioConfig,
    role: Role,
    pin: P,
    /// When the output last became active (for blink phase).
    active_since: Option<Duration>,
    /// The logical level last written.
    level: Option<bool>,
}

/// All configured outputs.
pub struct GpioOutputs<P: OutputPin> {
    outputs: Vec<Output<P>>,
}

impl<P: OutputPin> GpioOutputs<P> {
    /// Wraps already-requested pins, one per config, driving each inactive.
    pub fn new(pins: Vec<(GpioConfig, P)>) -> Result<GpioOutputs<P>, GpioError> {
        let mut outputs = Vec::with_capacity(pins.len());
        for (cfg, pin) in pins {
            let role = if cfg.heartbeat {
                Role::Heartbeat
            } else {
                Role::Alerts(cfg.alerts.iter().map(|a| a.0.clone()).collect())
            };
            outputs.push(Output {
                cfg,
                role,
                pin,
                active_since: None,
                level: None,
            });
        }
        let mut g = GpioOutputs { outputs };
        g.safe_state()?;
        Ok(g)
    }

    /// Applies the current state at monotonic time `now`: which alerts are
    /// active and whether the pipeline is healthy.
    pub fn update(
        &mut self,
        now: Duration,
        active_alerts: &[&str],
        healthy: bool,
    ) -> Result<(), GpioError> {
        let mut first_err = None;
        for o in &mut self.outputs {
            let wanted = match &o.role {
                Role::Heartbeat => healthy,
                Role::Alerts(names) => names.iter().any(|n| active_alerts.contains(&n.as_str())),
            };
            let level = if wanted {
                let since = *o.active_since.get_or_insert(now);
                match o.cfg.pattern {
                    PatternConfig::Steady => true,
                    PatternConfig::Blink => {
                        // Whole nanoseconds, so that 0.1 + 0.2 s is one
                        // period of exactly 0.3 s.
                        let on = Duration::from_secs_f64(o.cfg.on.0).as_nanos();
                        let period = on + Duration::from_secs_f64(o.cfg.off.0).as_nanos();
                        period == 0 || (now - since).as_nanos() % period < on
                    }
                }
            } else {
                o.active_since = None;
                false
            };
            if let Err(e) = set(o, level) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Drives every output inactive. Tries all of them even if one fails.
    pub fn safe_state(&mut self) -> Result<(), GpioError> {
        let mut first_err = None;
        for o in &mut self.outputs {
            o.active_since = None;
            o.level = None; // force the write
            if let Err(e) = set(o, false) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The logical level last written to each output, by name.
    pub fn levels(&self) -> Vec<(&str, Option<bool>)> {
        self.outputs
            .iter()
            .map(|o| (o.cfg.name.0.as_str(), o.level))
            .collect()
    }
}

fn set<P: OutputPin>(o: &mut Output<P>, active: bool) -> Result<(), GpioError> {
    if o.level == Some(active) {
        return Ok(());
    }
    let high = active != o.cfg.active_low;
    let r = if high {
        o.pin.set_high()
    } else {
        o.pin.set_low()
    };
    r.map_err(|e| GpioError {
        name: o.cfg.name.0.clone(),
        chip: o.cfg.chip.clone(),
        line: o.cfg.line,
        message: format!("cannot set level: {e:?}"),
    })?;
    o.level = Some(active);
    Ok(())
}

impl<P: OutputPin> Drop for GpioOutputs<P> {
    fn drop(&mut self) {
        if let Err(e) = self.safe_state() {
            log::error!("{e}");
        }
    }
}

/// What the outputs follow, published by the analysis loop.
#[derive(Debug, Clone, Default)]
pub struct GpioState {
    /// Names of the active alerts.
    pub alerts: Vec<String>,
    /// When the last frame was analysed.
    pub last_frame: Option<Instant>,
}

/// The pipeline counts as healthy while its last analysed frame is at most
/// this old.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(2);

/// How often the driver thread refreshes the lines (blink resolution).
const TICK: Duration = Duration::from_millis(20);

/// A thread that drives the outputs from a shared [`GpioState`], so blink
/// patterns keep their timing whatever the frame rate. Dropping the driver
/// (normal end, error, or a panic unwinding through its owner) stops the
/// thread, which drives every output inactive before releasing the lines.
pub struct GpioDriver {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GpioDriver {
    /// Starts driving `outputs`.
    pub fn spawn<P: OutputPin + Send + 'static>(
        mut outputs: GpioOutputs<P>,
        state: Arc<Mutex<GpioState>>,
    ) -> std::io::Result<GpioDriver> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("gpio".into())
            .spawn(move || {
                let start = Instant::now();
                let mut failing = false;
                while !flag.load(Ordering::Relaxed) {
                    let (alerts, healthy) = {
                        let s = state.lock().unwrap_or_else(|p| p.into_inner());
                        let healthy = s.last_frame.is_some_and(|t| t.elapsed() <= HEALTHY_WITHIN);
                        (s.alerts.clone(), healthy)
                    };
                    let names: Vec<&str> = alerts.iter().map(String::as_str).collect();
                    match outputs.update(start.elapsed(), &names, healthy) {
                        Ok(()) => failing = false,
                        Err(e) if !failing => {
                            log::error!("{e}");
                            failing = true;
                        }
                        Err(_) => {}
                    }
                    std::thread::sleep(TICK);
                }
                if let Err(e) = outputs.safe_state() {
                    log::error!("{e}");
                }
            })?;
        Ok(GpioDriver {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for GpioDriver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("gpio thread panicked");
            }
        }
    }
}

/// Requests the configured lines from the GPIO character devices.
#[cfg(feature = "gpio")]
pub fn open(configs: &[GpioConfig]) -> Result<GpioOutputs<linux_embedded_hal::CdevPin>, GpioError> {
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    let mut pins = Vec::with_capacity(configs.len());
    for cfg in configs {
        let err = |message: String| GpioError {
            name: cfg.name.0.clone(),
            chip: cfg.chip.clone(),
            line: cfg.line,
            message,
        };
        let mut chip = Chip::new(&cfg.chip).map_err(|e| err(format!("cannot open chip: {e}")))?;
        let line = chip
            .get_line(cfg.line)
            .map_err(|e| err(format!("no such line (chip has {}): {e}", chip.num_lines())))?;
        let inactive = u8::from(cfg.active_low);
        let handle = line
            .request(LineRequestFlags::OUTPUT, inactive, "ferd")
            .map_err(|e| err(format!("cannot request line as output: {e}")))?;
        let pin = linux_embedded_hal::CdevPin::new(handle)
            .map_err(|e| err(format!("cannot read line info: {e}")))?;
        pins.push((cfg.clone(), pin));
    }
    GpioOutputs::new(pins)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A pin that records the physical levels written to it.
    #[derive(Clone, Default)]
    struct Probe(Rc<RefCell<Vec<bool>>>);

    impl embedded_hal::digital::ErrorType for Probe {
        type Error = core::convert::Infallible;
    }

    impl OutputPin for Probe {
        fn set_low(&mut self) -> Result<(), Self::Error> {
            self.0.borrow_mut().push(false);
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Self::Error> {
            self.0.borrow_mut().push(true);
            Ok(())
        }
    }

    fn cfg(text: &str) -> GpioConfig {
        toml::from_str(&format!(
            "name = \"out\"\nchip = \"/dev/gpiochip0\"\nline = 3\n{text}"
        ))
        .unwrap()
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn steady_output_follows_its_alert_and_respects_active_low() {
        let probe = Probe::default();
        let mut g = GpioOutputs::new(vec![(
            cfg("alerts = [\"distress\"]\nactive_low = true"),
            probe.clone(),
        )])
        .unwrap();
        g.update(ms(0), &[], true).unwrap();
        g.update(ms(10), &["smile"], true).unwrap();
        g.update(ms(20), &["distress"], true).unwrap();
        g.update(ms(30), &["distress"], true).unwrap();
        g.update(ms(40), &[], true).unwrap();
        // Initial safe state (high = inactive for active-low), then on (low), then off.
        assert_eq!(*probe.0.borrow(), vec![true, false, true]);
    }

    #[test]
    fn blink_pattern_beeps_while_active() {
        let probe = Probe::default();
        let mut g = GpioOutputs::new(vec![(
            cfg("alerts = [\"a\"]\npattern = \"blink\"\non = 0.1\noff = 0.2"),
            probe.clone(),
        )])
        .unwrap();
        let mut levels = Vec::new();
        for t in (0..600).step_by(50) {
            g.update(ms(1000 + t), &["a"], true).unwrap();
            levels.push(g.levels()[0].1.unwrap());
        }
        assert_eq!(
            levels,
            [true, true, false, false, false, false, true, true, false, false, false, false]
        );
    }

    #[test]
    fn heartbeat_follows_health() {
        let probe = Probe::default();
        let mut g = GpioOutputs::new(vec![(cfg("heartbeat = true"), probe.clone())]).unwrap();
        g.update(ms(0), &[], true).unwrap();
        g.update(ms(10), &["x"], false).unwrap();
        assert_eq!(*probe.0.borrow(), vec![false, true, false]);
    }

    #[test]
    fn drop_drives_outputs_inactive() {
        let probe = Probe::default();
        {
            let mut g = GpioOutputs::new(vec![(cfg("alerts = [\"a\"]"), probe.clone())]).unwrap();
            g.update(ms(0), &["a"], true).unwrap();
        }
        assert_eq!(*probe.0.borrow(), vec![false, true, false]);
    }

    #[test]
    fn panic_while_active_still_releases() {
        let probe = Probe::default();
        let p = probe.clone();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let mut g = GpioOutputs::new(vec![(cfg("alerts = [\"a\"]"), p)]).unwrap();
            g.update(ms(0), &["a"], true).unwrap();
            panic!("analysis failed");
        }));
        assert!(r.is_err());
        assert_eq!(probe.0.borrow().last(), Some(&false));
    }
}
