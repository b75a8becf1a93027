//! The TOML configuration: schema, defaults and validation.
//!
//! Range checks live inside the deserializers of small newtypes
//! ([`Probability`], [`Seconds`], ...) rather than in a validation pass after
//! parsing. That way the `toml` deserializer attaches the span of the
//! offending value to the error, and every message can name the file, line,
//! column and key without us tracking spans by hand.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::expression::Expression;

/// A configuration problem, always naming the file and (where the parser
/// knows it) the line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (shown in the message, so not a `source()`: each
        /// cause is printed once).
        error: std::io::Error,
    },
    /// A model named in the config is in none of the places ferd looks.
    #[error("{key} = {name:?}: no such model manifest; looked for {}", list_paths(.tried))]
    ModelNotFound {
        /// The config key (`detector.model`, ...).
        key: String,
        /// The path as written.
        name: PathBuf,
        /// Every place tried, in order.
        tried: Vec<PathBuf>,
    },
    /// The TOML is malformed, has an unknown key, a wrong type or an
    /// out-of-range value.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where frames come from when `--source` is not given.
    #[serde(default)]
    pub source: SourceConfig,
    /// The camera used when no file source is given.
    pub camera: Option<CameraConfig>,
    /// Face detector settings.
    #[serde(default)]
    pub detector: DetectorConfig,
    /// Expression classifier settings.
    #[serde(default)]
    pub classifier: ClassifierConfig,
    /// Landmark models (driver-state rules).
    #[serde(default)]
    pub landmarks: LandmarksConfig,
    /// Tracker settings.
    #[serde(default)]
    pub tracker: TrackerConfig,
    /// Alert rules, each with a unique name.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    /// Event stream settings.
    #[serde(default)]
    pub events: EventsConfig,
    /// Status display settings.
    #[serde(default)]
    pub display: DisplayConfig,
    /// GPIO outputs (buzzers, LEDs, relays).
    #[serde(default, rename = "gpio")]
    pub gpio: Vec<GpioConfig>,
    /// When ferd counts itself unable to see.
    #[serde(default)]
    pub health: HealthConfig,
    /// How the models are run.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Events to an MQTT broker (and Home Assistant); off without the
    /// table.
    pub mqtt: Option<MqttConfig>,
    /// The directory that relative paths are resolved against (the config
    /// file's own directory); not a key in the file.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[source]`: the input used when the command line names none.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// An image, a directory of images or a `.y4m` clip.
    pub path: Option<PathBuf>,
    /// Replay recorded video at its own frame rate (`true`) or as fast as
    /// the pipeline goes (`false`, the default).
    #[serde(default)]
    pub realtime: bool,
}

/// `[camera]`: a V4L2 capture device, used when no file source is given.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    /// Device node, e.g. `/dev/video0` or a stable `/dev/v4l/by-id/...` link.
    pub device: PathBuf,
    /// Requested width; the driver may pick the nearest it supports.
    pub width: PositiveU32,
    /// Requested height.
    pub height: PositiveU32,
    /// Requested frames per second.
    pub fps: PositiveU32,
    /// Pixel format to capture.
    pub format: CameraFormat,
}

impl Default for CameraConfig {
    fn default() -> Self {
        CameraConfig {
            device: PathBuf::from("/dev/video0"),
            width: PositiveU32(640),
            height: PositiveU32(480),
            fps: PositiveU32(15),
            format: CameraFormat::Auto,
        }
    }
}

/// Camera pixel formats ferd reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum CameraFormat {
    /// The first of YUYV, GREY, MJPEG the camera offers.
    #[serde(rename = "auto")]
    Auto,
    /// Packed 4:2:2.
    #[serde(rename = "YUYV")]
    Yuyv,
    /// Motion JPEG.
    #[serde(rename = "MJPEG")]
    Mjpeg,
    /// 8-bit grey.
    #[serde(rename = "GREY")]
    Grey,
}

/// `[detector]`: the face detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Manifest of the detector model (relative to the config file).
    pub model: PathBuf,
    /// Minimum face score to keep.
    pub min_score: Probability,
    /// Minimum face size (the shorter box side) in frame pixels.
    pub min_face_size: PositiveU32,
    /// IoU above which overlapping detections are suppressed.
    pub nms_iou: Probability,
    /// Width and height of the network input; frames are letterboxed into it.
    pub input_size: [PositiveU32; 2],
    /// Largest number of faces reported per frame (the highest scores win).
    pub max_faces: PositiveU32,
    /// The detector searches the whole frame at least every this many
    /// frames; in between it looks only around each face it follows, and
    /// goes back to the whole frame at once when a followed face is not
    /// found or the picture changes away from the faces. 1 = the whole
    /// frame every frame. Without effect with the landmark stage, which
    /// follows faces by their meshes (`landmarks.detect_every`).
    pub full_frame_every: PositiveU32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            model: PathBuf::from("models/retinaface-mnet025.toml"),
            min_score: Probability(0.7),
            min_face_size: PositiveU32(24),
            nms_iou: Probability(0.4),
            input_size: [PositiveU32(320), PositiveU32(240)],
            max_faces: PositiveU32(8),
            full_frame_every: PositiveU32(10),
        }
    }
}

/// `[landmarks]`: the face mesh, iris and head-pose models of the
/// driver-state rules (loaded only when a rule needs them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LandmarksConfig {
    /// Manifest of the face-mesh model.
    pub mesh_model: PathBuf,
    /// Manifest of the iris (eye contour) model.
    pub iris_model: PathBuf,
    /// The canonical face's 3-D points, for head pose.
    pub geometry: PathBuf,
    /// Faces are followed by their meshes between detections; the
    /// detector runs at least every this many frames to find new faces
    /// (and whenever a followed face is lost).
    pub detect_every: PositiveU32,
}

impl Default for LandmarksConfig {
    fn default() -> Self {
        LandmarksConfig {
            mesh_model: PathBuf::from("models/face-landmark.toml"),
            iris_model: PathBuf::from("models/iris-landmark.toml"),
            geometry: PathBuf::from("models/face-geometry.toml"),
            detect_every: PositiveU32(10),
        }
    }
}

/// `[classifier]`: the expression classifier.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Manifest of the expression model (relative to the config file).
    pub model: PathBuf,
    /// Extra margin around the detector's box, as a fraction of its size.
    pub margin: Fraction,
    /// Rotate the crop so that the eyes are level.
    pub align: bool,
}

/// The expression model a config without `classifier.model` uses, and
/// `ferd eval`'s default: the int8 NNEF form of the shipped network, which
/// tract runs as integers and faster than the fp32 twin
/// (`models/expression.toml`) everywhere but on cores without a dot
/// product, such as a Pi 4's Cortex-A72 (docs/PERFORMANCE.md, "The int8
/// model").
pub const DEFAULT_EXPRESSION_MODEL: &str = "models/expression-kd-int8-nnef.toml";

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            model: PathBuf::from(DEFAULT_EXPRESSION_MODEL),
            margin: Fraction(0.0),
            align: true,
        }
    }
}

/// `[tracker]`: association of faces across frames.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// Minimum IoU between a track and a new face to be the same face.
    pub min_iou: Probability,
    /// Weight of the newest probabilities in the exponential moving average
    /// (1.0 = no smoothing).
    pub smoothing: Probability,
    /// A track not seen for this long is lost.
    pub lost_after: Seconds,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            min_iou: Probability(0.3),
            smoothing: Probability(0.4),
            lost_after: Seconds(1.0),
        }
    }
}

/// `[[rule]]`: one named alert: a [`Condition`] and its timing.
///
/// The file form is flat (`name`, the condition's keys, `hold`, ...), so
/// the table is read as a [`RawRule`] and checked into this.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawRule")]
pub struct RuleConfig {
    /// Alert name used in events and on the display.
    pub name: RuleName,
    /// What must hold on some tracked face.
    pub condition: Condition,
    /// The condition must hold at least this long before the alert is
    /// raised (required for expression rules; 0 by default for the
    /// others, whose duration is part of the condition).
    pub hold: Seconds,
    /// The alert clears once the condition has been false this long.
    pub clear_after: Seconds,
    /// After clearing, the alert cannot be raised again for this long.
    pub cooldown: Seconds,
}

/// What a rule tests, one variant per kind of cue. The driver-state kinds
/// read the per-track signals of [`crate::driver::DriverTrack`].
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `condition = "expressions"` (the default): the summed smoothed
    /// probability of `expressions` on some track reaches
    /// `min_probability`.
    Expressions {
        /// The expressions whose probabilities are summed.
        expressions: ExpressionSet,
        /// The sum must be at least this.
        min_probability: Probability,
    },
    /// `eyes_closed_for = S`: some track's current eye closure has lasted
    /// `S` seconds. The closure resets when the eyes reopen, so blinks
    /// never add up.
    EyesClosed {
        /// The closure's length that raises.
        seconds: PositiveSeconds,
    },
    /// `perclos = { above = P, window = W }`: on some track, the share of
    /// the known time of the last `W` seconds with the eyes at least 80%
    /// closed (PERCLOS P80) is above `P`, once at least
    /// [`crate::driver::PERCLOS_MIN_COVERAGE`] of the window is known.
    Perclos {
        /// The PERCLOS that must be exceeded.
        above: Proportion,
        /// The window, seconds.
        window: HistoryWindow,
    },
    /// `yawns = { count = N, window = W }`: some track yawned at least
    /// `N` times in the last `W` seconds.
    Yawns {
        /// Yawns needed.
        count: PositiveU32,
        /// The window, seconds.
        window: HistoryWindow,
    },
    /// `looking_away_for = S`: some track's head has been turned beyond
    /// `max_yaw` or `max_pitch` for `S` seconds without a break.
    LookingAway {
        /// How long.
        seconds: PositiveSeconds,
        /// The largest |yaw| still looking ahead, degrees.
        max_yaw: AngleLimit,
        /// The largest |pitch| still looking ahead, degrees.
        max_pitch: AngleLimit,
    },
    /// `face_absent_for = S`: no face at all has been seen for `S`
    /// seconds (the seat is empty or the camera is blocked).
    FaceAbsent {
        /// How long.
        seconds: PositiveSeconds,
    },
}

impl Condition {
    /// The kind of this condition.
    pub fn kind(&self) -> ConditionKind {
        match self {
            Condition::Expressions { .. } => ConditionKind::Expressions,
            Condition::EyesClosed { .. } => ConditionKind::EyesClosed,
            Condition::Perclos { .. } => ConditionKind::Perclos,
            Condition::Yawns { .. } => ConditionKind::Yawns,
            Condition::LookingAway { .. } => ConditionKind::LookingAway,
            Condition::FaceAbsent { .. } => ConditionKind::FaceAbsent,
        }
    }
}

/// The kinds of [`Condition`], as named by a rule's `condition` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionKind {
    /// [`Condition::Expressions`].
    Expressions,
    /// [`Condition::EyesClosed`].
    EyesClosed,
    /// [`Condition::Perclos`].
    Perclos,
    /// [`Condition::Yawns`].
    Yawns,
    /// [`Condition::LookingAway`].
    LookingAway,
    /// [`Condition::FaceAbsent`].
    FaceAbsent,
}

impl ConditionKind {
    /// The name used in the `condition` key and in events (`cue`).
    pub fn name(self) -> &'static str {
        match self {
            ConditionKind::Expressions => "expressions",
            ConditionKind::EyesClosed => "eyes_closed",
            ConditionKind::Perclos => "perclos",
            ConditionKind::Yawns => "yawns",
            ConditionKind::LookingAway => "looking_away",
            ConditionKind::FaceAbsent => "face_absent",
        }
    }

    /// Whether the kind needs to see the eyes: with such a rule, eyes that
    /// stay unknown mean ferd cannot watch the driver.
    pub fn watches_eyes(self) -> bool {
        matches!(self, ConditionKind::EyesClosed | ConditionKind::Perclos)
    }

    /// Whether the kind needs the landmark stage (eyes, mouth, head pose):
    /// only then are the face mesh and iris models loaded and run, so
    /// configs without such rules cost what they cost before.
    pub fn needs_landmarks(self) -> bool {
        !matches!(self, ConditionKind::Expressions | ConditionKind::FaceAbsent)
    }
}

/// The default `max_yaw` of `looking_away_for` rules, degrees.
pub const DEFAULT_MAX_YAW: f32 = 30.0;

/// The default `max_pitch` of `looking_away_for` rules, degrees.
pub const DEFAULT_MAX_PITCH: f32 = 20.0;

/// `perclos = { above = 0.15, window = 60 }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerclosSpec {
    /// The PERCLOS that must be exceeded.
    pub above: Proportion,
    /// The window, seconds (default 60, the classic minute).
    #[serde(default = "default_perclos_window")]
    pub window: HistoryWindow,
}

fn default_perclos_window() -> HistoryWindow {
    HistoryWindow(60.0)
}

/// `yawns = { count = 3, window = 300 }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YawnSpec {
    /// Yawns needed.
    pub count: PositiveU32,
    /// The window, seconds (default 300).
    #[serde(default = "default_yawn_window")]
    pub window: HistoryWindow,
}

fn default_yawn_window() -> HistoryWindow {
    HistoryWindow(300.0)
}

/// A `[[rule]]` table as written: every key any condition kind takes.
/// The kind is given by which kind's keys are present (exactly one kind's;
/// `condition`, if given, must agree). Each kind's own keys are required
/// for it and refused for the others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    name: RuleName,
    condition: Option<ConditionKind>,
    expressions: Option<ExpressionSet>,
    min_probability: Option<Probability>,
    eyes_closed_for: Option<PositiveSeconds>,
    perclos: Option<PerclosSpec>,
    yawns: Option<YawnSpec>,
    looking_away_for: Option<PositiveSeconds>,
    max_yaw: Option<AngleLimit>,
    max_pitch: Option<AngleLimit>,
    face_absent_for: Option<PositiveSeconds>,
    hold: Option<Seconds>,
    #[serde(default = "default_clear_after")]
    clear_after: Seconds,
    #[serde(default)]
    cooldown: Seconds,
}

impl RawRule {
    /// Per kind, the keys of it this table has, in the kinds' order.
    fn kinds_present(&self) -> Vec<(ConditionKind, Vec<&'static str>)> {
        let candidates = [
            (
                ConditionKind::Expressions,
                vec![
                    ("expressions", self.expressions.is_some()),
                    ("min_probability", self.min_probability.is_some()),
                ],
            ),
            (
                ConditionKind::EyesClosed,
                vec![("eyes_closed_for", self.eyes_closed_for.is_some())],
            ),
            (
                ConditionKind::Perclos,
                vec![("perclos", self.perclos.is_some())],
            ),
            (ConditionKind::Yawns, vec![("yawns", self.yawns.is_some())]),
            (
                ConditionKind::LookingAway,
                vec![
                    ("looking_away_for", self.looking_away_for.is_some()),
                    ("max_yaw", self.max_yaw.is_some()),
                    ("max_pitch", self.max_pitch.is_some()),
                ],
            ),
            (
                ConditionKind::FaceAbsent,
                vec![("face_absent_for", self.face_absent_for.is_some())],
            ),
        ];
        candidates
            .into_iter()
            .map(|(kind, keys)| {
                let present = keys.into_iter().filter(|k| k.1).map(|k| k.0).collect();
                (kind, present)
            })
            .filter(|(_, keys): &(ConditionKind, Vec<&str>)| !keys.is_empty())
            .collect()
    }
}

impl TryFrom<RawRule> for RuleConfig {
    type Error = String;

    fn try_from(raw: RawRule) -> Result<RuleConfig, String> {
        let present = raw.kinds_present();
        let name = &raw.name.0;
        let missing = |key: &str| format!("rule {name:?}: missing key `rule.{key}`");
        if let [(a, a_keys), (b, b_keys), ..] = present.as_slice() {
            return Err(format!(
                "rule {name:?}: `rule.{}` ({} condition) and `rule.{}` ({} condition) cannot be \
                 combined: one condition per rule",
                a_keys[0],
                a.name(),
                b_keys[0],
                b.name()
            ));
        }
        let kind = match (raw.condition, present.first()) {
            (Some(said), Some((found, keys))) if said != *found => {
                return Err(format!(
                    "rule {name:?}: `rule.condition = \"{}\"` but `rule.{}` belongs to the {} \
                     condition",
                    said.name(),
                    keys[0],
                    found.name()
                ))
            }
            (Some(said), _) => said,
            (None, Some((found, _))) => *found,
            (None, None) => {
                return Err(format!(
                    "rule {name:?}: no condition; give one of `rule.expressions` (with \
                     `rule.min_probability` and `rule.hold`), `rule.eyes_closed_for`, \
                     `rule.perclos`, `rule.yawns`, `rule.looking_away_for` or \
                     `rule.face_absent_for`"
                ))
            }
        };
        let condition = match kind {
            ConditionKind::Expressions => Condition::Expressions {
                expressions: raw.expressions.ok_or_else(|| missing("expressions"))?,
                min_probability: raw
                    .min_probability
                    .ok_or_else(|| missing("min_probability"))?,
            },
            ConditionKind::EyesClosed => Condition::EyesClosed {
                seconds: raw
                    .eyes_closed_for
                    .ok_or_else(|| missing("eyes_closed_for"))?,
            },
            ConditionKind::Perclos => {
                let spec = raw.perclos.ok_or_else(|| missing("perclos"))?;
                Condition::Perclos {
                    above: spec.above,
                    window: spec.window,
                }
            }
            ConditionKind::Yawns => {
                let spec = raw.yawns.ok_or_else(|| missing("yawns"))?;
                Condition::Yawns {
                    count: spec.count,
                    window: spec.window,
                }
            }
            ConditionKind::LookingAway => Condition::LookingAway {
                seconds: raw
                    .looking_away_for
                    .ok_or_else(|| missing("looking_away_for"))?,
                max_yaw: raw.max_yaw.unwrap_or(AngleLimit(DEFAULT_MAX_YAW)),
                max_pitch: raw.max_pitch.unwrap_or(AngleLimit(DEFAULT_MAX_PITCH)),
            },
            ConditionKind::FaceAbsent => Condition::FaceAbsent {
                seconds: raw
                    .face_absent_for
                    .ok_or_else(|| missing("face_absent_for"))?,
            },
        };
        // An expression rule has no duration of its own, so its hold stays
        // required as before; the other kinds carry theirs.
        let hold = match (kind, raw.hold) {
            (_, Some(hold)) => hold,
            (ConditionKind::Expressions, None) => return Err(missing("hold")),
            (_, None) => Seconds(0.0),
        };
        Ok(RuleConfig {
            name: raw.name,
            condition,
            hold,
            clear_after: raw.clear_after,
            cooldown: raw.cooldown,
        })
    }
}

fn default_clear_after() -> Seconds {
    Seconds(1.0)
}

/// `[events]`: the JSON-lines event stream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// `"-"` for stdout, otherwise a file that events are appended to.
    pub output: String,
    /// A Unix socket local subscribers connect to for the same JSON lines
    /// (mode 0660); none by default.
    pub socket: Option<PathBuf>,
    /// The group the socket is given (default: ferd's own group).
    pub socket_group: Option<String>,
    /// Emit an `expression` event for a track when its top expression
    /// changes, and otherwise at most this often (0 = only on change).
    pub expression_interval: Seconds,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            output: "-".to_string(),
            socket: None,
            socket_group: None,
            expression_interval: Seconds(0.0),
        }
    }
}

/// `[mqtt]`: events to a broker. Only `url` is required.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` (1883), or `mqtts://host[:port]` (8883) for TLS.
    pub url: MqttUrl,
    /// The topic segment naming this unit, `ferd/<device_id>/...`; default:
    /// derived from the board's serial number (see `sink::mqtt`).
    pub device_id: Option<TopicSegment>,
    /// The on-disk queue of events not yet acknowledged by the broker.
    #[serde(default = "default_spool")]
    pub spool: PathBuf,
    /// The spool's size limit in bytes; when full the oldest events go.
    #[serde(default = "default_spool_limit")]
    pub spool_limit: ByteSize,
    /// MQTT client id; default `ferd-<device_id>`.
    pub client_id: Option<TopicSegment>,
    /// Seconds between keepalive pings.
    #[serde(default = "default_keepalive")]
    pub keepalive: PositiveSeconds,
    /// A file with `username = "..."` and `password = "..."` (TOML), kept
    /// out of the config so the config can be world-readable.
    pub credentials: Option<PathBuf>,
    /// PEM file of the CA(s) that signed the broker's certificate (mqtts);
    /// default: the system's CAs.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mqtts with client authentication).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// QoS per event type (`alert_raised = 2`, ...); `default` for the rest.
    #[serde(default)]
    pub qos: QosTable,
    /// Publish Home Assistant discovery.
    #[serde(default = "yes")]
    pub discovery: bool,
    /// Home Assistant's discovery prefix.
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: TopicSegment,
    /// At the end of a file source, how long ferd waits for the spool to
    /// drain to the broker.
    #[serde(default = "default_drain")]
    pub drain_timeout: Seconds,
}

fn default_spool() -> PathBuf {
    PathBuf::from("/var/lib/ferd/spool")
}
fn default_spool_limit() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_keepalive() -> PositiveSeconds {
    PositiveSeconds(30.0)
}
fn yes() -> bool {
    true
}
fn default_discovery_prefix() -> TopicSegment {
    TopicSegment("homeassistant".into())
}
fn default_drain() -> Seconds {
    Seconds(10.0)
}

/// A broker address from `mqtt://` or `mqtts://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
}

impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl std::str::FromStr for MqttUrl {
    type Err = String;
    fn from_str(url: &str) -> Result<MqttUrl, String> {
        let bad = |why: &str| format!("{url:?} is not an MQTT broker URL: {why}");
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(bad("it must start with mqtt:// or mqtts://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#']) {
            return Err(bad(
                "only a host and port are taken (credentials go in `credentials`)",
            ));
        }
        let default_port = if tls { 8883 } else { 1883 };
        // `[::1]:1883`, `host:1883`, `host`.
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (h, p.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| bad("the port must be 1-65535"))?,
        };
        Ok(MqttUrl {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl<'de> Deserialize<'de> for MqttUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One MQTT topic level (a device id, a client id, a prefix): 1-64
/// letters, digits, `_` or `-`, so no `/`, `+` or `#` can change the
/// topic's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSegment(pub String);

impl TopicSegment {
    /// Checks a segment.
    pub fn new(v: &str) -> Result<TopicSegment, String> {
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(format!(
                "{v:?} must be 1-64 characters of letters, digits, '_' or '-'"
            ));
        }
        Ok(TopicSegment(v.to_string()))
    }
}

impl<'de> Deserialize<'de> for TopicSegment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TopicSegment::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A size in bytes, 64 KiB to 4 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if !(65_536..=1 << 32).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "must be a number of bytes between 65536 and 4294967296, got {v}"
            )));
        }
        Ok(ByteSize(v as u64))
    }
}

/// MQTT quality of service per event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QosTable {
    /// For event types not named.
    pub default: u8,
    /// `(event type, qos)`.
    pub by_type: Vec<(&'static str, u8)>,
}

impl Default for QosTable {
    fn default() -> Self {
        QosTable {
            default: 1,
            by_type: Vec::new(),
        }
    }
}

impl QosTable {
    /// The QoS of an event type.
    pub fn of(&self, event_type: &str) -> u8 {
        self.by_type
            .iter()
            .find(|(t, _)| *t == event_type)
            .map_or(self.default, |&(_, q)| q)
    }
}

impl<'de> Deserialize<'de> for QosTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = std::collections::BTreeMap::<String, i64>::deserialize(d)?;
        let mut table = QosTable::default();
        for (key, q) in raw {
            let q = u8::try_from(q).ok().filter(|&q| q <= 2).ok_or_else(|| {
                serde::de::Error::custom(format!("qos.{key}: QoS must be 0, 1 or 2, got {q}"))
            })?;
            if key == "default" {
                table.default = q;
                continue;
            }
            let Some(&ty) = crate::events::EVENT_TYPES.iter().find(|&&t| t == key) else {
                return Err(serde::de::Error::custom(format!(
                    "qos.{key}: no such event type; one of default, {}",
                    crate::events::EVENT_TYPES.join(", ")
                )));
            };
            table.by_type.push((ty, q));
        }
        Ok(table)
    }
}

/// `[health]`: the degraded state.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Analysis failing on every frame for this long (frame time), or no
    /// frame at all from a live camera for this long (wall time), makes
    /// ferd degraded: alerts cleared, heartbeat off, tell-tale on,
    /// watchdog starved.
    pub degraded_after: PositiveSeconds,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            degraded_after: PositiveSeconds(2.0),
        }
    }
}

/// `[runtime]`: how the models use the machine's cores.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads for tract's matrix products: 1 runs everything on the
    /// analysis thread; 0 uses one per core.
    pub threads: Threads,
    /// With more than one core, a second thread runs the model runs of a
    /// frame that do not wait on each other: every other face's
    /// expression, or with the landmark stage each face's left eye. With
    /// `false` (and `threads = 1`) analysis keeps to one core.
    pub parallel: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            threads: Threads(1),
            parallel: true,
        }
    }
}

/// A thread count, 0 (one per core) to [`Threads::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads(pub u32);

impl Threads {
    /// More than any board ferd runs on has cores.
    pub const MAX: u32 = 64;

    /// The count to use: 0 resolved to the cores this process may run on
    /// (1 if that cannot be known).
    pub fn resolve(self) -> usize {
        match self.0 {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        }
    }
}

impl<'de> Deserialize<'de> for Threads {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if !(0..=Threads::MAX as i64).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "must be 0 (one per core) to {}, got {v}",
                Threads::MAX
            )));
        }
        Ok(Threads(v as u32))
    }
}

/// `[[gpio]]`: one output line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioConfig {
    /// Name used in logs.
    pub name: RuleName,
    /// GPIO character device, e.g. `/dev/gpiochip0`.
    pub chip: String,
    /// Line offset on that chip.
    pub line: u32,
    /// The line is active when driven low.
    #[serde(default)]
    pub active_low: bool,
    /// Active while any of these alerts is active.
    #[serde(default)]
    pub alerts: Vec<RuleName>,
    /// Instead of alerts: active while frames are being analysed.
    #[serde(default)]
    pub heartbeat: bool,
    /// Instead of alerts: active while ferd is degraded or its analysis
    /// loop has stopped reporting (a "system unavailable" tell-tale).
    #[serde(default)]
    pub degraded: bool,
    /// How an active output behaves.
    #[serde(default)]
    pub pattern: PatternConfig,
    /// Seconds on, for `pattern = "blink"`.
    #[serde(default = "default_blink")]
    pub on: Seconds,
    /// Seconds off, for `pattern = "blink"`.
    #[serde(default = "default_blink")]
    pub off: Seconds,
}

fn default_blink() -> Seconds {
    Seconds(0.25)
}

/// How an active output is driven.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatternConfig {
    /// On for as long as it is active.
    #[default]
    Steady,
    /// On `on` seconds, off `off` seconds, repeating (buzzer beeps).
    Blink,
}

/// `[display]`: the status screen.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisplayConfig {
    /// A display spec such as `png:status.png`; `--display` overrides it.
    pub output: Option<String>,
}

/// A number in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Probability(pub f32);

/// A fraction of a size, between -0.5 and 2 (a margin; negative shrinks).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Fraction(pub f32);

/// A non-negative, finite number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Seconds(pub f64);

/// A finite number of seconds above 0 and at most 3600.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct PositiveSeconds(pub f64);

/// A whole number ≥ 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PositiveU32(pub u32);

/// A rule name: non-empty, letters, digits, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleName(pub String);

/// A share strictly between 0 and 1 (a PERCLOS threshold: 0 would always
/// hold, 1 never).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Proportion(pub f32);

/// A look-back window in seconds, above 0 and at most 600 (the history a
/// track keeps, [`crate::driver::HISTORY`]).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct HistoryWindow(pub f64);

/// A head-angle limit in degrees, above 0 and at most 90.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct AngleLimit(pub f32);

/// A non-empty set of expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpressionSet(pub BTreeSet<Expression>);

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(0.0..=1.0).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "must be between 0 and 1, got {v}"
            )));
        }
        Ok(Probability(v as f32))
    }
}

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(-0.5..=2.0).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "must be between -0.5 and 2, got {v}"
            )));
        }
        Ok(Fraction(v as f32))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "must be a number of seconds between 0 and 86400, got {v}"
            )));
        }
        Ok(Seconds(v))
    }
}

impl<'de> Deserialize<'de> for PositiveSeconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || v <= 0.0 || v > 3600.0 {
            return Err(serde::de::Error::custom(format!(
                "must be a number of seconds above 0 and at most 3600, got {v}"
            )));
        }
        Ok(PositiveSeconds(v))
    }
}

impl<'de> Deserialize<'de> for PositiveU32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if !(1..=100_000).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "must be a whole number between 1 and 100000, got {v}"
            )));
        }
        Ok(PositiveU32(v as u32))
    }
}

impl<'de> Deserialize<'de> for Proportion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(v > 0.0 && v < 1.0) {
            return Err(serde::de::Error::custom(format!(
                "above must be above 0 and below 1, got {v}"
            )));
        }
        Ok(Proportion(v as f32))
    }
}

impl<'de> Deserialize<'de> for HistoryWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        let max = crate::driver::HISTORY.as_secs_f64();
        if !(v > 0.0 && v <= max) {
            return Err(serde::de::Error::custom(format!(
                "window must be a number of seconds above 0 and at most {max}, got {v}"
            )));
        }
        Ok(HistoryWindow(v))
    }
}

impl<'de> Deserialize<'de> for AngleLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(v > 0.0 && v <= 90.0) {
            return Err(serde::de::Error::custom(format!(
                "must be a number of degrees above 0 and at most 90, got {v}"
            )));
        }
        Ok(AngleLimit(v as f32))
    }
}

impl<'de> Deserialize<'de> for RuleName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        let ok = !v.is_empty()
            && v.len() <= 32
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "rule name {v:?} must be 1-32 characters of letters, digits, '_' or '-'"
            )));
        }
        Ok(RuleName(v))
    }
}

impl<'de> Deserialize<'de> for ExpressionSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<Expression>::deserialize(d)?;
        if v.is_empty() {
            return Err(serde::de::Error::custom(
                "must name at least one expression",
            ));
        }
        Ok(ExpressionSet(v.into_iter().collect()))
    }
}

impl fmt::Display for RuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_bounded(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let config = Config::parse(&text, path, &base)?;
        // It may hold what leads to secrets (the broker, the credentials
        // file's path) and decides what ferd does: 0640, as installed.
        crate::permissions::warn_if_loose(path, "config", crate::permissions::Kind::Secret);
        Ok(config)
    }

    /// Parses configuration text; `path` is only used in error messages and
    /// `base_dir` anchors the relative paths inside.
    pub fn parse(text: &str, path: &Path, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let message = e.message().trim();
            // A rule's own checks (RuleConfig::try_from) get the span of the
            // whole `rule` array from the parser; point at the rule named
            // in the message instead.
            let offset =
                rule_table_offset(text, message).unwrap_or_else(|| e.span().map_or(0, |s| s.start));
            let (line, column) = line_column(text, offset);
            // toml names the key for unknown and missing fields but not for
            // a bad value; recover it from the line the error points at.
            let message = match key_at(text, offset) {
                Some(key) if !message.contains('`') => format!("key `{key}`: {message}"),
                _ => message.to_string(),
            };
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        })?;
        config.base_dir = base_dir.to_path_buf();
        config.check_rule_names(text, path)?;
        config.check_gpio(text, path)?;
        Ok(config)
    }

    /// The configuration used when no file is given (`ferd detect`).
    pub fn defaults(base_dir: &Path) -> Config {
        let mut c: Config = toml::from_str("").expect("the empty config is valid");
        c.base_dir = base_dir.to_path_buf();
        c
    }

    /// Resolves a path from the file against the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Finds a model manifest named by config key `key`. An absolute path
    /// is taken as it is. A relative one is looked up next to the config
    /// file, then by file name in [`PACKAGED_MODELS`] (where the `.deb`
    /// puts them, so a user's own config anywhere finds them), then in
    /// `models/` next to the ferd binary (an unpacked release), then in
    /// `models/` of the current directory (ferd run from a checkout, as
    /// `cargo run` does, with a config kept elsewhere). The error lists
    /// every place tried.
    pub fn find_model(&self, key: &str, p: &Path) -> Result<PathBuf, ConfigError> {
        let mut fallbacks = vec![PathBuf::from(PACKAGED_MODELS)];
        fallbacks.extend(
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("models"))),
        );
        fallbacks.extend(std::env::current_dir().ok().map(|d| d.join("models")));
        self.find_model_in(key, p, &fallbacks)
    }

    /// [`Config::find_model`] with its fallback directories given: a
    /// relative `p` is tried next to the config, then by file name in each
    /// of `fallbacks` in order.
    pub fn find_model_in(
        &self,
        key: &str,
        p: &Path,
        fallbacks: &[PathBuf],
    ) -> Result<PathBuf, ConfigError> {
        let mut tried = vec![self.resolve(p)];
        if let (false, Some(name)) = (p.is_absolute(), p.file_name()) {
            tried.extend(fallbacks.iter().map(|dir| dir.join(name)));
        }
        tried.dedup();
        match tried.iter().find(|c| c.is_file()) {
            Some(found) => Ok(found.clone()),
            None => Err(ConfigError::ModelNotFound {
                key: key.to_string(),
                name: p.to_path_buf(),
                tried,
            }),
        }
    }

    /// The detector manifest ([`Config::find_model`] of `detector.model`).
    pub fn detector_model(&self) -> Result<PathBuf, ConfigError> {
        self.find_model("detector.model", &self.detector.model)
    }

    /// The expression manifest ([`Config::find_model`] of
    /// `classifier.model`).
    pub fn classifier_model(&self) -> Result<PathBuf, ConfigError> {
        self.find_model("classifier.model", &self.classifier.model)
    }

    /// Whether any rule needs the landmark stage.
    pub fn needs_landmarks(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.condition.kind().needs_landmarks())
    }

    /// The landmark models' manifests and the geometry file
    /// ([`Config::find_model`] of the `landmarks` keys).
    pub fn landmark_models(&self) -> Result<[PathBuf; 3], ConfigError> {
        let l = &self.landmarks;
        Ok([
            self.find_model("landmarks.mesh_model", &l.mesh_model)?,
            self.find_model("landmarks.iris_model", &l.iris_model)?,
            self.find_model("landmarks.geometry", &l.geometry)?,
        ])
    }

    /// Rule names key the alert state and the events, so they must be
    /// unique. This is the one check that spans several values; the error
    /// points at the second occurrence.
    fn check_rule_names(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let mut seen = BTreeSet::new();
        for rule in &self.rules {
            if !seen.insert(rule.name.0.as_str()) {
                let needle = format!("\"{}\"", rule.name.0);
                let offset = text
                    .match_indices(&needle)
                    .nth(1)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                let (line, column) = line_column(text, offset);
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: format!("duplicate rule name {:?} in key `rule.name`", rule.name.0),
                });
            }
        }
        Ok(())
    }
}

impl Config {
    /// Each output follows one thing: alerts that exist, the heartbeat or
    /// the degraded state.
    fn check_gpio(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let invalid = |needle: &str, message: String| {
            let offset = text.find(needle).unwrap_or(0);
            let (line, column) = line_column(text, offset);
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        for g in &self.gpio {
            let name = &g.name.0;
            let roles = usize::from(!g.alerts.is_empty())
                + usize::from(g.heartbeat)
                + usize::from(g.degraded);
            if roles != 1 {
                return Err(invalid(
                    &format!("\"{name}\""),
                    format!(
                        "gpio output {name:?}: set exactly one of `gpio.alerts`, \
                         `gpio.heartbeat = true` or `gpio.degraded = true`"
                    ),
                ));
            }
            for a in &g.alerts {
                if !self.rules.iter().any(|r| r.name == *a) {
                    return Err(invalid(
                        &format!("\"{}\"", a.0),
                        format!(
                            "key `gpio.alerts`: no rule named {:?} (gpio output {name:?})",
                            a.0
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Where the `.deb` installs the models (README, "Install on a Raspberry
/// Pi"); [`Config::find_model`] looks here.
pub const PACKAGED_MODELS: &str = "/usr/share/ferd/models";

/// The largest config file read: far above any real one (the annotated
/// example is 4 KiB), small enough that a wrong path (a device, a log)
/// cannot exhaust memory.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a config file: a regular file of at most [`MAX_CONFIG_BYTES`], in
/// UTF-8.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    let bytes = crate::source::read_regular_file(path, MAX_CONFIG_BYTES)?;
    String::from_utf8(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

fn list_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// The dotted key (`table.key`) of the `key = value` line holding `offset`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

/// The offset of the `[[rule]]` header of the rule a `rule "NAME": ...`
/// message is about (the table whose `name = "NAME"` line comes first).
fn rule_table_offset(text: &str, message: &str) -> Option<usize> {
    let name = message.strip_prefix("rule \"")?.split_once("\":")?.0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let named = line.split_once('=').is_some_and(|(k, v)| {
            // Rule names hold no '#', so one starts a comment.
            let v = v.split('#').next().unwrap_or("");
            k.trim() == "name" && v.trim().trim_matches('"') == name
        });
        if named && key_at(text, at).as_deref() == Some("rule.name") {
            return text[..at].rfind("[[rule]]");
        }
        at += line.len();
    }
    None
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), Path::new("."))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.detector.min_score, Probability(0.7));
        assert!(c.rules.is_empty());
    }

    #[test]
    fn full_rule_parses() {
        let c = parse(
            "[[rule]]\nname = \"distress\"\nexpressions = [\"angry\", \"fear\", \"sad\"]\n\
             min_probability = 0.6\nhold = 3\nclear_after = 1.5\ncooldown = 10\n",
        )
        .unwrap();
        assert_eq!(c.rules.len(), 1);
        assert_eq!(c.rules[0].name.0, "distress");
        assert!(matches!(
            &c.rules[0].condition,
            Condition::Expressions { expressions, .. } if expressions.0.len() == 3
        ));
        assert_eq!(c.rules[0].hold, Seconds(3.0));
    }

    #[test]
    fn unknown_key_names_key_line_and_column() {
        let err = parse("[detector]\nmin_score = 0.5\nmin_scroe = 0.5\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("test.toml:3:1:"), "{msg}");
        assert!(msg.contains("min_scroe"), "{msg}");
    }

    #[test]
    fn out_of_range_value_points_at_value() {
        let err = parse("[tracker]\nsmoothing = 1.5\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("test.toml:2:13:"), "{msg}");
        assert!(msg.contains("between 0 and 1"), "{msg}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let err = parse("[detector]\nmin_face_size = \"big\"\n").unwrap_err();
        assert!(err.to_string().starts_with("test.toml:2:"), "{err}");
    }

    #[test]
    fn unknown_expression_is_reported() {
        let err = parse(
            "[[rule]]\nname = \"x\"\nexpressions = [\"joy\"]\nmin_probability = 0.5\nhold = 1\n",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("test.toml:3:"), "{msg}");
        assert!(msg.contains("joy"), "{msg}");
    }

    #[test]
    fn duplicate_rule_names_are_rejected() {
        let rule =
            "[[rule]]\nname = \"a\"\nexpressions = [\"sad\"]\nmin_probability = 0.5\nhold = 1\n";
        let err = parse(&format!("{rule}{rule}")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("test.toml:7:8:"), "{msg}");
        assert!(msg.contains("duplicate"), "{msg}");
    }

    #[test]
    fn bad_value_names_its_key() {
        let err = parse("[events]\n# comment\nexpression_interval = \"soon\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("test.toml:3:23: key `events.expression_interval`:"),
            "{msg}"
        );
    }

    #[test]
    fn gpio_outputs_must_follow_existing_rules() {
        let rule = "[[rule]]\nname = \"distress\"\nexpressions = [\"sad\"]\nmin_probability = 0.5\nhold = 1\n";
        let gpio = "[[gpio]]\nname = \"buzzer\"\nchip = \"/dev/gpiochip0\"\nline = 17\n";
        let ok = parse(&format!(
            "{rule}{gpio}alerts = [\"distress\"]\npattern = \"blink\"\n"
        ))
        .unwrap();
        assert_eq!(ok.gpio[0].line, 17);
        let err = parse(&format!("{rule}{gpio}alerts = [\"distres\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.toml:10:11:") && err.contains("no rule named \"distres\""),
            "{err}"
        );
        let err = parse(&format!("{rule}{gpio}")).unwrap_err().to_string();
        assert!(err.contains("exactly one of"), "{err}");
        let err = parse(&format!("{rule}{gpio}heartbeat = true\ndegraded = true\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one of"), "{err}");
        let ok = parse(&format!("{rule}{gpio}degraded = true\n")).unwrap();
        assert!(ok.gpio[0].degraded);
        let err = parse(&format!(
            "{rule}{gpio}heartbeat = true\npattern = \"wobble\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("wobble"), "{err}");
    }

    #[test]
    fn rule_condition_kind_defaults_to_expressions_and_checks_its_keys() {
        let c = parse(
            "[[rule]]\nname = \"a\"\ncondition = \"expressions\"\nexpressions = [\"sad\"]\n\
             min_probability = 0.5\nhold = 1\n",
        )
        .unwrap();
        assert!(matches!(
            c.rules[0].condition,
            Condition::Expressions { min_probability: Probability(p), .. } if p == 0.5
        ));
        let err = parse("[[rule]]\nname = \"a\"\nexpressions = [\"sad\"]\nhold = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.toml:1:1:") && err.contains("`rule.min_probability`"),
            "{err}"
        );
        let err = parse("[[rule]]\nname = \"a\"\ncondition = \"yawn\"\nhold = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.toml:3:") && err.contains("yawn"),
            "{err}"
        );
    }

    /// The driver-state rules exactly as the README shows them.
    const DRIVER_RULES: &str = r#"
[[rule]]
name = "eyes_closed"
eyes_closed_for = 2.0            # continuous closure ≥ 2 s; blinks never add up
[[rule]]
name = "drowsy"
perclos = { above = 0.15, window = 60 }
[[rule]]
name = "yawning"
yawns = { count = 3, window = 300 }
[[rule]]
name = "distracted"
looking_away_for = 3.0           # |yaw| or |pitch| beyond limits, defaults 30° / 20°
[[rule]]
name = "absent"
face_absent_for = 6.0            # no face at all
"#;

    #[test]
    fn the_driver_state_rules_parse_with_their_defaults() {
        let c = parse(DRIVER_RULES).unwrap();
        let kinds: Vec<ConditionKind> = c.rules.iter().map(|r| r.condition.kind()).collect();
        assert_eq!(
            kinds,
            [
                ConditionKind::EyesClosed,
                ConditionKind::Perclos,
                ConditionKind::Yawns,
                ConditionKind::LookingAway,
                ConditionKind::FaceAbsent
            ]
        );
        for r in &c.rules {
            assert_eq!(
                (r.hold, r.clear_after, r.cooldown),
                (Seconds(0.0), Seconds(1.0), Seconds(0.0)),
                "{}",
                r.name
            );
        }
        assert_eq!(
            c.rules[1].condition,
            Condition::Perclos {
                above: Proportion(0.15),
                window: HistoryWindow(60.0)
            }
        );
        assert_eq!(
            c.rules[2].condition,
            Condition::Yawns {
                count: PositiveU32(3),
                window: HistoryWindow(300.0)
            }
        );
        assert_eq!(
            c.rules[3].condition,
            Condition::LookingAway {
                seconds: PositiveSeconds(3.0),
                max_yaw: AngleLimit(DEFAULT_MAX_YAW),
                max_pitch: AngleLimit(DEFAULT_MAX_PITCH)
            }
        );
        // Only a name and the closure: everything else at its default.
        let c = parse("[[rule]]\nname = \"eyes_closed\"\neyes_closed_for = 2.0\n").unwrap();
        assert_eq!(
            c.rules[0].condition,
            Condition::EyesClosed {
                seconds: PositiveSeconds(2.0)
            }
        );
        assert_eq!(c.rules[0].hold, Seconds(0.0));
        // Explicit limits, the condition named, a hold, a subtable.
        let c = parse(
            "[[rule]]\nname = \"d\"\ncondition = \"looking_away\"\nlooking_away_for = 2\n\
             max_yaw = 45\nmax_pitch = 15.5\nhold = 0.5\ncooldown = 30\n\
             [[rule]]\nname = \"p\"\n[rule.perclos]\nabove = 0.2\n",
        )
        .unwrap();
        assert_eq!(
            c.rules[0].condition,
            Condition::LookingAway {
                seconds: PositiveSeconds(2.0),
                max_yaw: AngleLimit(45.0),
                max_pitch: AngleLimit(15.5)
            }
        );
        assert_eq!(c.rules[0].hold, Seconds(0.5));
        assert_eq!(
            c.rules[1].condition,
            Condition::Perclos {
                above: Proportion(0.2),
                window: HistoryWindow(60.0)
            }
        );
    }

    #[test]
    fn driver_state_keys_are_range_checked_with_their_positions() {
        let err = |text: &str| parse(text).unwrap_err().to_string();
        let rule = |body: &str| format!("[[rule]]\nname = \"r\"\n{body}\n");
        let cases = [
            (
                "eyes_closed_for = 0",
                "test.toml:3:19: key `rule.eyes_closed_for`: must be a number of seconds above 0",
            ),
            (
                "perclos = { above = 1.5, window = 60 }",
                "test.toml:3:21: key `rule.perclos`: above must be above 0 and below 1, got 1.5",
            ),
            (
                "perclos = { above = 0.15, window = 900 }",
                "test.toml:3:36: key `rule.perclos`: window must be a number of seconds above 0 and at most 600",
            ),
            (
                "yawns = { count = 0, window = 300 }",
                "test.toml:3:19: key `rule.yawns`: must be a whole number between 1",
            ),
            (
                "yawns = { count = 3, window = 601 }",
                "test.toml:3:31: key `rule.yawns`: window must be",
            ),
            (
                "looking_away_for = -1",
                "test.toml:3:20: key `rule.looking_away_for`: must be a number of seconds above 0",
            ),
            (
                "looking_away_for = 3\nmax_yaw = 100",
                "test.toml:4:11: key `rule.max_yaw`: must be a number of degrees above 0 and at most 90",
            ),
            (
                "looking_away_for = 3\nmax_pitch = 0",
                "test.toml:4:13: key `rule.max_pitch`: must be a number of degrees",
            ),
            (
                "face_absent_for = \"long\"",
                "test.toml:3:19: key `rule.face_absent_for`:",
            ),
        ];
        for (body, want) in cases {
            let e = err(&rule(body));
            assert!(e.starts_with(want), "{body}: {e}");
        }
        let e = err(&rule("perclos = { abov = 0.15 }"));
        assert!(e.starts_with("test.toml:3:") && e.contains("abov"), "{e}");
        let e = err(&rule("perclos = { window = 60 }"));
        assert!(e.starts_with("test.toml:3:") && e.contains("above"), "{e}");
    }

    #[test]
    fn a_rule_has_exactly_one_condition() {
        let err = |text: &str| parse(text).unwrap_err().to_string();
        let e = err("[[rule]]\nname = \"r\"\neyes_closed_for = 2\nperclos = { above = 0.1 }\n");
        assert!(
            e.starts_with("test.toml:1:1:")
                && e.contains("`rule.eyes_closed_for` (eyes_closed condition)")
                && e.contains("`rule.perclos` (perclos condition)")
                && e.contains("one condition per rule"),
            "{e}"
        );
        let e = err(
            "[[rule]]\nname = \"r\"\nexpressions = [\"sad\"]\nmin_probability = 0.5\nhold = 1\n\
             face_absent_for = 6\n",
        );
        assert!(
            e.contains("`rule.expressions`") && e.contains("`rule.face_absent_for`"),
            "{e}"
        );
        let e = err("[[rule]]\nname = \"r\"\ncondition = \"perclos\"\neyes_closed_for = 2\n");
        assert!(
            e.contains("`rule.condition = \"perclos\"`") && e.contains("`rule.eyes_closed_for`"),
            "{e}"
        );
        let e = err("[[rule]]\nname = \"r\"\ncondition = \"yawns\"\n");
        assert!(e.contains("missing key `rule.yawns`"), "{e}");
        let e = err("[[rule]]\nname = \"r\"\nmax_yaw = 40\n");
        assert!(e.contains("missing key `rule.looking_away_for`"), "{e}");
        let e = err("[[rule]]\nname = \"r\"\nhold = 1\n");
        assert!(
            e.contains("no condition") && e.contains("`rule.eyes_closed_for`"),
            "{e}"
        );
        // Expression rules still need their hold.
        let e = err("[[rule]]\nname = \"r\"\nexpressions = [\"sad\"]\nmin_probability = 0.5\n");
        assert!(e.contains("missing key `rule.hold`"), "{e}");
        // The error of a later rule points at that rule.
        let e = err(&format!(
            "{DRIVER_RULES}[[rule]]\nname = \"x\" # why\nperclos = {{ above = 0.1 }}\n\
             yawns = {{ count = 1 }}\n"
        ));
        assert!(e.starts_with("test.toml:17:"), "{e}");
    }

    #[test]
    fn health_timeout_must_be_positive() {
        assert_eq!(parse("").unwrap().health.degraded_after.0, 2.0);
        let err = parse("[health]\ndegraded_after = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.toml:2:18: key `health.degraded_after`"),
            "{err}"
        );
    }

    #[test]
    fn runtime_threads_are_bounded_and_zero_means_every_core() {
        let c = parse("").unwrap();
        assert_eq!(c.runtime.threads.resolve(), 1);
        assert!(c.runtime.parallel);
        assert!(
            !parse("[runtime]\nparallel = false\n")
                .unwrap()
                .runtime
                .parallel
        );
        let all = parse("[runtime]\nthreads = 0\n").unwrap();
        assert!(all.runtime.threads.resolve() >= 1);
        for bad in ["-1", "65"] {
            let err = parse(&format!("[runtime]\nthreads = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("test.toml:2:11: key `runtime.threads`")
                    && err.contains("one per core"),
                "{err}"
            );
        }
    }

    #[test]
    fn models_are_found_next_to_the_config_else_the_error_lists_where_ferd_looked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("m")).unwrap();
        std::fs::write(dir.path().join("m/x.toml"), "").unwrap();
        let mut c = parse("").unwrap();
        c.base_dir = dir.path().to_path_buf();
        assert_eq!(
            c.find_model("detector.model", Path::new("m/x.toml"))
                .unwrap(),
            dir.path().join("m/x.toml")
        );
        let err = c
            .find_model("detector.model", Path::new("m/nope-404.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("detector.model = \"m/nope-404.toml\""),
            "{err}"
        );
        assert!(
            err.contains(&dir.path().join("m/nope-404.toml").display().to_string()),
            "{err}"
        );
        assert!(
            err.contains("/usr/share/ferd/models/nope-404.toml"),
            "{err}"
        );
    }

    #[test]
    fn a_config_elsewhere_finds_the_packaged_models_by_file_name() {
        let home = tempfile::tempdir().unwrap();
        let packaged = tempfile::tempdir().unwrap();
        let beside_binary = tempfile::tempdir().unwrap();
        std::fs::write(packaged.path().join("expression.toml"), "").unwrap();
        std::fs::write(beside_binary.path().join("retinaface.toml"), "").unwrap();
        let mut c = parse("").unwrap();
        c.base_dir = home.path().to_path_buf();
        let dirs = [
            packaged.path().to_path_buf(),
            beside_binary.path().to_path_buf(),
        ];
        let find = |key: &str, p: &str| c.find_model_in(key, Path::new(p), &dirs).unwrap();
        assert_eq!(
            find("classifier.model", "../models/expression.toml"),
            packaged.path().join("expression.toml")
        );
        assert_eq!(
            find("detector.model", "models/retinaface.toml"),
            beside_binary.path().join("retinaface.toml")
        );
        // Next to the config wins.
        std::fs::create_dir(home.path().join("models")).unwrap();
        std::fs::write(home.path().join("models/retinaface.toml"), "").unwrap();
        assert_eq!(
            find("detector.model", "models/retinaface.toml"),
            home.path().join("models/retinaface.toml")
        );
    }

    #[test]
    fn config_that_is_not_a_regular_file_is_refused() {
        let err = Config::load(Path::new("/dev/zero")).unwrap_err();
        let msg = format!("{:#}", anyhow::Error::new(err).context("loading"));
        assert_eq!(
            msg,
            "loading: cannot read config /dev/zero: not a regular file but a character device; \
             only regular files are read"
        );
        let err = Config::load(Path::new("/nonexistent/ferd.toml")).unwrap_err();
        let msg = format!("{:#}", anyhow::Error::new(err));
        assert_eq!(msg.matches("No such file").count(), 1, "{msg}");
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
