//! The event stream: one JSON object per line, schema version
//! [`SCHEMA_VERSION`]. The README documents every field; a change that
//! removes or retypes a field bumps the version.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::expression::{Expression, Probs};
use crate::vision::BBox;

/// Version of the event schema, the `v` field of every event.
pub const SCHEMA_VERSION: u32 = 1;

/// Every event `type`, as [`Event::type_name`] gives them.
pub const EVENT_TYPES: [&str; 16] = [
    "started",
    "face_appeared",
    "expression",
    "face_lost",
    "alert_raised",
    "alert_cleared",
    "degraded",
    "recovered",
    "camera_lost",
    "camera_restored",
    "events_dropped",
    "driver_unwatched",
    "driver_watched",
    "config_reloaded",
    "reload_failed",
    "status",
];

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The pipeline started on a source.
    Started {
        /// Human description of the source.
        source: String,
        /// Name of the expression model.
        model: String,
    },
    /// A new face is being tracked.
    FaceAppeared {
        /// Track id.
        track: u64,
        /// `[x, y, w, h]` in frame pixels.
        #[serde(rename = "box")]
        bbox: [f32; 4],
        /// Detector score.
        score: f32,
    },
    /// A track's top expression changed (or the periodic report).
    Expression {
        /// Track id.
        track: u64,
        /// `[x, y, w, h]` in frame pixels.
        #[serde(rename = "box")]
        bbox: [f32; 4],
        /// The most probable expression.
        expression: Expression,
        /// Smoothed probabilities of all seven.
        probs: ProbMap,
    },
    /// A track ended.
    FaceLost {
        /// Track id.
        track: u64,
        /// Seconds from first to last observation.
        duration: f64,
    },
    /// An alert became active.
    AlertRaised {
        /// Rule name.
        alert: String,
        /// The track that met the condition (0 for `face_absent`: no face).
        track: u64,
        /// What was measured, as fields of the event itself.
        #[serde(flatten)]
        cue: AlertCue,
    },
    /// An alert became inactive.
    AlertCleared {
        /// Rule name.
        alert: String,
        /// Seconds it was active.
        duration: f64,
        /// `condition`, `shutdown`, `camera_lost`, `degraded` or `error`.
        reason: &'static str,
    },
    /// ferd cannot see: analysis has failed for `health.degraded_after`,
    /// no frame came for that long, or the camera is lost. Every alert is
    /// cleared and every track lost with it.
    Degraded {
        /// `analysis_failed`, `no_frames` or `camera_lost`.
        reason: &'static str,
        /// The last error seen.
        error: String,
    },
    /// ferd sees again after `degraded`.
    Recovered {
        /// The `reason` of the `degraded` event this ends.
        reason: &'static str,
        /// Seconds it was degraded (frame time).
        duration: f64,
    },
    /// The camera stopped delivering frames (unplugged, driver unloaded);
    /// ferd keeps running and reopens it with backoff.
    CameraLost {
        /// The device path.
        device: String,
        /// What failed.
        error: String,
    },
    /// The camera streams again after `camera_lost`.
    CameraRestored {
        /// The device path.
        device: String,
        /// Seconds it was gone.
        offline: f64,
    },
    /// A sink fell behind or ran out of room and lost events: the MQTT
    /// spool when full drops its oldest, a queue to a slow sink drops the
    /// newest. Sent on the sink that lost them, after the loss.
    EventsDropped {
        /// The sink: `output`, `socket` or `mqtt`.
        sink: String,
        /// Events lost since the last `events_dropped` on this sink.
        count: u64,
    },
    /// No eye state has been known on any face for more than 10 s while
    /// an eye rule (eye closure, PERCLOS) is configured: ferd cannot watch
    /// the driver. Tell-tale outputs go on; alerts and tracks stay.
    DriverUnwatched {
        /// Seconds without a known eye state.
        seconds: f64,
    },
    /// An eye state is known again after `driver_unwatched`.
    DriverWatched {
        /// Seconds the driver was unwatched.
        duration: f64,
    },
    /// SIGHUP: the configuration file was read again and its rules,
    /// models and thresholds now apply. Tracks are kept; alerts of rules
    /// that were removed or changed were cleared just before
    /// (`reason: "reload"`).
    ConfigReloaded {
        /// The configuration file.
        config: String,
        /// Rules in force now.
        rules: usize,
    },
    /// SIGHUP: the configuration file could not be applied; the running
    /// configuration stays in force, unchanged.
    ReloadFailed {
        /// The configuration file.
        config: String,
        /// Why, naming the file and key or model.
        error: String,
    },
    /// End-of-run counters.
    Status {
        /// Frames analysed.
        frames: u64,
        /// Frames or files skipped because they could not be read.
        skipped: u64,
        /// Frames read but not analysed because a model failed on them.
        failed: u64,
        /// Faces detected over all frames.
        faces: u64,
        /// Tracks created.
        tracks: u64,
    },
}

/// What an `alert_raised` event reports of its cue, flattened into the
/// event. Expression alerts keep their fields exactly as before the
/// driver-state kinds existed (no `cue` field); the others name their
/// kind in `cue`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AlertCue {
    /// An expression rule.
    Expression {
        /// The set's most probable expression on that track.
        expression: Expression,
        /// The set's probability mass.
        probability: f32,
    },
    /// A driver-state rule.
    Driver(DriverCue),
}

/// The measured values of a driver-state alert; `cue` names the kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "cue", rename_all = "snake_case")]
pub enum DriverCue {
    /// `eyes_closed_for`.
    EyesClosed {
        /// Seconds the closure had lasted.
        closed: f64,
    },
    /// `perclos`.
    Perclos {
        /// PERCLOS over the rule's window.
        perclos: f32,
    },
    /// `yawns`.
    Yawns {
        /// Yawns in the rule's window.
        yawns: u32,
    },
    /// `looking_away_for`.
    LookingAway {
        /// Head yaw, degrees.
        yaw: f32,
        /// Head pitch, degrees.
        pitch: f32,
        /// Seconds the head had been turned away.
        seconds: f64,
    },
    /// `face_absent_for`.
    FaceAbsent {
        /// Seconds without a face.
        absent: f64,
    },
}

/// Expression probabilities as a JSON object keyed by label, in FER2013
/// order, rounded to 4 decimals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbMap(pub Probs);

impl Serialize for ProbMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(7))?;
        for e in Expression::ALL {
            m.serialize_entry(e.name(), &round(self.0.get(e), 1e4))?;
        }
        m.end()
    }
}

/// One event with its times.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// Frame time (from the source's clock) of the frame that caused it.
    pub frame_time: Duration,
    /// Sequence number of that frame.
    pub frame: u64,
    /// Wall-clock time the event was made.
    pub wall: SystemTime,
}

#[derive(Serialize)]
struct Line<'a> {
    v: u32,
    #[serde(flatten)]
    kind: &'a EventKind,
    time: String,
    t: f64,
    frame: u64,
    run: &'a str,
    seq: u64,
}

impl Event {
    /// An event stamped with the current wall-clock time.
    pub fn new(kind: EventKind, frame_time: Duration, frame: u64) -> Event {
        Event {
            kind,
            frame_time,
            frame,
            wall: SystemTime::now(),
        }
    }

    /// The event as one line of JSON, without the newline, stamped with
    /// the run's id and the event's sequence number in that run (what
    /// receivers de-duplicate redeliveries by).
    pub fn to_json(&self, run: &str, seq: u64) -> String {
        let line = Line {
            v: SCHEMA_VERSION,
            kind: &self.kind,
            time: humantime::format_rfc3339_millis(self.wall).to_string(),
            t: seconds(self.frame_time),
            frame: self.frame,
            run,
            seq,
        };
        // Panics: never; every field is a plain number, string or map with
        // string keys, which serde_json always serialises.
        serde_json::to_string(&line).expect("events always serialise")
    }

    /// The `type` field of the event's JSON (an MQTT topic segment).
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            EventKind::Started { .. } => "started",
            EventKind::FaceAppeared { .. } => "face_appeared",
            EventKind::Expression { .. } => "expression",
            EventKind::FaceLost { .. } => "face_lost",
            EventKind::AlertRaised { .. } => "alert_raised",
            EventKind::AlertCleared { .. } => "alert_cleared",
            EventKind::Degraded { .. } => "degraded",
            EventKind::Recovered { .. } => "recovered",
            EventKind::CameraLost { .. } => "camera_lost",
            EventKind::CameraRestored { .. } => "camera_restored",
            EventKind::EventsDropped { .. } => "events_dropped",
            EventKind::DriverUnwatched { .. } => "driver_unwatched",
            EventKind::DriverWatched { .. } => "driver_watched",
            EventKind::ConfigReloaded { .. } => "config_reloaded",
            EventKind::ReloadFailed { .. } => "reload_failed",
            EventKind::Status { .. } => "status",
        }
    }
}

/// `[x, y, w, h]` rounded to 0.1 pixel.
pub fn box_array(b: &BBox) -> [f32; 4] {
    [
        round(b.x, 10.0),
        round(b.y, 10.0),
        round(b.w, 10.0),
        round(b.h, 10.0),
    ]
}

/// Rounds to `1/scale`, so events stay short and stable across platforms.
pub fn round(v: f32, scale: f32) -> f32 {
    (v * scale).round() / scale
}

/// Seconds with millisecond precision, for durations in events.
pub fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e3).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_line_has_version_type_and_times() {
        let e = Event {
            kind: EventKind::FaceLost {
                track: 3,
                duration: 1.5,
            },
            frame_time: Duration::from_millis(2500),
            frame: 25,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        assert_eq!(
            e.to_json("0123456789abcdef", 7),
            r#"{"v":1,"type":"face_lost","track":3,"duration":1.5,"time":"2023-11-14T22:13:20.000Z","t":2.5,"frame":25,"run":"0123456789abcdef","seq":7}"#
        );
    }

    #[test]
    fn type_names_are_the_json_types() {
        let kinds = [
            EventKind::FaceLost {
                track: 1,
                duration: 0.0,
            },
            EventKind::EventsDropped {
                sink: "mqtt".into(),
                count: 3,
            },
            EventKind::Recovered {
                reason: "no_frames",
                duration: 1.0,
            },
            EventKind::DriverUnwatched { seconds: 10.1 },
            EventKind::DriverWatched { duration: 3.0 },
            EventKind::ConfigReloaded {
                config: "/etc/ferd/ferd.toml".into(),
                rules: 2,
            },
            EventKind::ReloadFailed {
                config: "/etc/ferd/ferd.toml".into(),
                error: "x".into(),
            },
        ];
        for kind in kinds {
            let e = Event::new(kind, Duration::ZERO, 0);
            let v: serde_json::Value = serde_json::from_str(&e.to_json("r", 1)).unwrap();
            assert_eq!(v["type"], e.type_name());
            assert!(EVENT_TYPES.contains(&e.type_name()));
        }
    }

    #[test]
    fn alert_cues_serialise_flat() {
        let raised = |alert: &str, track, cue| {
            serde_json::to_string(&EventKind::AlertRaised {
                alert: alert.into(),
                track,
                cue,
            })
            .unwrap()
        };
        // Byte for byte what expression alerts have always been.
        assert_eq!(
            raised(
                "distress",
                1,
                AlertCue::Expression {
                    expression: Expression::Sad,
                    probability: 0.8125
                }
            ),
            r#"{"type":"alert_raised","alert":"distress","track":1,"expression":"sad","probability":0.8125}"#
        );
        let driver = |cue| AlertCue::Driver(cue);
        assert_eq!(
            raised(
                "eyes_closed",
                2,
                driver(DriverCue::EyesClosed { closed: 2.0 })
            ),
            r#"{"type":"alert_raised","alert":"eyes_closed","track":2,"cue":"eyes_closed","closed":2.0}"#
        );
        assert_eq!(
            raised("drowsy", 2, driver(DriverCue::Perclos { perclos: 0.1625 })),
            r#"{"type":"alert_raised","alert":"drowsy","track":2,"cue":"perclos","perclos":0.1625}"#
        );
        assert_eq!(
            raised("yawning", 2, driver(DriverCue::Yawns { yawns: 3 })),
            r#"{"type":"alert_raised","alert":"yawning","track":2,"cue":"yawns","yawns":3}"#
        );
        assert_eq!(
            raised(
                "distracted",
                2,
                driver(DriverCue::LookingAway {
                    yaw: -42.5,
                    pitch: 3.0,
                    seconds: 3.0
                })
            ),
            r#"{"type":"alert_raised","alert":"distracted","track":2,"cue":"looking_away","yaw":-42.5,"pitch":3.0,"seconds":3.0}"#
        );
        assert_eq!(
            raised("absent", 0, driver(DriverCue::FaceAbsent { absent: 6.0 })),
            r#"{"type":"alert_raised","alert":"absent","track":0,"cue":"face_absent","absent":6.0}"#
        );
        assert_eq!(
            serde_json::to_string(&EventKind::DriverUnwatched { seconds: 10.042 }).unwrap(),
            r#"{"type":"driver_unwatched","seconds":10.042}"#
        );
        assert_eq!(
            serde_json::to_string(&EventKind::DriverWatched { duration: 4.5 }).unwrap(),
            r#"{"type":"driver_watched","duration":4.5}"#
        );
    }

    #[test]
    fn camera_events_serialise() {
        let kind = EventKind::CameraRestored {
            device: "/dev/video0".into(),
            offline: 2.5,
        };
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(
            json,
            r#"{"type":"camera_restored","device":"/dev/video0","offline":2.5}"#
        );
        let kind = EventKind::CameraLost {
            device: "/dev/video0".into(),
            error: "gone".into(),
        };
        assert!(serde_json::to_string(&kind)
            .unwrap()
            .starts_with(r#"{"type":"camera_lost","device":"/dev/video0""#));
    }

    #[test]
    fn probabilities_serialise_in_label_order() {
        let mut p = [0.0; 7];
        p[3] = 0.123456;
        let json = serde_json::to_string(&ProbMap(Probs(p))).unwrap();
        assert_eq!(
            json,
            r#"{"angry":0.0,"disgust":0.0,"fear":0.0,"happy":0.1235,"sad":0.0,"surprise":0.0,"neutral":0.0}"#
        );
    }
}
