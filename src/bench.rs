//! `ferd bench`: the configured pipeline on a recorded clip, timed stage
//! by stage.
//!
//! The pipeline is the one `ferd run` builds from the same config
//! ([`crate::daemon::load_analyzer`], [`Pipeline`]), with no display, no
//! GPIO and events to nowhere, so that what is timed is the analysis
//! itself. Each frame's wall time runs from asking the source for it
//! (decoding and pixel conversion) to the end of [`Pipeline::process`].
//! The first `warmup` frames run but are not counted: tract plans its
//! scratch buffers on first use.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::Config;
use crate::events::box_array;
use crate::pipeline::{FrameTimes, Pipeline};
use crate::vision::follow::Search;

/// What `ferd bench` was asked for.
#[derive(Debug, Clone, Default)]
pub struct BenchOptions {
    /// The configuration file.
    pub config: PathBuf,
    /// The clip (or image, or folder of images).
    pub source: PathBuf,
    /// Stop after this many counted frames (default: the whole clip).
    pub frames: Option<u64>,
    /// Frames run before counting starts.
    pub warmup: u64,
    /// Write each counted frame's face boxes and their most likely
    /// expressions (this frame's own, unsmoothed) here, one JSON line per
    /// frame.
    pub faces_out: Option<PathBuf>,
}

/// Median, 95th percentile and maximum of one measured quantity, in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The 95th percentile (nearest rank).
    pub p95: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `samples` (sorted in place); all zero when empty.
    pub fn of(samples: &mut [Duration]) -> Spread {
        if samples.is_empty() {
            return Spread::default();
        }
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let n = samples.len();
        // Nearest rank: the smallest sample at or above the share.
        let rank = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Spread {
            median: ms(rank(0.5)),
            p95: ms(rank(0.95)),
            max: ms(samples[n - 1]),
        }
    }

    fn json(&self) -> serde_json::Value {
        let r = |v: f64| (v * 1e3).round() / 1e3;
        serde_json::json!({"median": r(self.median), "p95": r(self.p95), "max": r(self.max)})
    }
}

/// The stages reported, in pipeline order.
pub const STAGES: [&str; 6] = [
    "decode",
    "detect",
    "landmarks",
    "classify",
    "track_rules",
    "sinks",
];

/// One frame's time per stage, in [`STAGES`] order.
fn split(decode: Duration, t: &FrameTimes) -> [Duration; 6] {
    [
        decode,
        t.analysis.detect,
        t.analysis.landmarks,
        t.analysis.classify,
        t.track_rules,
        t.sinks,
    ]
}

/// What a bench run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// The clip.
    pub source: String,
    /// Frames counted.
    pub frames: u64,
    /// Faces seen per counted frame, on average.
    pub faces_per_frame: f64,
    /// Counted frames on which the detector searched the whole frame (the
    /// others: around followed faces, or not at all).
    pub whole_frame_searches: u64,
    /// Whole-frame time: source to the end of the pipeline.
    pub frame: Spread,
    /// Per stage, in [`STAGES`] order.
    pub stages: [Spread; 6],
    /// Frames per second over the counted frames (their count over the sum
    /// of their times).
    pub fps: f64,
}

impl BenchReport {
    /// The report as one JSON object (`frame_ms.median` is the median
    /// whole-frame time).
    pub fn json(&self) -> serde_json::Value {
        let stages: serde_json::Map<String, serde_json::Value> = STAGES
            .iter()
            .zip(&self.stages)
            .map(|(name, s)| (name.to_string(), s.json()))
            .collect();
        serde_json::json!({
            "tool": "ferd",
            "source": self.source,
            "frames": self.frames,
            "faces_per_frame": (self.faces_per_frame * 1e3).round() / 1e3,
            "whole_frame_searches": self.whole_frame_searches,
            "threads": 1,
            "frame_ms": self.frame.json(),
            "stages": stages,
            "fps": (self.fps * 10.0).round() / 10.0,
        })
    }

    /// The report as text; its last line is `fps: N.N`.
    pub fn text(&self) -> String {
        let mut s = format!(
            "source: {}\nframes: {} ({:.2} faces per frame; the whole frame searched on {})\n{:<12} {:>9} {:>9} {:>9}\n",
            self.source,
            self.frames,
            self.faces_per_frame,
            self.whole_frame_searches,
            "ms",
            "median",
            "p95",
            "max"
        );
        let row = |name: &str, v: &Spread| {
            format!(
                "{name:<12} {:>9.3} {:>9.3} {:>9.3}\n",
                v.median, v.p95, v.max
            )
        };
        for (name, v) in STAGES.iter().zip(&self.stages) {
            s += &row(name, v);
        }
        s += &row("frame", &self.frame);
        s += &format!("fps: {:.1}\n", self.fps);
        s
    }
}

/// Runs the bench. Frames that fail to decode or analyse end it with an
/// error: a benchmark of a pipeline that skips frames measures nothing.
pub fn bench(options: &BenchOptions) -> Result<BenchReport> {
    let config = Config::load(&options.config)?;
    let analyzer = crate::daemon::load_analyzer(&config)?;
    let mut source = crate::source::open(&options.source)?;
    let mut pipeline = Pipeline::new(Box::new(analyzer), &config, Vec::new(), None);
    let mut faces_out = match &options.faces_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("--faces-out {}", p.display()))?,
        )),
        None => None,
    };
    let limit = options.frames.unwrap_or(u64::MAX);
    let mut frames: Vec<Duration> = Vec::new();
    let mut stages: [Vec<Duration>; 6] = Default::default();
    let (mut seen, mut faces, mut whole) = (0u64, 0u64, 0u64);
    while (frames.len() as u64) < limit {
        let began = Instant::now();
        let Some(frame) = source.next_frame() else {
            break;
        };
        let frame = frame?;
        let decode = began.elapsed();
        if !pipeline.process(&frame) {
            anyhow::bail!(
                "{}: frame {} could not be analysed (see the log)",
                options.source.display(),
                frame.sequence
            );
        }
        let took = began.elapsed();
        seen += 1;
        if seen <= options.warmup {
            continue;
        }
        let observations = pipeline.observations();
        if let Some(out) = &mut faces_out {
            let boxes: Vec<[f32; 4]> = observations
                .iter()
                .map(|o| box_array(&o.face.bbox))
                .collect();
            let expressions: Vec<&str> = observations
                .iter()
                .map(|o| o.probs.top().0.name())
                .collect();
            let index = seen - 1;
            writeln!(
                out,
                "{}",
                serde_json::json!({"frame": index, "boxes": boxes, "expressions": expressions})
            )?;
        }
        faces += observations.len() as u64;
        let times = pipeline.times();
        whole += u64::from(times.analysis.search == Some(Search::Whole));
        frames.push(took);
        for (all, t) in stages.iter_mut().zip(split(decode, &times)) {
            all.push(t);
        }
    }
    if let Some(mut out) = faces_out {
        out.flush()?;
    }
    report(&options.source, &mut frames, &mut stages, faces, whole)
}

fn report(
    source: &Path,
    frames: &mut [Duration],
    stages: &mut [Vec<Duration>; 6],
    faces: u64,
    whole_frame_searches: u64,
) -> Result<BenchReport> {
    let n = frames.len() as u64;
    if n == 0 {
        anyhow::bail!(
            "{}: no frame left to count after the warm-up",
            source.display()
        );
    }
    let total: Duration = frames.iter().sum();
    Ok(BenchReport {
        source: source.display().to_string(),
        frames: n,
        faces_per_frame: faces as f64 / n as f64,
        whole_frame_searches,
        frame: Spread::of(frames),
        stages: stages.each_mut().map(|s| Spread::of(s)),
        fps: n as f64 / total.as_secs_f64().max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn spread_is_nearest_rank() {
        let mut v = ms(&[5, 1, 4, 2, 3]);
        let s = Spread::of(&mut v);
        assert_eq!((s.median, s.p95, s.max), (3.0, 5.0, 5.0));
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Spread::of(&mut v);
        assert_eq!((s.median, s.p95, s.max), (50.0, 95.0, 100.0));
        assert_eq!(Spread::of(&mut []), Spread::default());
    }

    #[test]
    fn report_counts_fps_over_the_counted_frames() {
        let mut frames = ms(&[10, 10, 20, 40]);
        let mut stages: [Vec<Duration>; 6] = Default::default();
        stages[1] = ms(&[8, 8, 9, 30]);
        let r = report(Path::new("clip.y4m"), &mut frames, &mut stages, 6, 3).unwrap();
        assert_eq!(r.frames, 4);
        assert_eq!(r.faces_per_frame, 1.5);
        assert_eq!(r.whole_frame_searches, 3);
        assert!((r.fps - 50.0).abs() < 1e-9, "{}", r.fps);
        assert_eq!(r.stages[1].max, 30.0);
        assert!(r.text().ends_with("fps: 50.0\n"), "{}", r.text());
        let j = r.json();
        assert_eq!(j["frame_ms"]["median"], 10.0);
        assert_eq!(j["whole_frame_searches"], 3);
        assert_eq!(j["stages"]["detect"]["p95"], 30.0);
        assert!(report(Path::new("x"), &mut [], &mut stages, 0, 0).is_err());
    }
}
