//! The soak, CI-sized: the demo clip replayed at full speed, looping,
//! for 100,000 frames (`FERD_SOAK_FRAMES` to change) through the whole
//! pipeline after the models: the `.y4m` reader, the tracker, the rules,
//! the event bus and its real sinks (the JSON-lines file and the Unix
//! socket with a connected reader). Asserts that after warm-up the
//! process's RSS stays within 5% and its file descriptors do not change,
//! that no alert stays raised, and that the events are what the replay
//! implies: every loop of the clip, past the first, yields the same
//! events, and the socket reader got exactly what the file got.
//!
//! The models run once, on one pass of the clip, and their observations
//! are replayed by frame: 100,000 frames of real inference would take 30
//! minutes on CI's two cores. `tools/soak.sh` runs the `ferd` binary with
//! the models for 30 minutes and more (docs/RELIABILITY.md).

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ferd::config::Config;
use ferd::frame::Frame;
use ferd::pipeline::{Pace, Pipeline, Service};
use ferd::sink::bus;
use ferd::source::{FrameSource, SourceError};
use ferd::vision::{Analyze, ModelError, Observation};

/// Frames in examples/demo.y4m.
const CLIP_FRAMES: u64 = 105;
/// Frames before RSS and descriptors are taken as the baseline.
const WARM_UP: u64 = 10_000;

fn clip() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.y4m")
}

/// The clip over and over, its frame numbers and times running on.
struct Looping {
    source: Box<dyn FrameSource + Send>,
    passes: u64,
    frames: u64,
    limit: u64,
}

impl FrameSource for Looping {
    fn next_frame(&mut self) -> Option<Result<Frame, SourceError>> {
        if self.frames == self.limit {
            return None;
        }
        let mut frame = match self.source.next_frame() {
            Some(frame) => frame,
            None => {
                self.passes += 1;
                self.source = ferd::source::open(&clip()).ok()?;
                self.source.next_frame()?
            }
        }
        .ok()?;
        frame.sequence += self.passes * CLIP_FRAMES;
        frame.timestamp += Duration::from_millis(200) * (self.passes * CLIP_FRAMES) as u32;
        self.frames += 1;
        Some(Ok(frame))
    }
    fn frame_interval(&self) -> Option<Duration> {
        self.source.frame_interval()
    }
    fn describe(&self) -> String {
        format!("{} (looping)", clip().display())
    }
}

/// The real analyser's observations of each clip frame, replayed.
struct Replayed {
    model: String,
    by_frame: Vec<Vec<Observation>>,
}

impl Analyze for Replayed {
    fn model_name(&self) -> &str {
        &self.model
    }
    fn analyze_into(
        &mut self,
        frame: &Frame,
        out: &mut Vec<Observation>,
    ) -> Result<(), ModelError> {
        out.clear();
        out.extend_from_slice(&self.by_frame[(frame.sequence % CLIP_FRAMES) as usize]);
        Ok(())
    }
}

fn record(config: &Config) -> Replayed {
    let mut analyzer = ferd::daemon::load_analyzer(config).unwrap();
    let mut source = ferd::source::open(&clip()).unwrap();
    let mut by_frame = Vec::new();
    while let Some(frame) = source.next_frame() {
        let mut out = Vec::new();
        analyzer.analyze_into(&frame.unwrap(), &mut out).unwrap();
        by_frame.push(out);
    }
    assert_eq!(by_frame.len() as u64, CLIP_FRAMES);
    Replayed {
        model: analyzer.model_name().to_string(),
        by_frame,
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Samples RSS and descriptors every 1,000 frames, between frames.
#[derive(Default)]
struct Sampler {
    samples: Vec<(u64, u64, usize)>,
}

impl Service for Sampler {
    fn alive(&mut self) {}
    fn between_frames(&mut self, pipeline: &mut Pipeline) {
        let frames = pipeline.summary().frames;
        if frames % 1000 == 0 && self.samples.last().is_none_or(|s| s.0 != frames) {
            self.samples.push((frames, rss_bytes(), open_fds()));
        }
    }
}

#[test]
fn a_hundred_thousand_frames_leak_nothing_and_lose_nothing() {
    let frames: u64 = std::env::var("FERD_SOAK_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    assert!(frames >= 3 * WARM_UP / 2, "FERD_SOAK_FRAMES too small");
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let events = dir.path().join("events.jsonl");
    let socket = dir.path().join("events.sock");
    let text = std::fs::read_to_string(root.join("systemd/ferd.toml"))
        .unwrap()
        .replace(
            "output = \"-\"",
            &format!("output = {events:?}\nsocket = {socket:?}"),
        );
    let config = Config::parse(
        &text,
        &root.join("systemd/ferd.toml"),
        &root.join("systemd"),
    )
    .unwrap();
    let analyzer = record(&config);

    let workers = ferd::daemon::open_workers(&config).unwrap();
    let reader = {
        let stream = UnixStream::connect(&socket).unwrap();
        std::thread::spawn(move || BufReader::new(stream).lines().count())
    };
    let (bus, workers) = bus::start(&bus::Stamp::new(), workers, bus::QUEUE_CAPACITY).unwrap();
    let mut pipeline = Pipeline::new(Box::new(analyzer), &config, vec![Box::new(bus)], None);
    let source = Looping {
        source: ferd::source::open(&clip()).unwrap(),
        passes: 0,
        frames: 0,
        limit: frames,
    };
    let mut sampler = Sampler::default();
    let stop = Arc::new(AtomicBool::new(false));
    let summary = ferd::pipeline::run(
        Box::new(source),
        &mut pipeline,
        Pace::Replay,
        &stop,
        &mut sampler,
    )
    .unwrap();
    drop(pipeline);
    let report = workers.join(Duration::from_secs(30));
    assert_eq!(
        (summary.frames, summary.sink_errors, report.lost),
        (frames, 0, 0)
    );

    // Memory and descriptors after warm-up.
    let after: Vec<_> = sampler.samples.iter().filter(|s| s.0 >= WARM_UP).collect();
    let (_, base_rss, base_fds) = *after[0];
    let max_rss = after.iter().map(|s| s.1).max().unwrap();
    eprintln!(
        "soak: {frames} frames; RSS {:.1} MB at {WARM_UP} frames, at most {:.1} MB after; {base_fds} descriptors",
        base_rss as f64 / 1e6,
        max_rss as f64 / 1e6
    );
    assert!(
        max_rss as f64 <= base_rss as f64 * 1.05,
        "RSS grew more than 5% after warm-up: {:?}",
        sampler.samples
    );
    assert!(
        after.iter().all(|s| s.2 == base_fds),
        "descriptors changed: {:?}",
        sampler.samples
    );

    // The events: the socket reader got them all; every loop after the
    // first and before the last yields the same ones; no alert stuck.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reader.join().unwrap(), lines.len());
    let loops = frames.div_ceil(CLIP_FRAMES) as usize;
    let mut per_loop = vec![Vec::new(); loops];
    for e in &lines {
        let frame = e["frame"].as_u64().unwrap();
        per_loop[(frame / CLIP_FRAMES) as usize].push(format!(
            "{} {} {} {} {}",
            frame % CLIP_FRAMES,
            e["type"],
            e["alert"],
            e["reason"],
            e["expression"]
        ));
    }
    assert!(!per_loop[1].is_empty());
    for (i, events) in per_loop.iter().enumerate().take(loops - 1).skip(2) {
        assert_eq!(events, &per_loop[1], "loop {i} differs from loop 1");
    }
    let count = |ty: &str| lines.iter().filter(|e| e["type"] == ty).count();
    assert!(count("alert_raised") >= loops - 1);
    assert_eq!(count("alert_raised"), count("alert_cleared"));
    assert_eq!(count("face_appeared"), count("face_lost"));
}
