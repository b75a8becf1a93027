//! The analysis loop: frames in, events and display updates out.
//!
//! [`Pipeline`] holds every stage after the source and processes one frame
//! at a time: detect + classify ([`Analyzer`]), track, evaluate rules, then
//! hand events to the sinks and the state to the display. [`run`] drives it
//! from a [`FrameSource`], either frame by frame (files, as fast as
//! possible, nothing dropped: deterministic) or in real time through a
//! one-slot [`Mailbox`], where a capture thread always leaves only the
//! newest frame, so a slow model drops frames instead of building latency.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::events::{box_array, seconds, Event, EventKind, ProbMap};
use crate::expression::Expression;
use crate::frame::Frame;
use crate::rules::{AlertChange, ClearReason, Rules};
use crate::sink::{Display, EventSink, StatusScreen};
use crate::source::{FrameSource, SourceEvent};
use crate::track::{TrackChange, Tracker};
use crate::vision::Analyzer;

/// Counters of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Frames analysed.
    pub frames: u64,
    /// Items the source could not deliver, or frames the models failed on.
    pub skipped: u64,
    /// Frames dropped by the real-time mailbox because analysis was busy.
    pub dropped: u64,
    /// Faces detected over all frames.
    pub faces: u64,
    /// Tracks created.
    pub tracks: u64,
    /// Events the sinks failed to take.
    pub sink_errors: u64,
}

/// Every stage after the source.
pub struct Pipeline {
    analyzer: Analyzer,
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
    track_changes: Vec<TrackChange>,
    alert_changes: Vec<AlertChange>,
    camera_lost: bool,
}

/// Why [`run`] calls its `alive` callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A frame was analysed.
    Frame,
    /// The camera is gone and the source keeps trying to reopen it: the
    /// daemon is alive, but sees nothing.
    Reconnecting,
}

impl Pipeline {
    /// Builds the pipeline from loaded models, a config and outputs.
    pub fn new(
        analyzer: Analyzer,
        config: &Config,
        sinks: Vec<Box<dyn EventSink + Send>>,
        display: Option<Box<dyn Display + Send>>,
    ) -> Pipeline {
        let interval = config.events.expression_interval.0;
        Pipeline {
            analyzer,
            tracker: Tracker::new(&config.tracker),
            rules: Rules::new(&config.rules),
            sinks,
            display,
            expression_interval: (interval > 0.0).then(|| Duration::from_secs_f64(interval)),
            reported: HashMap::new(),
            summary: Summary::default(),
            last_time: Duration::ZERO,
            last_frame: 0,
            track_changes: Vec::new(),
            alert_changes: Vec::new(),
            camera_lost: false,
        }
    }

    /// The counters so far.
    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// Names of the alerts active now.
    pub fn active_alerts(&self) -> impl Iterator<Item = &str> {
        self.rules.active()
    }

    /// Announces the start of a run.
    pub fn start(&mut self, source: &str) {
        let model = self.analyzer.classifier.model().manifest.model.name.clone();
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

    /// Analyses one frame and emits what changed.
    pub fn process(&mut self, frame: &Frame) {
        let t = frame.timestamp;
        self.last_time = t;
        self.last_frame = frame.sequence;
        let observations = match self.analyzer.analyze(frame) {
            Ok(o) => o,
            Err(e) => {
                self.skip(&format_args!("{}: {e}", frame.origin));
                return;
            }
        };
        self.summary.frames += 1;
        self.summary.faces += observations.len() as u64;

        self.track_changes.clear();
        self.tracker
            .update(t, &observations, &mut self.track_changes);
        let changes = std::mem::take(&mut self.track_changes);
        for c in &changes {
            match *c {
                TrackChange::Appeared { id } => {
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
                TrackChange::Lost { .. } => {}
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
        self.update_display();
        self.flush();
    }

    /// Whether the source reported its camera lost and not yet restored.
    pub fn camera_lost(&self) -> bool {
        self.camera_lost
    }

    /// Reports a change of the source's device. `camera_lost` also loses
    /// every track and clears every active alert (reason `camera_lost`):
    /// nothing is known about the faces any more, and an alarm must not
    /// stay on while the camera is away.
    pub fn source_event(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Lost { device, error } => {
                self.camera_lost = true;
                self.emit(EventKind::CameraLost { device, error });
                self.end_tracks_and_alerts(ClearReason::CameraLost);
                self.update_display();
            }
            SourceEvent::Restored { device, offline } => {
                self.camera_lost = false;
                self.emit(EventKind::CameraRestored {
                    device,
                    offline: seconds(offline),
                });
            }
        }
        self.flush();
    }

    /// Ends the run: every track is lost, every alert cleared.
    pub fn finish(&mut self) -> Summary {
        self.end_tracks_and_alerts(ClearReason::Shutdown);
        let s = self.summary;
        self.emit(EventKind::Status {
            frames: s.frames,
            skipped: s.skipped,
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
                AlertChange::Raised {
                    alert,
                    track,
                    expression,
                    probability,
                } => {
                    log::info!(
                        "alert {alert} raised (track {track}, {expression} {probability:.2})"
                    );
                    EventKind::AlertRaised {
                        alert: alert.clone(),
                        track: *track,
                        expression: *expression,
                        probability: crate::events::round(*probability, 1e4),
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
        let screen = StatusScreen {
            faces: self.tracker.tracks().len(),
            probs: main.map(|t| t.probs),
            alerts: self.rules.active().map(str::to_string).collect(),
        };
        if let Err(e) = display.show(&screen) {
            log::error!("{e}");
        }
    }

    fn emit(&mut self, kind: EventKind) {
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
    }

    fn flush(&mut self) {
        for sink in &mut self.sinks {
            if let Err(e) = sink.flush() {
                self.summary.sink_errors += 1;
                if self.summary.sink_errors % 1000 == 1 {
                    log::error!("{e}");
                }
            }
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

    /// How many items were replaced before being taken.
    pub fn dropped(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }
}

/// How often the analysis loop checks in while the camera is away.
const RECONNECT_TICK: Duration = Duration::from_secs(1);

/// Runs the pipeline over a source until it ends or `stop` is set.
///
/// With `realtime`, a capture thread paces the source at its own frame
/// rate and hands frames over through a [`Mailbox`]; otherwise every frame
/// is analysed in order. Source events (`camera_lost`, `camera_restored`)
/// are never dropped. `alive` is called after every analysed frame, and
/// about every second while the camera is lost and being reopened (the
/// service watchdog and the GPIO outputs hang on it).
pub fn run(
    mut source: Box<dyn FrameSource + Send>,
    pipeline: &mut Pipeline,
    realtime: bool,
    stop: &Arc<AtomicBool>,
    alive: &mut dyn FnMut(&Pipeline, Progress),
) -> Summary {
    pipeline.start(&source.describe());
    if !realtime {
        while !stop.load(Ordering::Relaxed) {
            let item = source.next_frame();
            while let Some(e) = source.take_event() {
                pipeline.source_event(e);
            }
            match item {
                None => break,
                Some(Ok(frame)) => {
                    pipeline.process(&frame);
                    alive(pipeline, Progress::Frame);
                }
                Some(Err(e)) => {
                    pipeline.skip(&e);
                    if pipeline.camera_lost() {
                        alive(pipeline, Progress::Reconnecting);
                    }
                }
            }
        }
        return pipeline.finish();
    }

    let mailbox = Arc::new(Mailbox::<Frame, SourceEvent>::default());
    let skipped = Arc::new(AtomicU64::new(0));
    let capture = {
        let mailbox = Arc::clone(&mailbox);
        let skipped = Arc::clone(&skipped);
        let stop = Arc::clone(stop);
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                let interval = source.frame_interval().unwrap_or(Duration::from_secs(1));
                let start = Instant::now();
                let mut due = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
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
                mailbox.close();
            })
    };
    match capture {
        Ok(handle) => {
            loop {
                match mailbox.take_timeout(RECONNECT_TICK) {
                    Ok(Delivery::Item(frame)) => {
                        pipeline.process(&frame);
                        alive(pipeline, Progress::Frame);
                    }
                    Ok(Delivery::Event(e)) => {
                        pipeline.source_event(e);
                        if pipeline.camera_lost() {
                            alive(pipeline, Progress::Reconnecting);
                        }
                    }
                    Err(true) => {
                        if pipeline.camera_lost() {
                            alive(pipeline, Progress::Reconnecting);
                        }
                    }
                    Err(false) => break,
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            mailbox.close();
            if handle.join().is_err() {
                log::error!("capture thread panicked");
            }
        }
        Err(e) => log::error!("cannot start the capture thread: {e}"),
    }
    pipeline.summary.skipped += skipped.load(Ordering::Relaxed);
    pipeline.summary.dropped = mailbox.dropped();
    pipeline.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

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
