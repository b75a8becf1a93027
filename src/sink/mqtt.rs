//! Events to an MQTT broker, with Home Assistant discovery.
//!
//! Two threads. The sink thread (a bus [`Worker`]) owns the [`Spool`] and
//! the client handle: every event taken off the bus is appended to the
//! spool first, and removed when the broker acknowledges it, so nothing is
//! lost while the broker is away, across a restart of ferd included. The
//! network thread owns rumqttc's connection and does nothing but drive it,
//! forwarding what happens. Each connection attempt is a fresh rumqttc
//! client: rumqttc keeps unsent requests in its own channel across a
//! reconnect, which would resend them ahead of older, unacknowledged
//! events and break the order; starting afresh and resending from the
//! spool keeps it.
//!
//! Topics, with `ferd/<device_id>` as base:
//! - `event/<type>`: every event, QoS per type (default 1), not retained;
//! - `availability`: retained `online`; the last will, and a clean stop,
//!   publish `offline`;
//! - `state`: retained JSON, on change (at most once a second) and every
//!   [`STATE_INTERVAL`];
//! - `alert/<rule>`: retained `ON`/`OFF`;
//! - `<prefix>/device/ferd_<device_id>/config`: Home Assistant discovery,
//!   after every connect and when `<prefix>/status` says `online`.
//!
//! Nothing but the events' JSON and these small state payloads is ever
//! published: no image, crop or landmark leaves the process.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, ConnectReturnCode, ConnectionError, Event as NetEvent, LastWill, MqttOptions, Outgoing,
    Packet, QoS, Transport,
};
use tokio_rustls::rustls;

use crate::config::{Config, MqttConfig, MqttUrl, QosTable};
use crate::events::{Event, EventKind};
use crate::expression::Expression;
use crate::permissions::Kind;
use crate::sink::bus::{Published, Report, Subscription, Worker};
use crate::sink::homeassistant::{self, Discovery};
use crate::sink::spool::{Record, Spool, SpoolError};

/// The retained state is re-published at least this often, so a receiver
/// that lost it (a broker restarted without persistence) has it again
/// within this time.
pub const STATE_INTERVAL: Duration = Duration::from_secs(10);

/// Spooled events sent and not yet acknowledged, at most: the drain after
/// a reconnect is throttled by the broker's round trip.
const WINDOW: usize = 16;

/// Spooled events sent per tick at most (the tick is [`TICK`]): a long
/// backlog drains at about 200 events a second and does not starve the
/// broker or the link.
const BURST: usize = 10;

/// How often the sink thread wakes when idle.
const TICK: Duration = Duration::from_millis(50);

/// Reconnect delays: the first, and the cap of the doubling.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Largest credentials file read.
const MAX_CREDENTIALS_BYTES: u64 = 64 * 1024;
/// Largest PEM file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why the MQTT output cannot start; each names the file or setting.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A file named in `[mqtt]` could not be read.
    #[error("[mqtt] {key} = {path:?}: {error}")]
    Read {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed (printed here, so not also a `source()`).
        error: std::io::Error,
    },
    /// A file named in `[mqtt]` has the wrong contents.
    #[error("[mqtt] {key} = {path:?}: {message}")]
    Invalid {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// No `device_id` was set and the board exposes no serial number.
    #[error("[mqtt] device_id is not set and this board exposes no serial number or network address to derive one from; set device_id")]
    NoDeviceId,
    /// The spool could not be opened.
    #[error("[mqtt] spool: {0}")]
    Spool(#[from] SpoolError),
    /// Discovery payloads cannot be made for these rules.
    #[error("[mqtt] discovery: {0}")]
    Discovery(#[from] homeassistant::DiscoveryError),
    /// The network thread could not start.
    #[error("starting the mqtt thread: {0}")]
    Thread(std::io::Error),
}

/// Everything the sink needs, resolved and checked at start.
struct Settings {
    url: MqttUrl,
    client_id: String,
    keepalive: Duration,
    login: Option<(String, String)>,
    tls: Option<Arc<rustls::ClientConfig>>,
    qos: QosTable,
    /// `ferd/<device_id>`.
    base: String,
    device_id: String,
    discovery: Option<(String, String)>,
    drain_timeout: Duration,
}

impl Settings {
    fn load(config: &Config, mqtt: &MqttConfig) -> Result<Settings, MqttError> {
        let device_id = match &mqtt.device_id {
            Some(id) => id.0.clone(),
            None => board_device_id().ok_or(MqttError::NoDeviceId)?,
        };
        let login = match &mqtt.credentials {
            Some(p) => Some(read_credentials(&config.resolve(p))?),
            None => None,
        };
        let tls = if mqtt.url.tls {
            Some(tls_config(config, mqtt)?)
        } else {
            None
        };
        let base = format!("ferd/{device_id}");
        let discovery = if mqtt.discovery {
            let rules: Vec<String> = config.rules.iter().map(|r| r.name.0.clone()).collect();
            let d = Discovery {
                prefix: &mqtt.discovery_prefix.0,
                device_id: &device_id,
                base_topic: &base,
                rules: &rules,
                watches_eyes: config
                    .rules
                    .iter()
                    .any(|r| r.condition.kind().watches_eyes()),
                qos: 1,
            };
            Some((d.topic(), d.payload()?))
        } else {
            None
        };
        Ok(Settings {
            url: mqtt.url.clone(),
            client_id: mqtt
                .client_id
                .as_ref()
                .map_or_else(|| format!("ferd-{device_id}"), |c| c.0.clone()),
            keepalive: Duration::from_secs_f64(mqtt.keepalive.0),
            login,
            tls,
            qos: mqtt.qos.clone(),
            base,
            device_id,
            discovery,
            drain_timeout: Duration::from_secs_f64(mqtt.drain_timeout.0),
        })
    }
}

/// The MQTT output: a bus worker.
pub struct MqttSink {
    settings: Settings,
    spool: Spool,
    view: View,
    /// A record taken from the spool that the client would not take yet;
    /// sent first next time.
    held: Option<(u64, Record)>,
}

impl MqttSink {
    /// Checks `[mqtt]` and everything it names (credentials, certificates,
    /// the spool), so that a mistake stops ferd at start, not later.
    pub fn open(config: &Config, mqtt: &MqttConfig) -> Result<MqttSink, MqttError> {
        let settings = Settings::load(config, mqtt)?;
        let spool_dir = config.resolve(&mqtt.spool);
        let spool = Spool::open(&spool_dir, mqtt.spool_limit.0)?;
        if !spool.is_empty() {
            log::info!(
                "mqtt: {} events from an earlier run are waiting in {}",
                spool.len(),
                spool_dir.display()
            );
        }
        let rules = config.rules.iter().map(|r| r.name.0.clone()).collect();
        Ok(MqttSink {
            held: None,
            view: View::new(rules),
            settings,
            spool,
        })
    }

    /// What `ferd check-config` checks: everything [`MqttSink::open`]
    /// does but the spool, which belongs to the running daemon (it is
    /// locked while one runs). Returns the device id.
    pub fn check(config: &Config, mqtt: &MqttConfig) -> Result<String, MqttError> {
        Ok(Settings::load(config, mqtt)?.device_id)
    }

    /// The device id in use (logged at start).
    pub fn device_id(&self) -> &str {
        &self.settings.device_id
    }
}

/// What the network thread reports.
enum Net {
    /// A new connection attempt, with its client.
    Attempt(Client),
    /// Something happened on the connection.
    Event(NetEvent),
    /// The connection failed or broke (logged by the network thread); the
    /// attempt is over.
    Down,
}

/// The connection as the sink thread sees it.
struct Session {
    client: Client,
    connected: bool,
    /// Publishes requested, in order: `Some(spool id)` for events, `None`
    /// for retained state; matched to rumqttc's `Outgoing::Publish`, which
    /// comes in the same order.
    requested: VecDeque<Option<u64>>,
    /// Packet id → spool id of events written and not yet acknowledged.
    inflight: HashMap<u16, u64>,
}

impl Session {
    fn in_window(&self) -> usize {
        self.requested.iter().filter(|r| r.is_some()).count() + self.inflight.len()
    }
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl Worker for MqttSink {
    fn run(mut self: Box<Self>, events: Subscription) -> Report {
        let mut report = Report::default();
        let (tx, rx) = mpsc::channel();
        let control = Arc::new(NetControl::default());
        let net = match spawn_network(&self.settings, tx, Arc::clone(&control)) {
            Ok(h) => h,
            Err(e) => {
                log::error!("{e}");
                return report;
            }
        };
        let lost_at_open = self.spool.dropped_at_open();
        if lost_at_open > 0 {
            // Corruption (a power cut mid-write) or a lowered limit.
            report.lost += lost_at_open;
            let notice = events.notice(lost_at_open);
            self.spool_record("events_dropped", notice.line, &events, &mut report);
        }
        let mut session: Option<Session> = None;
        let mut closing: Option<Instant> = None;
        let mut last_state = None::<Instant>;
        let mut last_sync = Instant::now();
        loop {
            // Bus events go to the spool at once: the spool, not the
            // queue, is where they wait for the broker.
            match events.recv_timeout(TICK) {
                Ok(p) => {
                    self.take(&events, &p, &mut report);
                    while let Some(p) = events.try_recv() {
                        self.take(&events, &p, &mut report);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if closing.is_none() {
                        closing = Some(Instant::now() + self.settings.drain_timeout);
                        control.draining.store(true, Ordering::SeqCst);
                        if !self.spool.is_empty() {
                            log::info!(
                                "mqtt: delivering {} queued events (at most {:?})",
                                self.spool.len(),
                                self.settings.drain_timeout
                            );
                        }
                    }
                    std::thread::sleep(TICK);
                }
            }
            while let Ok(msg) = rx.try_recv() {
                self.network(msg, &mut session, &mut report);
            }
            if let Some(s) = session.as_mut().filter(|s| s.connected) {
                self.publish_alerts(s);
                self.send(s);
                let due = last_state.is_none_or(|t| t.elapsed() >= STATE_INTERVAL)
                    || (self.view.changed && last_state.is_some_and(|t| t.elapsed() >= TICK * 20));
                if due {
                    self.publish_state(s);
                    last_state = Some(Instant::now());
                }
            }
            if last_sync.elapsed() >= Duration::from_secs(1) {
                last_sync = Instant::now();
                if let Err(e) = self.spool.sync() {
                    log::error!("mqtt: {e}");
                }
            }
            if let Some(deadline) = closing {
                if self.spool.is_empty() || Instant::now() >= deadline {
                    break;
                }
            }
        }
        if !self.spool.is_empty() {
            log::warn!(
                "mqtt: {} events not yet delivered stay in the spool for the next run",
                self.spool.len()
            );
        }
        let _ = self.spool.sync();
        // A clean stop: the last alert states and device state (alerts are
        // cleared at the end of a run), then `offline` ourselves (the will
        // is for crashes).
        if let Some(s) = session.as_mut().filter(|s| s.connected) {
            self.publish_alerts(s);
            if self.view.changed {
                self.publish_state(s);
            }
            let topic = format!("{}/availability", self.settings.base);
            let _ = s
                .client
                .try_publish(topic, QoS::AtLeastOnce, true, "offline");
            let _ = s.client.try_disconnect();
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                match rx.recv_timeout(TICK) {
                    Ok(Net::Event(NetEvent::Outgoing(Outgoing::Disconnect))) | Ok(Net::Down) => {
                        break
                    }
                    Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        control.stop.store(true, Ordering::SeqCst);
        drop(session);
        drop(rx);
        let _ = net.join();
        report
    }
}

impl MqttSink {
    /// One bus event: into the spool, and into the state view.
    fn take(&mut self, events: &Subscription, p: &Published, report: &mut Report) {
        if let Some((count, n)) = events.dropped_notice() {
            report.lost += count;
            self.spool_event(&n, events, report);
        }
        self.view.apply(&p.event);
        self.spool_event(p, events, report);
    }

    fn spool_event(&mut self, p: &Published, events: &Subscription, report: &mut Report) {
        self.spool_record(p.event.type_name(), p.line.clone(), events, report);
    }

    /// Appends one event line; when the spool is full its oldest events
    /// go, and an `events_dropped` notice with their count follows.
    fn spool_record(&mut self, ty: &str, line: String, events: &Subscription, report: &mut Report) {
        let record = Record {
            topic: format!("{}/event/{ty}", self.settings.base),
            qos: self.settings.qos.of(ty),
            payload: line.into_bytes(),
        };
        match self.spool.append(&record) {
            Ok(0) => {}
            Ok(dropped) => {
                report.lost += dropped;
                log::warn!("mqtt: spool full, dropped the {dropped} oldest events");
                let notice = events.notice(dropped);
                let record = Record {
                    topic: format!("{}/event/events_dropped", self.settings.base),
                    qos: self.settings.qos.of("events_dropped"),
                    payload: notice.line.into_bytes(),
                };
                if let Err(e) = self.spool.append(&record) {
                    log::error!("mqtt: {e}");
                }
            }
            Err(e) => {
                report.lost += 1;
                log::error!("mqtt: event not queued: {e}");
            }
        }
    }

    /// Sends spooled events within the window.
    fn send(&mut self, s: &mut Session) {
        for _ in 0..BURST {
            if s.in_window() >= WINDOW {
                return;
            }
            let next = match self.held.take() {
                Some(h) => Some(h),
                None => match self.spool.next_unsent() {
                    Ok(r) => r,
                    Err(e) => {
                        log::error!("mqtt: {e}");
                        return;
                    }
                },
            };
            let Some((id, record)) = next else { return };
            let (topic, q) = (record.topic.clone(), qos(record.qos));
            match s
                .client
                .try_publish(topic, q, false, record.payload.clone())
            {
                Ok(()) => s.requested.push_back(Some(id)),
                Err(e) => {
                    // The client's queue is full, or closed with the
                    // connection (then a rewind follows): try again later.
                    log::debug!("mqtt: publish deferred: {e}");
                    self.held = Some((id, record));
                    return;
                }
            }
        }
    }

    /// Alert states, as they change.
    fn publish_alerts(&mut self, s: &mut Session) {
        let changed = std::mem::take(&mut self.view.alerts_changed);
        for (rule, on) in changed {
            let payload = if on { "ON" } else { "OFF" };
            self.retained(
                s,
                format!("{}/alert/{rule}", self.settings.base),
                payload.into(),
            );
        }
    }

    /// Retained publish outside the spool.
    fn retained(&self, s: &mut Session, topic: String, payload: String) {
        if s.client
            .try_publish(topic, QoS::AtLeastOnce, true, payload)
            .is_ok()
        {
            s.requested.push_back(None);
        }
    }

    fn publish_state(&mut self, s: &mut Session) {
        let topic = format!("{}/state", self.settings.base);
        let payload = self.view.state_json();
        self.view.changed = false;
        self.retained(s, topic, payload);
    }

    /// What a (re)connect publishes: availability, discovery, every
    /// alert's state and the device state.
    fn announce(&mut self, s: &mut Session) {
        let base = &self.settings.base;
        self.retained(s, format!("{base}/availability"), "online".into());
        if let Some((topic, payload)) = &self.settings.discovery {
            self.retained(s, topic.clone(), payload.clone());
        }
        for (rule, on) in self.view.alert_states() {
            let payload = if on { "ON" } else { "OFF" };
            self.retained(s, format!("{base}/alert/{rule}"), payload.into());
        }
        self.view.alerts_changed.clear();
        self.publish_state(s);
    }

    fn network(&mut self, msg: Net, session: &mut Option<Session>, report: &mut Report) {
        match msg {
            Net::Attempt(client) => {
                *session = Some(Session {
                    client,
                    connected: false,
                    requested: VecDeque::new(),
                    inflight: HashMap::new(),
                });
            }
            Net::Down => {
                // Whatever was in flight is resent, in order, next time.
                *session = None;
                self.held = None;
                self.spool.rewind();
            }
            Net::Event(ev) => {
                let Some(s) = session.as_mut() else { return };
                match ev {
                    NetEvent::Incoming(Packet::ConnAck(_)) => {
                        s.connected = true;
                        log::info!(
                            "mqtt: connected to {} as {}",
                            self.settings.url,
                            self.settings.base
                        );
                        if let Some((topic, _)) = &self.settings.discovery {
                            // `<prefix>/status`: Home Assistant's birth.
                            let prefix = topic.split('/').next().unwrap_or("homeassistant");
                            let _ = s
                                .client
                                .try_subscribe(format!("{prefix}/status"), QoS::AtLeastOnce);
                        }
                        self.announce(s);
                    }
                    // The only subscription is `<prefix>/status`.
                    NetEvent::Incoming(Packet::Publish(p)) if p.payload.as_ref() == b"online" => {
                        log::info!("mqtt: Home Assistant is online; announcing again");
                        self.announce(s);
                    }
                    NetEvent::Outgoing(Outgoing::Publish(pkid)) => {
                        if let Some(Some(id)) = s.requested.pop_front() {
                            if pkid == 0 {
                                // QoS 0: written is all there is.
                                self.ack(id, report);
                            } else {
                                s.inflight.insert(pkid, id);
                            }
                        }
                    }
                    NetEvent::Incoming(Packet::PubAck(a)) => {
                        if let Some(id) = s.inflight.remove(&a.pkid) {
                            self.ack(id, report);
                        }
                    }
                    NetEvent::Incoming(Packet::PubComp(c)) => {
                        if let Some(id) = s.inflight.remove(&c.pkid) {
                            self.ack(id, report);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn ack(&mut self, id: u64, report: &mut Report) {
        report.delivered += 1;
        if let Err(e) = self.spool.ack(id) {
            log::error!("mqtt: {e}");
        }
    }
}

/// What the sink thread tells the network thread.
#[derive(Default)]
struct NetControl {
    /// End: no further attempts.
    stop: AtomicBool,
    /// The input has ended and the spool is draining within
    /// `drain_timeout`: retry at the shortest backoff, as a long pause
    /// would outlast the wait.
    draining: AtomicBool,
}

/// The network thread: one rumqttc client per attempt, driven until it
/// fails, then a pause with exponential backoff and jitter.
fn spawn_network(
    settings: &Settings,
    tx: Sender<Net>,
    control: Arc<NetControl>,
) -> Result<JoinHandle<()>, MqttError> {
    let options = mqtt_options(settings);
    let broker = settings.url.to_string();
    let login = settings.login.is_some();
    std::thread::Builder::new()
        .name("mqtt-net".into())
        .spawn(move || {
            let mut backoff = BACKOFF_MIN;
            let mut failures = 0u32;
            while !control.stop.load(Ordering::SeqCst) {
                let (client, mut connection) = Client::new(options.clone(), 256);
                if tx.send(Net::Attempt(client)).is_err() {
                    return;
                }
                for ev in connection.iter() {
                    match ev {
                        Ok(ev) => {
                            if matches!(ev, NetEvent::Incoming(Packet::ConnAck(_))) {
                                backoff = BACKOFF_MIN;
                                failures = 0;
                            }
                            if tx.send(Net::Event(ev)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            failures += 1;
                            // The first failure of a streak is an error;
                            // the retries that follow are quieter.
                            let msg = describe(&e, &broker, login);
                            if failures == 1 {
                                log::error!("mqtt: {msg}; retrying with backoff");
                            } else {
                                log::debug!("mqtt: {msg} (attempt {failures})");
                            }
                            let _ = tx.send(Net::Down);
                            break;
                        }
                    }
                }
                // The client was dropped (the sink is stopping), or the
                // connection failed: wait, in slices so a stop is prompt.
                let pause = jitter(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                let hurried = jitter(BACKOFF_MIN);
                let started = Instant::now();
                while started.elapsed() < pause {
                    if control.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if control.draining.load(Ordering::SeqCst) && started.elapsed() >= hurried {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
        .map_err(MqttError::Thread)
}

/// A connection failure in words, naming the broker; a refused login and
/// an untrusted certificate say so plainly.
///
/// Brokers differ in the code they give a bad login: mosquitto 2 answers
/// "not authorised" (5) rather than "bad user name or password" (4), so
/// both say what to check.
fn describe(e: &ConnectionError, broker: &str, login: bool) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::BadUserNamePassword => "wrong user name or password",
                ConnectReturnCode::NotAuthorized if login => {
                    "not authorised (wrong user name or password, or the user may not connect)"
                }
                ConnectReturnCode::NotAuthorized => {
                    "not authorised (the broker wants a user name and password: set [mqtt] credentials)"
                }
                ConnectReturnCode::BadClientId => "client id rejected",
                ConnectReturnCode::ServiceUnavailable => "service unavailable",
                _ => "refused",
            };
            format!("broker {broker} refused the connection: {why}")
        }
        ConnectionError::Tls(t) => format!("TLS with broker {broker} failed: {t}"),
        other => format!("connection to broker {broker}: {other}"),
    }
}

/// `d` scaled by a random factor in [0.5, 1]: units that lost the same
/// broker together do not all come back in the same second.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    let r = (h.finish() % 1000) as f64 / 1000.0;
    d.mul_f64(0.5 + 0.5 * r)
}

fn mqtt_options(s: &Settings) -> MqttOptions {
    let mut o = MqttOptions::new(&s.client_id, &s.url.host, s.url.port);
    o.set_keep_alive(s.keepalive);
    // A clean session: the spool, not the broker, holds what is owed.
    o.set_clean_session(true);
    o.set_last_will(LastWill::new(
        format!("{}/availability", s.base),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    if let Some((user, password)) = &s.login {
        o.set_credentials(user, password);
    }
    if let Some(tls) = &s.tls {
        o.set_transport(Transport::Tls(rumqttc::TlsConfiguration::Rustls(
            Arc::clone(tls),
        )));
    }
    o
}

/// `username` and `password` from a TOML file; a file looser than 0640
/// draws a warning ([`crate::permissions`]).
fn read_credentials(path: &Path) -> Result<(String, String), MqttError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Credentials {
        username: String,
        password: String,
    }
    let text = read_file("credentials", path, MAX_CREDENTIALS_BYTES)?;
    let text = String::from_utf8(text).map_err(|_| MqttError::Invalid {
        key: "credentials",
        path: path.to_path_buf(),
        message: "not UTF-8".into(),
    })?;
    crate::permissions::warn_if_loose(path, "credentials", Kind::Secret);
    let c: Credentials = toml::from_str(&text).map_err(|e| MqttError::Invalid {
        key: "credentials",
        path: path.to_path_buf(),
        // toml's message names the key; the value is never echoed, as the
        // password may be in it.
        message: e.message().to_string(),
    })?;
    Ok((c.username, c.password))
}

fn read_file(key: &'static str, path: &Path, limit: u64) -> Result<Vec<u8>, MqttError> {
    crate::source::read_regular_file(path, limit).map_err(|error| MqttError::Read {
        key,
        path: path.to_path_buf(),
        error,
    })
}

fn pem_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, MqttError> {
    let bytes = read_file(key, path, MAX_PEM_BYTES)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut bytes.as_slice()).collect();
    let certs = certs.map_err(|e| MqttError::Invalid {
        key,
        path: path.to_path_buf(),
        message: format!("not a PEM certificate file: {e}"),
    })?;
    if certs.is_empty() {
        return Err(MqttError::Invalid {
            key,
            path: path.to_path_buf(),
            message: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// rustls with the ring provider; the CA file or the system's CAs; a
/// client certificate when both `cert_file` and `key_file` are set.
fn tls_config(config: &Config, mqtt: &MqttConfig) -> Result<Arc<rustls::ClientConfig>, MqttError> {
    let mut roots = rustls::RootCertStore::empty();
    match &mqtt.ca_file {
        Some(p) => {
            let path = config.resolve(p);
            // Public, but whoever can write it chooses whom ferd trusts.
            crate::permissions::warn_if_loose(&path, "ca_file", Kind::Public);
            for cert in pem_certs("ca_file", &path)? {
                roots.add(cert).map_err(|e| MqttError::Invalid {
                    key: "ca_file",
                    path: path.clone(),
                    message: format!("unusable CA certificate: {e}"),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(MqttError::Invalid {
                    key: "ca_file",
                    path: PathBuf::from("(unset)"),
                    message: "mqtts:// needs a CA: the system has none; set ca_file".into(),
                });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Invalid {
            key: "url",
            path: PathBuf::new(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots);
    let config = match (&mqtt.cert_file, &mqtt.key_file) {
        (Some(c), Some(k)) => {
            let cert_path = config.resolve(c);
            let key_path = config.resolve(k);
            crate::permissions::warn_if_loose(&cert_path, "cert_file", Kind::Public);
            let certs = pem_certs("cert_file", &cert_path)?;
            let key_bytes = read_file("key_file", &key_path, MAX_PEM_BYTES)?;
            crate::permissions::warn_if_loose(&key_path, "key_file", Kind::Secret);
            let key = rustls_pemfile::private_key(&mut key_bytes.as_slice())
                .ok()
                .flatten()
                .ok_or_else(|| MqttError::Invalid {
                    key: "key_file",
                    path: key_path.clone(),
                    message: "no PEM private key in it".into(),
                })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| MqttError::Invalid {
                    key: "cert_file",
                    path: cert_path,
                    message: e.to_string(),
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(c), None) | (None, Some(c)) => {
            return Err(MqttError::Invalid {
                key: "cert_file",
                path: c.clone(),
                message: "cert_file and key_file go together".into(),
            })
        }
    };
    Ok(Arc::new(config))
}

/// A stable id for this board: its serial number where the kernel exposes
/// one (Raspberry Pi, Jetson and other device-tree boards; DMI on PCs),
/// otherwise its first hardware network address. Not `/etc/machine-id`,
/// which every board made from one SD image shares.
pub fn board_device_id() -> Option<String> {
    board_id_from(Path::new("/"))
}

/// [`board_device_id`] under another root (tests).
fn board_id_from(root: &Path) -> Option<String> {
    let read = |p: &str| {
        crate::source::read_regular_file(&root.join(p), 4096)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    };
    let serial = read("sys/firmware/devicetree/base/serial-number")
        .or_else(|| {
            read("proc/cpuinfo").and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("Serial"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(str::to_string)
            })
        })
        .or_else(|| read("sys/class/dmi/id/product_uuid"))
        .or_else(|| read("sys/class/dmi/id/board_serial"))
        .map(|s| clean_id(&s))
        .filter(|s| !s.is_empty() && s.chars().any(|c| c != '0'));
    if let Some(s) = serial {
        return Some(s);
    }
    // The first interface (by name) with a hardware address.
    let mut names: Vec<_> = std::fs::read_dir(root.join("sys/class/net"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().find_map(|n| {
        let mac = clean_id(&read(&format!("sys/class/net/{n}/address"))?);
        (mac.len() == 12 && mac != "000000000000").then_some(mac)
    })
}

/// Letters and digits only, lower case, at most 32 (a topic segment).
fn clean_id(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(32)
        .collect()
}

/// The device state as events describe it, for the retained topics.
struct View {
    rules: Vec<String>,
    /// Track → (expression, box area).
    tracks: HashMap<u64, (Option<Expression>, f32)>,
    alerts: BTreeSet<String>,
    degraded: bool,
    /// `false` from `driver_unwatched` to `driver_watched`. A degraded
    /// spell leaves it as it was: the pipeline keeps an unwatched driver
    /// unwatched until an eye state is known again.
    watching: bool,
    changed: bool,
    alerts_changed: Vec<(String, bool)>,
}

impl View {
    fn new(rules: Vec<String>) -> View {
        View {
            rules,
            tracks: HashMap::new(),
            alerts: BTreeSet::new(),
            degraded: false,
            watching: true,
            changed: true,
            alerts_changed: Vec::new(),
        }
    }

    fn apply(&mut self, e: &Event) {
        match &e.kind {
            EventKind::FaceAppeared { track, bbox, .. } => {
                self.tracks.insert(*track, (None, bbox[2] * bbox[3]));
            }
            EventKind::Expression {
                track,
                bbox,
                expression,
                ..
            } => {
                self.tracks
                    .insert(*track, (Some(*expression), bbox[2] * bbox[3]));
            }
            EventKind::FaceLost { track, .. } => {
                self.tracks.remove(track);
            }
            EventKind::AlertRaised { alert, .. } => {
                self.alerts.insert(alert.clone());
                self.alerts_changed.push((alert.clone(), true));
            }
            EventKind::AlertCleared { alert, .. } => {
                self.alerts.remove(alert);
                self.alerts_changed.push((alert.clone(), false));
            }
            EventKind::Degraded { .. } => {
                self.degraded = true;
                self.tracks.clear();
            }
            EventKind::Recovered { .. } => self.degraded = false,
            EventKind::DriverUnwatched { .. } => self.watching = false,
            EventKind::DriverWatched { .. } => self.watching = true,
            _ => return,
        }
        self.changed = true;
    }

    /// The largest face's expression: the one nearest the camera.
    fn main_expression(&self) -> Option<Expression> {
        self.tracks
            .values()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .and_then(|t| t.0)
    }

    fn state_json(&self) -> String {
        serde_json::json!({
            "expression": homeassistant::expression_state_value(self.main_expression()),
            "faces": self.tracks.len(),
            "alerts": self.alerts,
            "degraded": self.degraded,
            // Appended, so the fields before keep their place; present in
            // every config (always true without an eye rule) so that
            // consumers need not know the config. The eye state itself is
            // not here: no event carries it frame by frame.
            "watching": self.watching,
        })
        .to_string()
    }

    fn alert_states(&self) -> Vec<(String, bool)> {
        self.rules
            .iter()
            .map(|r| (r.clone(), self.alerts.contains(r)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_id_prefers_the_serial_then_a_mac() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path();
        std::fs::create_dir_all(p.join("sys/class/net/eth0")).unwrap();
        std::fs::create_dir_all(p.join("sys/class/net/lo")).unwrap();
        std::fs::write(p.join("sys/class/net/eth0/address"), "dc:a6:32:01:02:03\n").unwrap();
        std::fs::write(p.join("sys/class/net/lo/address"), "00:00:00:00:00:00\n").unwrap();
        assert_eq!(board_id_from(p).as_deref(), Some("dca632010203"));
        std::fs::create_dir_all(p.join("proc")).unwrap();
        std::fs::write(
            p.join("proc/cpuinfo"),
            "processor\t: 0\nSerial\t\t: 10000000abcdef01\nModel\t: Raspberry Pi 4\n",
        )
        .unwrap();
        assert_eq!(board_id_from(p).as_deref(), Some("10000000abcdef01"));
        std::fs::create_dir_all(p.join("sys/firmware/devicetree/base")).unwrap();
        // Device-tree strings end in NUL.
        std::fs::write(
            p.join("sys/firmware/devicetree/base/serial-number"),
            "1423221012345\0",
        )
        .unwrap();
        assert_eq!(board_id_from(p).as_deref(), Some("1423221012345"));
    }

    #[test]
    fn no_serial_and_no_network_address_is_none() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sys/class/net/lo")).unwrap();
        assert_eq!(board_id_from(root.path()), None);
    }

    #[test]
    fn the_state_follows_the_events() {
        let mut v = View::new(vec!["sad_face".into(), "drowsy".into()]);
        let ev = |kind| Event::new(kind, Duration::ZERO, 0);
        v.apply(&ev(EventKind::FaceAppeared {
            track: 1,
            bbox: [0.0, 0.0, 10.0, 10.0],
            score: 0.9,
        }));
        assert_eq!(
            v.state_json(),
            r#"{"expression":"none","faces":1,"alerts":[],"degraded":false,"watching":true}"#
        );
        v.apply(&ev(EventKind::Expression {
            track: 2,
            bbox: [0.0, 0.0, 50.0, 50.0],
            expression: Expression::Happy,
            probs: crate::events::ProbMap(crate::expression::Probs([0.0; 7])),
        }));
        v.apply(&ev(EventKind::AlertRaised {
            alert: "sad_face".into(),
            track: 2,
            cue: crate::events::AlertCue::Expression {
                expression: Expression::Sad,
                probability: 0.8,
            },
        }));
        assert_eq!(
            v.state_json(),
            r#"{"expression":"happy","faces":2,"alerts":["sad_face"],"degraded":false,"watching":true}"#
        );
        assert_eq!(
            v.alert_states(),
            [
                ("sad_face".to_string(), true),
                ("drowsy".to_string(), false)
            ]
        );
        v.apply(&ev(EventKind::Degraded {
            reason: "no_frames",
            error: String::new(),
        }));
        assert!(v.state_json().contains(r#""faces":0"#));
        assert!(v.state_json().contains(r#""degraded":true"#));
    }

    #[test]
    fn watching_follows_driver_unwatched_and_watched() {
        let mut v = View::new(vec!["eyes_closed".into()]);
        let ev = |kind| Event::new(kind, Duration::ZERO, 0);
        assert!(v.state_json().ends_with(r#""watching":true}"#));
        v.changed = false;
        v.apply(&ev(EventKind::DriverUnwatched { seconds: 10.04 }));
        assert!(v.changed, "a change of watching is published");
        assert!(v
            .state_json()
            .ends_with(r#""degraded":false,"watching":false}"#));
        // Degraded and recovered in between do not end it: only an eye
        // state known again does.
        v.apply(&ev(EventKind::Degraded {
            reason: "camera_lost",
            error: String::new(),
        }));
        v.apply(&ev(EventKind::Recovered {
            reason: "camera_lost",
            duration: 3.0,
        }));
        assert!(v.state_json().ends_with(r#""watching":false}"#));
        v.apply(&ev(EventKind::DriverWatched { duration: 8.0 }));
        assert!(v
            .state_json()
            .ends_with(r#""degraded":false,"watching":true}"#));
    }

    #[test]
    fn connection_failures_name_the_broker() {
        let e = ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword);
        assert_eq!(
            describe(&e, "mqtt://10.0.0.2:1883", true),
            "broker mqtt://10.0.0.2:1883 refused the connection: wrong user name or password"
        );
    }

    #[test]
    fn jitter_stays_within_half_to_whole() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(8));
            assert!(
                j >= Duration::from_secs(4) && j <= Duration::from_secs(8),
                "{j:?}"
            );
        }
    }
}
