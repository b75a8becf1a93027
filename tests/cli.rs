//! Integration tests that run the `ferd` binary on real files and the
//! shipped models.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

fn ferd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferd"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "info")
        .output()
        .expect("ferd runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(p)
}

/// `ferd detect --json` on one file: the parsed faces.
fn detect_json(file: &str) -> Vec<serde_json::Value> {
    let o = ferd(&["detect", "--json", data(file).to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(line["image"].as_str().unwrap().ends_with(file));
    line["faces"].as_array().unwrap().clone()
}

/// Centre of a face's box.
fn center(face: &serde_json::Value) -> (f64, f64) {
    let b: Vec<f64> = face["box"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    (b[0] + b[2] / 2.0, b[1] + b[3] / 2.0)
}

fn near(a: (f64, f64), b: (f64, f64), tol: f64) -> bool {
    (a.0 - b.0).abs() <= tol && (a.1 - b.1).abs() <= tol
}

// Faces in the fixtures are 96×96 pastes (tests/data/make_fixtures.py); the
// detector's box sits on the face inside, so centres are compared with a
// tolerance of a fifth of the paste.
const TOL: f64 = 20.0;

#[test]
fn detect_finds_one_face_where_it_was_placed() {
    for file in ["faces/one_face.png", "faces/one_face.jpg"] {
        let faces = detect_json(file);
        assert_eq!(faces.len(), 1, "{file}: {faces:?}");
        assert!(
            near(center(&faces[0]), (160.0, 120.0), TOL),
            "{file}: {:?}",
            center(&faces[0])
        );
        let probs = faces[0]["probs"].as_object().unwrap();
        let labels: Vec<&str> = probs.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            labels,
            ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
        );
        let sum: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-3, "{sum}");
        let top = faces[0]["expression"].as_str().unwrap();
        assert!(probs.values().all(|v| v.as_f64() <= probs[top].as_f64()));
        assert!(faces[0]["score"].as_f64().unwrap() >= 0.7);
    }
}

#[test]
fn detect_finds_two_faces_and_none_on_background() {
    let mut centers: Vec<(f64, f64)> = detect_json("faces/two_faces.png")
        .iter()
        .map(center)
        .collect();
    centers.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(centers.len(), 2, "{centers:?}");
    assert!(near(centers[0], (78.0, 98.0), TOL), "{centers:?}");
    assert!(near(centers[1], (228.0, 128.0), TOL), "{centers:?}");
    assert!(detect_json("faces/no_face.png").is_empty());
    assert!(detect_json("faces/tiny.png").is_empty());
}

#[test]
fn detect_reports_bad_images_and_processes_the_rest() {
    let o = ferd(&["detect", "--json", data("faces").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Seven files, sorted: each gets a line, the two bad ones with an error.
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l["image"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "huge.png",
            "no_face.png",
            "one_face.jpg",
            "one_face.png",
            "tiny.png",
            "truncated.jpg",
            "two_faces.png"
        ]
    );
    assert!(lines[0]["error"].as_str().unwrap().contains("20000×20000"));
    assert!(lines[5]["error"]
        .as_str()
        .unwrap()
        .contains("truncated JPEG"));
    assert_eq!(lines[6]["faces"].as_array().unwrap().len(), 2);
    let err = stderr(&o);
    assert!(
        err.contains("huge.png") && err.contains("truncated.jpg"),
        "{err}"
    );
}

#[test]
fn detect_human_output_names_each_image() {
    let o = ferd(&["detect", data("faces/two_faces.png").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!(
            "{}: 2 faces (320×240)",
            data("faces/two_faces.png").display()
        )),
        "{out}"
    );
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with("face "))
            .count(),
        2
    );
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let o = ferd(&["check-config", "systemd/ferd.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("ok (2 rules)"));
}

#[test]
fn check_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[tracker]\nmin_iou = 0.3\nsmothing = 0.5\n", ":3:1:", "smothing"),
        ("[detector]\nmin_score = 1.5\n", ":2:13:", "between 0 and 1"),
        ("[[rule]]\nname = \"x\"\nexpressions = [\"happy\", \"joy\"]\nmin_probability = 0.5\nhold = 1\n", ":3:", "joy"),
        ("[[rule]]\nname = \"x\"\nexpressions = [\"happy\"]\nhold = 1\n", ":1:1:", "min_probability"),
        ("[events]\nexpression_interval = \"soon\"\n", ":2:", "expression_interval"),
    ];
    for (i, (text, position, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let o = ferd(&["check-config", path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(3));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("bad{i}.toml{position}")),
            "case {i}: {err}"
        );
        assert!(err.contains(needle), "case {i}: {err}");
    }
}

#[test]
fn check_config_checks_display_specs() {
    let dir = tempfile::tempdir().unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let cases = [
        ("ssd1306:/dev/i2c-1@0x100", Some("bad I²C address")),
        ("lcd:/dev/lcd0", Some("unknown display")),
        ("ssd1306:/dev/i2c-1@0x3d", None),
        ("ssd1306:/dev/i2c-1", None),
    ];
    for (i, (spec, error)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("display{i}.toml"));
        let text = format!(
            "[detector]\nmodel = {:?}\n[classifier]\nmodel = {:?}\n[display]\noutput = {spec:?}\n",
            models.join("retinaface-mnet025.toml"),
            models.join("expression.toml")
        );
        std::fs::write(&path, text).unwrap();
        let o = ferd(&["check-config", path.to_str().unwrap()]);
        match error {
            Some(needle) => {
                assert_eq!(o.status.code(), Some(3), "case {i}");
                assert!(stderr(&o).contains(needle), "case {i}: {}", stderr(&o));
            }
            None => assert!(o.status.success(), "case {i}: {}", stderr(&o)),
        }
    }
}

#[test]
fn run_shows_the_screen_on_every_display_given() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    let o = ferd(&[
        "run",
        "--config",
        "systemd/ferd.toml",
        "--source",
        data("faces/two_faces.png").to_str().unwrap(),
        "--display",
        &format!("png:{}", a.display()),
        "--display",
        &format!("png:{}", b.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

#[test]
fn corrupt_model_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::scratch_models(dir.path());
    let onnx = dir.path().join("models/retinaface-mnet025.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&onnx, &bytes).unwrap();
    let o = ferd(&[
        "detect",
        "--config",
        config.to_str().unwrap(),
        data("faces/one_face.png").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(4));
    let err = stderr(&o);
    assert!(
        err.contains("retinaface-mnet025.onnx") && err.contains("sha256"),
        "{err}"
    );
}

#[test]
fn missing_model_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::scratch_models(dir.path());
    let manifest = dir.path().join("models/expression.toml");
    let file = std::fs::read_to_string(&manifest)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("file = \"")
                .map(|f| f.trim_end_matches('"').to_string())
        })
        .unwrap();
    std::fs::remove_file(dir.path().join("models").join(&file)).unwrap();
    let o = ferd(&[
        "detect",
        "--config",
        config.to_str().unwrap(),
        data("faces/one_face.png").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(4));
    let err = stderr(&o);
    assert!(err.contains(&file) && err.contains("cannot read"), "{err}");
}

/// Whether to rewrite the expected outputs instead of comparing (after a
/// deliberate change of the models or the demo): `FERD_BLESS=1 cargo test`.
fn bless() -> bool {
    std::env::var_os("FERD_BLESS").is_some()
}

/// The model-independent part of an event, one line per event.
fn event_summary(e: &serde_json::Value) -> String {
    let mut s = format!("{:>3} {}", e["frame"], e["type"].as_str().unwrap());
    for key in ["track", "expression", "alert", "reason"] {
        if let Some(v) = e.get(key) {
            s.push_str(&format!(
                " {key}={}",
                v.as_str().map(str::to_string).unwrap_or(v.to_string())
            ));
        }
    }
    s
}

#[test]
fn run_on_the_demo_clip_gives_the_expected_events_and_screen() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("screen.png");
    let o = ferd(&[
        "run",
        "--config",
        "systemd/ferd.toml",
        "--source",
        "examples/demo.y4m",
        "--display",
        &format!("png:{}", png.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let events: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    // Every event carries the schema version and both clocks.
    for e in &events {
        assert_eq!(e["v"], 1, "{e}");
        assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
        let t = e["t"].as_f64().unwrap();
        let frame = e["frame"].as_u64().unwrap();
        assert!(
            (t - frame as f64 / 5.0).abs() < 1e-6,
            "frame time follows the 5 fps clip: {e}"
        );
    }
    let got: Vec<String> = events.iter().map(event_summary).collect();
    let expected_path = data("demo.events");
    if bless() {
        std::fs::write(&expected_path, got.join("\n") + "\n").unwrap();
        std::fs::copy(&png, data("demo-screen.png")).unwrap();
    }
    let expected: Vec<String> = std::fs::read_to_string(&expected_path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(got, expected, "events differ from tests/data/demo.events");

    // What the demo is there to show, independent of the exact sequence.
    let count = |t: &str| events.iter().filter(|e| e["type"] == t).count();
    assert!(count("face_appeared") >= 2);
    assert_eq!(
        count("face_appeared"),
        count("face_lost"),
        "every track ends"
    );
    assert!(events
        .iter()
        .any(|e| e["type"] == "alert_raised" && e["alert"] == "distress"));
    assert!(events
        .iter()
        .any(|e| e["type"] == "alert_cleared" && e["alert"] == "distress"));
    assert_eq!(
        count("alert_raised"),
        count("alert_cleared"),
        "every alert clears"
    );
    let status = events.last().unwrap();
    assert_eq!(status["type"], "status");
    assert_eq!(status["frames"], 105);
    assert_eq!(status["skipped"], 0);

    // The screen after the last frame, pixel for pixel.
    let shown = image::open(&png).unwrap().into_luma8();
    let reference = image::open(data("demo-screen.png")).unwrap().into_luma8();
    assert_eq!(shown.dimensions(), reference.dimensions());
    assert!(
        shown == reference,
        "display differs from tests/data/demo-screen.png (see {})",
        png.display()
    );
}

#[test]
fn run_survives_a_truncated_clip_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    // Header + 10 whole frames + half a frame.
    let eleven = std::fs::read(demo_prefix(dir.path(), 11)).unwrap();
    let cut = dir.path().join("cut.y4m");
    std::fs::write(&cut, &eleven[..eleven.len() - DEMO_FRAME_BYTES / 2]).unwrap();
    let o = ferd(&[
        "run",
        "--config",
        "systemd/ferd.toml",
        "--source",
        cut.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let status: serde_json::Value =
        serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(status["frames"], 10);
    assert_eq!(status["skipped"], 1);
    let err = stderr(&o);
    assert!(
        err.contains("cut.y4m") && err.contains("frame 10 is truncated"),
        "{err}"
    );
}

#[test]
fn run_refuses_a_clip_with_a_bad_header() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.y4m");
    std::fs::write(&bad, b"YUV4MPEG2 W256 F5:1 Cmono\nFRAME\n").unwrap();
    let o = ferd(&[
        "run",
        "--config",
        "systemd/ferd.toml",
        "--source",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(5));
    let err = stderr(&o);
    assert!(
        err.contains("bad.y4m") && err.contains("no height"),
        "{err}"
    );
}

#[test]
fn run_on_an_image_folder_skips_bad_files() {
    let o = ferd(&[
        "run",
        "--config",
        "systemd/ferd.toml",
        "--source",
        data("faces").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let status: serde_json::Value =
        serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(status["frames"], 5);
    assert_eq!(status["skipped"], 2);
}

#[test]
fn events_can_go_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferd.toml");
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::write(
        &config,
        format!(
            "[detector]\nmodel = \"{root}/models/retinaface-mnet025.toml\"\n[classifier]\nmodel = \"{root}/models/expression.toml\"\n[events]\noutput = \"events.jsonl\"\n"
        ),
    )
    .unwrap();
    let o = ferd(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--source",
        data("faces/two_faces.png").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    let log = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let types: Vec<String> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        types,
        [
            "started",
            "face_appeared",
            "face_appeared",
            "expression",
            "expression",
            "face_lost",
            "face_lost",
            "status"
        ]
    );
}

/// Bytes per frame of the demo clip: `FRAME\n` and 256×192 mono pixels.
const DEMO_FRAME_BYTES: usize = 6 + 256 * 192;

/// The first `n` frames of the demo clip as a new clip.
fn demo_prefix(dir: &Path, n: usize) -> PathBuf {
    let clip =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.y4m")).unwrap();
    let header = clip.iter().position(|&b| b == b'\n').unwrap() + 1;
    let path = dir.join(format!("first{n}.y4m"));
    std::fs::write(&path, &clip[..header + n * DEMO_FRAME_BYTES]).unwrap();
    path
}

#[test]
fn realtime_replay_analyses_or_drops_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let clip = demo_prefix(dir.path(), 10);
    let o = ferd(&[
        "run",
        "--config",
        "systemd/ferd.toml",
        "--source",
        clip.to_str().unwrap(),
        "--realtime",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let status: serde_json::Value =
        serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    let frames = status["frames"].as_u64().unwrap();
    // How many are dropped depends on the machine; none may vanish.
    let err = stderr(&o);
    let dropped: u64 = err
        .split(" dropped")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped count in {err}"));
    assert_eq!(frames + dropped, 10, "{err}");
}

#[test]
fn sigterm_ends_the_run_cleanly_and_clears_alerts() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferd"))
        .args([
            "run",
            "--config",
            "systemd/ferd.toml",
            "--source",
            "examples/demo.y4m",
            "--realtime",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Wait until the distress alert is up (frame 40, 8 s into the clip).
    for line in lines.by_ref() {
        let e: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let raised = e["type"] == "alert_raised";
        seen.push(e);
        if raised {
            break;
        }
    }
    // libc, not the `kill` program: a minimal system has no procps.
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our
    // own child, not yet waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    for line in lines {
        seen.push(serde_json::from_str(&line.unwrap()).unwrap());
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let last = seen.last().unwrap();
    assert_eq!(last["type"], "status", "{seen:?}");
    assert!(
        last["frames"].as_u64().unwrap() < 105,
        "stopped before the end"
    );
    let raised = seen.iter().filter(|e| e["type"] == "alert_raised").count();
    let cleared = seen.iter().filter(|e| e["type"] == "alert_cleared").count();
    assert_eq!(raised, cleared, "every raised alert is cleared on SIGTERM");
    assert!(seen
        .iter()
        .any(|e| e["type"] == "alert_cleared" && e["reason"] == "shutdown"));
}

#[test]
fn shipped_model_keeps_its_accuracy_on_val() {
    let Some(val) = common::fer2013_val() else {
        return;
    };
    let o = ferd(&["eval", "--data", val.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let summary: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(summary["images"], 3589);
    let last = out.lines().last().unwrap();
    let accuracy: f64 = last.strip_prefix("accuracy: ").unwrap().parse().unwrap();
    assert!((accuracy - summary["accuracy"].as_f64().unwrap()).abs() < 1e-4);

    // The figure the default model's manifest states, less half a point.
    let default = ferd::config::DEFAULT_EXPRESSION_MODEL;
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(default)).unwrap();
    let stated: f64 = manifest
        .lines()
        .find_map(|l| l.strip_prefix("val_accuracy = "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{default} states [metrics] val_accuracy"));
    assert!(
        accuracy >= stated - 0.005,
        "accuracy {accuracy:.4} fell below the stated {stated:.4} - 0.005"
    );
}

#[test]
fn bench_times_every_stage_and_writes_the_faces_it_saw() {
    let dir = tempfile::tempdir().unwrap();
    let clip = demo_prefix(dir.path(), 20);
    let faces = dir.path().join("faces.jsonl");
    let clip = clip.to_str().unwrap();
    let o = ferd(&[
        "bench",
        "--config",
        "systemd/ferd.toml",
        "--source",
        clip,
        "--warmup",
        "2",
        "--json",
        "--faces-out",
        faces.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["frames"], 18, "{j}");
    let frame = j["frame_ms"]["median"].as_f64().unwrap();
    let detect = j["stages"]["detect"]["median"].as_f64().unwrap();
    assert!(frame > 0.0 && detect > 0.0 && detect <= j["frame_ms"]["max"].as_f64().unwrap());
    for stage in ["decode", "landmarks", "classify", "track_rules", "sinks"] {
        assert!(j["stages"][stage]["p95"].is_f64(), "{stage}: {j}");
    }
    // The demo's first seconds: one face in every frame (examples/demo.txt).
    assert_eq!(j["faces_per_frame"], 1.0, "{j}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&faces)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 18);
    assert_eq!(lines[0]["frame"], 2);
    assert_eq!(lines[0]["boxes"].as_array().unwrap().len(), 1);

    let o = ferd(&[
        "bench",
        "--config",
        "systemd/ferd.toml",
        "--source",
        clip,
        "--frames",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("frames: 5 "), "{out}");
    let last = out.lines().last().unwrap();
    let fps: f64 = last.strip_prefix("fps: ").unwrap().parse().unwrap();
    assert!(fps > 0.0, "{out}");
}

/// Config and credential files looser than 0640 draw a warning naming each
/// (src/permissions.rs), from `check-config` as from `run`: both read them
/// through `Config::load` and the MQTT settings. A warning, not an error.
#[cfg(feature = "mqtt")]
#[test]
fn check_config_warns_about_a_loose_config_or_credentials_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let creds = dir.path().join("mqtt-credentials.toml");
    std::fs::write(
        &creds,
        "username = \"ferd\"\npassword = \"pw-kept-apart\"\n",
    )
    .unwrap();
    let config = dir.path().join("ferd.toml");
    std::fs::write(
        &config,
        format!(
            "[detector]\nmodel = {:?}\n[classifier]\nmodel = {:?}\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\ndevice_id = \"perm\"\ncredentials = {:?}\n",
            models.join("retinaface-mnet025.toml"),
            models.join("expression.toml"),
            creds
        ),
    )
    .unwrap();
    // (config mode, credentials mode, the chmod suggested for each: none
    // when the mode is fine; only the loose bits go)
    let cases = [
        (0o644, 0o644, Some(0o640), Some(0o640)),
        (0o660, 0o700, Some(0o640), Some(0o600)),
        (0o641, 0o640, Some(0o640), None),
        (0o640, 0o604, None, Some(0o600)),
        (0o640, 0o600, None, None),
        (0o600, 0o400, None, None),
    ];
    for (config_mode, creds_mode, config_fix, creds_fix) in cases {
        let case = format!("config {config_mode:04o}, credentials {creds_mode:04o}");
        for (path, mode) in [(&config, config_mode), (&creds, creds_mode)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let o = ferd(&["check-config", config.to_str().unwrap()]);
        let err = stderr(&o);
        assert!(o.status.success(), "{case}: {err}");
        assert!(stdout(&o).contains(": ok ("), "{case}: {}", stdout(&o));
        assert!(!err.contains("pw-kept-apart"), "{case}: {err}");
        for (path, what, mode, fix) in [
            (&config, "config", config_mode, config_fix),
            (&creds, "credentials", creds_mode, creds_fix),
        ] {
            let p = path.to_str().unwrap();
            let lines: Vec<&str> = err.lines().filter(|l| l.contains(p)).collect();
            let Some(fix) = fix else {
                assert!(lines.is_empty(), "{case}: {what} warned about: {err}");
                continue;
            };
            assert_eq!(lines.len(), 1, "{case}: one warning for {what}: {err}");
            let line = lines[0];
            assert!(line.contains("WARN"), "{case}: {line}");
            assert!(
                line.contains(&format!("{what} {p} has mode {mode:04o}")),
                "{case}: {line}"
            );
            assert!(
                line.ends_with(&format!("chmod {fix:04o} {p}")),
                "{case}: {line}"
            );
        }
        assert_eq!(
            err.contains("has mode"),
            config_fix.is_some() || creds_fix.is_some(),
            "{case}: {err}"
        );
    }
}
