//! The one-shot commands: `detect`, `eval`, `bench`, `check-config` and
//! `cameras`.
//! Each writes its report to stdout and returns whether everything it was
//! given could be processed (the exit status).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::events::{box_array, round, ProbMap};
use crate::source::{self, FrameSource, ImageSource};

/// The config of `--config`, or the built-in defaults (models looked up
/// from the current directory, see [`Config::find_model`]).
fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::defaults(Path::new(".")),
    })
}

/// `ferd check-config`: validates a config, the model manifests it names
/// and its display spec, without loading networks or touching hardware.
pub fn check_config(file: &Path) -> Result<bool> {
    let config = Config::load(file)?;
    // Model manifests are part of the configuration's promise: check they
    // parse and name files that exist, without loading the networks.
    let mut manifests = vec![config.detector_model()?, config.classifier_model()?];
    if config.needs_landmarks() {
        let [mesh, iris, geometry] = config.landmark_models()?;
        crate::vision::landmarks::Geometry::load(&geometry)?;
        manifests.extend([mesh, iris]);
    }
    for path in manifests {
        let manifest = crate::vision::Manifest::load(&path)?;
        let file = path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&manifest.model.file);
        let meta = std::fs::metadata(&file).and_then(|m| {
            source::check_regular_file(&m, crate::vision::model::MAX_MODEL_FILE_BYTES)
        });
        if let Err(e) = meta {
            bail!("{}: model file {}: {e}", path.display(), file.display());
        }
    }
    if let Some(spec) = &config.display.output {
        crate::daemon::parse_display(spec)?;
    }
    if let Some(mqtt) = &config.mqtt {
        check_mqtt(&config, mqtt)?;
    }
    println!("{}: ok ({} rules)", file.display(), config.rules.len());
    Ok(true)
}

#[cfg(feature = "mqtt")]
fn check_mqtt(config: &Config, mqtt: &crate::config::MqttConfig) -> Result<()> {
    let id = crate::sink::mqtt::MqttSink::check(config, mqtt)?;
    println!("mqtt: {} as ferd/{id}", mqtt.url);
    Ok(())
}

#[cfg(not(feature = "mqtt"))]
fn check_mqtt(_: &Config, _: &crate::config::MqttConfig) -> Result<()> {
    bail!("this ferd was built without the `mqtt` feature, but the config has an [mqtt] table")
}

/// `ferd detect`: faces and expressions of images, as text or JSON lines.
pub fn detect(inputs: &[PathBuf], json: bool, config: Option<&Path>) -> Result<bool> {
    let config = load_config(config)?;
    let analyzer = crate::daemon::load_analyzer(&config)?;
    let mut failed = 0;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for input in inputs {
        let mut src: Box<dyn FrameSource> = if input.is_dir() {
            match ImageSource::from_dir(input) {
                Ok(s) => Box::new(s),
                Err(e) => {
                    log::error!("{e}");
                    failed += 1;
                    continue;
                }
            }
        } else {
            Box::new(ImageSource::from_paths(vec![input.clone()]))
        };
        while let Some(item) = src.next_frame() {
            let frame = match item {
                Ok(f) => f,
                Err(e) => {
                    log::error!("{e}");
                    if json {
                        let path = match &e {
                            source::SourceError::Io { path, .. }
                            | source::SourceError::Format { path, .. } => path,
                        };
                        let line = serde_json::json!({"image": path, "error": e.to_string()});
                        writeln!(out, "{line}")?;
                    }
                    failed += 1;
                    continue;
                }
            };
            let observations = analyzer
                .analyze(&frame)
                .with_context(|| format!("analysing {}", frame.origin))?;
            if json {
                let faces: Vec<_> = observations
                    .iter()
                    .map(|o| {
                        serde_json::json!({
                            "box": box_array(&o.face.bbox),
                            "score": round(o.face.score, 1e4),
                            "expression": o.probs.top().0,
                            "probs": ProbMap(o.probs),
                        })
                    })
                    .collect();
                let line = serde_json::json!({"image": frame.origin, "faces": faces});
                writeln!(out, "{line}")?;
            } else {
                writeln!(
                    out,
                    "{}: {} face{} ({}×{})",
                    frame.origin,
                    observations.len(),
                    if observations.len() == 1 { "" } else { "s" },
                    frame.width,
                    frame.height
                )?;
                for (i, o) in observations.iter().enumerate() {
                    let [x, y, w, h] = box_array(&o.face.bbox);
                    let (e, p) = o.probs.top();
                    let mut ranked: Vec<_> = crate::expression::Expression::ALL
                        .iter()
                        .map(|&e| (e, o.probs.get(e)))
                        .collect();
                    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
                    let rest: Vec<String> = ranked[1..4]
                        .iter()
                        .map(|(e, p)| format!("{e} {:.0}%", p * 100.0))
                        .collect();
                    writeln!(
                        out,
                        "  face {}: box x={x} y={y} w={w} h={h} score {:.2}: {e} {:.0}% ({})",
                        i + 1,
                        o.face.score,
                        p * 100.0,
                        rest.join(", ")
                    )?;
                }
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        log::error!("{failed} input(s) could not be read");
        return Ok(false);
    }
    Ok(true)
}

/// `ferd eval`: the expression model's accuracy on a labelled folder;
/// with `scenes` also on the same faces found in scenes by the detector
/// (and with `landmarks` cropped from their face mesh too).
pub fn eval(data: &Path, model: &Path, json: bool, scenes: bool, landmarks: bool) -> Result<bool> {
    use std::io::IsTerminal;
    let config = Config::defaults(Path::new("."));
    let model = &config.find_model("--model", model)?;
    let classifier = crate::vision::Classifier::load(model, &config.classifier)?;
    let (detector, landmarker) = if scenes {
        let manifest = config.detector_model()?;
        let mut detector = crate::vision::Detector::load(&manifest, &config.detector)?;
        // Faces followed between whole-frame searches are cropped from the
        // box found around them: measured as well.
        detector.load_around(&manifest, &config.detector)?;
        let landmarker = if landmarks {
            let [mesh, iris, geometry] = config.landmark_models()?;
            Some(crate::vision::landmarks::Landmarker::load(
                &mesh, &iris, &geometry,
            )?)
        } else {
            None
        };
        (Some(detector), landmarker)
    } else {
        (None, None)
    };
    let samples = crate::eval::list_dataset(data)?;
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(samples.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (result, scene_result) = match &detector {
        Some(d) => {
            let r = crate::eval::evaluate_scenes(
                &classifier,
                d,
                landmarker.as_ref(),
                &samples,
                || bar.inc(1),
            )?;
            (r.bare.clone(), Some(r))
        }
        None => (
            crate::eval::evaluate(&classifier, &samples, || bar.inc(1))?,
            None,
        ),
    };
    bar.finish_and_clear();
    let name = &classifier.model().manifest.model.name;
    let mut out = std::io::stdout().lock();
    // The JSON summary comes first so that the last line is always the
    // `accuracy:` line scripts look for.
    if json {
        let summary = match &scene_result {
            Some(r) => r.summary(name, data),
            None => result.summary(name, data),
        };
        writeln!(out, "{}", serde_json::to_string(&summary)?)?;
    }
    writeln!(out, "model: {name} ({})", model.display())?;
    writeln!(
        out,
        "data: {} ({} images, {} skipped)",
        data.display(),
        result.confusion.total(),
        result.skipped.len()
    )?;
    if let Some(r) = &scene_result {
        write!(out, "{}", r.report())?;
    }
    write!(out, "{}", result.confusion.report())?;
    Ok(result.skipped.is_empty())
}

/// `ferd bench`: the stage-by-stage timing of [`crate::bench::bench`], as
/// text or one JSON object.
pub fn bench(options: &crate::bench::BenchOptions, json: bool) -> Result<bool> {
    let report = crate::bench::bench(options)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", report.json())?;
    } else {
        write!(out, "{}", report.text())?;
    }
    Ok(true)
}

/// `ferd cameras`: V4L2 capture devices with their formats and sizes.
#[cfg(feature = "v4l2")]
pub fn cameras() -> Result<bool> {
    let found = crate::source::v4l2::list_cameras();
    if found.is_empty() {
        println!("no /dev/video* devices");
    }
    for c in found {
        println!("{c}");
    }
    Ok(true)
}

#[cfg(not(feature = "v4l2"))]
pub fn cameras() -> Result<bool> {
    bail!("this ferd was built without the `v4l2` feature")
}

/// The exit statuses of `ferd` (README, "Exit status"). A service manager
/// can tell from them whether a restart may help: a configuration or
/// model problem stays until someone edits a file, a missing device may
/// come back.
pub mod exit {
    /// Everything given was processed.
    pub const OK: u8 = 0;
    /// A run failed, or some inputs could not be processed, or events were
    /// lost.
    pub const FAILURE: u8 = 1;
    /// The command line is wrong (clap's own status).
    pub const USAGE: u8 = 2;
    /// The configuration is invalid: file, line and key are in the message.
    pub const CONFIG: u8 = 3;
    /// A model cannot be used: missing, wrong checksum, unreadable by tract.
    pub const MODEL: u8 = 4;
    /// An input or output cannot be opened at start: the camera or input
    /// file, a GPIO chip or line, a display, the event socket or output.
    pub const DEVICE: u8 = 5;
}

/// The exit status for an error: the first error in its chain that says
/// what kind of problem it is ([`exit`]), else [`exit::FAILURE`].
pub fn exit_status(error: &anyhow::Error) -> u8 {
    use crate::daemon::DaemonError as D;
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<D>() {
            return match e {
                D::Config(_) | D::DisplaySpec { .. } | D::Unsupported(_) | D::NoInput(_) => {
                    exit::CONFIG
                }
                D::Model(_) => exit::MODEL,
                D::Source(_) | D::Sink(_) | D::Socket(_) | D::Display(_) | D::Gpio(_) => {
                    exit::DEVICE
                }
                #[cfg(feature = "mqtt")]
                D::Mqtt(_) => exit::DEVICE,
                D::Run(_) | D::Setup { .. } => exit::FAILURE,
            };
        }
        if cause.is::<crate::config::ConfigError>() {
            return exit::CONFIG;
        }
        if cause.is::<crate::vision::ModelError>() {
            return exit::MODEL;
        }
        if cause.is::<source::SourceError>() {
            return exit::DEVICE;
        }
    }
    exit::FAILURE
}

/// `ferd run`: the daemon ([`crate::daemon::run`]); false if events were
/// lost.
pub fn run(options: &crate::daemon::RunOptions) -> Result<bool> {
    let summary = crate::daemon::run(options)?;
    if summary.sink_errors > 0 {
        log::error!("{} events could not be written", summary.sink_errors);
        return Ok(false);
    }
    Ok(true)
}
