//! GPIO outputs: buzzers, LEDs and relays driven by alerts, a "healthy"
//! heartbeat line and a "system unavailable" tell-tale.
//!
//! The pipeline sees GPIO as one more event sink: [`GpioSink`] reads the
//! alert and health events it is given and, at each flush (once per
//! processed frame), publishes what each output should show into a shared
//! [`GpioState`]. A [`GpioDriver`] thread applies that state to the lines
//! every 20 ms, so blink timing does not depend on the frame rate.
//!
//! Each output is an `embedded-hal` [`OutputPin`]; on Linux it is a line of
//! a GPIO character device requested through `linux-embedded-hal` (feature
//! `gpio`). Levels are computed from logical states and inverted here for
//! active-low wiring, so the kernel request is a plain output.
//!
//! Safety rule: an alarm is never stuck.
//! - While ferd is degraded, or when the analysis loop has published
//!   nothing for `health.degraded_after` (hung in a model, say), alert
//!   outputs are inactive, the heartbeat is off and the tell-tale on.
//! - [`GpioOutputs::safe_state`] drives every alert and heartbeat output
//!   inactive and the tell-tale active (a stopped ferd is an unavailable
//!   system; the kernel leaves a released line at its last level); it runs
//!   at start, on every exit path, and in `Drop` (so a panic that unwinds
//!   through the owner releases the buzzer too).

use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use embedded_hal::digital::OutputPin;

pub use crate::config::{GpioConfig, PatternConfig};
use crate::events::{Event, EventKind};
use crate::sink::events::{EventSink, SinkError};

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
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// Active while any of its alerts is (which ones: [`GpioSink`]).
    Alerts,
    /// Active while frames are analysed and ferd is not degraded.
    Heartbeat,
    /// Active while ferd is degraded or silent, or cannot watch the
    /// driver's eyes.
    Degraded,
}

impl Role {
    fn of(cfg: &GpioConfig) -> Role {
        if cfg.heartbeat {
            Role::Heartbeat
        } else if cfg.degraded {
            Role::Degraded
        } else {
            Role::Alerts
        }
    }
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
            let role = Role::of(&cfg);
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

    /// Applies `state` at monotonic time `now`. `stale`: the analysis
    /// loop has not published for too long, which counts as degraded.
    pub fn apply(
        &mut self,
        now: Duration,
        state: &GpioState,
        stale: bool,
    ) -> Result<(), GpioError> {
        let unavailable = state.degraded || stale;
        let mut first_err = None;
        for (i, o) in self.outputs.iter_mut().enumerate() {
            let wanted = match o.role {
                Role::Alerts => !unavailable && state.alerts.get(i).copied().unwrap_or(false),
                Role::Heartbeat => !unavailable,
                // Eyes that cannot be watched light the tell-tale only:
                // ferd still sees faces, and its other alerts stand.
                Role::Degraded => unavailable || state.unwatched,
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

    /// Drives every alert and heartbeat output inactive, and every
    /// tell-tale active (ferd is not watching). Tries all of them even if
    /// one fails.
    pub fn safe_state(&mut self) -> Result<(), GpioError> {
        let mut first_err = None;
        for o in &mut self.outputs {
            o.active_since = None;
            o.level = None; // force the write
            if let Err(e) = set(o, o.role == Role::Degraded) {
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

/// What the outputs should show, published by [`GpioSink`] at each flush.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpioState {
    /// Per output, in config order: whether an alert it follows is active.
    pub alerts: Vec<bool>,
    /// ferd is degraded.
    pub degraded: bool,
    /// ferd cannot watch the driver (`driver_unwatched`): the tell-tale
    /// only.
    pub unwatched: bool,
    /// When the analysis loop last published; `None` before it first does.
    pub published: Option<Instant>,
}

impl GpioState {
    /// Whether the analysis loop has been silent for more than
    /// `stale_after` (or never published).
    pub fn stale(&self, stale_after: Duration) -> bool {
        self.published.is_none_or(|t| t.elapsed() > stale_after)
    }
}

/// The pipeline's end of the GPIO outputs: an [`EventSink`] that turns
/// alert and health events into a [`GpioState`] for the driver thread.
pub struct GpioSink {
    /// Per output: the alerts it follows.
    follows: Vec<Vec<String>>,
    /// Names of the alerts active now.
    active: Vec<String>,
    state: GpioState,
    shared: Arc<Mutex<GpioState>>,
}

impl GpioSink {
    /// A sink for the outputs of `configs` (in the same order as the
    /// [`GpioOutputs`] built from them), publishing into `shared`.
    pub fn new(configs: &[GpioConfig], shared: Arc<Mutex<GpioState>>) -> GpioSink {
        GpioSink {
            follows: configs
                .iter()
                .map(|c| c.alerts.iter().map(|a| a.0.clone()).collect())
                .collect(),
            active: Vec::new(),
            state: GpioState {
                alerts: vec![false; configs.len()],
                degraded: false,
                unwatched: false,
                published: None,
            },
            shared,
        }
    }

    fn refresh_alerts(&mut self) {
        for (wanted, follows) in self.state.alerts.iter_mut().zip(&self.follows) {
            *wanted = follows.iter().any(|f| self.active.contains(f));
        }
    }
}

impl EventSink for GpioSink {
    fn emit(&mut self, event: &Event) -> Result<(), SinkError> {
        match &event.kind {
            EventKind::AlertRaised { alert, .. } => {
                if !self.active.contains(alert) {
                    self.active.push(alert.clone());
                }
                self.refresh_alerts();
            }
            EventKind::AlertCleared { alert, .. } => {
                self.active.retain(|a| a != alert);
                self.refresh_alerts();
            }
            EventKind::Degraded { .. } => self.state.degraded = true,
            EventKind::Recovered { .. } => self.state.degraded = false,
            EventKind::DriverUnwatched { .. } => self.state.unwatched = true,
            EventKind::DriverWatched { .. } => self.state.unwatched = false,
            _ => {}
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.state.published = Some(Instant::now());
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        // clone_from reuses the vector: no allocation per frame.
        shared.clone_from(&self.state);
        Ok(())
    }
}

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
    /// Starts driving `outputs` from `state`; a state not published for
    /// `stale_after` counts as degraded.
    pub fn spawn<P: OutputPin + Send + 'static>(
        mut outputs: GpioOutputs<P>,
        state: Arc<Mutex<GpioState>>,
        stale_after: Duration,
    ) -> std::io::Result<GpioDriver> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("gpio".into())
            .spawn(move || {
                let start = Instant::now();
                let mut failing = false;
                let mut now = GpioState::default();
                while !flag.load(Ordering::Relaxed) {
                    // Copied out so that the lock is not held over device
                    // writes.
                    now.clone_from(&state.lock().unwrap_or_else(|p| p.into_inner()));
                    let stale = now.stale(stale_after);
                    match outputs.apply(start.elapsed(), &now, stale) {
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

    /// A state with the outputs' alert flags and health.
    fn state(alerts: &[bool], degraded: bool) -> GpioState {
        GpioState {
            alerts: alerts.to_vec(),
            degraded,
            unwatched: false,
            published: Some(Instant::now()),
        }
    }

    fn event(kind: EventKind) -> Event {
        Event::new(kind, Duration::ZERO, 0)
    }

    fn raised(alert: &str) -> Event {
        event(EventKind::AlertRaised {
            alert: alert.into(),
            track: 1,
            cue: crate::events::AlertCue::Expression {
                expression: crate::expression::Expression::Sad,
                probability: 0.9,
            },
        })
    }

    fn cleared(alert: &str) -> Event {
        event(EventKind::AlertCleared {
            alert: alert.into(),
            duration: 1.0,
            reason: "condition",
        })
    }

    #[test]
    fn steady_output_follows_its_alert_and_respects_active_low() {
        let probe = Probe::default();
        let mut g = GpioOutputs::new(vec![(
            cfg("alerts = [\"distress\"]\nactive_low = true"),
            probe.clone(),
        )])
        .unwrap();
        g.apply(ms(0), &state(&[false], false), false).unwrap();
        g.apply(ms(20), &state(&[true], false), false).unwrap();
        g.apply(ms(30), &state(&[true], false), false).unwrap();
        g.apply(ms(40), &state(&[false], false), false).unwrap();
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
            g.apply(ms(1000 + t), &state(&[true], false), false)
                .unwrap();
            levels.push(g.levels()[0].1.unwrap());
        }
        assert_eq!(
            levels,
            [true, true, false, false, false, false, true, true, false, false, false, false]
        );
    }

    #[test]
    fn heartbeat_and_tell_tale_follow_health_and_silence() {
        let beat = Probe::default();
        let tell = Probe::default();
        let alarm = Probe::default();
        let mut g = GpioOutputs::new(vec![
            (cfg("heartbeat = true"), beat.clone()),
            (cfg("degraded = true"), tell.clone()),
            (cfg("alerts = [\"a\"]"), alarm.clone()),
        ])
        .unwrap();
        let levels = |g: &GpioOutputs<Probe>| -> Vec<bool> {
            g.levels().iter().map(|l| l.1.unwrap()).collect()
        };
        g.apply(ms(0), &state(&[false, false, true], false), false)
            .unwrap();
        assert_eq!(levels(&g), [true, false, true]);
        // Degraded: no alarm even if the state still had one.
        g.apply(ms(10), &state(&[false, false, true], true), false)
            .unwrap();
        assert_eq!(levels(&g), [false, true, false]);
        // Healthy state, but published too long ago: the same.
        g.apply(ms(20), &state(&[false, false, true], false), true)
            .unwrap();
        assert_eq!(levels(&g), [false, true, false]);
        // Stopped: only the tell-tale on.
        g.apply(ms(30), &state(&[false, false, true], false), false)
            .unwrap();
        g.safe_state().unwrap();
        assert_eq!(levels(&g), [false, true, false]);
        // Never published.
        assert!(GpioState::default().stale(Duration::from_secs(3600)));
        assert!(!state(&[], false).stale(Duration::from_secs(3600)));
    }

    #[test]
    fn sink_turns_alert_and_health_events_into_state() {
        let shared = Arc::new(Mutex::new(GpioState::default()));
        let configs = [
            cfg("alerts = [\"a\", \"b\"]"),
            cfg("alerts = [\"b\"]"),
            cfg("degraded = true"),
        ];
        let mut sink = GpioSink::new(&configs, Arc::clone(&shared));
        let published = || shared.lock().unwrap().clone();
        sink.emit(&raised("a")).unwrap();
        assert!(published().published.is_none(), "published only at flush");
        sink.flush().unwrap();
        assert_eq!(published().alerts, [true, false, false]);
        sink.emit(&raised("b")).unwrap();
        sink.emit(&cleared("a")).unwrap();
        sink.flush().unwrap();
        assert_eq!(published().alerts, [true, true, false]);
        sink.emit(&cleared("b")).unwrap();
        sink.emit(&event(EventKind::Degraded {
            reason: "analysis_failed",
            error: "x".into(),
        }))
        .unwrap();
        sink.flush().unwrap();
        let s = published();
        assert_eq!((s.alerts.as_slice(), s.degraded), (&[false; 3][..], true));
        sink.emit(&event(EventKind::Recovered {
            reason: "analysis_failed",
            duration: 2.0,
        }))
        .unwrap();
        sink.flush().unwrap();
        assert!(!published().degraded);
        sink.emit(&event(EventKind::DriverUnwatched { seconds: 10.5 }))
            .unwrap();
        sink.flush().unwrap();
        assert!(published().unwatched && !published().degraded);
        sink.emit(&event(EventKind::DriverWatched { duration: 1.0 }))
            .unwrap();
        sink.flush().unwrap();
        assert!(!published().unwatched);
    }

    #[test]
    fn unwatched_lights_only_the_tell_tale() {
        let mut g = GpioOutputs::new(vec![
            (cfg("heartbeat = true"), Probe::default()),
            (cfg("degraded = true"), Probe::default()),
            (cfg("alerts = [\"a\"]"), Probe::default()),
        ])
        .unwrap();
        let mut s = state(&[false, false, true], false);
        s.unwatched = true;
        g.apply(ms(0), &s, false).unwrap();
        let levels: Vec<bool> = g.levels().iter().map(|l| l.1.unwrap()).collect();
        assert_eq!(levels, [true, true, true]);
    }

    #[test]
    fn drop_drives_outputs_inactive() {
        let probe = Probe::default();
        {
            let mut g = GpioOutputs::new(vec![(cfg("alerts = [\"a\"]"), probe.clone())]).unwrap();
            g.apply(ms(0), &state(&[true], false), false).unwrap();
        }
        assert_eq!(*probe.0.borrow(), vec![false, true, false]);
    }

    #[test]
    fn panic_while_active_still_releases() {
        let probe = Probe::default();
        let p = probe.clone();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let mut g = GpioOutputs::new(vec![(cfg("alerts = [\"a\"]"), p)]).unwrap();
            g.apply(ms(0), &state(&[true], false), false).unwrap();
            panic!("analysis failed");
        }));
        assert!(r.is_err());
        assert_eq!(probe.0.borrow().last(), Some(&false));
    }
}
