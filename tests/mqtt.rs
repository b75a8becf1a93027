//! Integration tests of the MQTT output (`[mqtt]`, src/sink/mqtt.rs)
//! against a real broker: each test starts its own `mosquitto` on a free
//! loopback port with a generated config in a scratch directory, watches
//! every topic with a rumqttc subscriber, and runs the `ferd` binary on the
//! demo clip. Without mosquitto (Debian: `apt install mosquitto`) the
//! tests are skipped, or fail under CI=true (tests/common/mod.rs).

#![cfg(feature = "mqtt")]

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

mod common;

/// Frames in examples/demo.y4m.
const DEMO_FRAMES: u64 = 105;

/// How long a ferd run may take before the test gives up on it (a guard
/// against a hang, not a speed check: a replay takes a few seconds, a
/// `--realtime` one about 21 s).
const FERD_LIMIT: Duration = Duration::from_secs(120);

/// How long the subscriber may take to see what the test waits for.
const SEEN_LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Prerequisites

/// A program on PATH or in the sbin directories (mosquitto lives in
/// /usr/sbin, which a non-root PATH may lack).
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn mosquitto() -> Option<PathBuf> {
    let found = program("mosquitto");
    common::require(
        "mosquitto",
        found.is_some(),
        "Debian/Ubuntu: apt install mosquitto",
    )
    .then(|| found.unwrap())
}

fn need(name: &str, how: &str) -> Option<PathBuf> {
    let found = program(name);
    common::require(name, found.is_some(), how).then(|| found.unwrap())
}

// ---------------------------------------------------------------------------
// The broker

/// A port nothing listens on (bound, read and released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One mosquitto process with its config; killed (after a SIGCONT, in
/// case a test froze it) on drop.
struct Broker {
    bin: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    /// Every listener's port; the first is the one ferd uses.
    ports: Vec<u16>,
    child: Option<Child>,
}

impl Broker {
    /// A broker with one plain listener on a free port, anonymous.
    fn plain(bin: &Path, dir: &Path) -> Broker {
        Broker::plain_on(bin, dir, free_port())
    }

    /// A broker with one plain listener on `port`, anonymous.
    fn plain_on(bin: &Path, dir: &Path, port: u16) -> Broker {
        Broker::start(
            bin,
            dir,
            &format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
            vec![port],
        )
    }

    /// A broker with `listeners` (the listener lines and their settings)
    /// and the common settings: no persistence, log to a file in `dir`.
    fn start(bin: &Path, dir: &Path, listeners: &str, ports: Vec<u16>) -> Broker {
        let conf = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        // As root, mosquitto switches to the `mosquitto` user, which could
        // not read the scratch directory (mode 0700).
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        fs::write(
            &conf,
            format!(
                "{user}persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n\
                 log_type notice\nlog_type information\nlog_timestamp true\n{listeners}"
            ),
        )
        .unwrap();
        let mut broker = Broker {
            bin: bin.to_path_buf(),
            conf,
            log,
            ports,
            child: None,
        };
        broker.launch();
        broker
    }

    /// The port ferd connects to.
    fn port(&self) -> u16 {
        self.ports[0]
    }

    /// Starts the process and waits until every listener accepts.
    fn launch(&mut self) {
        assert!(self.child.is_none());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        for &port in &self.ports {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("mosquitto exited ({status}):\n{}", self.log_text());
                }
                assert!(
                    Instant::now() < deadline,
                    "mosquitto does not accept on port {port} after 10 s:\n{}",
                    self.log_text()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: a signal to our own child, which has not been reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        }
    }

    /// SIGKILL, as a crash or power cut would: nothing saved, no goodbye.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in `signal`.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the broker: connections stay open, nothing is answered.
    fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// The subscriber

/// One message as the subscriber received it.
#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: String,
    retain: bool,
    /// How many subscriptions had been acknowledged when it arrived: 1 on
    /// the first connection, 2 after the first reconnect, ...
    session: usize,
}

/// A client subscribed to `#` at QoS 1 that collects every message; it
/// reconnects and subscribes again when the broker comes back.
struct Subscriber {
    msgs: Arc<Mutex<Vec<Msg>>>,
    subacks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    client: Client,
}

impl Subscriber {
    /// Connects to 127.0.0.1:`port` and waits for the subscription.
    fn connect(port: u16, name: &str, login: Option<(&str, &str)>) -> Subscriber {
        let mut opts = MqttOptions::new(format!("test-{name}-{port}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(true);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        if let Some((user, password)) = login {
            opts.set_credentials(user, password);
        }
        let (client, mut connection) = Client::new(opts, 64);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let subacks = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (client, msgs, subacks, stop) = (
                client.clone(),
                Arc::clone(&msgs),
                Arc::clone(&subacks),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                for ev in connection.iter() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    match ev {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe("#", QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            subacks.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            msgs.lock().unwrap().push(Msg {
                                topic: p.topic.clone(),
                                payload: String::from_utf8_lossy(&p.payload).into_owned(),
                                retain: p.retain,
                                session: subacks.load(Ordering::SeqCst),
                            });
                        }
                        Ok(_) => {}
                        // The broker is away: rumqttc reconnects on the
                        // next poll.
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            });
        }
        let s = Subscriber {
            msgs,
            subacks,
            stop,
            client,
        };
        s.wait_until("the subscription", |_| s.subacks.load(Ordering::SeqCst) > 0);
        s
    }

    fn messages(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what has been received; panics after
    /// [`SEEN_LIMIT`] showing it.
    fn wait_until(&self, what: &str, done: impl Fn(&[Msg]) -> bool) -> Vec<Msg> {
        let deadline = Instant::now() + SEEN_LIMIT;
        loop {
            let msgs = self.messages();
            if done(&msgs) {
                return msgs;
            }
            if Instant::now() >= deadline {
                let topics: Vec<_> = msgs.iter().map(|m| m.topic.as_str()).collect();
                panic!(
                    "the subscriber did not see {what} within {SEEN_LIMIT:?}; it has {topics:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every topic in `topics` has a message.
    fn wait_for_topics(&self, topics: &[String]) -> Vec<Msg> {
        self.wait_until(&format!("{topics:?}"), |msgs| {
            topics.iter().all(|t| msgs.iter().any(|m| &m.topic == t))
        })
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
    }
}

/// The last message on `topic`.
fn last<'a>(msgs: &'a [Msg], topic: &str) -> Option<&'a Msg> {
    msgs.iter().rev().find(|m| m.topic == topic)
}

/// Event payloads under `ferd/<device>/event/`, in arrival order, with a
/// check that each sits under its own type.
fn events_of(msgs: &[Msg], device: &str) -> Vec<String> {
    let prefix = format!("ferd/{device}/event/");
    msgs.iter()
        .filter_map(|m| {
            let ty = m.topic.strip_prefix(&prefix)?;
            let v = json(&m.payload);
            assert_eq!(v["type"], ty, "{} on {}", m.payload, m.topic);
            assert!(!m.retain, "events are not retained: {}", m.topic);
            Some(m.payload.clone())
        })
        .collect()
}

/// `events` without repeats (by run and seq), first arrival kept.
fn dedup(events: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    events
        .iter()
        .filter(|l| seen.insert(run_seq(l)))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------
// ferd

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A TOML string (a JSON string is one).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn toml_path(p: &Path) -> String {
    toml_str(p.to_str().unwrap())
}

/// systemd/ferd.toml with absolute model paths, `edit` applied, and an
/// `[mqtt]` table of `mqtt` (none if empty), written to `dir/name`.
fn config(dir: &Path, name: &str, edit: impl Fn(String) -> String, mqtt: &str) -> PathBuf {
    let shipped = fs::read_to_string(root().join("systemd/ferd.toml")).unwrap();
    let models = format!("model = \"{}/", root().join("models").display());
    let text = shipped.replace("model = \"../models/", &models);
    assert_ne!(text, shipped, "systemd/ferd.toml names no ../models/");
    let mut text = edit(text);
    if !mqtt.is_empty() {
        text.push_str("\n[mqtt]\n");
        text.push_str(mqtt);
    }
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    // 0640, as installed: a looser config with [mqtt] draws a warning.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    path
}

/// The `[[rule]]` names of systemd/ferd.toml, in order.
fn rule_names() -> Vec<String> {
    let text = fs::read_to_string(root().join("systemd/ferd.toml")).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    doc["rule"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

/// Every event at one event per frame: a lot more events.
fn every_frame(text: String) -> String {
    let edited = text.replace("expression_interval = 0 ", "expression_interval = 0.1 ");
    assert_ne!(
        edited, text,
        "systemd/ferd.toml sets no expression_interval"
    );
    edited
}

/// A running `ferd run`, its output going to files in the scratch
/// directory (a pipe could fill and stall it).
struct Ferd {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

/// What a finished run printed.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn lines(&self) -> Vec<String> {
        self.stdout
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Panics showing stderr unless ferd exited 0.
    fn ok(self) -> Output {
        assert!(
            self.status.success(),
            "ferd: {}\n{}",
            self.status,
            self.stderr
        );
        self
    }
}

impl Ferd {
    /// `ferd run --config CONFIG --source examples/demo.y4m` plus `args`,
    /// with RUST_LOG=info.
    fn spawn(config: &Path, args: &[&str]) -> Ferd {
        Ferd::spawn_on(config, Path::new("examples/demo.y4m"), args)
    }

    /// [`Ferd::spawn`] with another source.
    fn spawn_on(config: &Path, source: &Path, args: &[&str]) -> Ferd {
        let dir = config.parent().unwrap();
        let stem = config.file_stem().unwrap().to_str().unwrap();
        let n = (0..)
            .find(|n| !dir.join(format!("{stem}-{n}.out")).exists())
            .unwrap();
        let out = dir.join(format!("{stem}-{n}.out"));
        let err = dir.join(format!("{stem}-{n}.err"));
        let child = Command::new(env!("CARGO_BIN_EXE_ferd"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--source")
            .arg(source)
            .args(args)
            .current_dir(root())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .expect("ferd runs");
        Ferd { child, out, err }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for the end (killing it after [`FERD_LIMIT`]).
    fn wait(mut self) -> Output {
        let deadline = Instant::now() + FERD_LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "ferd still running after {FERD_LIMIT:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: fs::read_to_string(&self.out).unwrap(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Ferd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn ferd(config: &Path) -> Output {
    Ferd::spawn(config, &[]).wait()
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn run_seq(line: &str) -> (String, u64) {
    let v = json(line);
    (
        v["run"].as_str().unwrap().to_string(),
        v["seq"].as_u64().unwrap(),
    )
}

/// The run id all of `lines` share.
fn one_run(lines: &[String]) -> String {
    let runs: HashSet<String> = lines.iter().map(|l| run_seq(l).0).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs.into_iter().next().unwrap()
}

fn seqs(lines: &[String]) -> Vec<u64> {
    lines.iter().map(|l| run_seq(l).1).collect()
}

/// The `status` event's `frames`.
fn frames(lines: &[String]) -> u64 {
    let status = lines
        .iter()
        .map(|l| json(l))
        .find(|v| v["type"] == "status")
        .expect("a status event");
    status["frames"].as_u64().unwrap()
}

/// An event without what differs between two runs of the same clip.
fn comparable(line: &str) -> Value {
    let mut v = json(line);
    let o = v.as_object_mut().unwrap();
    for key in ["time", "run", "seq", "source"] {
        o.remove(key);
    }
    v
}

/// Bytes of the spool's segment files.
fn spool_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Bytes of every file in the spool directory.
fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn events_discovery_state_and_availability() {
    let Some(bin) = mosquitto() else { return };
    let dir = scratch();
    let broker = Broker::plain(&bin, dir.path());
    let live = Subscriber::connect(broker.port(), "live", None);
    let spool = dir.path().join("spool");
    let cfg = config(
        dir.path(),
        "ferd.toml",
        |t| t,
        &format!(
            "url = \"mqtt://127.0.0.1:{}\"\ndevice_id = \"cab12\"\nspool = {}\n",
            broker.port(),
            toml_path(&spool)
        ),
    );
    let out = ferd(&cfg).ok();
    let lines = out.lines();
    assert!(lines.len() > 2, "{}", out.stdout);
    one_run(&lines);
    assert_eq!(seqs(&lines), (1..=lines.len() as u64).collect::<Vec<_>>());

    // Every event, one-for-one, under its type, in order. ferd waited for
    // the broker's acks before exiting, so they are all there.
    let msgs = live.wait_until("every event", |m| {
        events_of(m, "cab12").len() >= lines.len()
    });
    assert_eq!(events_of(&msgs, "cab12"), lines);
    assert!(!out.stderr.contains("not yet delivered"), "{}", out.stderr);

    // Availability online while running, the alerts as they went.
    let base = "ferd/cab12";
    let avail: Vec<&str> = msgs
        .iter()
        .filter(|m| m.topic == format!("{base}/availability"))
        .map(|m| m.payload.as_str())
        .collect();
    assert_eq!(avail.first(), Some(&"online"), "{avail:?}");
    let rules = rule_names();
    assert!(rules.len() >= 2, "{rules:?}");
    // The alert payloads each rule should have shown, from the events:
    // OFF at connect, then ON/OFF as raised and cleared.
    let mut expected_final = BTreeMap::new();
    for rule in &rules {
        let mut expected = vec!["OFF".to_string()];
        for v in lines.iter().map(|l| json(l)) {
            if v["alert"] == rule.as_str() {
                match v["type"].as_str().unwrap() {
                    "alert_raised" => expected.push("ON".into()),
                    "alert_cleared" => expected.push("OFF".into()),
                    _ => {}
                }
            }
        }
        let topic = format!("{base}/alert/{rule}");
        let seen = live.wait_until(&format!("{expected:?} on {topic}"), |m| {
            m.iter().filter(|m| m.topic == topic).count() >= expected.len()
        });
        let got: Vec<String> = seen
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.payload.clone())
            .collect();
        assert_eq!(got, expected, "{topic}");
        expected_final.insert(rule.clone(), expected.last().unwrap().clone());
    }
    assert!(
        lines.iter().any(|l| json(l)["type"] == "alert_raised"),
        "the demo raises an alert"
    );

    // After ferd has gone, a new subscriber gets the retained topics.
    let discovery = "homeassistant/device/ferd_cab12/config".to_string();
    let mut topics = vec![
        discovery.clone(),
        format!("{base}/availability"),
        format!("{base}/state"),
    ];
    topics.extend(rules.iter().map(|r| format!("{base}/alert/{r}")));
    let late = Subscriber::connect(broker.port(), "late", None);
    let retained = late.wait_for_topics(&topics);
    for t in &topics {
        assert!(last(&retained, t).unwrap().retain, "{t} is retained");
    }
    assert_eq!(
        events_of(&retained, "cab12"),
        Vec::<String>::new(),
        "events are not retained"
    );
    assert_eq!(
        last(&retained, &format!("{base}/availability"))
            .unwrap()
            .payload,
        "offline"
    );
    for (rule, payload) in &expected_final {
        assert_eq!(
            &last(&retained, &format!("{base}/alert/{rule}"))
                .unwrap()
                .payload,
            payload,
            "alert {rule}"
        );
    }
    let state = json(&last(&retained, &format!("{base}/state")).unwrap().payload);
    assert!(state["expression"].is_string(), "{state}");
    assert!(state["faces"].is_u64(), "{state}");
    assert!(state["alerts"].is_array(), "{state}");
    assert!(state["degraded"].is_boolean(), "{state}");
    assert_eq!(
        state["watching"], true,
        "no eye rule, never unwatched: {state}"
    );

    let doc = json(&last(&retained, &discovery).unwrap().payload);
    let components = doc["components"].as_object().expect("components");
    assert_eq!(components["expression"]["platform"], "sensor");
    assert_eq!(components["expression"]["state_topic"], "ferd/cab12/state");
    assert_eq!(components["faces"]["platform"], "sensor");
    for rule in &rules {
        let binary = components
            .values()
            .find(|c| c["state_topic"] == format!("{base}/alert/{rule}"))
            .unwrap_or_else(|| panic!("no component for rule {rule}: {doc}"));
        assert_eq!(binary["platform"], "binary_sensor", "{binary}");
        assert_eq!(binary["payload_on"], "ON");
        assert_eq!(binary["payload_off"], "OFF");
    }
    assert_eq!(
        doc["availability"][0]["topic"],
        format!("{base}/availability")
    );

    // The retained state agrees with the retained alert topics: what ferd
    // left behind when it stopped (every alert cleared at shutdown) is
    // one picture, not the state of a second before.
    let on: Vec<&str> = expected_final
        .iter()
        .filter(|(_, p)| p.as_str() == "ON")
        .map(|(r, _)| r.as_str())
        .collect();
    let state_alerts: Vec<&str> = state["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(state_alerts, on, "retained state {state}");
}

#[test]
fn broker_restart_mid_run_loses_nothing() {
    let Some(bin) = mosquitto() else { return };
    let dir = scratch();
    let mut broker = Broker::plain(&bin, dir.path());
    let sub = Subscriber::connect(broker.port(), "restart", None);
    // Exactly the three keys of the held-out check.
    let cfg = config(
        dir.path(),
        "ferd.toml",
        |t| t,
        &format!(
            "url = \"mqtt://127.0.0.1:{}\"\ndevice_id = \"cab12\"\nspool = {}\n",
            broker.port(),
            toml_path(&dir.path().join("spool"))
        ),
    );
    let run = Ferd::spawn(&cfg, &["--realtime"]);
    std::thread::sleep(Duration::from_secs(5));
    broker.kill();
    let before = events_of(&sub.messages(), "cab12").len();
    std::thread::sleep(Duration::from_secs(3));
    broker.launch();
    let out = run.wait().ok();
    let lines = out.lines();
    one_run(&lines);
    let msgs = sub.wait_until("every event", |m| {
        dedup(&events_of(m, "cab12")).len() >= lines.len()
    });
    let got = dedup(&events_of(&msgs, "cab12"));
    assert_eq!(got, lines, "after de-duplication, every event in order");
    assert_eq!(seqs(&got), (1..=lines.len() as u64).collect::<Vec<_>>());
    // The scenario happened: events before the kill and after the restart.
    assert!(before > 0, "no event before the broker was killed");
    let prefix = "ferd/cab12/event/";
    assert!(
        msgs.iter()
            .any(|m| m.session >= 2 && m.topic.starts_with(prefix)),
        "no event after the restart:\n{}",
        out.stderr
    );
    assert!(before < lines.len(), "every event came before the kill");
}

#[test]
fn home_assistant_coming_online_gets_the_discovery_again() {
    let Some(bin) = mosquitto() else { return };
    let dir = scratch();
    let broker = Broker::plain(&bin, dir.path());
    let sub = Subscriber::connect(broker.port(), "birth", None);
    let cfg = config(
        dir.path(),
        "ferd.toml",
        |t| t,
        &format!(
            "url = \"mqtt://127.0.0.1:{}\"\ndevice_id = \"hall\"\nspool = {}\n",
            broker.port(),
            toml_path(&dir.path().join("spool"))
        ),
    );
    let discovery = "homeassistant/device/ferd_hall/config".to_string();
    let run = Ferd::spawn(&cfg, &["--realtime"]);
    let count = |m: &[Msg]| m.iter().filter(|m| m.topic == discovery).count();
    sub.wait_until("the first discovery", |m| count(m) == 1);
    // Home Assistant's birth message, as it sends it after a restart.
    sub.client
        .try_publish("homeassistant/status", QoS::AtLeastOnce, false, "online")
        .unwrap();
    let msgs = sub.wait_until("the discovery again", |m| count(m) >= 2);
    let payloads: Vec<&str> = msgs
        .iter()
        .filter(|m| m.topic == discovery)
        .map(|m| m.payload.as_str())
        .collect();
    assert_eq!(payloads[0], payloads[1]);
    drop(run);
}

#[test]
fn frozen_broker_does_not_stop_analysis() {
    let Some(bin) = mosquitto() else { return };
    let dir = scratch();
    let baseline = ferd(&config(dir.path(), "plain.toml", |t| t, "")).ok();
    let expected = baseline.lines();
    assert_eq!(frames(&expected), DEMO_FRAMES);

    let broker = Broker::plain(&bin, dir.path());
    let sub = Subscriber::connect(broker.port(), "frozen", None);
    let spool = dir.path().join("spool");
    let cfg = config(
        dir.path(),
        "ferd.toml",
        |t| t,
        &format!(
            "url = \"mqtt://127.0.0.1:{}\"\ndevice_id = \"cab3\"\nspool = {}\ndrain_timeout = 1.0\n",
            broker.port(),
            toml_path(&spool)
        ),
    );
    // At the clip's own pace (about 21 s), so that the broker is frozen
    // while most events are still to come, however fast analysis is and
    // however late the subscriber sees `online` on a busy machine.
    let run = Ferd::spawn(&cfg, &["--realtime"]);
    // Connected (the subscriber sees `online`), then the broker freezes;
    // the subscriber freezes with it and is not asked anything more.
    sub.wait_until("ferd online", |m| {
        m.iter()
            .any(|m| m.topic == "ferd/cab3/availability" && m.payload == "online")
    });
    broker.freeze();
    let out = run.wait();
    broker.thaw();
    let out = out.ok();
    let lines = out.lines();
    assert_eq!(frames(&lines), DEMO_FRAMES, "every frame analysed");
    assert_eq!(
        lines.iter().map(|l| comparable(l)).collect::<Vec<_>>(),
        expected.iter().map(|l| comparable(l)).collect::<Vec<_>>(),
        "the same events as without MQTT"
    );
    // What the frozen broker never acknowledged waits in the spool.
    assert!(
        out.stderr.contains("stay in the spool for the next run"),
        "{}",
        out.stderr
    );
}

#[test]
fn spool_survives_a_restart_of_ferd() {
    let Some(bin) = mosquitto() else { return };
    let dir = scratch();
    let port = free_port();
    let spool = dir.path().join("spool");
    let cfg = config(
        dir.path(),
        "ferd.toml",
        |t| t,
        &format!(
            "url = \"mqtt://127.0.0.1:{port}\"\ndevice_id = \"cab4\"\nspool = {}\ndrain_timeout = 0.5\n",
            toml_path(&spool)
        ),
    );
    // No broker: the events are printed and kept.
    let first = ferd(&cfg).ok();
    let first_lines = first.lines();
    let first_run = one_run(&first_lines);
    assert_eq!(frames(&first_lines), DEMO_FRAMES);
    assert!(spool_bytes(&spool) > 0, "{}", first.stderr);
    assert!(
        first
            .stderr
            .contains(&format!("{} events not yet delivered", first_lines.len())),
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains(&format!("mqtt://127.0.0.1:{port}")),
        "the failure names the broker:\n{}",
        first.stderr
    );

    let broker = Broker::plain_on(&bin, dir.path(), port);
    let sub = Subscriber::connect(broker.port(), "spool", None);
    let second = ferd(&cfg).ok();
    assert!(
        second
            .stderr
            .contains(&format!("{} events from an earlier run", first_lines.len())),
        "{}",
        second.stderr
    );
    let second_lines = second.lines();
    let second_run = one_run(&second_lines);
    assert_ne!(first_run, second_run);
    let total = first_lines.len() + second_lines.len();
    let msgs = sub.wait_until("both runs' events", |m| {
        dedup(&events_of(m, "cab4")).len() >= total
    });
    let got = dedup(&events_of(&msgs, "cab4"));
    let expected: Vec<String> = first_lines.iter().chain(&second_lines).cloned().collect();
    assert_eq!(got, expected, "the first run's events, then the second's");
    assert!(
        !second.stderr.contains("not yet delivered"),
        "{}",
        second.stderr
    );
}

#[test]
fn full_spool_drops_oldest_with_a_count() {
    let Some(bin) = mosquitto() else { return };
    let dir = scratch();
    let port = free_port();
    let spool = dir.path().join("spool");
    const LIMIT: u64 = 65536;
    let mqtt = format!(
        "url = \"mqtt://127.0.0.1:{port}\"\ndevice_id = \"cab5\"\nspool = {}\n\
         spool_limit = {LIMIT}\ndrain_timeout = 0.5\n",
        toml_path(&spool)
    );
    let busy = config(dir.path(), "busy.toml", every_frame, &mqtt);
    // Two busy runs with the broker down: more than the spool holds.
    let mut offline = Vec::new();
    for _ in 0..2 {
        let out = ferd(&busy);
        let lines = out.lines();
        assert_eq!(frames(&lines), DEMO_FRAMES);
        assert!(
            spool_bytes(&spool) <= LIMIT && dir_bytes(&spool) <= LIMIT + 4096,
            "spool {} bytes, directory {} bytes",
            spool_bytes(&spool),
            dir_bytes(&spool)
        );
        offline.push(out);
    }
    let bytes: usize = offline.iter().map(|o| o.stdout.len()).sum();
    assert!(bytes as u64 > LIMIT, "only {bytes} bytes of events");
    // The first run fits; the second drops and says so.
    assert!(offline[0].status.success(), "{}", offline[0].stderr);
    assert!(
        offline[1].stderr.contains("mqtt: spool full, dropped the"),
        "{}",
        offline[1].stderr
    );

    // Broker up, a quiet third run delivers what is left.
    let broker = Broker::plain_on(&bin, dir.path(), port);
    let sub = Subscriber::connect(broker.port(), "full", None);
    let quiet = config(dir.path(), "quiet.toml", |t| t, &mqtt);
    let third = ferd(&quiet).ok();
    let third_lines = third.lines();
    let third_last = third_lines.last().unwrap().clone();
    let msgs = sub.wait_until("the third run's last event", |m| {
        events_of(m, "cab5").contains(&third_last)
    });
    assert!(spool_bytes(&spool) <= LIMIT);
    let got = dedup(&events_of(&msgs, "cab5"));
    let is_notice = |l: &String| json(l)["type"] == "events_dropped";
    let notices: Vec<Value> = got
        .iter()
        .filter(|l| is_notice(l))
        .map(|l| json(l))
        .collect();
    assert!(!notices.is_empty(), "no events_dropped arrived");
    for n in &notices {
        assert_eq!(n["sink"], "mqtt", "{n}");
        assert!(n["count"].as_u64().unwrap() > 0, "{n}");
    }
    // What arrived is the newest part of everything printed: the oldest
    // went, nothing else; the counts add up to what is missing.
    let printed: Vec<String> = offline
        .iter()
        .flat_map(|o| o.lines())
        .chain(third_lines.iter().cloned())
        .collect();
    let events: Vec<String> = got.iter().filter(|l| !is_notice(l)).cloned().collect();
    assert!(events.len() < printed.len());
    let missing = printed.len() - events.len();
    assert_eq!(
        events,
        printed[missing..],
        "the oldest events were dropped, the rest arrived in order"
    );
    let counted: u64 = notices.iter().map(|n| n["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, missing as u64, "{notices:?}");
    // Some of the first run survived, and every notice comes after them.
    let first_run = one_run(&offline[0].lines());
    let first_pos: Vec<usize> = got
        .iter()
        .enumerate()
        .filter(|(_, l)| run_seq(l).0 == first_run && !is_notice(l))
        .map(|(i, _)| i)
        .collect();
    assert!(
        !first_pos.is_empty(),
        "nothing of the first run survived: {missing} missing"
    );
    let first_notice = got.iter().position(is_notice).unwrap();
    assert!(first_notice > *first_pos.last().unwrap());
    // Events were lost: `ferd run` fails (its documented exit status,
    // src/commands.rs), and says how many.
    assert!(
        offline[1].stderr.contains("events could not be written"),
        "{}",
        offline[1].stderr
    );
    assert_eq!(offline[1].status.code(), Some(1), "{}", offline[1].stderr);
}

/// A CA and a server certificate it signed for 127.0.0.1 and localhost,
/// made with the openssl CLI: (ca.crt, server.crt, server.key).
fn make_ca(openssl: &Path, dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let sh = |args: &[&str]| {
        let o = Command::new(openssl).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let s = |p: PathBuf| p.to_str().unwrap().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
    args.extend(ec);
    let (ca_key, ca_crt) = (s(p("ca.key")), s(p("ca.crt")));
    let subject = format!("/CN=ferd test CA {name}");
    args.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_crt,
        "-subj",
        &subject,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    sh(&args);
    let (key, csr, crt, ext) = (
        s(p("server.key")),
        s(p("server.csr")),
        s(p("server.crt")),
        p("server.ext"),
    );
    let mut args = vec!["req", "-nodes"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    sh(&args);
    fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ext = s(ext);
    sh(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &crt,
    ]);
    (p("ca.crt"), p("server.crt"), p("server.key"))
}

#[test]
fn tls_with_a_test_ca_and_a_wrong_ca() {
    let Some(bin) = mosquitto() else { return };
    let Some(openssl) = need("openssl", "Debian/Ubuntu: apt install openssl") else {
        return;
    };
    let dir = scratch();
    let (ca, crt, key) = make_ca(&openssl, dir.path(), "good");
    let (other_ca, _, _) = make_ca(&openssl, dir.path(), "other");
    let (tls_port, plain_port) = (free_port(), free_port());
    // TLS for ferd; a plain listener for the test's subscriber.
    let _broker = Broker::start(
        &bin,
        dir.path(),
        &format!(
            "allow_anonymous true\nlistener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\n\
             keyfile {}\nlistener {plain_port} 127.0.0.1\n",
            ca.display(),
            crt.display(),
            key.display()
        ),
        vec![tls_port, plain_port],
    );
    let sub = Subscriber::connect(plain_port, "tls", None);
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    let mqtt = |device: &str, ca: &Path| {
        format!(
            "url = \"{url}\"\ndevice_id = \"{device}\"\nspool = {}\nca_file = {}\n\
             drain_timeout = 0.5\n",
            toml_path(&dir.path().join(format!("spool-{device}"))),
            toml_path(ca)
        )
    };
    let good = ferd(&config(
        dir.path(),
        "good.toml",
        |t| t,
        &mqtt("tlsgood", &ca),
    ))
    .ok();
    let lines = good.lines();
    let msgs = sub.wait_until("every event over TLS", |m| {
        events_of(m, "tlsgood").len() >= lines.len()
    });
    assert_eq!(events_of(&msgs, "tlsgood"), lines);
    assert!(
        good.stderr.contains(&format!("connected to {url}")),
        "{}",
        good.stderr
    );

    // A CA that did not sign the broker's certificate: a clear error, and
    // the analysis goes on.
    let bad_cfg = config(dir.path(), "bad.toml", |t| t, &mqtt("tlsbad", &other_ca));
    let bad = ferd(&bad_cfg).ok();
    let bad_lines = bad.lines();
    assert_eq!(frames(&bad_lines), DEMO_FRAMES);
    assert_eq!(bad_lines.len(), lines.len());
    let err = bad
        .stderr
        .lines()
        .find(|l| l.contains("TLS with broker"))
        .unwrap_or_else(|| panic!("no TLS error:\n{}", bad.stderr));
    assert!(err.contains(&url), "{err}");
    assert!(err.contains("ERROR"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!bad.stderr.contains("connected to"), "{}", bad.stderr);
    assert!(events_of(&sub.messages(), "tlsbad").is_empty());
}

fn credentials(dir: &Path, name: &str, user: &str, password: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    fs::write(
        &path,
        format!(
            "username = {}\npassword = {}\n",
            toml_str(user),
            toml_str(password)
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn wrong_password_is_a_clear_error_while_analysis_goes_on() {
    let Some(bin) = mosquitto() else { return };
    let Some(passwd) = need("mosquitto_passwd", "Debian/Ubuntu: apt install mosquitto") else {
        return;
    };
    let dir = scratch();
    let passwords = dir.path().join("passwords");
    let o = Command::new(passwd)
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["ferduser", "s3cret-right"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let port = free_port();
    let _broker = Broker::start(
        &bin,
        dir.path(),
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
            passwords.display()
        ),
        vec![port],
    );
    let sub = Subscriber::connect(port, "auth", Some(("ferduser", "s3cret-right")));
    let mqtt = |device: &str, creds: &Path| {
        format!(
            "url = \"mqtt://127.0.0.1:{port}\"\ndevice_id = \"{device}\"\nspool = {}\n\
             credentials = {}\ndrain_timeout = 0.5\n",
            toml_path(&dir.path().join(format!("spool-{device}"))),
            toml_path(creds)
        )
    };
    let wrong_password = "wr0ng-Pa55w0rd-x";
    let wrong = credentials(
        dir.path(),
        "creds-wrong.toml",
        "ferduser",
        wrong_password,
        0o600,
    );
    let out = ferd(&config(
        dir.path(),
        "wrong.toml",
        |t| t,
        &mqtt("authbad", &wrong),
    ))
    .ok();
    let lines = out.lines();
    assert_eq!(frames(&lines), DEMO_FRAMES);
    let refusal = out
        .stderr
        .lines()
        .find(|l| l.contains("refused the connection"))
        .unwrap_or_else(|| panic!("no refusal:\n{}", out.stderr))
        .to_string();
    assert!(refusal.contains("ERROR"), "{refusal}");
    assert!(
        refusal.contains(&format!(
            "broker mqtt://127.0.0.1:{port} refused the connection"
        )),
        "{refusal}"
    );
    assert!(!out.stderr.contains(wrong_password), "{}", out.stderr);
    assert!(!out.stderr.contains("has mode"), "0600 draws no warning");
    assert!(events_of(&sub.messages(), "authbad").is_empty());

    let right = credentials(
        dir.path(),
        "creds-right.toml",
        "ferduser",
        "s3cret-right",
        0o600,
    );
    let good = ferd(&config(
        dir.path(),
        "right.toml",
        |t| t,
        &mqtt("authgood", &right),
    ))
    .ok();
    let good_lines = good.lines();
    assert_eq!(good_lines.len(), lines.len());
    let msgs = sub.wait_until("every event", |m| {
        events_of(m, "authgood").len() >= good_lines.len()
    });
    assert_eq!(events_of(&msgs, "authgood"), good_lines);
    assert!(!good.stderr.contains("s3cret-right"), "{}", good.stderr);
    // Checked last, so that the rest is checked whatever it says: the
    // refusal says what to fix. mosquitto 2 refuses a wrong password with
    // CONNACK 5 (not authorised) rather than 4 (bad user name or password).
    assert!(
        refusal.contains("wrong user name or password"),
        "a wrong password, in words: {refusal}"
    );
}

#[test]
fn loose_credentials_file_draws_a_warning() {
    // No broker needed: the file is read at start.
    let dir = scratch();
    let creds = credentials(
        dir.path(),
        "creds.toml",
        "ferduser",
        "pw-0644-secret",
        0o644,
    );
    let cfg = config(
        dir.path(),
        "ferd.toml",
        |t| t,
        &format!(
            "url = \"mqtt://127.0.0.1:{}\"\ndevice_id = \"cab8\"\nspool = {}\n\
             credentials = {}\ndrain_timeout = 0.5\n",
            free_port(),
            toml_path(&dir.path().join("spool")),
            toml_path(&creds)
        ),
    );
    let out = ferd(&cfg).ok();
    let warning = out
        .stderr
        .lines()
        .find(|l| l.contains(creds.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no warning naming the file:\n{}", out.stderr));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("has mode 0644"), "{warning}");
    assert!(!out.stderr.contains("pw-0644-secret"), "{}", out.stderr);
    assert_eq!(frames(&out.lines()), DEMO_FRAMES);
}

// ---------------------------------------------------------------------------
// Security: file modes, and no listening network socket

/// `ferd check-config CONFIG`, with RUST_LOG=info.
fn check_config(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferd"))
        .arg("check-config")
        .arg(config)
        .current_dir(root())
        .env("RUST_LOG", "info")
        .output()
        .expect("ferd runs")
}

/// The lines of `stderr` naming `path`.
fn lines_naming<'a>(stderr: &'a str, path: &Path) -> Vec<&'a str> {
    let p = path.to_str().unwrap();
    stderr.lines().filter(|l| l.contains(p)).collect()
}

#[test]
fn a_loose_client_key_or_a_writable_ca_draws_a_warning() {
    // The client key is a secret (0640 at most); the CA and the client
    // certificate are public, but whoever can write the CA file chooses
    // whom ferd trusts (0644 at most). check-config reads all three.
    let Some(openssl) = need("openssl", "Debian/Ubuntu: apt install openssl") else {
        return;
    };
    let dir = scratch();
    // A server certificate serves as a client certificate here: only its
    // files are read, nothing connects.
    let (ca, crt, key) = make_ca(&openssl, dir.path(), "perm");
    let cfg = config(
        dir.path(),
        "tls.toml",
        |t| t,
        &format!(
            "url = \"mqtts://127.0.0.1:{}\"\ndevice_id = \"permtls\"\nspool = {}\n\
             ca_file = {}\ncert_file = {}\nkey_file = {}\n",
            free_port(),
            toml_path(&dir.path().join("spool")),
            toml_path(&ca),
            toml_path(&crt),
            toml_path(&key)
        ),
    );
    let set = |path: &Path, mode: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    };
    // (CA, certificate, key modes; the expected warnings as (file, text))
    // The file and a text its warning must hold.
    type Expected<'a> = Vec<(&'a Path, &'static str)>;
    let cases: [(u32, u32, u32, Expected); 3] = [
        (0o644, 0o644, 0o600, vec![]),
        (
            0o644,
            0o644,
            0o644,
            vec![
                (&key, "key_file"),
                (&key, "has mode 0644, looser than 0640"),
            ],
        ),
        (
            0o664,
            0o646,
            0o640,
            vec![
                (&ca, "ca_file"),
                (&ca, "has mode 0664, looser than 0644"),
                (&ca, "chmod 0644"),
                (&crt, "cert_file"),
                (&crt, "has mode 0646"),
            ],
        ),
    ];
    for (ca_mode, crt_mode, key_mode, expected) in cases {
        let case = format!("ca {ca_mode:04o}, cert {crt_mode:04o}, key {key_mode:04o}");
        set(&ca, ca_mode);
        set(&crt, crt_mode);
        set(&key, key_mode);
        let o = check_config(&cfg);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{case}: {err}");
        for path in [&ca, &crt, &key] {
            let lines = lines_naming(&err, path);
            let wanted: Vec<&str> = expected
                .iter()
                .filter(|(p, _)| p == path)
                .map(|(_, text)| *text)
                .collect();
            if wanted.is_empty() {
                assert!(lines.is_empty(), "{case}: {}: {err}", path.display());
                continue;
            }
            assert_eq!(lines.len(), 1, "{case}: one warning: {err}");
            for text in wanted {
                assert!(lines[0].contains(text), "{case}: {text}: {}", lines[0]);
            }
            assert!(lines[0].contains("WARN"), "{case}: {}", lines[0]);
        }
    }
}

#[test]
fn a_loose_spool_draws_warnings_at_open() {
    // No broker: the events stay in the spool, which the second run opens.
    let dir = scratch();
    let spool = dir.path().join("spool");
    let cfg = config(
        dir.path(),
        "spool.toml",
        |t| t,
        &format!(
            "url = \"mqtt://127.0.0.1:{}\"\ndevice_id = \"permspool\"\nspool = {}\n\
             drain_timeout = 0\n",
            free_port(),
            toml_path(&spool)
        ),
    );
    // A short clip: what is checked happens at open.
    let clip = dir.path().join("clip.y4m");
    short_clip(&clip, 10);
    let first = Ferd::spawn_on(&cfg, &clip, &[]).wait().ok();
    // What ferd makes itself is tight enough (0750 and 0640 under the usual
    // umask 022).
    assert!(!first.stderr.contains("has mode"), "{}", first.stderr);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&spool), 0o750);
    let files: Vec<PathBuf> = fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let head = spool.join("head");
    assert!(files.contains(&head), "{files:?}");
    let segments: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("seg-"))
        .collect();
    assert!(!segments.is_empty(), "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o640, "{}", f.display());
    }

    fs::set_permissions(&spool, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&head, fs::Permissions::from_mode(0o644)).unwrap();
    for s in &segments {
        fs::set_permissions(s, fs::Permissions::from_mode(0o660)).unwrap();
    }
    let second = Ferd::spawn_on(&cfg, &clip, &[]).wait().ok();
    let err = &second.stderr;
    // The directory's own line: the files' lines name it too.
    let spool_name = format!("spool directory {} has mode 0755", spool.display());
    let dir_lines: Vec<&str> = err.lines().filter(|l| l.contains(&spool_name)).collect();
    assert_eq!(dir_lines.len(), 1, "{err}");
    assert!(dir_lines[0].contains("WARN"), "{}", dir_lines[0]);
    assert!(
        dir_lines[0].ends_with(&format!("chmod 0750 {}", spool.display())),
        "{}",
        dir_lines[0]
    );
    let head_lines = lines_naming(err, &head);
    assert_eq!(head_lines.len(), 1, "{err}");
    assert!(head_lines[0].contains("has mode 0644"), "{}", head_lines[0]);
    for s in &segments {
        let lines: Vec<&str> = lines_naming(err, s)
            .into_iter()
            .filter(|l| l.contains("has mode"))
            .collect();
        assert_eq!(lines.len(), 1, "{}: {err}", s.display());
        assert!(lines[0].contains("spool segment"), "{}", lines[0]);
        assert!(lines[0].contains("has mode 0660"), "{}", lines[0]);
        assert!(
            lines[0].ends_with(&format!("chmod 0640 {}", s.display())),
            "{}",
            lines[0]
        );
    }
    assert_eq!(frames(&second.lines()), 10);
}

/// A socket of ferd's that the issue forbids, or one the test must see.
#[derive(Debug, Default)]
struct SocketScan {
    /// Forbidden sockets, described.
    violations: Vec<String>,
    /// An established TCP connection to the broker was seen.
    broker: bool,
    /// The event socket was seen listening.
    event_socket: bool,
}

/// The socket inodes of process `pid`: inode -> its /proc/PID/fd entry.
fn socket_inodes(pid: u32) -> BTreeMap<u64, PathBuf> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            out.insert(n.parse().unwrap(), e.path());
        }
    }
    out
}

/// One row of a /proc/PID/net table: its fields, by the table's name.
fn net_rows(pid: u32, table: &str) -> Vec<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
    text.lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The port of a /proc/net/tcp address (`0100007F:075B`).
fn hex_port(addr: &str) -> u16 {
    u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap()
}

/// Classifies every socket process `pid` holds, from its fds and the
/// kernel's socket tables (read before and after the fds, so that a socket
/// made in between is found). TCP: a LISTEN (state 0A) socket, or one whose
/// peer is not `broker_port`, is a violation. UDP, raw and packet sockets
/// are violations whatever their state. Unix and netlink sockets are
/// local. A socket in no table that is still open is a violation too.
fn scan_sockets(pid: u32, broker_port: u16, event_socket: &Path) -> SocketScan {
    const INET: [&str; 4] = ["tcp", "tcp6", "udp", "udp6"];
    const OTHER: [&str; 4] = ["udplite", "udplite6", "raw", "raw6"];
    let read_tables = || {
        // inode -> (table, fields)
        let mut by_inode = std::collections::HashMap::<u64, (String, Vec<String>)>::new();
        for table in INET.iter().chain(OTHER.iter()) {
            for row in net_rows(pid, table) {
                if let Some(inode) = row.get(9).and_then(|i| i.parse().ok()) {
                    by_inode.insert(inode, (table.to_string(), row));
                }
            }
        }
        for (table, column) in [("unix", 6), ("netlink", 9), ("packet", 8)] {
            for row in net_rows(pid, table) {
                if let Some(inode) = row.get(column).and_then(|i| i.parse().ok()) {
                    by_inode.insert(inode, (table.to_string(), row));
                }
            }
        }
        by_inode
    };
    let mut tables = read_tables();
    let fds = socket_inodes(pid);
    for (k, v) in read_tables() {
        tables.entry(k).or_insert(v);
    }
    let mut scan = SocketScan::default();
    for (inode, fd) in fds {
        match tables.get(&inode) {
            Some((t, row)) if t == "tcp" || t == "tcp6" => {
                let (local, remote, state) = (&row[1], &row[2], &row[3]);
                if state == "0A" {
                    scan.violations
                        .push(format!("{t} LISTEN on {local} (port {})", hex_port(local)));
                } else if hex_port(remote) != broker_port {
                    scan.violations.push(format!(
                        "{t} {local} -> {remote} (state {state}): not to the broker"
                    ));
                } else if state == "01" {
                    scan.broker = true;
                }
            }
            Some((t, row)) if t == "unix" => {
                // Flags 00010000: __SO_ACCEPTCON, a listening socket.
                if row.get(7).map(PathBuf::from).as_deref() == Some(event_socket)
                    && row[3] == "00010000"
                {
                    scan.event_socket = true;
                }
            }
            Some((t, _)) if t == "netlink" => {}
            Some((t, row)) => scan.violations.push(format!("{t} socket {row:?}")),
            None => {
                // Closed since the fds were read: gone, not a violation.
                let still = fs::read_link(&fd)
                    .is_ok_and(|l| l.to_string_lossy() == format!("socket:[{inode}]"));
                if still {
                    scan.violations
                        .push(format!("socket {inode} ({}) in no table", fd.display()));
                }
            }
        }
    }
    scan
}

/// A group other than our effective one that we may give a file: any
/// group as root, else one of our supplementary groups. (name, gid).
fn another_group() -> Option<(String, u32)> {
    // SAFETY: getegid/geteuid have no preconditions; getgroups writes at
    // most `len` gids into a buffer of that many.
    let (egid, root) = unsafe { (libc::getegid(), libc::geteuid() == 0) };
    let mut mine = vec![0 as libc::gid_t; 256];
    let n = unsafe { libc::getgroups(mine.len() as libc::c_int, mine.as_mut_ptr()) };
    mine.truncate(n.max(0) as usize);
    let groups = fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let gid: u32 = f.get(2)?.parse().ok()?;
        (gid != egid && (root || mine.contains(&gid))).then(|| (f[0].to_string(), gid))
    })
}

/// The first `frames` frames of examples/demo.y4m (5 fps, mono) in `path`.
fn short_clip(path: &Path, frames: usize) {
    let demo = fs::read(root().join("examples/demo.y4m")).unwrap();
    let header_end = demo.iter().position(|&b| b == b'\n').unwrap() + 1;
    let header = std::str::from_utf8(&demo[..header_end]).unwrap();
    assert!(
        header.starts_with("YUV4MPEG2 W256 H192 F5:1") && header.contains("Cmono"),
        "{header}"
    );
    let frame = b"FRAME\n".len() + 256 * 192;
    let end = header_end + frames * frame;
    assert!(demo[header_end + (frames - 1) * frame..].starts_with(b"FRAME\n"));
    fs::write(path, &demo[..end]).unwrap();
}

#[test]
fn no_listening_network_socket_and_the_event_socket_is_0660_with_its_group() {
    // The scan itself finds what it must forbid: a TCP listener and a
    // bound UDP socket of this test process.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let own = scan_sockets(std::process::id(), 0, Path::new("/nonexistent"));
    let listen_port = listener.local_addr().unwrap().port();
    assert!(
        own.violations
            .iter()
            .any(|v| v.contains("LISTEN") && v.contains(&format!("(port {listen_port})"))),
        "{own:?}"
    );
    assert!(
        own.violations.iter().any(|v| v.starts_with("udp ")),
        "{own:?}"
    );
    drop((listener, udp));

    let Some(bin) = mosquitto() else { return };
    let group = another_group();
    if !common::require(
        "a group other than the test's own, to give the event socket",
        group.is_some(),
        "run as root, or as a member of a supplementary group",
    ) {
        return;
    }
    let (group, gid) = group.unwrap();
    let dir = scratch();
    let broker = Broker::plain(&bin, dir.path());
    let sock = dir.path().join("events.sock");
    let cfg = config(
        dir.path(),
        "listen.toml",
        |t| {
            let edited = t.replace(
                "[events]\n",
                &format!(
                    "[events]\nsocket = {}\nsocket_group = {}\n",
                    toml_path(&sock),
                    toml_str(&group)
                ),
            );
            assert_ne!(edited, t, "systemd/ferd.toml has no [events] table");
            edited
        },
        &format!(
            "url = \"mqtt://127.0.0.1:{}\"\ndevice_id = \"nolisten\"\nspool = {}\n\
             drain_timeout = 5\n",
            broker.port(),
            toml_path(&dir.path().join("spool"))
        ),
    );
    // 20 frames at their own 5 fps: ferd runs about 4 s, long enough to be
    // watched connected.
    let clip = dir.path().join("clip.y4m");
    short_clip(&clip, 20);
    let mut ferd = Ferd::spawn_on(&cfg, &clip, &["--realtime"]);
    let pid = ferd.child.id();
    let deadline = Instant::now() + FERD_LIMIT;
    let (mut violations, mut scans) = (Vec::new(), 0);
    let (mut broker_seen, mut socket_seen, mut socket_meta) = (false, false, None);
    let status = loop {
        if let Some(status) = ferd.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ferd still running after {FERD_LIMIT:?}; stderr:\n{}",
            ferd.stderr()
        );
        let scan = scan_sockets(pid, broker.port(), &sock);
        scans += 1;
        violations.extend(scan.violations);
        broker_seen |= scan.broker;
        socket_seen |= scan.event_socket;
        if socket_meta.is_none() && scan.event_socket {
            socket_meta = fs::symlink_metadata(&sock).ok();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = ferd.stderr();
    assert!(status.success(), "ferd: {status}\n{stderr}");
    assert!(violations.is_empty(), "{violations:?}\n{stderr}");
    assert!(
        broker_seen,
        "never saw the connection to the broker in {scans} scans\n{stderr}"
    );
    assert!(
        socket_seen,
        "never saw the event socket listening in {scans} scans\n{stderr}"
    );
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = socket_meta.expect("the socket's metadata while it listened");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o660, "{}", sock.display());
    assert_eq!(meta.gid(), gid, "the socket's group is {group}");
}
