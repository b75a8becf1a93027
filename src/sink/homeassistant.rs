//! Home Assistant MQTT discovery: the one retained *device-based* discovery
//! payload that makes a ferd device and its entities appear in Home
//! Assistant without any YAML on the Home Assistant side.
//!
//! Topics (`<base>` is usually `ferd/<device_id>`):
//!
//! | topic                                   | payload (all retained)                      |
//! |-----------------------------------------|---------------------------------------------|
//! | `<base>/availability`                   | [`AVAILABLE`] / [`NOT_AVAILABLE`] (will)     |
//! | `<base>/state`                          | `{"expression":"happy","faces":2,"alerts":["eyes_closed"],"degraded":false,"watching":true}` |
//! | `<base>/alert/<rule name>`              | [`ALERT_ON`] / [`ALERT_OFF`]                 |
//! | `<prefix>/device/ferd_<device_id>/config` | [`Discovery::payload`]                    |
//!
//! The entities read only the state fields `expression` (a string, one of
//! [`expression_options`]), `faces` (an integer), `degraded` (a bool) and,
//! with a rule that watches the eyes, `watching` (a bool); `alerts` is for
//! other consumers, the alerts reach Home Assistant on their own topics.
//!
//! # Where the rules come from
//!
//! The payload and the checks in this file's tests mirror Home Assistant
//! core's MQTT integration, `homeassistant/components/mqtt/` in
//! github.com/home-assistant/core, read file by file from a public-source
//! index (a full clone was over the size limit, so there is no single
//! pinned commit; each file's version is named here, by commit where the
//! index gave one):
//!
//! - `schemas.py`, the newest version indexed (written against `probatio`
//!   rather than `voluptuous`; `SHARED_OPTIONS` including `qos`,
//!   `_COMPONENT_CONFIG_SCHEMA` with `check_unique_id`,
//!   `DEVICE_DISCOVERY_SCHEMA`), checked against an early device-discovery
//!   version, commit 0f5c1b547043f5395608e09de3dcf4b7cfafef3d (where
//!   `SHARED_OPTIONS` has no `qos` yet);
//! - `discovery.py`, the device-discovery version (`_parse_device_payload`,
//!   `TOPIC_MATCHER`, component ids used as object ids and split on spaces
//!   in `_generate_device_config`);
//! - `config.py` at 459c79f295fd592fc7b235e4bcb5a6a3d160754e
//!   (`MQTT_RO_SCHEMA`: `state_topic` required);
//! - `sensor.py`, `validate_sensor_state_and_device_class_config` in its
//!   2024 and newest versions (`options` only with `device_class: enum`,
//!   never with `state_class` or `unit_of_measurement`);
//! - `binary_sensor.py`, newest indexed (`PARALLEL_UPDATES`,
//!   `CONF_OFF_DELAY` in `const.py`), and `binary_sensor/__init__.py`'s
//!   `BinarySensorDeviceClass`;
//! - `entity.py` at e79ecb303a76099cddc4af480a2079172ba581a3 and
//!   `abbreviations.py` (key abbreviations, replaced before validation).
//!
//! Only keys valid in every version read are emitted, so the payload works
//! from the first Home Assistant with device-based discovery (2024.11) on.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::expression::Expression;

/// Availability payload while ferd runs (Home Assistant's default too).
pub const AVAILABLE: &str = "online";
/// Availability payload of the last will and of a clean stop.
pub const NOT_AVAILABLE: &str = "offline";
/// Alert topic payload while the rule is raised.
pub const ALERT_ON: &str = "ON";
/// Alert topic payload while the rule is clear.
pub const ALERT_OFF: &str = "OFF";
/// The state JSON's `expression` when no face is seen.
pub const NO_FACE: &str = "none";

/// The state JSON's `expression` value for the current expression, `None`
/// when no face is seen. The publisher uses this and the discovery payload
/// lists [`expression_options`], built from the same function, so the two
/// cannot disagree (Home Assistant drops an enum value not in `options`).
pub fn expression_state_value(e: Option<Expression>) -> &'static str {
    match e {
        Some(e) => e.name(),
        None => NO_FACE,
    }
}

/// Every value [`expression_state_value`] can return: the seven FER2013
/// labels in label order, then [`NO_FACE`].
pub fn expression_options() -> Vec<&'static str> {
    Expression::ALL
        .into_iter()
        .map(Some)
        .chain([None])
        .map(expression_state_value)
        .collect()
}

/// A Home Assistant object id (the component key in the payload, the tail
/// of unique ids) for a rule name; deterministic and total.
///
/// Home Assistant accepts object ids of `[a-zA-Z0-9_-]+` (`TOPIC_MATCHER`
/// in `discovery.py`; a component id also must not hold a space, which
/// `_generate_device_config` splits on). A name of only those characters is
/// its own id: ferd's config allows exactly those, so config rule names map
/// to themselves and unique ids read `ferd_<device>_alert_<rule>`. Case is
/// kept because rule names are case-sensitive (`Drowsy` and `drowsy` are two
/// rules, so they must be two entities).
///
/// Any other name has each other character replaced by `_` and the first 8
/// hex digits of its SHA-256 appended (`"Eyes Closed"` →
/// `Eyes_Closed_da1dbbcd`), so that two names that differ only in replaced
/// characters still get two ids. SHA-256, not std's hasher, because unique
/// ids must stay the same across Rust releases: Home Assistant keys its
/// entity registry on them, and a changed id is a duplicate entity. Clashes
/// that remain possible (a rule literally named `Eyes_Closed_da1dbbcd`
/// next to `Eyes Closed`, or one name listed twice) are refused by
/// [`Discovery::payload`] with [`DiscoveryError::DuplicateObjectId`], never
/// resolved silently.
pub fn object_id(name: &str) -> String {
    if is_object_id(name) {
        return name.to_owned();
    }
    let sanitized: String = name
        .chars()
        .map(|c| if is_object_id_char(c) { c } else { '_' })
        .collect();
    let digest = Sha256::digest(name.as_bytes());
    let suffix: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    if sanitized.is_empty() {
        suffix
    } else {
        format!("{sanitized}_{suffix}")
    }
}

fn is_object_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Whether `s` matches Home Assistant's object id class `[a-zA-Z0-9_-]+`.
fn is_object_id(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_object_id_char)
}

/// Why no discovery payload could be built. Each names the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// MQTT has QoS 0, 1 and 2 only.
    #[error("MQTT QoS must be 0, 1 or 2, got {0}")]
    InvalidQos(u8),
    /// The device id is not `[a-zA-Z0-9_-]+`; it is part of the discovery
    /// topic, which Home Assistant ignores otherwise (and of unique ids,
    /// which must not change, so it is refused rather than rewritten).
    #[error("device id {0:?} must be letters, digits, '_' or '-' (Home Assistant object id)")]
    InvalidDeviceId(String),
    /// A topic or topic prefix that is empty, has a wildcard (`+`, `#`),
    /// NUL or another control character, or is over MQTT's 65535 bytes.
    #[error("{what} {topic:?} is not a valid MQTT publish topic")]
    InvalidTopic {
        /// Which parameter: `discovery prefix` or `base topic`.
        what: &'static str,
        /// The value given.
        topic: String,
    },
    /// A rule name that cannot be one level of its alert topic
    /// `<base>/alert/<rule>` (empty, or with `/`, `+`, `#`, or a control
    /// character).
    #[error("rule name {0:?} cannot be an MQTT topic level")]
    InvalidRuleName(String),
    /// Two rules map to one object id (see [`object_id`]); Home Assistant
    /// would keep only one of the two entities.
    #[error(
        "rules {first:?} and {second:?} both map to the Home Assistant object id {object_id:?}"
    )]
    DuplicateObjectId {
        /// The earlier rule.
        first: String,
        /// The later rule.
        second: String,
        /// The id both map to.
        object_id: String,
    },
}

/// The inputs of the discovery payload; [`Discovery::payload`] checks them.
#[derive(Debug, Clone, Copy)]
pub struct Discovery<'a> {
    /// Home Assistant's discovery prefix (its default is `homeassistant`).
    pub prefix: &'a str,
    /// The device id: `[a-zA-Z0-9_-]+`.
    pub device_id: &'a str,
    /// Topic under which ferd publishes, normally `ferd/<device_id>`.
    pub base_topic: &'a str,
    /// The configured alert rule names, one binary sensor each, in order.
    pub rules: &'a [String],
    /// Whether a rule watches the eyes (`eyes_closed_for`, `perclos`):
    /// then a "Watching driver" binary sensor reads the state's
    /// `watching`. Without one it would be on forever, so it is left out.
    pub watches_eyes: bool,
    /// QoS at which Home Assistant subscribes to ferd's topics.
    pub qos: u8,
}

impl Discovery<'_> {
    /// The retained discovery topic, `<prefix>/device/ferd_<device_id>/config`.
    /// Meaningful only for inputs that [`Discovery::payload`] accepts.
    pub fn topic(&self) -> String {
        format!("{}/device/{}/config", self.prefix, self.device_object_id())
    }

    /// `<base>/availability`: [`AVAILABLE`] / [`NOT_AVAILABLE`], retained.
    pub fn availability_topic(&self) -> String {
        format!("{}/availability", self.base_topic)
    }

    /// `<base>/state`: the retained state JSON.
    pub fn state_topic(&self) -> String {
        format!("{}/state", self.base_topic)
    }

    /// `<base>/alert/<rule>`: [`ALERT_ON`] / [`ALERT_OFF`], retained.
    pub fn alert_topic(&self, rule: &str) -> String {
        format!("{}/alert/{rule}", self.base_topic)
    }

    /// The discovery payload as compact JSON, to be published retained on
    /// [`Discovery::topic`]. Refuses inputs Home Assistant would reject or
    /// misread instead of publishing something that half works.
    pub fn payload(&self) -> Result<String, DiscoveryError> {
        Ok(self.document()?.to_string())
    }

    /// `ferd_<device_id>`: the discovery object id, device identifier and
    /// unique id prefix.
    fn device_object_id(&self) -> String {
        format!("ferd_{}", self.device_id)
    }

    fn document(&self) -> Result<Value, DiscoveryError> {
        if self.qos > 2 {
            return Err(DiscoveryError::InvalidQos(self.qos));
        }
        if !is_object_id(self.device_id) {
            return Err(DiscoveryError::InvalidDeviceId(self.device_id.to_owned()));
        }
        check_topic("discovery prefix", self.prefix)?;
        check_topic("base topic", self.base_topic)?;

        let dev = self.device_object_id();
        let version = env!("CARGO_PKG_VERSION");
        let qos = self.qos;
        // Per component as well as at the top: before `qos` joined
        // `SHARED_OPTIONS` (schemas.py), a top-level qos was accepted but not
        // inherited, and those Home Assistants would subscribe at QoS 0.
        let mut components = Map::new();
        components.insert(
            "expression".into(),
            json!({
                "platform": "sensor",
                "name": "Expression",
                "unique_id": format!("{dev}_expression"),
                "state_topic": self.state_topic(),
                "value_template": "{{ value_json.expression }}",
                // enum: a fixed set of text states; Home Assistant refuses
                // `options` together with a state_class or a unit.
                "device_class": "enum",
                "options": expression_options(),
                "icon": "mdi:emoticon-outline",
                "qos": qos,
            }),
        );
        components.insert(
            "faces".into(),
            json!({
                "platform": "sensor",
                "name": "Faces",
                "unique_id": format!("{dev}_faces"),
                "state_topic": self.state_topic(),
                "value_template": "{{ value_json.faces }}",
                // measurement: a count sampled now (graphs, statistics); no
                // unit, a bare count needs none.
                "state_class": "measurement",
                "icon": "mdi:account-multiple",
                "qos": qos,
            }),
        );
        components.insert(
            "degraded".into(),
            json!({
                "platform": "binary_sensor",
                "name": "Degraded",
                "unique_id": format!("{dev}_degraded"),
                "state_topic": self.state_topic(),
                "value_template": format!(
                    "{{{{ '{ALERT_ON}' if value_json.degraded else '{ALERT_OFF}' }}}}"
                ),
                "payload_on": ALERT_ON,
                "payload_off": ALERT_OFF,
                // problem: on means ferd is not watching (camera lost,
                // analysis failing), a fault of the device itself.
                "device_class": "problem",
                "entity_category": "diagnostic",
                "qos": qos,
            }),
        );
        if self.watches_eyes {
            components.insert(
                "watching".into(),
                json!({
                    "platform": "binary_sensor",
                    "name": "Watching driver",
                    "unique_id": format!("{dev}_watching"),
                    "state_topic": self.state_topic(),
                    "value_template": format!(
                        "{{{{ '{ALERT_ON}' if value_json.watching else '{ALERT_OFF}' }}}}"
                    ),
                    "payload_on": ALERT_ON,
                    "payload_off": ALERT_OFF,
                    // No device class: none means "on = can see the eyes"
                    // (`problem` would read the other way round); off is
                    // what a car kit's dashboard should flag.
                    "icon": "mdi:eye-check-outline",
                    "entity_category": "diagnostic",
                    "qos": qos,
                }),
            );
        }

        let mut seen: Vec<(String, &str)> = Vec::with_capacity(self.rules.len());
        for rule in self.rules {
            if !is_topic_level(rule) {
                return Err(DiscoveryError::InvalidRuleName(rule.clone()));
            }
            let id = object_id(rule);
            if let Some((_, first)) = seen.iter().find(|(seen_id, _)| *seen_id == id) {
                return Err(DiscoveryError::DuplicateObjectId {
                    first: (*first).to_owned(),
                    second: rule.clone(),
                    object_id: id,
                });
            }
            // "alert_" keeps rule components apart from the fixed ones
            // above whatever a rule is called.
            components.insert(
                format!("alert_{id}"),
                json!({
                    "platform": "binary_sensor",
                    "name": rule,
                    "unique_id": format!("{dev}_alert_{id}"),
                    "state_topic": self.alert_topic(rule),
                    "payload_on": ALERT_ON,
                    "payload_off": ALERT_OFF,
                    // safety: on means unsafe, what a driver-state alert is.
                    "device_class": "safety",
                    "qos": qos,
                }),
            );
            seen.push((id, rule));
        }

        Ok(json!({
            "device": {
                "identifiers": [dev],
                "name": format!("ferd {}", self.device_id),
                "manufacturer": "ferd project",
                "model": "ferd facial-expression daemon",
                "sw_version": version,
            },
            "origin": {
                "name": "ferd",
                "sw_version": version,
            },
            // Shared with every component (SHARED_OPTIONS); the list form
            // because it is the one that names its payloads per topic.
            "availability": [{
                "topic": self.availability_topic(),
                "payload_available": AVAILABLE,
                "payload_not_available": NOT_AVAILABLE,
            }],
            "qos": qos,
            "components": components,
        }))
    }
}

/// A topic ferd publishes to and Home Assistant subscribes to: non-empty,
/// at most 65535 bytes, no wildcard, no NUL or other control character
/// (Home Assistant's `valid_topic` refuses NUL and control characters; a
/// wildcard would subscribe to more than ferd's topic).
fn check_topic(what: &'static str, topic: &str) -> Result<(), DiscoveryError> {
    let ok = !topic.is_empty()
        && topic.len() <= 65_535
        && !topic
            .chars()
            .any(|c| c == '+' || c == '#' || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(DiscoveryError::InvalidTopic {
            what,
            topic: topic.to_owned(),
        })
    }
}

/// One topic level: a valid topic without `/`.
fn is_topic_level(s: &str) -> bool {
    check_topic("rule", s).is_ok() && !s.contains('/')
}

#[cfg(test)]
mod tests {
    //! The payload against Home Assistant's rules, mirrored by hand from the
    //! Python sources named at the top of this file; `check` walks a payload
    //! the way `discovery.py` and the platform schemas do and lists every
    //! rule it breaks. The `checker_*` tests make sure it catches each kind
    //! of fault, so a passing payload means something.

    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use super::*;

    // ----- key tables ---------------------------------------------------

    /// abbreviations.py, `ABBREVIATIONS`: the entries whose full key any
    /// table below allows (`p`, `o` and `cmps` arrived with device-based
    /// discovery). Applied before validation, so a full key that happens
    /// to be an abbreviation would be renamed.
    const ABBREVIATIONS: &[(&str, &str)] = &[
        ("avty", "availability"),
        ("avty_mode", "availability_mode"),
        ("avty_t", "availability_topic"),
        ("avty_tpl", "availability_template"),
        ("cmd_t", "command_topic"),
        ("cmps", "components"),
        ("dev", "device"),
        ("dev_cla", "device_class"),
        ("e", "encoding"),
        ("en", "enabled_by_default"),
        ("ent_cat", "entity_category"),
        ("exp_aft", "expire_after"),
        ("frc_upd", "force_update"),
        ("ic", "icon"),
        ("json_attr_t", "json_attributes_topic"),
        ("json_attr_tpl", "json_attributes_template"),
        ("lrst_val_tpl", "last_reset_value_template"),
        ("name", "name"),
        ("o", "origin"),
        ("off_dly", "off_delay"),
        ("ops", "options"),
        ("p", "platform"),
        ("pl_avail", "payload_available"),
        ("pl_not_avail", "payload_not_available"),
        ("pl_off", "payload_off"),
        ("pl_on", "payload_on"),
        ("stat_cla", "state_class"),
        ("stat_t", "state_topic"),
        ("sug_dsp_prc", "suggested_display_precision"),
        ("t", "topic"),
        ("uniq_id", "unique_id"),
        ("unit_of_meas", "unit_of_measurement"),
        ("val_tpl", "value_template"),
    ];

    /// abbreviations.py, `DEVICE_ABBREVIATIONS`.
    const DEVICE_ABBREVIATIONS: &[(&str, &str)] = &[
        ("cns", "connections"),
        ("cu", "configuration_url"),
        ("hw", "hw_version"),
        ("ids", "identifiers"),
        ("mdl", "model"),
        ("mf", "manufacturer"),
        ("name", "name"),
        ("sa", "suggested_area"),
        ("sn", "serial_number"),
        ("sw", "sw_version"),
    ];

    /// abbreviations.py, `ORIGIN_ABBREVIATIONS`.
    const ORIGIN_ABBREVIATIONS: &[(&str, &str)] = &[
        ("name", "name"),
        ("sw", "sw_version"),
        ("url", "support_url"),
    ];

    /// schemas.py, `_MQTT_AVAILABILITY_SCHEMA` (single + list form).
    const AVAILABILITY_KEYS: &[&str] = &[
        "availability_topic",
        "availability_template",
        "payload_available",
        "payload_not_available",
        "availability_mode",
        "availability",
    ];

    /// schemas.py, `DEVICE_DISCOVERY_SCHEMA`, beyond the availability keys.
    /// A plain `Schema`, so extra keys are *errors*: one unknown top-level
    /// key and Home Assistant drops the whole device.
    /// (`message_expiry_interval` is newer than 2024.11: not allowed here.)
    const DEVICE_DISCOVERY_KEYS: &[&str] = &[
        "device",
        "components",
        "origin",
        "state_topic",
        "command_topic",
        "qos",
        "encoding",
    ];

    /// schemas.py, the list form's entry schema.
    const AVAILABILITY_ENTRY_KEYS: &[&str] = &[
        "topic",
        "payload_available",
        "payload_not_available",
        "value_template",
    ];

    /// schemas.py, `MQTT_ENTITY_DEVICE_INFO_SCHEMA` (`model_id` is newer
    /// than 2024.11: left out).
    const DEVICE_KEYS: &[&str] = &[
        "identifiers",
        "connections",
        "manufacturer",
        "model",
        "name",
        "hw_version",
        "serial_number",
        "sw_version",
        "via_device",
        "suggested_area",
        "configuration_url",
    ];

    /// schemas.py, `MQTT_ORIGIN_INFO_SCHEMA`.
    const ORIGIN_KEYS: &[&str] = &["name", "sw_version", "support_url"];

    /// schemas.py, `SHARED_OPTIONS` of the first device-discovery version:
    /// the device-level keys every component inherits unless it sets them.
    /// (Later versions add `encoding`, `qos`, `message_expiry_interval`.)
    const SHARED_OPTIONS: &[&str] = &[
        "availability",
        "availability_mode",
        "availability_template",
        "availability_topic",
        "command_topic",
        "payload_available",
        "payload_not_available",
        "state_topic",
    ];

    /// schemas.py, `MQTT_ENTITY_COMMON_SCHEMA` beyond the availability keys,
    /// the keys in every version read (`object_id` became
    /// `default_entity_id`; `entity_picture`, `message_expiry_interval`,
    /// `visible_by_default` are newer).
    const ENTITY_COMMON_KEYS: &[&str] = &[
        "device",
        "origin",
        "enabled_by_default",
        "entity_category",
        "icon",
        "json_attributes_topic",
        "json_attributes_template",
        "unique_id",
    ];

    /// config.py, `MQTT_RO_SCHEMA` (`group` is newer: left out).
    const RO_KEYS: &[&str] = &["qos", "encoding", "state_topic", "value_template"];

    /// sensor.py, `_PLATFORM_SCHEMA_BASE`'s own keys.
    const SENSOR_KEYS: &[&str] = &[
        "device_class",
        "expire_after",
        "force_update",
        "last_reset_value_template",
        "name",
        "options",
        "suggested_display_precision",
        "state_class",
        "unit_of_measurement",
    ];

    /// binary_sensor.py, `PLATFORM_SCHEMA_MODERN`'s own keys.
    const BINARY_SENSOR_KEYS: &[&str] = &[
        "device_class",
        "expire_after",
        "force_update",
        "name",
        "off_delay",
        "payload_off",
        "payload_on",
    ];

    /// binary_sensor/__init__.py, `BinarySensorDeviceClass`.
    const BINARY_SENSOR_DEVICE_CLASSES: &[&str] = &[
        "battery",
        "battery_charging",
        "carbon_monoxide",
        "cold",
        "connectivity",
        "door",
        "garage_door",
        "gas",
        "heat",
        "light",
        "lock",
        "moisture",
        "motion",
        "moving",
        "occupancy",
        "opening",
        "plug",
        "power",
        "presence",
        "problem",
        "running",
        "safety",
        "smoke",
        "sound",
        "tamper",
        "update",
        "vibration",
        "window",
    ];

    /// sensor/const.py, `SensorDeviceClass`: only the classes that need no
    /// unit (a subset; add one here before using it).
    const SENSOR_DEVICE_CLASSES: &[&str] = &["enum", "timestamp", "date"];

    /// sensor/const.py, `SensorStateClass`.
    const SENSOR_STATE_CLASSES: &[&str] = &["measurement", "total", "total_increasing"];

    /// The platforms this payload may use, a subset of const.py's
    /// `SUPPORTED_COMPONENTS`, all in `ENTITY_PLATFORMS`.
    const ENTITY_PLATFORMS: &[&str] = &["sensor", "binary_sensor"];

    /// A state message as the publisher sends it (README of this module).
    const SAMPLE_STATE: &str = r#"{"expression":"happy","faces":2,"alerts":["eyes_closed"],"degraded":false,"watching":true}"#;

    // ----- the checker --------------------------------------------------

    /// `_replace_abbreviations`: abbreviated keys to full keys.
    fn expand(obj: &Map<String, Value>, table: &[(&str, &str)]) -> Map<String, Value> {
        obj.iter()
            .map(|(k, v)| {
                let full = table
                    .iter()
                    .find(|(abbr, _)| abbr == k)
                    .map_or(k.as_str(), |(_, full)| full);
                (full.to_owned(), v.clone())
            })
            .collect()
    }

    fn unknown_keys(obj: &Map<String, Value>, allowed: &[&[&str]]) -> Vec<String> {
        obj.keys()
            .filter(|k| !allowed.iter().any(|set| set.contains(&k.as_str())))
            .cloned()
            .collect()
    }

    /// cv.string: a string (Home Assistant coerces numbers, we don't rely on it).
    fn is_str(v: Option<&Value>) -> bool {
        matches!(v, Some(Value::String(_)))
    }

    /// util.py, `valid_subscribe_topic`, as ferd's topics must be: also no
    /// wildcard, as these topics are published to.
    fn topic_ok(v: Option<&Value>) -> bool {
        match v {
            Some(Value::String(t)) => check_topic("topic", t).is_ok(),
            _ => false,
        }
    }

    /// util.py, `valid_qos_schema`: 0, 1 or 2.
    fn qos_ok(v: &Value) -> bool {
        matches!(v.as_u64(), Some(0..=2))
    }

    /// `availability` of schemas.py: a list of entries each with a topic;
    /// exclusive with `availability_topic`.
    fn check_availability(obj: &Map<String, Value>, at: &str, errors: &mut Vec<String>) {
        if obj.contains_key("availability") && obj.contains_key("availability_topic") {
            errors.push(format!(
                "{at}: availability and availability_topic are exclusive"
            ));
        }
        if let Some(t) = obj.get("availability_topic") {
            if !topic_ok(Some(t)) {
                errors.push(format!("{at}: bad availability_topic {t}"));
            }
        }
        let Some(avty) = obj.get("availability") else {
            return;
        };
        let entries = match avty {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()], // cv.ensure_list
        };
        for (i, entry) in entries.iter().enumerate() {
            let Some(entry) = entry.as_object() else {
                errors.push(format!("{at}: availability[{i}] is not an object"));
                continue;
            };
            let entry = expand(entry, ABBREVIATIONS);
            for k in unknown_keys(&entry, &[AVAILABILITY_ENTRY_KEYS]) {
                errors.push(format!("{at}: availability[{i}] has unknown key {k}"));
            }
            if !topic_ok(entry.get("topic")) {
                errors.push(format!("{at}: availability[{i}] needs a valid topic"));
            }
            for k in ["payload_available", "payload_not_available"] {
                if entry.contains_key(k) && !is_str(entry.get(k)) {
                    errors.push(format!("{at}: availability[{i}].{k} is not a string"));
                }
            }
        }
    }

    /// Every rule this file mirrors, applied to a discovery topic and
    /// payload; the list of broken rules, empty when Home Assistant would
    /// take the device and every entity in it.
    fn check(prefix: &str, topic: &str, payload: &str) -> Vec<String> {
        let mut errors = Vec::new();

        // discovery.py: the topic, trimmed of `<prefix>/`, must match
        // TOPIC_MATCHER with component `device`.
        match topic
            .strip_prefix(prefix)
            .and_then(|t| t.strip_prefix('/'))
            .map(|t| t.split('/').collect::<Vec<_>>())
        {
            Some(parts)
                if (parts.len() == 3 || parts.len() == 4)
                    && parts[0] == "device"
                    && parts[1..parts.len() - 1].iter().all(|p| is_object_id(p))
                    && parts[parts.len() - 1] == "config" => {}
            _ => errors.push(format!("topic {topic:?} does not match TOPIC_MATCHER")),
        }

        // json_loads_object: a JSON object.
        let doc: Map<String, Value> = match serde_json::from_str(payload) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return vec!["payload is not a JSON object".into()],
            Err(e) => return vec![format!("payload is not JSON: {e}")],
        };

        // DEVICE_DISCOVERY_SCHEMA (extra keys forbidden).
        let doc = expand(&doc, ABBREVIATIONS);
        for k in unknown_keys(&doc, &[AVAILABILITY_KEYS, DEVICE_DISCOVERY_KEYS]) {
            errors.push(format!("unknown top-level key {k}"));
        }
        for k in ["device", "components", "origin"] {
            if !doc.contains_key(k) {
                errors.push(format!("missing required {k}"));
            }
        }
        if let Some(q) = doc.get("qos") {
            if !qos_ok(q) {
                errors.push(format!("qos {q} not in 0..=2"));
            }
        }
        for k in ["state_topic", "command_topic"] {
            if doc.contains_key(k) && !topic_ok(doc.get(k)) {
                errors.push(format!("bad top-level {k}"));
            }
        }
        check_availability(&doc, "device payload", &mut errors);

        // MQTT_ENTITY_DEVICE_INFO_SCHEMA + validate_device_has_at_least_one_identifier.
        let device = doc
            .get("device")
            .and_then(Value::as_object)
            .map(|d| expand(d, DEVICE_ABBREVIATIONS));
        match &device {
            None => errors.push("device is not an object".into()),
            Some(d) => {
                for k in unknown_keys(d, &[DEVICE_KEYS]) {
                    errors.push(format!("device has unknown key {k}"));
                }
                let non_empty = |k: &str| match d.get(k) {
                    Some(Value::Array(a)) => !a.is_empty(),
                    Some(Value::String(s)) => !s.is_empty(), // cv.ensure_list
                    _ => false,
                };
                if !non_empty("identifiers") && !non_empty("connections") {
                    errors.push("device needs identifiers or connections".into());
                }
                if let Some(Value::Array(ids)) = d.get("identifiers") {
                    if !ids.iter().all(|i| i.is_string()) {
                        errors.push("device identifiers must be strings".into());
                    }
                }
                for k in ["manufacturer", "model", "name", "sw_version", "hw_version"] {
                    if d.contains_key(k) && !is_str(d.get(k)) {
                        errors.push(format!("device.{k} is not a string"));
                    }
                }
            }
        }

        // MQTT_ORIGIN_INFO_SCHEMA: name required.
        match doc.get("origin").and_then(Value::as_object) {
            None => errors.push("origin is not an object".into()),
            Some(o) => {
                let o = expand(o, ORIGIN_ABBREVIATIONS);
                for k in unknown_keys(&o, &[ORIGIN_KEYS]) {
                    errors.push(format!("origin has unknown key {k}"));
                }
                if !is_str(o.get("name")) {
                    errors.push("origin needs a name".into());
                }
            }
        }

        let Some(components) = doc.get("components").and_then(Value::as_object) else {
            errors.push("components is not an object".into());
            return errors;
        };
        let mut unique_ids = BTreeSet::new();
        for (id, comp) in components {
            let at = format!("component {id:?}");
            // TOPIC_MATCHER's object id class; no spaces (split in
            // _generate_device_config).
            if !is_object_id(id) {
                errors.push(format!("{at}: id is not [a-zA-Z0-9_-]+"));
            }
            let Some(comp) = comp.as_object() else {
                errors.push(format!("{at}: not an object"));
                continue;
            };
            let mut comp = expand(comp, ABBREVIATIONS);
            // _COMPONENT_CONFIG_SCHEMA: platform in SUPPORTED_COMPONENTS.
            let platform = match comp.remove("platform") {
                Some(Value::String(p)) if ENTITY_PLATFORMS.contains(&p.as_str()) => p,
                other => {
                    errors.push(format!("{at}: platform {other:?} not supported here"));
                    continue;
                }
            };
            // check_unique_id (and entity.py: a device needs a unique id
            // to attach the entity to).
            match comp.get("unique_id") {
                Some(Value::String(u)) if !u.is_empty() => {
                    if !unique_ids.insert(u.clone()) {
                        errors.push(format!("{at}: unique_id {u:?} used twice"));
                    }
                }
                _ => errors.push(format!("{at}: unique_id required")),
            }
            // discovery.py: device and origin replace the component's own,
            // the shared options fill in what it does not set, before its
            // platform schema sees it.
            for k in ["device", "origin"] {
                if let Some(v) = doc.get(k) {
                    comp.insert(k.to_owned(), v.clone());
                }
            }
            for k in SHARED_OPTIONS {
                if let (Some(v), false) = (doc.get(*k), comp.contains_key(*k)) {
                    comp.insert((*k).to_owned(), v.clone());
                }
            }
            let own: &[&str] = if platform == "sensor" {
                SENSOR_KEYS
            } else {
                BINARY_SENSOR_KEYS
            };
            // DISCOVERY_SCHEMA is REMOVE_EXTRA: an unknown key is dropped in
            // silence, so a typo would go unnoticed but for this.
            for k in unknown_keys(
                &comp,
                &[AVAILABILITY_KEYS, ENTITY_COMMON_KEYS, RO_KEYS, own],
            ) {
                errors.push(format!("{at}: unknown {platform} key {k}"));
            }
            // MQTT_RO_SCHEMA: state_topic required.
            if !topic_ok(comp.get("state_topic")) {
                errors.push(format!("{at}: needs a valid state_topic"));
            }
            if let Some(q) = comp.get("qos") {
                if !qos_ok(q) {
                    errors.push(format!("{at}: qos {q} not in 0..=2"));
                }
            }
            check_availability(&comp, &at, &mut errors);
            for k in [
                "name",
                "value_template",
                "unique_id",
                "payload_on",
                "payload_off",
            ] {
                if comp.contains_key(k) && !is_str(comp.get(k)) {
                    errors.push(format!("{at}: {k} is not a string"));
                }
            }
            // cv.icon: `prefix:name`.
            if let Some(icon) = comp.get("icon") {
                if !icon.as_str().is_some_and(|i| i.contains(':')) {
                    errors.push(format!("{at}: icon {icon} is not prefix:name"));
                }
            }
            // ENTITY_CATEGORIES_SCHEMA.
            if let Some(cat) = comp.get("entity_category") {
                if !matches!(cat.as_str(), Some("config" | "diagnostic")) {
                    errors.push(format!("{at}: entity_category {cat}"));
                }
            }
            let device_class = comp.get("device_class").and_then(Value::as_str);
            if platform == "binary_sensor" {
                if let Some(dc) = device_class {
                    if !BINARY_SENSOR_DEVICE_CLASSES.contains(&dc) {
                        errors.push(format!("{at}: binary_sensor device_class {dc:?}"));
                    }
                }
                continue;
            }
            // sensor.py, validate_sensor_state_and_device_class_config.
            if let Some(dc) = device_class {
                if !SENSOR_DEVICE_CLASSES.contains(&dc) {
                    errors.push(format!("{at}: sensor device_class {dc:?} not checked here"));
                }
            }
            let state_class = comp.get("state_class").and_then(Value::as_str);
            if let Some(sc) = state_class {
                if !SENSOR_STATE_CLASSES.contains(&sc) {
                    errors.push(format!("{at}: state_class {sc:?}"));
                }
            }
            if comp.contains_key("last_reset_value_template") && state_class != Some("total") {
                errors.push(format!(
                    "{at}: last_reset_value_template needs state_class total"
                ));
            }
            let unit = comp
                .get("unit_of_measurement")
                .and_then(Value::as_str)
                .filter(|u| !u.trim().is_empty());
            if let Some(options) = comp.get("options") {
                match options.as_array() {
                    Some(o) if !o.is_empty() && o.iter().all(Value::is_string) => {}
                    _ => errors.push(format!("{at}: options must be a non-empty list of strings")),
                }
                if state_class.is_some() || unit.is_some() {
                    errors.push(format!(
                        "{at}: options not allowed with state_class or unit_of_measurement"
                    ));
                }
                if device_class != Some("enum") {
                    errors.push(format!("{at}: options need device_class enum"));
                }
            }
        }
        errors
    }

    // ----- fixtures -----------------------------------------------------

    fn rules(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn discovery<'a>(rules: &'a [String], base: &'a str) -> Discovery<'a> {
        Discovery {
            prefix: "homeassistant",
            device_id: "cab12",
            base_topic: base,
            rules,
            watches_eyes: true,
            qos: 1,
        }
    }

    fn golden_rules() -> Vec<String> {
        rules(&["eyes_closed", "drowsy", "distress"])
    }

    fn generated() -> (String, String) {
        let r = golden_rules();
        let d = discovery(&r, "ferd/cab12");
        (d.topic(), d.payload().expect("payload"))
    }

    // ----- the payload against Home Assistant's rules --------------------

    #[test]
    fn payload_passes_every_mirrored_rule() {
        let (topic, payload) = generated();
        assert_eq!(
            check("homeassistant", &topic, &payload),
            Vec::<String>::new()
        );
        // Other prefixes, QoS, no rules, many rules, with and without the
        // watching sensor.
        for qos in 0..=2 {
            for names in [rules(&[]), rules(&["x", "Y-2", "x_"])] {
                for watches_eyes in [false, true] {
                    let d = Discovery {
                        prefix: "ha/discovery",
                        device_id: "Dev-1_a",
                        base_topic: "site/ferd/Dev-1_a",
                        rules: &names,
                        watches_eyes,
                        qos,
                    };
                    let errors = check(d.prefix, &d.topic(), &d.payload().unwrap());
                    assert_eq!(
                        errors,
                        Vec::<String>::new(),
                        "qos {qos} rules {names:?} watches_eyes {watches_eyes}"
                    );
                }
            }
        }
    }

    #[test]
    fn topic_is_the_device_discovery_topic() {
        let r = golden_rules();
        let d = discovery(&r, "ferd/cab12");
        assert_eq!(d.topic(), "homeassistant/device/ferd_cab12/config");
        assert_eq!(d.state_topic(), "ferd/cab12/state");
        assert_eq!(d.availability_topic(), "ferd/cab12/availability");
        assert_eq!(d.alert_topic("drowsy"), "ferd/cab12/alert/drowsy");
    }

    #[test]
    fn payload_is_compact_json_with_the_expected_entities() {
        let (_, payload) = generated();
        assert!(!payload.contains('\n') && !payload.contains(": "));
        let v: Value = serde_json::from_str(&payload).unwrap();
        let comps = v["components"].as_object().unwrap();
        let keys: Vec<&str> = comps.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "expression",
                "faces",
                "degraded",
                "watching",
                "alert_eyes_closed",
                "alert_drowsy",
                "alert_distress"
            ]
        );
        let alert = &comps["alert_eyes_closed"];
        assert_eq!(alert["unique_id"], "ferd_cab12_alert_eyes_closed");
        assert_eq!(alert["name"], "eyes_closed");
        assert_eq!(alert["state_topic"], "ferd/cab12/alert/eyes_closed");
        assert_eq!(alert["payload_on"], ALERT_ON);
        assert_eq!(alert["payload_off"], ALERT_OFF);
        assert_eq!(comps["expression"]["unique_id"], "ferd_cab12_expression");
        assert_eq!(comps["faces"]["unique_id"], "ferd_cab12_faces");
        assert_eq!(comps["watching"]["unique_id"], "ferd_cab12_watching");
        assert_eq!(comps["watching"]["name"], "Watching driver");
        assert_eq!(v["device"]["identifiers"], json!(["ferd_cab12"]));
        assert_eq!(v["device"]["manufacturer"], "ferd project");
        assert_eq!(v["device"]["sw_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["origin"]["sw_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["availability"][0]["topic"], "ferd/cab12/availability");
        assert_eq!(v["availability"][0]["payload_available"], AVAILABLE);
        assert_eq!(v["availability"][0]["payload_not_available"], NOT_AVAILABLE);
    }

    #[test]
    fn every_component_subscribes_at_the_configured_qos() {
        // Older Home Assistants do not pass the top-level qos on.
        let (_, payload) = generated();
        let v: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(v["qos"], 1);
        for (id, c) in v["components"].as_object().unwrap() {
            assert_eq!(c["qos"], 1, "{id}");
        }
    }

    #[test]
    fn expression_options_match_the_published_values() {
        let opts = expression_options();
        assert_eq!(
            opts,
            ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "none"]
        );
        assert_eq!(opts.iter().collect::<BTreeSet<_>>().len(), opts.len());
        assert_eq!(expression_state_value(None), NO_FACE);
        for e in Expression::ALL {
            assert!(opts.contains(&expression_state_value(Some(e))));
        }
        let (_, payload) = generated();
        let v: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(v["components"]["expression"]["options"], json!(opts));
    }

    /// Each `value_json.<field>` a template reads is in the state message,
    /// with the type the entity needs.
    #[test]
    fn templates_read_fields_of_the_state_message() {
        let state: Value = serde_json::from_str(SAMPLE_STATE).unwrap();
        let (_, payload) = generated();
        let v: Value = serde_json::from_str(&payload).unwrap();
        let mut read = BTreeSet::new();
        for c in v["components"].as_object().unwrap().values() {
            let Some(t) = c.get("value_template").and_then(Value::as_str) else {
                continue;
            };
            for part in t.split("value_json.").skip(1) {
                let field: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(state.get(&field).is_some(), "{field} not in {SAMPLE_STATE}");
                read.insert(field);
            }
        }
        assert_eq!(
            read,
            BTreeSet::from([
                "degraded".into(),
                "expression".into(),
                "faces".into(),
                "watching".into()
            ])
        );
        assert!(expression_options().contains(&state["expression"].as_str().unwrap()));
        assert!(state["faces"].is_u64());
        assert!(state["degraded"].is_boolean());
        // The degraded template renders exactly the binary sensor's payloads.
        let t = v["components"]["degraded"]["value_template"]
            .as_str()
            .unwrap();
        assert_eq!(t, "{{ 'ON' if value_json.degraded else 'OFF' }}");
        assert!(state["watching"].is_boolean());
        let t = v["components"]["watching"]["value_template"]
            .as_str()
            .unwrap();
        assert_eq!(t, "{{ 'ON' if value_json.watching else 'OFF' }}");
    }

    /// Without a rule that watches the eyes there is no driver to watch:
    /// no "Watching driver" sensor stuck on.
    #[test]
    fn watching_sensor_only_with_an_eye_rule() {
        let r = rules(&["distress"]);
        let d = Discovery {
            watches_eyes: false,
            ..discovery(&r, "ferd/cab12")
        };
        let v: Value = serde_json::from_str(&d.payload().unwrap()).unwrap();
        assert!(v["components"].get("watching").is_none());
        assert_eq!(
            check(d.prefix, &d.topic(), &d.payload().unwrap()),
            Vec::<String>::new()
        );
    }

    // ----- the checker catches what it claims to --------------------------

    fn broken(edit: impl FnOnce(&mut Value)) -> Vec<String> {
        let (topic, payload) = generated();
        let mut v: Value = serde_json::from_str(&payload).unwrap();
        edit(&mut v);
        check("homeassistant", &topic, &v.to_string())
    }

    #[test]
    fn checker_catches_each_kind_of_fault() {
        type Edit = Box<dyn FnOnce(&mut Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "enum with state_class",
                Box::new(|v| v["components"]["expression"]["state_class"] = json!("measurement")),
            ),
            (
                "enum with unit",
                Box::new(|v| v["components"]["expression"]["unit_of_measurement"] = json!("x")),
            ),
            (
                "options without enum",
                Box::new(|v| v["components"]["faces"]["options"] = json!(["1"])),
            ),
            (
                "empty options",
                Box::new(|v| v["components"]["expression"]["options"] = json!([])),
            ),
            (
                "no identifiers",
                Box::new(|v| v["device"]["identifiers"] = json!([])),
            ),
            (
                "no unique_id",
                Box::new(|v| {
                    v["components"]["faces"]
                        .as_object_mut()
                        .unwrap()
                        .remove("unique_id");
                }),
            ),
            (
                "duplicate unique_id",
                Box::new(|v| {
                    v["components"]["faces"]["unique_id"] = json!("ferd_cab12_expression")
                }),
            ),
            ("qos 3", Box::new(|v| v["qos"] = json!(3))),
            (
                "component qos 3",
                Box::new(|v| v["components"]["faces"]["qos"] = json!(3)),
            ),
            (
                "bad component id",
                Box::new(|v| {
                    let c = v["components"].as_object_mut().unwrap();
                    let x = c.remove("faces").unwrap();
                    c.insert("face count".into(), x);
                }),
            ),
            (
                "unknown top-level key",
                Box::new(|v| v["name"] = json!("x")),
            ),
            (
                "unknown component key",
                Box::new(|v| v["components"]["faces"]["unit"] = json!("x")),
            ),
            (
                "unknown device key",
                Box::new(|v| v["device"]["serial"] = json!("x")),
            ),
            (
                "origin without name",
                Box::new(|v| v["origin"] = json!({"sw": "1"})),
            ),
            (
                "no origin",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("origin");
                }),
            ),
            (
                "availability without topic",
                Box::new(|v| v["availability"] = json!([{"payload_available": "online"}])),
            ),
            (
                "exclusive availability",
                Box::new(|v| v["availability_topic"] = json!("a/b")),
            ),
            (
                "no state_topic",
                Box::new(|v| {
                    v["components"]["degraded"]
                        .as_object_mut()
                        .unwrap()
                        .remove("state_topic");
                }),
            ),
            (
                "wildcard state_topic",
                Box::new(|v| v["components"]["degraded"]["state_topic"] = json!("ferd/#")),
            ),
            (
                "bad binary device_class",
                Box::new(|v| v["components"]["degraded"]["device_class"] = json!("drowsiness")),
            ),
            (
                "bad platform",
                Box::new(|v| v["components"]["faces"]["platform"] = json!("number")),
            ),
            (
                "bad icon",
                Box::new(|v| v["components"]["faces"]["icon"] = json!("account")),
            ),
            (
                "bad entity_category",
                Box::new(|v| v["components"]["degraded"]["entity_category"] = json!("system")),
            ),
        ];
        for (what, edit) in cases {
            assert!(!broken(edit).is_empty(), "checker missed: {what}");
        }
        // Abbreviated keys are expanded first, as Home Assistant does.
        let abbreviated = broken(|v| {
            let faces = v["components"]
                .as_object_mut()
                .unwrap()
                .remove("faces")
                .unwrap();
            let mut f = faces.as_object().unwrap().clone();
            let p = f.remove("platform").unwrap();
            let u = f.remove("unique_id").unwrap();
            f.insert("p".into(), p);
            f.insert("uniq_id".into(), u);
            v["components"]["faces"] = Value::Object(f);
        });
        assert_eq!(abbreviated, Vec::<String>::new());
        let bad_topic = check(
            "homeassistant",
            "homeassistant/device/ferd cab12/config",
            &generated().1,
        );
        assert!(!bad_topic.is_empty());
    }

    // ----- object ids and refused inputs ---------------------------------

    #[test]
    fn object_id_keeps_valid_names_and_hashes_others() {
        for name in ["eyes_closed", "Drowsy", "drowsy", "a-b", "X9"] {
            assert_eq!(object_id(name), name);
        }
        assert_eq!(object_id("Eyes Closed"), "Eyes_Closed_da1dbbcd");
        assert_eq!(object_id("eyes closed"), "eyes_closed_a5872dd6");
        assert_eq!(object_id("müde"), "m_de_2b7186b5");
        assert_eq!(object_id("a/b"), "a_b_c14cddc0");
        assert_eq!(object_id(""), "e3b0c442");
        for name in ["Eyes Closed", "müde", "", "+#", "日本語", "a b\tc"] {
            let id = object_id(name);
            assert!(is_object_id(&id), "{name:?} -> {id:?}");
            assert_eq!(object_id(name), id, "not deterministic");
        }
    }

    #[test]
    fn colliding_rules_are_refused() {
        let twice = rules(&["drowsy", "drowsy"]);
        assert_eq!(
            discovery(&twice, "ferd/cab12").payload(),
            Err(DiscoveryError::DuplicateObjectId {
                first: "drowsy".into(),
                second: "drowsy".into(),
                object_id: "drowsy".into(),
            })
        );
        let crafted = rules(&["Eyes Closed", "Eyes_Closed_da1dbbcd"]);
        assert!(matches!(
            discovery(&crafted, "ferd/cab12").payload(),
            Err(DiscoveryError::DuplicateObjectId { .. })
        ));
        // Case differs: two rules, two entities.
        let cased = rules(&["Drowsy", "drowsy"]);
        assert!(discovery(&cased, "ferd/cab12").payload().is_ok());
    }

    #[test]
    fn bad_inputs_are_refused() {
        let r = golden_rules();
        let ok = discovery(&r, "ferd/cab12");
        assert!(ok.payload().is_ok());
        assert_eq!(
            Discovery { qos: 3, ..ok }.payload(),
            Err(DiscoveryError::InvalidQos(3))
        );
        for id in ["", "cab 12", "cab/12", "cäb"] {
            assert!(matches!(
                Discovery {
                    device_id: id,
                    ..ok
                }
                .payload(),
                Err(DiscoveryError::InvalidDeviceId(_))
            ));
        }
        for p in ["", "home/+", "home/#", "a\0b"] {
            assert!(matches!(
                Discovery { prefix: p, ..ok }.payload(),
                Err(DiscoveryError::InvalidTopic {
                    what: "discovery prefix",
                    ..
                })
            ));
            assert!(matches!(
                Discovery {
                    base_topic: p,
                    ..ok
                }
                .payload(),
                Err(DiscoveryError::InvalidTopic {
                    what: "base topic",
                    ..
                })
            ));
        }
        for rule in ["", "a/b", "a+", "#", "a\nb"] {
            let rs = rules(&[rule]);
            assert_eq!(
                Discovery { rules: &rs, ..ok }.payload(),
                Err(DiscoveryError::InvalidRuleName(rule.into()))
            );
        }
        // Not a topic level problem: other characters give a hashed id.
        let spaced = rules(&["eyes closed"]);
        let d = Discovery {
            rules: &spaced,
            ..ok
        };
        assert_eq!(
            check(d.prefix, &d.topic(), &d.payload().unwrap()),
            Vec::<String>::new()
        );
    }

    // ----- golden file ----------------------------------------------------

    /// The golden file holds this in place of the crate version, so that a
    /// version bump does not fail the test (the version is checked above).
    const VERSION_PLACEHOLDER: &str = "@CARGO_PKG_VERSION@";

    /// tests/golden/ha-discovery.json: the payload for device `cab12`, rules
    /// `eyes_closed`, `drowsy`, `distress` (so with the watching sensor),
    /// QoS 1, pretty-printed. On a difference the new payload is written
    /// next to it as `.new` (review, then rename it over the golden file);
    /// never overwritten here.
    #[test]
    fn payload_matches_golden_file() {
        let (_, payload) = generated();
        let mut v: Value = serde_json::from_str(&payload).unwrap();
        for section in ["device", "origin"] {
            v[section]["sw_version"] = json!(VERSION_PLACEHOLDER);
        }
        let path: PathBuf = [
            env!("CARGO_MANIFEST_DIR"),
            "tests",
            "golden",
            "ha-discovery.json",
        ]
        .iter()
        .collect();
        let golden: Option<Value> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let new = path.with_extension("json.new");
        if golden.as_ref() == Some(&v) {
            // A `.new` left from an earlier difference is stale now.
            let _ = std::fs::remove_file(&new);
        } else {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
            std::fs::write(&new, text).unwrap();
            panic!(
                "discovery payload differs from {}; wrote {} (review it, then rename it over the golden file)",
                path.display(),
                new.display()
            );
        }
    }
}
