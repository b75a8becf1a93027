//! `SIGHUP` reloads the configuration of a running `ferd run`, atomically:
//! a bad file, a model swapped on disk with the wrong checksum, or a
//! change to what is opened only at start is refused with its error and
//! the running configuration goes on; a good one takes effect between two
//! frames without losing the tracks, and the alert of a rule it removes is
//! cleared. systemd hears `RELOADING=1` then `READY=1` each time.
//!
//! The demo clip is fed through a FIFO one frame at a time, so each step
//! happens at a known frame: `expression_interval = 0.1` makes every
//! analysed frame report track 1's expression, which tells the test that
//! a frame (and the reload check after it) is done.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;

/// The demo clip split into its header line and frames (mono 256×192).
fn demo_frames() -> (Vec<u8>, Vec<Vec<u8>>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let clip = std::fs::read(root.join("examples/demo.y4m")).unwrap();
    let eol = clip.iter().position(|&b| b == b'\n').unwrap() + 1;
    let header = clip[..eol].to_vec();
    let text = String::from_utf8_lossy(&header);
    assert!(
        text.contains("W256 H192") && text.contains("Cmono"),
        "{text}"
    );
    let frame = b"FRAME\n".len() + 256 * 192;
    let frames: Vec<Vec<u8>> = clip[eol..].chunks(frame).map(<[u8]>::to_vec).collect();
    assert!(frames
        .iter()
        .all(|f| f.len() == frame && f.starts_with(b"FRAME\n")));
    (header, frames)
}

const RULES: &str = "[[rule]]\nname = \"distress\"\nexpressions = [\"angry\", \"fear\", \"sad\"]\n\
    min_probability = 0.6\nhold = 3.0\nclear_after = 1.0\ncooldown = 5.0\n\
    [[rule]]\nname = \"smile\"\nexpressions = [\"happy\"]\nmin_probability = 0.7\nhold = 1.0\n\
    clear_after = 1.0\ncooldown = 0\n";

fn config(extra: &str, rules: &str) -> String {
    format!(
        "[detector]\nmodel = \"models/retinaface-mnet025.toml\"\n\
         [classifier]\nmodel = \"models/expression.toml\"\n\
         [events]\noutput = \"-\"\nexpression_interval = 0.1\n{extra}{rules}"
    )
}

/// The events of a running ferd, one JSON object per line of its stdout.
struct Events(mpsc::Receiver<serde_json::Value>);

impl Events {
    /// The next event of `kind`, skipping others into `seen`; panics after
    /// a minute without it.
    fn until(&self, kind: &str, seen: &mut Vec<serde_json::Value>) -> serde_json::Value {
        loop {
            let e = self
                .0
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no {kind} event within 60 s; saw {seen:#?}"));
            seen.push(e.clone());
            if e["type"] == kind {
                return e;
            }
        }
    }
}

#[test]
fn sighup_reloads_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let conf = common::scratch_models(dir.path());
    std::fs::write(&conf, config("", RULES)).unwrap();
    let fifo = dir.path().join("camera.y4m");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_ferd"))
        .args(["run", "--config"])
        .arg(&conf)
        .arg("--source")
        .arg(&fifo)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let events = Events(rx);
    let (header, frames) = demo_frames();
    // Opening the FIFO for writing blocks until ferd opens it to read.
    let mut camera = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    camera.write_all(&header).unwrap();
    let mut next: usize = 0;
    // `n` frames more (all that are left for `usize::MAX`).
    let mut feed = |camera: &mut std::fs::File, n: usize| {
        let end = next.saturating_add(n).min(frames.len());
        for f in &frames[next..end] {
            camera.write_all(f).unwrap();
        }
        camera.flush().unwrap();
        next = end;
    };
    let hup = || {
        let sent = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(sent.success());
    };
    let mut seen = Vec::new();

    // The golden demo raises `smile` on track 1 at frame 63.
    feed(&mut camera, 66);
    let raised = events.until("alert_raised", &mut seen);
    let raised = if raised["alert"] == "smile" {
        raised
    } else {
        events.until("alert_raised", &mut seen)
    };
    assert_eq!(raised["alert"], "smile", "{seen:#?}");
    assert_eq!(raised["track"], 1);

    // 1. A config that does not parse: refused with file and line.
    std::fs::write(&conf, config("", RULES).replace("hold = 1.0", "hold = ")).unwrap();
    hup();
    feed(&mut camera, 1);
    let failed = events.until("reload_failed", &mut seen);
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("ferd.toml:"), "{error}");

    // 2. The classifier swapped on disk: the running one goes on (a frame
    //    is still analysed), and a reload re-verifies it and refuses it.
    std::fs::write(&conf, config("", RULES)).unwrap();
    let manifest = std::fs::read_to_string(dir.path().join("models/expression.toml")).unwrap();
    let file = manifest
        .lines()
        .find_map(|l| l.strip_prefix("file = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the manifest names its file");
    let model = dir.path().join("models").join(file);
    let good = std::fs::read(&model).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0xff;
    std::fs::write(&model, &bad).unwrap();
    let before = seen.len();
    feed(&mut camera, 1);
    let e = events.until("expression", &mut seen);
    assert_eq!(e["track"], 1, "{seen:#?}");
    hup();
    feed(&mut camera, 1);
    let failed = events.until("reload_failed", &mut seen);
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("sha256"), "{error}");
    assert!(
        !seen[before..]
            .iter()
            .any(|e| e["type"] == "alert_cleared" || e["type"] == "face_lost"),
        "{seen:#?}"
    );
    std::fs::write(&model, &good).unwrap();

    // 3. A change to what is opened only at start: refused, named.
    std::fs::write(
        &conf,
        config("", RULES).replace("output = \"-\"", "output = \"events.jsonl\""),
    )
    .unwrap();
    hup();
    feed(&mut camera, 1);
    let failed = events.until("reload_failed", &mut seen);
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("[events]") && error.contains("restart"),
        "{error}"
    );

    // 4. A good config: `smile` removed, `joy` added, `distress` kept.
    let joy =
        "[[rule]]\nname = \"joy\"\nexpressions = [\"happy\"]\nmin_probability = 0.5\nhold = 0.0\n";
    let kept = &RULES[..RULES.find("[[rule]]\nname = \"smile\"").unwrap()];
    std::fs::write(&conf, config("", &format!("{kept}{joy}"))).unwrap();
    let before = seen.len();
    hup();
    feed(&mut camera, 1);
    let reloaded = events.until("config_reloaded", &mut seen);
    assert_eq!(reloaded["rules"], 2);
    let cleared = seen[before..]
        .iter()
        .find(|e| e["type"] == "alert_cleared")
        .unwrap_or_else(|| panic!("smile not cleared by the reload: {seen:#?}"));
    assert_eq!(cleared["alert"], "smile");
    assert_eq!(cleared["reason"], "reload");
    // The track goes on under the new rules.
    feed(&mut camera, 2);
    let joy = events.until("alert_raised", &mut seen);
    assert_eq!((&joy["alert"], &joy["track"]), (&"joy".into(), &1.into()));
    assert!(
        !seen[before..]
            .iter()
            .any(|e| e["type"] == "face_lost" || e["type"] == "face_appeared"),
        "the reload lost a track: {seen:#?}"
    );

    // The rest of the clip, then the end of the input ends the run.
    feed(&mut camera, usize::MAX);
    drop(camera);
    events.until("status", &mut seen);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every alert raised was cleared; none of a removed rule came back.
    for e in seen.iter().filter(|e| e["type"] == "alert_raised") {
        let alert = &e["alert"];
        let raised = seen
            .iter()
            .filter(|x| x["type"] == "alert_raised" && x["alert"] == *alert)
            .count();
        let cleared = seen
            .iter()
            .filter(|x| x["type"] == "alert_cleared" && x["alert"] == *alert)
            .count();
        assert_eq!(raised, cleared, "{alert}: {seen:#?}");
    }
    assert_eq!(
        seen.iter()
            .filter(|e| e["type"] == "alert_raised" && e["alert"] == "smile")
            .count(),
        1
    );

    // systemd heard RELOADING=1 (with the time) then READY=1, four times.
    let mut notes = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        notes.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let reloads: Vec<usize> = notes
        .iter()
        .enumerate()
        .filter(|(_, m)| m.contains("RELOADING=1"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(reloads.len(), 4, "{notes:#?}");
    for i in reloads {
        assert!(notes[i].contains("MONOTONIC_USEC="), "{notes:#?}");
        assert!(
            notes.get(i + 1).is_some_and(|m| m.contains("READY=1")),
            "{notes:#?}"
        );
    }
}
