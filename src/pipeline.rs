//! The analysis loop: frames in, events and display updates out.
//!
//! [`Pipeline`] holds every stage after the source and processes one frame
//! at a time: analyse ([`Analyze`]: detect + classify), track, evaluate
//! rules, then hand events to the sinks (JSON lines, GPIO, ...) and the
//! state to the display. Nothing flows back: sinks only receive.
//!
//! With an eye rule configured it also says whether it can watch the
//! driver at all: no known eye state on any face for
//! [`crate::driver::UNWATCHED_AFTER`] is `driver_unwatched` (tell-tale
//! outputs on, alerts and tracks kept) until one is known again
//! (`driver_watched`).
//!
//! It also keeps ferd's health. A frame the analyser fails on is counted
//! (`failed`); failures lasting `health.degraded_after` (frame time), a
//! live source that delivers nothing for that long (wall time), or a lost
//! camera make ferd **degraded**: a `degraded` event, every track lost and
//! every alert cleared, a heartbeat output off and a tell-tale output on
//! (sink/gpio.rs), and the watchdog starved ([`Service::alive`]). The first
//! analysed frame after it (or the camera's return) is `recovered`.
//!
//! [`run`] drives it from a [`FrameSource`], in one of three [`Pace`]s:
//! frame by frame (file replays: as fast as possible, nothing dropped,
//! deterministic), or through a one-slot [`Mailbox`] filled by a capture
//! thread that always leaves only the newest frame (live cameras, and
//! replays at the clip's own rate), so a slow model drops frames instead of
//! building latency.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::driver::{EyeState, Watch, WatchChange, PERCLOS_DISPLAY_WINDOW, PERCLOS_MIN_COVERAGE};
use crate::events::{box_array, seconds, AlertCue, DriverCue, Event, EventKind, ProbMap};
use crate::expression::Expression;
use crate::frame::Frame;
use crate::rules::{AlertChange, ClearReason, Cue, Rules};
use crate::sink::{Display, DriverLine, EventSink, StatusScreen};
use crate::source::{FrameSource, SourceEvent};
use crate::track::{TrackChange, Tracker};
use crate::vision::{Analyze, Observation, StageTimes};

/// Counters of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Frames analysed.
    pub frames: u64,
    /// Items the source could not deliver.
    pub skipped: u64,
    /// Frames the analyser failed on.
    pub failed: u64,
    /// Frames dropped by the mailbox because analysis was busy.
    pub dropped: u64,
    /// Faces detected over all frames.
    pub faces: u64,
    /// Tracks created.
    pub tracks: u64,
    /// Events the sinks failed to take.
    pub sink_errors: u64,
}

/// Why ferd is degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DegradedReason {
    /// The analyser failed on every frame for `health.degraded_after`.
    AnalysisFailed,
    /// A live source delivered no frame for `health.degraded_after`.
    NoFrames,
    /// The camera is gone (the source is reopening it).
    CameraLost,
}

impl DegradedReason {
    /// Name used in events.
    pub fn name(self) -> &'static str {
        match self {
            DegradedReason::AnalysisFailed => "analysis_failed",
            DegradedReason::NoFrames => "no_frames",
            DegradedReason::CameraLost => "camera_lost",
        }
    }

    /// The reason given to the alerts it clears (a lost camera keeps its
    /// own name, as before the degraded state existed).
    fn clear_reason(self) -> ClearReason {
        match self {
            DegradedReason::CameraLost => ClearReason::CameraLost,
            DegradedReason::AnalysisFailed | DegradedReason::NoFrames => ClearReason::Degraded,
        }
    }
}

/// What the health decision rests on.
#[derive(Debug)]
struct Health {
    degraded_after: Duration,
    camera_lost: bool,
    /// Frame time of the first failed frame of the current run of failures.
    failing_since: Option<Duration>,
    /// A live source has delivered nothing for `degraded_after`.
    stalled: bool,
    last_error: String,
    /// A frame took longer than `degraded_after` to analyse (logged once).
    warned_slow: bool,
    /// Degraded now: why, and since when (frame time).
    degraded: Option<(DegradedReason, Duration)>,
}

impl Health {
    /// What the state should be at frame time `t`.
    fn wanted(&self, t: Duration) -> Option<DegradedReason> {
        if self.camera_lost {
            Some(DegradedReason::CameraLost)
        } else if self
            .failing_since
            .is_some_and(|since| t.saturating_sub(since) >= self.degraded_after)
        {
            Some(DegradedReason::AnalysisFailed)
        } else if self.stalled {
            Some(DegradedReason::NoFrames)
        } else {
            None
        }
    }
}

/// Every stage after the source.
pub struct Pipeline {
    analyzer: Box<dyn Analyze + Send>,
    tracker: Tracker,
    rules: Rules,
    sinks: Vec<Box<dyn EventSink + Send>>,
    display: Option<Box<dyn Display + Send>>,
    expression_interval: Option<Duration>,
    /// Per track: the last reported expression and when.
    reported: HashMap<u64, (Expression, Duration)>,
    summary: Summary,
    last_time: Duration,
    last_frame: u64,
    observations: Vec<Observation>,
    track_changes: Vec<TrackChange>,
    alert_changes: Vec<AlertChange>,
    health: Health,
    /// Whether the driver can be watched; only with an eye rule.
    watch: Option<Watch>,
    /// Where the last frame's time went.
    times: FrameTimes,
}

/// Where [`Pipeline::process`] spent one frame's time (`ferd bench`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FrameTimes {
    /// The analyser's stages (detector, landmarks, classifier).
    pub analysis: StageTimes,
    /// Tracker, expression reports and rules, the event sinks excluded.
    pub track_rules: Duration,
    /// Handing events to the sinks (the bus's queue and GPIO state),
    /// flushes included.
    pub sinks: Duration,
}

impl Pipeline {
    /// Builds the pipeline from an analyser, a config and outputs.
    pub fn new(
        analyzer: Box<dyn Analyze + Send>,
        config: &Config,
        sinks: Vec<Box<dyn EventSink + Send>>,
        display: Option<Box<dyn Display + Send>>,
    ) -> Pipeline {
        let interval = config.events.expression_interval.0;
        let rules = Rules::new(&config.rules);
        Pipeline {
            analyzer,
            tracker: Tracker::new(&config.tracker),
            watch: rules.watches_eyes().then(Watch::default),
            rules,
            sinks,
            display,
            expression_interval: (interval > 0.0).then(|| Duration::from_secs_f64(interval)),
            reported: HashMap::new(),
            summary: Summary::default(),
            last_time: Duration::ZERO,
            last_frame: 0,
            observations: Vec::new(),
            track_changes: Vec::new(),
            alert_changes: Vec::new(),
            times: FrameTimes::default(),
            health: Health {
                degraded_after: Duration::from_secs_f64(config.health.degraded_after.0),
                camera_lost: false,
                failing_since: None,
                stalled: false,
                last_error: String::new(),
                warned_slow: false,
                degraded: None,
            },
        }
    }

    /// The counters so far.
    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// Where the last [`Pipeline::process`] spent its time.
    pub fn times(&self) -> FrameTimes {
        self.times
    }

    /// What the last analysed frame's analyser saw (empty after a failed
    /// frame).
    pub fn observations(&self) -> &[Observation] {
        &self.observations
    }

    /// Why ferd is degraded, if it is.
    pub fn degraded(&self) -> Option<DegradedReason> {
        self.health.degraded.map(|(reason, _)| reason)
    }

    /// Announces the start of a run.
    pub fn start(&mut self, source: &str) {
        let model = self.analyzer.model_name().to_string();
        self.emit(EventKind::Started {
            source: source.to_string(),
            model,
        });
        self.flush();
    }

    /// Records an input item that could not be read. The first ten are
    /// logged, then every hundredth: a camera sending corrupt frames must
    /// not flood the journal.
    pub fn skip(&mut self, what: &dyn std::fmt::Display) {
        self.summary.skipped += 1;
        let n = self.summary.skipped;
        if n <= 10 || n % 100 == 0 {
            log::warn!("skipped ({n} so far): {what}");
        }
    }

    /// Analyses one frame and emits what changed. Returns whether the
    /// frame was analysed (the watchdog is fed only then).
    pub fn process(&mut self, frame: &Frame) -> bool {
        let t = frame.timestamp;
        self.last_time = t;
        self.last_frame = frame.sequence;
        let mut observations = std::mem::take(&mut self.observations);
        let began = Instant::now();
        let result = self.analyzer.analyze_into(frame, &mut observations);
        let took = began.elapsed();
        if took > self.health.degraded_after && !self.health.warned_slow {
            // The GPIO thread counts a loop silent this long as hung and
            // shows the system unavailable; say why once.
            self.health.warned_slow = true;
            log::warn!(
                "analysing one frame took {:.1} s, longer than health.degraded_after ({:.1} s): \
                 GPIO outputs show the system unavailable meanwhile; raise degraded_after",
                took.as_secs_f64(),
                self.health.degraded_after.as_secs_f64()
            );
        }
        self.times = FrameTimes {
            analysis: self.analyzer.stage_times(),
            ..FrameTimes::default()
        };
        let analysed = match result {
            Ok(()) => {
                self.health.failing_since = None;
                self.health.stalled = false;
                self.update_health();
                let (began, sinks) = (Instant::now(), self.times.sinks);
                self.observe(t, &observations);
                // `emit` counted the sinks' share of that in `times.sinks`.
                let emitting = self.times.sinks.saturating_sub(sinks);
                self.times.track_rules = began.elapsed().saturating_sub(emitting);
                true
            }
            Err(e) => {
                self.summary.failed += 1;
                let n = self.summary.failed;
                if n <= 10 || n % 100 == 0 {
                    log::warn!("analysis failed ({n} frames so far): {}: {e}", frame.origin);
                }
                self.health.failing_since.get_or_insert(t);
                self.health.last_error = format!("{}: {e}", frame.origin);
                self.update_health();
                false
            }
        };
        self.observations = observations;
        self.update_display();
        self.flush();
        analysed
    }

    /// Tracks, expression reports and rules for the observations of the
    /// frame at `t`.
    fn observe(&mut self, t: Duration, observations: &[Observation]) {
        self.summary.frames += 1;
        self.summary.faces += observations.len() as u64;

        self.track_changes.clear();
        self.tracker
            .update(t, observations, &mut self.track_changes);
        let changes = std::mem::take(&mut self.track_changes);
        for c in &changes {
            if let TrackChange::Appeared { id } = *c {
                self.summary.tracks += 1;
                if let Some(track) = self.tracker.tracks().iter().find(|tr| tr.id == id) {
                    let kind = EventKind::FaceAppeared {
                        track: id,
                        bbox: box_array(&track.bbox),
                        score: crate::events::round(track.score, 1e4),
                    };
                    self.emit(kind);
                }
            }
        }
        self.report_expressions(t);
        for c in &changes {
            if let TrackChange::Lost { id, duration } = *c {
                self.reported.remove(&id);
                self.emit(EventKind::FaceLost {
                    track: id,
                    duration: seconds(duration),
                });
            }
        }
        self.track_changes = changes;

        self.alert_changes.clear();
        self.rules
            .update(t, self.tracker.tracks(), &mut self.alert_changes);
        self.emit_alert_changes();

        if let Some(watch) = &mut self.watch {
            let known = self
                .tracker
                .tracks()
                .iter()
                .any(|tr| tr.driver.eye() != EyeState::Unknown);
            if let Some(change) = watch.update(t, known) {
                self.emit_watch_change(change);
            }
        }
    }

    fn emit_watch_change(&mut self, change: WatchChange) {
        match change {
            WatchChange::Unwatched { unknown } => {
                log::warn!(
                    "cannot watch the driver: no eye state known for {:.1} s",
                    unknown.as_secs_f64()
                );
                self.emit(EventKind::DriverUnwatched {
                    seconds: seconds(unknown),
                });
            }
            WatchChange::Watched { duration } => {
                log::info!("watching the driver again");
                self.emit(EventKind::DriverWatched {
                    duration: seconds(duration),
                });
            }
        }
    }

    /// Switches to a reloaded configuration between two frames: its
    /// analyser (models already loaded and verified), rules, tracker
    /// settings, expression interval and health timeout. Tracks are kept;
    /// alerts of removed or changed rules are cleared (`reason: reload`,
    /// see [`Rules::reconfigure`]); then `config_reloaded`. The outputs
    /// (sinks, display, GPIO) are the caller's: it must not reload a
    /// configuration that changes them.
    pub fn reconfigure(&mut self, analyzer: Box<dyn Analyze + Send>, config: &Config, name: &str) {
        self.analyzer = analyzer;
        self.tracker.set_config(&config.tracker);
        let interval = config.events.expression_interval.0;
        self.expression_interval = (interval > 0.0).then(|| Duration::from_secs_f64(interval));
        self.health.degraded_after = Duration::from_secs_f64(config.health.degraded_after.0);
        self.alert_changes.clear();
        self.rules
            .reconfigure(&config.rules, self.last_time, &mut self.alert_changes);
        self.emit_alert_changes();
        match (self.rules.watches_eyes(), self.watch.take()) {
            (true, watch) => self.watch = Some(watch.unwrap_or_default()),
            (false, Some(watch)) => {
                if let Some(change) = watch.end(self.last_time) {
                    self.emit_watch_change(change);
                }
            }
            (false, None) => {}
        }
        self.emit(EventKind::ConfigReloaded {
            config: name.to_string(),
            rules: config.rules.len(),
        });
        self.update_display();
        self.flush();
    }

    /// A reload was refused: the running configuration stays; the error
    /// goes to the log and the event stream (`reload_failed`).
    pub fn reload_failed(&mut self, name: &str, error: &str) {
        log::error!("reload of {name} refused, the running configuration stays: {error}");
        self.emit(EventKind::ReloadFailed {
            config: name.to_string(),
            error: error.to_string(),
        });
        self.flush();
    }

    /// A live source has delivered no frame for `elapsed` (wall time):
    /// past `health.degraded_after`, ferd is degraded (`no_frames`) until
    /// the next analysed frame.
    pub fn idle(&mut self, elapsed: Duration) {
        if elapsed >= self.health.degraded_after && !self.health.stalled {
            self.health.stalled = true;
            self.health.last_error = format!(
                "no frame from the source for {:.1} s",
                elapsed.as_secs_f64()
            );
            self.update_health();
            self.update_display();
            self.flush();
        }
    }

    /// Reports a change of the source's device. `camera_lost` makes ferd
    /// degraded: every track is lost and every alert cleared (reason
    /// `camera_lost`), since nothing is known about the faces any more and
    /// an alarm must not stay on while the camera is away.
    pub fn source_event(&mut self, event: SourceEvent) {
        let away = match event {
            SourceEvent::Lost { device, error } => {
                self.health.camera_lost = true;
                // A run of failures does not span the loss.
                self.health.failing_since = None;
                // The source's error names the device already.
                self.health.last_error.clone_from(&error);
                self.emit(EventKind::CameraLost { device, error });
                None
            }
            SourceEvent::Restored { device, offline } => {
                self.health.camera_lost = false;
                self.health.stalled = false;
                self.emit(EventKind::CameraRestored {
                    device,
                    offline: seconds(offline),
                });
                // Frame time stands still while the camera is away: the
                // time degraded is the time it was offline.
                Some(offline)
            }
        };
        self.update_health_after(away);
        self.update_display();
        self.flush();
    }

    /// Enters or leaves the degraded state as the health facts say.
    fn update_health(&mut self) {
        self.update_health_after(None);
    }

    /// [`Pipeline::update_health`]; a recovery lasted `away` if given,
    /// else the frame time since it began.
    fn update_health_after(&mut self, away: Option<Duration>) {
        let wanted = self.health.wanted(self.last_time);
        match (self.health.degraded, wanted) {
            (None, Some(reason)) => {
                self.health.degraded = Some((reason, self.last_time));
                if let Some(watch) = &mut self.watch {
                    // Time ferd cannot see at all is not time the eyes
                    // were unknown: count afresh after recovery.
                    watch.restart();
                }
                log::error!("degraded ({}): {}", reason.name(), self.health.last_error);
                let error = self.health.last_error.clone();
                self.emit(EventKind::Degraded {
                    reason: reason.name(),
                    error,
                });
                self.end_tracks_and_alerts(reason.clear_reason());
            }
            (Some((reason, since)), None) => {
                self.health.degraded = None;
                log::info!("recovered from {}", reason.name());
                self.emit(EventKind::Recovered {
                    reason: reason.name(),
                    duration: seconds(away.unwrap_or(self.last_time.saturating_sub(since))),
                });
            }
            _ => {}
        }
    }

    /// Ends the run: every track is lost, every alert cleared for
    /// `reason` (`shutdown`, or `error` when the run failed).
    pub fn finish(&mut self, reason: ClearReason) -> Summary {
        self.end_tracks_and_alerts(reason);
        let s = self.summary;
        self.emit(EventKind::Status {
            frames: s.frames,
            skipped: s.skipped,
            failed: s.failed,
            faces: s.faces,
            tracks: s.tracks,
        });
        // The display keeps the last analysed frame's picture until its
        // backend's shutdown decides what a stopped daemon shows.
        if let Some(d) = &mut self.display {
            if let Err(e) = d.shutdown() {
                log::error!("{e}");
            }
        }
        self.flush();
        self.summary
    }
    /// Loses every track (`face_lost`) and clears every active alert.
    fn end_tracks_and_alerts(&mut self, reason: ClearReason) {
        self.track_changes.clear();
        self.tracker.finish(&mut self.track_changes);
        let changes = std::mem::take(&mut self.track_changes);
        for c in &changes {
            if let TrackChange::Lost { id, duration } = *c {
                self.emit(EventKind::FaceLost {
                    track: id,
                    duration: seconds(duration),
                });
            }
        }
        self.track_changes = changes;
        self.reported.clear();
        self.alert_changes.clear();
        self.rules
            .clear_all(self.last_time, reason, &mut self.alert_changes);
        self.emit_alert_changes();
    }

    /// `expression` events: when a track's top expression changes, and
    /// otherwise every `expression_interval` if one is set.
    fn report_expressions(&mut self, t: Duration) {
        let mut due = Vec::new();
        for track in self.tracker.tracks().iter().filter(|tr| tr.seen_now) {
            let (top, _) = track.probs.top();
            let report = match self.reported.get(&track.id) {
                None => true,
                Some(&(last, at)) => {
                    last != top
                        || self
                            .expression_interval
                            .is_some_and(|iv| t.saturating_sub(at) >= iv)
                }
            };
            if report {
                due.push(EventKind::Expression {
                    track: track.id,
                    bbox: box_array(&track.bbox),
                    expression: top,
                    probs: ProbMap(track.probs),
                });
                self.reported.insert(track.id, (top, t));
            }
        }
        for kind in due {
            self.emit(kind);
        }
    }

    fn emit_alert_changes(&mut self) {
        let changes = std::mem::take(&mut self.alert_changes);
        for c in &changes {
            let kind = match c {
                AlertChange::Raised { alert, found } => {
                    log::info!(
                        "alert {alert} raised (track {}, {})",
                        found.track,
                        describe(&found.cue)
                    );
                    let cue = alert_cue(found.cue);
                    EventKind::AlertRaised {
                        alert: alert.clone(),
                        track: found.track,
                        cue,
                    }
                }
                AlertChange::Cleared {
                    alert,
                    duration,
                    reason,
                } => {
                    log::info!("alert {alert} cleared ({})", reason.name());
                    EventKind::AlertCleared {
                        alert: alert.clone(),
                        duration: seconds(*duration),
                        reason: reason.name(),
                    }
                }
            };
            self.emit(kind);
        }
        self.alert_changes = changes;
    }

    fn update_display(&mut self) {
        let Some(display) = &mut self.display else {
            return;
        };
        // The main face is the largest one: the driver, the person closest
        // to the kiosk.
        let main = self
            .tracker
            .tracks()
            .iter()
            .max_by(|a, b| (a.bbox.w * a.bbox.h).total_cmp(&(b.bbox.w * b.bbox.h)));
        // Only with a rule that watches the eyes: expression-only configs
        // keep their screen, and have no eye state to show anyway.
        let t = self.last_time;
        let driver = self.watch.as_ref().map(|watch| {
            let perclos = main.and_then(|tr| {
                let p = tr.driver.perclos(t, PERCLOS_DISPLAY_WINDOW);
                p.value.filter(|_| p.coverage >= PERCLOS_MIN_COVERAGE)
            });
            DriverLine {
                eyes: main.map_or(EyeState::Unknown, |tr| tr.driver.eye()),
                closed_for: main.and_then(|tr| tr.driver.closed_for(t)),
                perclos,
                watching: !watch.unwatched(),
            }
        });
        let screen = StatusScreen {
            faces: self.tracker.tracks().len(),
            probs: main.map(|t| t.probs),
            alerts: self.rules.active().map(str::to_string).collect(),
            degraded: self.health.degraded.is_some(),
            driver,
        };
        if let Err(e) = display.show(&screen) {
            log::error!("{e}");
        }
    }

    fn emit(&mut self, kind: EventKind) {
        let began = Instant::now();
        let event = Event::new(kind, self.last_time, self.last_frame);
        for sink in &mut self.sinks {
            if let Err(e) = sink.emit(&event) {
                self.summary.sink_errors += 1;
                // One line for the first failure and then every 1000th, so
                // a full disk does not also flood the journal.
                if self.summary.sink_errors % 1000 == 1 {
                    log::error!("{e} ({} events lost so far)", self.summary.sink_errors);
                }
            }
        }
        self.times.sinks += began.elapsed();
    }

    fn flush(&mut self) {
        let began = Instant::now();
        for sink in &mut self.sinks {
            if let Err(e) = sink.flush() {
                self.summary.sink_errors += 1;
                if self.summary.sink_errors % 1000 == 1 {
                    log::error!("{e}");
                }
            }
        }
        self.times.sinks += began.elapsed();
    }
}

/// A cue in words, for the log.
fn describe(cue: &Cue) -> String {
    match *cue {
        Cue::Expression {
            expression,
            probability,
        } => format!("{expression} {probability:.2}"),
        Cue::EyesClosed { seconds } => format!("eyes closed {:.2} s", seconds.as_secs_f64()),
        Cue::Perclos { perclos } => format!("PERCLOS {perclos:.3}"),
        Cue::Yawns { count } => format!("{count} yawns"),
        Cue::LookingAway {
            yaw,
            pitch,
            seconds,
        } => format!(
            "looking away {:.1} s, yaw {yaw:.0}° pitch {pitch:.0}°",
            seconds.as_secs_f64()
        ),
        Cue::FaceAbsent { seconds } => format!("no face for {:.1} s", seconds.as_secs_f64()),
    }
}

/// The event form of a rule's cue, rounded so events stay short and
/// stable across platforms.
fn alert_cue(cue: Cue) -> AlertCue {
    use crate::events::round;
    match cue {
        Cue::Expression {
            expression,
            probability,
        } => AlertCue::Expression {
            expression,
            probability: round(probability, 1e4),
        },
        Cue::EyesClosed { seconds: s } => {
            AlertCue::Driver(DriverCue::EyesClosed { closed: seconds(s) })
        }
        Cue::Perclos { perclos } => AlertCue::Driver(DriverCue::Perclos {
            perclos: round(perclos, 1e4),
        }),
        Cue::Yawns { count } => AlertCue::Driver(DriverCue::Yawns { yawns: count }),
        Cue::LookingAway {
            yaw,
            pitch,
            seconds: s,
        } => AlertCue::Driver(DriverCue::LookingAway {
            yaw: round(yaw, 10.0),
            pitch: round(pitch, 10.0),
            seconds: seconds(s),
        }),
        Cue::FaceAbsent { seconds: s } => {
            AlertCue::Driver(DriverCue::FaceAbsent { absent: seconds(s) })
        }
    }
}

/// A one-slot mailbox between a producer and a consumer thread: `put`
/// replaces a waiting item not yet taken, `post` queues an event that is
/// never dropped; `take` hands both over in the order they came.
pub struct Mailbox<T, E = ()> {
    slot: Mutex<Slot<T, E>>,
    ready: Condvar,
    replaced: AtomicU64,
}

struct Slot<T, E> {
    queue: VecDeque<Delivery<T, E>>,
    closed: bool,
}

/// What [`Mailbox::take`] hands over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery<T, E> {
    /// The newest item.
    Item(T),
    /// An event, in order.
    Event(E),
}

impl<T, E> Default for Mailbox<T, E> {
    fn default() -> Self {
        Mailbox {
            slot: Mutex::new(Slot {
                queue: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            replaced: AtomicU64::new(0),
        }
    }
}

impl<T, E> Mailbox<T, E> {
    /// Leaves `item`, dropping an older one not yet taken (unless an event
    /// came between them).
    pub fn put(&self, item: T) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        match slot.queue.back_mut() {
            Some(Delivery::Item(old)) => {
                *old = item;
                self.replaced.fetch_add(1, Ordering::Relaxed);
            }
            _ => slot.queue.push_back(Delivery::Item(item)),
        }
        self.ready.notify_one();
    }

    /// Queues an event; events are never dropped.
    pub fn post(&self, event: E) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        slot.queue.push_back(Delivery::Event(event));
        self.ready.notify_one();
    }

    /// Marks the end of the stream; `take` returns `None` once empty.
    pub fn close(&self) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        slot.closed = true;
        self.ready.notify_all();
    }

    /// The next delivery, waiting for one; `None` after `close`.
    pub fn take(&self) -> Option<Delivery<T, E>> {
        self.take_within(None).ok()
    }

    /// Like `take`, but gives up after `timeout` with `Err(true)` if the
    /// mailbox is still open (`Err(false)` once closed and empty).
    pub fn take_timeout(&self, timeout: Duration) -> Result<Delivery<T, E>, bool> {
        self.take_within(Some(timeout))
    }

    fn take_within(&self, timeout: Option<Duration>) -> Result<Delivery<T, E>, bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(d) = slot.queue.pop_front() {
                return Ok(d);
            }
            if slot.closed {
                return Err(false);
            }
            slot = match deadline {
                None => self.ready.wait(slot).unwrap_or_else(|p| p.into_inner()),
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(true);
                    }
                    self.ready
                        .wait_timeout(slot, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).closed
    }

    /// How many items were replaced before being taken.
    pub fn dropped(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }
}

/// How [`run`] takes frames from its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Every frame in order, as fast as analysis goes (file replays:
    /// deterministic).
    Replay,
    /// A capture thread replays the source at its own frame rate into a
    /// one-slot mailbox, as a camera would (`--realtime`).
    Realtime,
    /// A capture thread reads a live camera, which paces itself, into a
    /// one-slot mailbox: analysis always takes the newest frame, and the
    /// frames it had no time for are dropped and counted.
    Live,
}

/// The service manager's side of a run (systemd, through the daemon).
pub trait Service {
    /// A frame was analysed and ferd is not degraded: told after every
    /// such frame and never while degraded. The watchdog hangs on it.
    fn alive(&mut self);
    /// Called between frames, at least once per tick of a live source:
    /// applies what the service manager asked for since the last call
    /// (a configuration reload on SIGHUP) to the pipeline. The default
    /// does nothing (`ferd bench`, tests).
    fn between_frames(&mut self, _pipeline: &mut Pipeline) {}
}

/// Why a run ended early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The capture thread panicked: frames stopped, outputs were made safe.
    #[error("the capture thread failed: {0}")]
    CapturePanicked(String),
    /// The capture thread could not be started.
    #[error("cannot start the capture thread: {0}")]
    CaptureThread(std::io::Error),
}

/// How long stopping waits for the capture thread to return from the
/// source before leaving it behind (see [`run`]).
const CAPTURE_EXIT_WAIT: Duration = Duration::from_secs(2);

/// Runs the pipeline over a source until it ends or `stop` is set.
///
/// Source events (`camera_lost`, `camera_restored`) are never dropped.
/// Every exit path, an error included, ends with [`Pipeline::finish`]:
/// tracks lost, alerts cleared, a `status` event.
pub fn run(
    mut source: Box<dyn FrameSource + Send>,
    pipeline: &mut Pipeline,
    pace: Pace,
    stop: &Arc<AtomicBool>,
    service: &mut dyn Service,
) -> Result<Summary, RunError> {
    pipeline.start(&source.describe());
    if pace == Pace::Replay {
        while !stop.load(Ordering::Relaxed) {
            let item = source.next_frame();
            while let Some(e) = source.take_event() {
                pipeline.source_event(e);
            }
            match item {
                None => break,
                Some(Ok(frame)) => analyse(pipeline, &frame, service),
                Some(Err(e)) => pipeline.skip(&e),
            }
            service.between_frames(pipeline);
        }
        return Ok(pipeline.finish(ClearReason::Shutdown));
    }

    let mailbox = Arc::new(Mailbox::<Frame, SourceEvent>::default());
    let skipped = Arc::new(AtomicU64::new(0));
    let capture = {
        let mailbox = Arc::clone(&mailbox);
        let skipped = Arc::clone(&skipped);
        let stop = Arc::clone(stop);
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || capture(source.as_mut(), pace, &mailbox, &skipped, &stop))
    };
    let handle = match capture {
        Ok(handle) => handle,
        Err(e) => {
            pipeline.finish(ClearReason::Error);
            return Err(RunError::CaptureThread(e));
        }
    };
    // Wake at least four times per `degraded_after` to notice a source
    // that has gone quiet.
    let tick = (pipeline.health.degraded_after / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut last_delivery = Instant::now();
    loop {
        match mailbox.take_timeout(tick) {
            Ok(Delivery::Item(frame)) => {
                last_delivery = Instant::now();
                analyse(pipeline, &frame, service);
            }
            Ok(Delivery::Event(e)) => {
                last_delivery = Instant::now();
                pipeline.source_event(e);
            }
            Err(true) => pipeline.idle(last_delivery.elapsed()),
            Err(false) => break,
        }
        service.between_frames(pipeline);
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    mailbox.close();
    // A source blocked in its device never gets back to its `stop` check:
    // a frozen camera returns no buffer and no error, a pipe no byte. Wait
    // a moment, then stop without it (the thread ends with the process)
    // rather than hang the shutdown until systemd's stop timeout kills ferd
    // with no `status` event and outputs not reset by `finish`.
    let waited = Instant::now();
    while !handle.is_finished() && waited.elapsed() < CAPTURE_EXIT_WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    pipeline.summary.skipped += skipped.load(Ordering::Relaxed);
    pipeline.summary.dropped = mailbox.dropped();
    if !handle.is_finished() {
        log::warn!(
            "the source has delivered nothing for {:.1} s and does not return; stopping without it",
            last_delivery.elapsed().as_secs_f64()
        );
        return Ok(pipeline.finish(ClearReason::Shutdown));
    }
    let joined = handle.join();
    match joined {
        Ok(()) => Ok(pipeline.finish(ClearReason::Shutdown)),
        Err(panic) => {
            pipeline.finish(ClearReason::Error);
            Err(RunError::CapturePanicked(crate::panic_message(&*panic)))
        }
    }
}

/// Processes one frame; the service hears of it only if the frame was
/// analysed and ferd is not degraded.
fn analyse(pipeline: &mut Pipeline, frame: &Frame, service: &mut dyn Service) {
    if pipeline.process(frame) && pipeline.degraded().is_none() {
        service.alive();
    }
}

/// Closes the mailbox when dropped, so the analysis loop ends even when
/// the capture thread unwinds from a panic.
struct CloseOnDrop<'a>(&'a Mailbox<Frame, SourceEvent>);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The capture thread: reads the source into the mailbox until it ends,
/// `stop` is set or the analysis loop closes the mailbox.
fn capture(
    source: &mut (dyn FrameSource + Send),
    pace: Pace,
    mailbox: &Mailbox<Frame, SourceEvent>,
    skipped: &AtomicU64,
    stop: &AtomicBool,
) {
    let _close = CloseOnDrop(mailbox);
    // A replay sleeps until each frame is due; a camera blocks until its
    // next frame anyway.
    let interval = match pace {
        Pace::Realtime => source.frame_interval().unwrap_or(Duration::from_secs(1)),
        Pace::Replay | Pace::Live => Duration::ZERO,
    };
    let start = Instant::now();
    let mut due = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) && !mailbox.is_closed() {
        let item = source.next_frame();
        while let Some(e) = source.take_event() {
            mailbox.post(e);
        }
        match item {
            None => break,
            Some(Ok(frame)) => {
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                mailbox.put(frame);
            }
            Some(Err(e)) => {
                let n = skipped.fetch_add(1, Ordering::Relaxed) + 1;
                if n <= 10 || n % 100 == 0 {
                    log::warn!("skipped ({n} so far): {e}");
                }
            }
        }
        due += interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::driver::FaceMeasure;
    use crate::events::Event;
    use crate::expression::Probs;
    use crate::frame::PixelFormat;
    use crate::sink::gpio::{GpioOutputs, GpioSink, GpioState};
    use crate::sink::SinkError;
    use crate::source::SourceError;
    use crate::vision::{BBox, Face, ModelError};
    use std::sync::mpsc;

    /// What the fake analyser sees in frame `n`: `Some(p)`, one face with
    /// probability `p` of sad; `None`, a failure.
    type Plan = fn(u64) -> Option<f32>;

    struct FakeAnalyzer(Plan);

    impl Analyze for FakeAnalyzer {
        fn model_name(&self) -> &str {
            "fake"
        }

        fn analyze_into(
            &mut self,
            frame: &Frame,
            out: &mut Vec<Observation>,
        ) -> Result<(), ModelError> {
            out.clear();
            let Some(sad) = (self.0)(frame.sequence) else {
                return Err(ModelError::Shape {
                    path: "fake.onnx".into(),
                    message: "injected failure".into(),
                });
            };
            let mut p = [0.0; 7];
            p[Expression::Sad.index()] = sad;
            p[Expression::Neutral.index()] = 1.0 - sad;
            out.push(Observation {
                face: Face {
                    bbox: BBox {
                        x: 10.0,
                        y: 10.0,
                        w: 40.0,
                        h: 40.0,
                    },
                    score: 0.99,
                    landmarks: [[0.0; 2]; 5],
                },
                probs: Probs(p),
                measure: None,
            });
            Ok(())
        }
    }

    /// Every event, in order.
    #[derive(Clone, Default)]
    struct Record(Arc<Mutex<Vec<Event>>>);

    impl EventSink for Record {
        fn emit(&mut self, event: &Event) -> Result<(), SinkError> {
            self.0.lock().unwrap().push(event.clone());
            Ok(())
        }
        fn flush(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
    }

    impl Record {
        /// `"T type detail"` per event, T in tenths of a second.
        fn lines(&self) -> Vec<String> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|e| {
                    let t = e.frame_time.as_millis() / 100;
                    let detail = match &e.kind {
                        EventKind::AlertRaised { alert, .. } => alert.clone(),
                        EventKind::AlertCleared { alert, reason, .. } => {
                            format!("{alert} {reason}")
                        }
                        EventKind::Degraded { reason, .. } => reason.to_string(),
                        EventKind::Recovered { reason, .. } => reason.to_string(),
                        _ => String::new(),
                    };
                    let ty = e.type_name();
                    format!("{t} {ty} {detail}").trim_end().to_string()
                })
                .collect()
        }
    }

    /// A pin that keeps its last physical level where tests can read it.
    #[derive(Clone, Default)]
    struct Line(Arc<Mutex<bool>>);

    impl embedded_hal::digital::ErrorType for Line {
        type Error = core::convert::Infallible;
    }

    impl embedded_hal::digital::OutputPin for Line {
        fn set_low(&mut self) -> Result<(), Self::Error> {
            *self.0.lock().unwrap() = false;
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Self::Error> {
            *self.0.lock().unwrap() = true;
            Ok(())
        }
    }

    /// Three outputs: the distress buzzer, a heartbeat and a tell-tale.
    struct Outputs {
        outputs: GpioOutputs<Line>,
        shared: Arc<Mutex<GpioState>>,
        lines: [Line; 3],
    }

    impl Outputs {
        /// Applies the published state as the driver thread would, and
        /// reads the lines back: (buzzer, heartbeat, tell-tale).
        fn read(&mut self) -> (bool, bool, bool) {
            let state = self.shared.lock().unwrap().clone();
            let stale = state.stale(Duration::from_secs(60));
            self.outputs.apply(Duration::ZERO, &state, stale).unwrap();
            let l = |i: usize| *self.lines[i].0.lock().unwrap();
            (l(0), l(1), l(2))
        }
    }

    const CONFIG: &str = "[[rule]]\nname = \"distress\"\nexpressions = [\"sad\"]\n\
        min_probability = 0.6\nhold = 0.5\nclear_after = 0.5\n\
        [[gpio]]\nname = \"buzzer\"\nchip = \"/dev/gpiochip0\"\nline = 1\nalerts = [\"distress\"]\n\
        [[gpio]]\nname = \"alive\"\nchip = \"/dev/gpiochip0\"\nline = 2\nheartbeat = true\n\
        [[gpio]]\nname = \"unavailable\"\nchip = \"/dev/gpiochip0\"\nline = 3\ndegraded = true\n";

    fn pipeline(plan: Plan, extra: &str) -> (Pipeline, Record, Outputs) {
        build(Box::new(FakeAnalyzer(plan)), &format!("{CONFIG}{extra}"))
    }

    /// A pipeline of `analyzer` and the config `text` (three GPIO
    /// outputs, as in [`CONFIG`]), recording its events.
    fn build(analyzer: Box<dyn Analyze + Send>, text: &str) -> (Pipeline, Record, Outputs) {
        let config = Config::parse(
            text,
            std::path::Path::new("test.toml"),
            std::path::Path::new("."),
        )
        .unwrap();
        let record = Record::default();
        let shared = Arc::new(Mutex::new(GpioState::default()));
        let lines: [Line; 3] = Default::default();
        let outputs = GpioOutputs::new(
            config
                .gpio
                .iter()
                .cloned()
                .zip(lines.iter().cloned())
                .collect(),
        )
        .unwrap();
        let gpio = GpioSink::new(&config.gpio, Arc::clone(&shared));
        let p = Pipeline::new(
            analyzer,
            &config,
            vec![Box::new(record.clone()), Box::new(gpio)],
            None,
        );
        (
            p,
            record,
            Outputs {
                outputs,
                shared,
                lines,
            },
        )
    }

    /// Frame `n` of a 10 fps stream.
    fn frame(n: u64) -> Frame {
        let mut f = Frame::new(4, 4, PixelFormat::Grey, vec![0; 16]);
        f.sequence = n;
        f.timestamp = Duration::from_millis(100 * n);
        f
    }

    /// Sad from 0 s, analysis failing from 1 s to 4 s, sad again after.
    fn fails_for_three_seconds(n: u64) -> Option<f32> {
        (!(10..40).contains(&n)).then_some(0.9)
    }

    #[test]
    fn failing_analysis_degrades_clears_alerts_and_recovers() {
        let (mut p, record, mut out) = pipeline(fails_for_three_seconds, "");
        let mut levels = Vec::new();
        for n in 0..60 {
            p.process(&frame(n));
            levels.push(out.read());
        }
        // Raised at 0.5 s: buzzer on, heartbeat on, tell-tale off.
        assert_eq!(levels[9], (true, true, false));
        // Still within degraded_after (2 s) of the first failure at 1 s:
        // nothing changes yet.
        assert_eq!(levels[29], (true, true, false));
        // 2 s of failures: degraded.
        assert_eq!(p.summary().failed, 30);
        assert_eq!(levels[30], (false, false, true));
        assert_eq!(levels[39], (false, false, true));
        // The first analysed frame recovers; the alert rises again 0.5 s on.
        assert_eq!(levels[40], (false, true, false));
        assert_eq!(levels[45], (true, true, false));
        // Before the first publication ferd is not watching.
        let (_, _, mut fresh) = pipeline(fails_for_three_seconds, "");
        assert_eq!(fresh.read(), (false, false, true));
        assert_eq!(
            record.lines(),
            [
                "0 face_appeared",
                "0 expression",
                "5 alert_raised distress",
                "30 degraded analysis_failed",
                "30 face_lost",
                "30 alert_cleared distress degraded",
                "40 recovered analysis_failed",
                "40 face_appeared",
                "40 expression",
                "45 alert_raised distress",
            ]
        );
        p.finish(ClearReason::Shutdown);
        assert_eq!(out.read(), (false, true, false));
    }

    #[test]
    fn a_reload_keeps_tracks_and_clears_the_alerts_of_changed_rules() {
        let (mut p, record, mut out) = pipeline(|_| Some(0.9), "");
        for n in 0..10 {
            p.process(&frame(n));
        }
        assert_eq!(out.read(), (true, true, false));
        // The same outputs; `distress` now holds 2 s, `calm` is new.
        let text = CONFIG.replace("hold = 0.5", "hold = 2.0")
            + "[[rule]]\nname = \"calm\"\nexpressions = [\"neutral\"]\nmin_probability = 0.9\nhold = 1.0\nclear_after = 1.0\n";
        let config = Config::parse(
            &text,
            std::path::Path::new("b.toml"),
            std::path::Path::new("."),
        )
        .unwrap();
        p.reconfigure(Box::new(FakeAnalyzer(|_| Some(0.9))), &config, "b.toml");
        // The buzzer of the changed rule is off at once, the track stays.
        assert_eq!(out.read(), (false, true, false));
        for n in 10..40 {
            p.process(&frame(n));
        }
        assert_eq!(out.read(), (true, true, false));
        assert_eq!(
            record.lines(),
            [
                "0 face_appeared",
                "0 expression",
                "5 alert_raised distress",
                "9 alert_cleared distress reload",
                "9 config_reloaded",
                "30 alert_raised distress",
            ]
        );
    }

    #[test]
    fn brief_failures_are_counted_without_degrading() {
        fn flaky(n: u64) -> Option<f32> {
            (n % 3 != 0 || n == 0).then_some(0.9)
        }
        let (mut p, record, mut out) = pipeline(flaky, "[health]\ndegraded_after = 0.5\n");
        for n in 0..60 {
            p.process(&frame(n));
        }
        assert_eq!(p.summary().failed, 19);
        assert_eq!(p.degraded(), None);
        assert_eq!(out.read(), (true, true, false));
        assert!(!record.lines().iter().any(|l| l.contains("degraded")));
    }

    #[test]
    fn watchdog_is_fed_only_for_analysed_frames_while_not_degraded() {
        struct Count(u64);
        impl Service for Count {
            fn alive(&mut self) {
                self.0 += 1;
            }
        }
        let (mut p, _, _) = pipeline(fails_for_three_seconds, "");
        let source = Script::new((0..60).map(|n| Step::Frame(frame(n))).collect());
        let mut dog = Count(0);
        let stop = Arc::new(AtomicBool::new(false));
        let summary = run(Box::new(source), &mut p, Pace::Replay, &stop, &mut dog).unwrap();
        assert_eq!((summary.frames, summary.failed), (30, 30));
        assert_eq!(dog.0, 30, "pinged for the 30 analysed frames only");
    }

    #[test]
    fn lost_camera_degrades_and_clears_until_restored() {
        let (mut p, record, mut out) = pipeline(|_| Some(0.9), "");
        for n in 0..10 {
            p.process(&frame(n));
        }
        assert_eq!(out.read(), (true, true, false));
        p.source_event(SourceEvent::Lost {
            device: "/dev/video0".into(),
            error: "No such device".into(),
        });
        assert_eq!(p.degraded(), Some(DegradedReason::CameraLost));
        assert_eq!(p.rules.active().count(), 0);
        assert_eq!(out.read(), (false, false, true));
        p.source_event(SourceEvent::Restored {
            device: "/dev/video0".into(),
            offline: Duration::from_secs(3),
        });
        assert_eq!(p.degraded(), None);
        let recovered = record.0.lock().unwrap().last().unwrap().kind.clone();
        assert_eq!(
            recovered,
            EventKind::Recovered {
                reason: "camera_lost",
                duration: 3.0
            }
        );
        p.process(&frame(40));
        assert_eq!(out.read(), (false, true, false));
        let lines = record.lines();
        assert_eq!(
            lines[3..9],
            [
                "9 camera_lost",
                "9 degraded camera_lost",
                "9 face_lost",
                "9 alert_cleared distress camera_lost",
                "9 camera_restored",
                "9 recovered camera_lost",
            ]
        );
    }

    #[test]
    fn expression_events_repeat_at_the_interval() {
        let (mut p, record, _) = pipeline(|_| Some(0.3), "[events]\nexpression_interval = 1.0\n");
        for n in 0..30 {
            p.process(&frame(n));
        }
        let expressions: Vec<String> = record
            .lines()
            .into_iter()
            .filter(|l| l.contains("expression"))
            .collect();
        assert_eq!(
            expressions,
            ["0 expression", "10 expression", "20 expression"]
        );
    }

    #[test]
    fn silent_source_degrades_after_the_timeout() {
        let (mut p, record, mut out) = pipeline(|_| Some(0.9), "");
        for n in 0..10 {
            p.process(&frame(n));
        }
        p.idle(Duration::from_millis(1500));
        assert_eq!(p.degraded(), None);
        p.idle(Duration::from_millis(2100));
        assert_eq!(p.degraded(), Some(DegradedReason::NoFrames));
        assert_eq!(out.read(), (false, false, true));
        p.process(&frame(40));
        assert_eq!(p.degraded(), None);
        let lines = record.lines();
        assert!(
            lines.contains(&"9 alert_cleared distress degraded".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"40 recovered no_frames".to_string()),
            "{lines:?}"
        );
    }

    /// What the landmark stage sees in frame `n`: `None`, no face;
    /// `Some(m)`, one face measuring `m`.
    type MeasurePlan = fn(u64) -> Option<FaceMeasure>;

    struct MeasureAnalyzer(MeasurePlan);

    impl Analyze for MeasureAnalyzer {
        fn model_name(&self) -> &str {
            "fake"
        }

        fn analyze_into(
            &mut self,
            frame: &Frame,
            out: &mut Vec<Observation>,
        ) -> Result<(), ModelError> {
            out.clear();
            if let Some(m) = (self.0)(frame.sequence) {
                let mut p = [0.0; 7];
                p[Expression::Neutral.index()] = 1.0;
                out.push(Observation {
                    face: Face {
                        bbox: BBox {
                            x: 10.0,
                            y: 10.0,
                            w: 40.0,
                            h: 40.0,
                        },
                        score: 0.99,
                        landmarks: [[0.0; 2]; 5],
                    },
                    probs: Probs(p),
                    measure: Some(m),
                });
            }
            Ok(())
        }
    }

    /// Only a name and the closure, everything else at its defaults; the
    /// buzzer follows it.
    const FATIGUE: &str = "[[rule]]\nname = \"eyes_closed\"\neyes_closed_for = 2.0\n\
        [[gpio]]\nname = \"buzzer\"\nchip = \"/dev/gpiochip0\"\nline = 1\nalerts = [\"eyes_closed\"]\n\
        [[gpio]]\nname = \"alive\"\nchip = \"/dev/gpiochip0\"\nline = 2\nheartbeat = true\n\
        [[gpio]]\nname = \"unavailable\"\nchip = \"/dev/gpiochip0\"\nline = 3\ndegraded = true\n";

    /// Frame `n` of a 24 fps stream.
    fn frame24(n: u64) -> Frame {
        let mut f = frame(n);
        f.timestamp = Duration::from_nanos(n * 1_000_000_000 / 24);
        f
    }

    /// Eyes open (0.28) or closed (0.03), facing the camera.
    fn eyes(closed: bool) -> Option<FaceMeasure> {
        let v = if closed { 0.03 } else { 0.28 };
        Some(FaceMeasure {
            eyes: [Some(v); 2],
            mouth: Some(0.1),
            pose: Some((0.0, 0.0)),
        })
    }

    #[test]
    fn eyes_closed_for_raises_and_clears_on_a_24_fps_stream_and_blinks_do_not() {
        fn plan(n: u64) -> Option<FaceMeasure> {
            let s = n as f64 / 24.0;
            // A 2.2 s closure at 3 s; 10 blinks of 300 ms every second
            // from 10 s; 20 of 400 ms with 100 ms open between from 21 s;
            // a 1.8 s closure at 33 s.
            let closed = (3.0..5.2).contains(&s)
                || ((10.0..20.0).contains(&s) && (s - 10.0) % 1.0 < 0.3)
                || ((21.0..31.0).contains(&s) && (s - 21.0) % 0.5 < 0.4)
                || (33.0..34.8).contains(&s);
            eyes(closed)
        }
        let (mut p, record, mut out) = build(Box::new(MeasureAnalyzer(plan)), FATIGUE);
        let mut levels = Vec::new();
        for n in 0..(24 * 38) {
            p.process(&frame24(n));
            levels.push(out.read());
        }
        let alerts: Vec<String> = record
            .lines()
            .into_iter()
            .filter(|l| l.contains("alert"))
            .collect();
        // Raised 2.0 s after the onset (frame 72 + 48); the eyes reopen at
        // frame 125, confirmed at 126, cleared 1 s (clear_after) later.
        assert_eq!(
            alerts,
            [
                "50 alert_raised eyes_closed",
                "62 alert_cleared eyes_closed condition"
            ]
        );
        assert_eq!(levels[119], (false, true, false));
        assert_eq!(levels[120], (true, true, false));
        assert_eq!(levels[149], (true, true, false));
        assert_eq!(levels[150], (false, true, false));
        let raised = record
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.type_name() == "alert_raised")
            .unwrap()
            .to_json("r", 1);
        assert!(
            raised.contains(r#""alert":"eyes_closed","track":1,"cue":"eyes_closed","closed":2.0,"#),
            "{raised}"
        );
        assert!(!record.lines().iter().any(|l| l.contains("driver_")));
    }

    #[test]
    fn eyes_unknown_for_10_s_leave_the_driver_unwatched_with_the_tell_tale_on() {
        fn plan(n: u64) -> Option<FaceMeasure> {
            let s = n as f64 / 24.0;
            match s {
                // Sunglasses from 2 s to 20 s: a face, no eyes.
                s if (2.0..20.0).contains(&s) => Some(FaceMeasure {
                    eyes: [None; 2],
                    mouth: Some(0.1),
                    pose: Some((0.0, 0.0)),
                }),
                // No face from 25 s.
                s if s >= 25.0 => None,
                _ => eyes(false),
            }
        }
        let (mut p, record, mut out) = build(Box::new(MeasureAnalyzer(plan)), FATIGUE);
        let mut levels = Vec::new();
        for n in 0..(24 * 40) {
            p.process(&frame24(n));
            levels.push(out.read());
        }
        let lines: Vec<String> = record
            .lines()
            .into_iter()
            .filter(|l| l.contains("driver_"))
            .collect();
        // Last known at 1.958 s: unwatched past 11.958 s (frame 288 at
        // 12.0 s); watched at 20 s; a lost face is no eye state either.
        assert_eq!(
            lines,
            [
                "120 driver_unwatched",
                "200 driver_watched",
                "350 driver_unwatched"
            ]
        );
        assert_eq!(levels[287], (false, true, false));
        assert_eq!(levels[288], (false, true, true), "tell-tale only");
        assert_eq!(levels[480], (false, true, false));
        assert_eq!(p.rules.active().count(), 0);
        let events = record.0.lock().unwrap();
        let unwatched = events
            .iter()
            .find(|e| e.type_name() == "driver_unwatched")
            .unwrap();
        assert_eq!(
            unwatched.kind,
            EventKind::DriverUnwatched { seconds: 10.042 }
        );
        let watched = events
            .iter()
            .find(|e| e.type_name() == "driver_watched")
            .unwrap();
        assert_eq!(watched.kind, EventKind::DriverWatched { duration: 8.0 });
    }

    #[test]
    fn expression_only_configs_never_report_the_driver_unwatched() {
        let (mut p, record, _) = pipeline(|_| Some(0.1), "");
        let screens = Screens::default();
        p.display = Some(Box::new(screens.clone()));
        for n in 0..200 {
            p.process(&frame(n));
        }
        assert!(!record.lines().iter().any(|l| l.contains("driver_")));
        let screens = screens.0.lock().unwrap();
        assert_eq!(screens.len(), 200);
        assert!(screens.iter().all(|s| s.driver.is_none()), "no driver line");
    }

    /// A display that keeps every screen it is shown.
    #[derive(Clone, Default)]
    struct Screens(Arc<Mutex<Vec<StatusScreen>>>);

    impl Display for Screens {
        fn show(
            &mut self,
            screen: &StatusScreen,
        ) -> Result<(), crate::sink::display::DisplayError> {
            self.0.lock().unwrap().push(screen.clone());
            Ok(())
        }

        fn shutdown(&mut self) -> Result<(), crate::sink::display::DisplayError> {
            Ok(())
        }
    }

    #[test]
    fn the_screen_shows_the_main_face_s_eyes_perclos_and_an_unwatched_driver() {
        fn plan(n: u64) -> Option<FaceMeasure> {
            let s = n as f64 / 24.0;
            match s {
                // Closed for 3 s at 3 s.
                s if (3.0..6.0).contains(&s) => eyes(true),
                // Sunglasses for 15 s at 40 s.
                s if (40.0..55.0).contains(&s) => Some(FaceMeasure {
                    eyes: [None; 2],
                    mouth: Some(0.1),
                    pose: Some((0.0, 0.0)),
                }),
                _ => eyes(false),
            }
        }
        let (mut p, _, _) = build(Box::new(MeasureAnalyzer(plan)), FATIGUE);
        let screens = Screens::default();
        p.display = Some(Box::new(screens.clone()));
        for n in 0..(24 * 60) {
            p.process(&frame24(n));
        }
        let screens = screens.0.lock().unwrap();
        let at = |s: f64| screens[(s * 24.0) as usize].driver.expect("driver line");
        let open = at(2.0);
        assert_eq!(open.eyes, EyeState::Open);
        assert_eq!((open.closed_for, open.watching), (None, true));
        // One second into the closure.
        let closed = at(4.0);
        assert_eq!(closed.eyes, EyeState::Closed);
        let c = closed.closed_for.expect("in a closure").as_secs_f64();
        assert!((c - 1.0).abs() < 0.1, "closed for {c}");
        // Under half of the 60 s window seen: no PERCLOS yet.
        assert_eq!(at(20.0).perclos, None);
        // 3 s closed of 35 s seen.
        let perclos = at(35.0).perclos.expect("enough coverage");
        assert!((perclos - 3.0 / 35.0).abs() < 0.01, "PERCLOS {perclos}");
        // Sunglasses: unknown, then unwatched past UNWATCHED_AFTER.
        let unknown = at(45.0);
        assert_eq!((unknown.eyes, unknown.watching), (EyeState::Unknown, true));
        let late = 40.0 + crate::driver::UNWATCHED_AFTER.as_secs_f64() + 1.0;
        assert!(!at(late).watching, "unwatched at {late} s");
        let back = at(56.0);
        assert_eq!((back.eyes, back.watching), (EyeState::Open, true));
    }

    /// One step of a scripted source.
    enum Step {
        Frame(Frame),
        Panic,
    }

    struct Script(VecDeque<Step>);

    impl Script {
        fn new(steps: Vec<Step>) -> Script {
            Script(steps.into())
        }
    }

    impl FrameSource for Script {
        fn next_frame(&mut self) -> Option<Result<Frame, SourceError>> {
            match self.0.pop_front()? {
                Step::Frame(f) => Some(Ok(f)),
                Step::Panic => panic!("driver bug"),
            }
        }
        fn frame_interval(&self) -> Option<Duration> {
            Some(Duration::from_millis(1))
        }
        fn describe(&self) -> String {
            "script".into()
        }
    }

    #[test]
    fn capture_thread_panic_ends_the_run_with_an_error_and_safe_outputs() {
        let (done_tx, done_rx) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            let (mut p, record, mut out) = pipeline(|_| Some(0.9), "");
            let mut steps: Vec<Step> = (0..10).map(|n| Step::Frame(frame(n))).collect();
            steps.push(Step::Panic);
            struct Quiet;
            impl Service for Quiet {
                fn alive(&mut self) {}
            }
            let stop = Arc::new(AtomicBool::new(false));
            let result = run(
                Box::new(Script::new(steps)),
                &mut p,
                Pace::Realtime,
                &stop,
                &mut Quiet,
            );
            done_tx.send(()).unwrap();
            (result, record.lines(), out.read())
        });
        // Before the fix the analysis loop waited forever.
        done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the run ends after the capture thread panics");
        let (result, lines, levels) = worker.join().unwrap();
        let err = result.unwrap_err().to_string();
        assert_eq!(err, "the capture thread failed: driver bug");
        // Frames may have been dropped by the mailbox, but the run ends
        // with every alert cleared for the error.
        let tail: Vec<&str> = lines.iter().rev().take(2).map(String::as_str).collect();
        assert!(tail[0].ends_with("status"), "{lines:?}");
        if lines.iter().any(|l| l.contains("alert_raised")) {
            assert!(
                tail[1].ends_with("alert_cleared distress error"),
                "{lines:?}"
            );
        }
        assert!(!levels.0, "buzzer off");
    }

    #[test]
    fn falling_behind_a_live_source_drops_frames_and_rules_keep_frame_time() {
        /// 10 ms per frame against a source that delivers one every 1 ms.
        struct Slow(FakeAnalyzer);
        impl Analyze for Slow {
            fn model_name(&self) -> &str {
                "slow"
            }
            fn analyze_into(
                &mut self,
                frame: &Frame,
                out: &mut Vec<Observation>,
            ) -> Result<(), ModelError> {
                std::thread::sleep(Duration::from_millis(10));
                self.0.analyze_into(frame, out)
            }
        }
        struct Quiet;
        impl Service for Quiet {
            fn alive(&mut self) {}
        }
        // Sad for the first 20 s of frame time, then neutral for 30 s.
        fn sad_then_calm(n: u64) -> Option<f32> {
            Some(if n < 200 { 0.9 } else { 0.0 })
        }
        let (mut p, record, mut out) = pipeline(|_| None, "");
        p.analyzer = Box::new(Slow(FakeAnalyzer(sad_then_calm)));
        let source = Script::new((0..500).map(|n| Step::Frame(frame(n))).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let summary = run(Box::new(source), &mut p, Pace::Realtime, &stop, &mut Quiet).unwrap();
        // Most frames were dropped, and counted; none was lost otherwise.
        assert!(summary.dropped > 250, "{summary:?}");
        assert_eq!(summary.frames + summary.dropped, 500, "{summary:?}");
        // The alert rose and cleared on its condition, in frame time: it
        // was active for seconds of frame time, though the whole run took
        // well under one second of wall time.
        let lines = record.lines();
        let raised = lines.iter().filter(|l| l.contains("alert_raised distress"));
        let cleared: Vec<_> = lines
            .iter()
            .filter(|l| l.contains("alert_cleared distress"))
            .collect();
        assert_eq!(raised.count(), 1, "{lines:?}");
        assert_eq!(cleared.len(), 1, "{lines:?}");
        assert!(cleared[0].ends_with("distress condition"), "{lines:?}");
        let at = |l: &str| l.split(' ').next().unwrap().parse::<u64>().unwrap();
        assert!(
            at(cleared[0]) >= 200,
            "cleared at frame time {}",
            cleared[0]
        );
        assert!(!out.read().0, "buzzer off");
    }

    #[test]
    fn mailbox_keeps_only_the_newest() {
        let m: Mailbox<i32> = Mailbox::default();
        m.put(1);
        m.put(2);
        m.put(3);
        assert_eq!(m.take(), Some(Delivery::Item(3)));
        assert_eq!(m.dropped(), 2);
        m.close();
        assert_eq!(m.take(), None);
    }

    #[test]
    fn mailbox_keeps_every_event_in_order() {
        let m: Mailbox<i32, &str> = Mailbox::default();
        m.put(1);
        m.post("lost");
        m.post("restored");
        m.put(2);
        m.put(3);
        assert_eq!(m.take(), Some(Delivery::Item(1)));
        assert_eq!(m.take(), Some(Delivery::Event("lost")));
        assert_eq!(m.take(), Some(Delivery::Event("restored")));
        assert_eq!(m.take(), Some(Delivery::Item(3)));
        assert_eq!(m.dropped(), 1);
        assert_eq!(
            m.take_timeout(Duration::from_millis(10)),
            Err(true),
            "open and empty"
        );
        m.close();
        assert_eq!(m.take_timeout(Duration::from_millis(10)), Err(false));
    }

    #[test]
    fn mailbox_hands_over_between_threads() {
        let m: Arc<Mailbox<i32>> = Arc::new(Mailbox::default());
        let p = Arc::clone(&m);
        let t = std::thread::spawn(move || {
            for i in 0..100 {
                p.put(i);
            }
            p.close();
        });
        let mut last = -1;
        while let Some(Delivery::Item(v)) = m.take() {
            assert!(v > last);
            last = v;
        }
        t.join().unwrap();
        assert_eq!(last, 99);
    }
}
