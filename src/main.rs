//! The `ferd` command line: a thin layer over the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use ferd::config::Config;
use ferd::events::{box_array, round, ProbMap};
use ferd::sink::png::PngDisplay;
use ferd::sink::{Display, EventSink, JsonLines};
use ferd::source::{self, FrameSource, ImageSource};
use ferd::vision::Analyzer;

#[derive(Parser)]
#[command(
    name = "ferd",
    version,
    about = "Facial-expression recognition daemon for small Linux boards",
    after_help = "Examples:\n  ferd detect photo.jpg\n  ferd run --config /etc/ferd/ferd.toml\n  ferd check-config /etc/ferd/ferd.toml\n\nLog level: RUST_LOG=debug ferd ..."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Find faces in images and classify their expressions.
    #[command(
        after_help = "Examples:\n  ferd detect photo.jpg\n  ferd detect --json shots/ > faces.jsonl\n  ferd detect --config ferd.toml a.png b.png"
    )]
    Detect {
        /// Image files or directories of images (JPEG, PNG).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// One JSON object per image per line.
        #[arg(long)]
        json: bool,
        /// Config file for model paths and thresholds (default: built-in
        /// defaults with models from ./models).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the pipeline: source → faces → expressions → tracks → rules → events.
    #[command(
        after_help = "Examples:\n  ferd run --config systemd/ferd.toml --source examples/demo.y4m --display png:demo.png\n  ferd run --config ferd.toml --source frames/ --realtime\n\nEvents go to the [events] output of the config (stdout by default), one JSON object per line."
    )]
    Run {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Input: an image, a directory of images or a .y4m clip (overrides
        /// [source] path).
        #[arg(long)]
        source: Option<PathBuf>,
        /// Status display: png:PATH, fb:/dev/fbN or ssd1306:/dev/i2c-N[@0x3c]
        /// (overrides [display] output; repeat to show on several).
        #[arg(long)]
        display: Vec<String>,
        /// Replay recorded video at its own frame rate, dropping frames the
        /// analysis cannot keep up with, as a live camera would.
        #[arg(long)]
        realtime: bool,
    },
    /// Measure the expression model's accuracy on a labelled folder
    /// (Kaggle layout: DIR/angry/*.jpg ... DIR/neutral/*.jpg).
    #[command(
        after_help = "Examples:\n  ferd eval --data ../shared/datasets/fer2013/val\n  ferd eval --data val/ --model models/expression.toml --json\n\nThe last line of the text report is `accuracy: 0.XXXX`."
    )]
    Eval {
        /// The dataset folder.
        #[arg(long)]
        data: PathBuf,
        /// Manifest of the expression model (default models/expression.toml).
        #[arg(long, default_value = "models/expression.toml")]
        model: PathBuf,
        /// Also print a JSON summary (as the first line).
        #[arg(long)]
        json: bool,
    },
    /// List V4L2 capture devices with their formats and frame sizes.
    Cameras,
    /// Validate a configuration file without touching hardware; exit 0 if valid.
    #[command(
        name = "check-config",
        after_help = "Example:\n  ferd check-config /etc/ferd/ferd.toml && echo ok"
    )]
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if ferd::systemd::stderr_is_journal() {
        // The journal timestamps lines itself and ranks them by the prefix.
        logger.format(|f, record| {
            writeln!(
                f,
                "<{}>{}: {}",
                ferd::systemd::syslog_priority(record.level()),
                record.target(),
                record.args()
            )
        });
    } else {
        logger.format_timestamp(None);
    }
    logger.init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Detect {
            inputs,
            json,
            config,
        } => detect(&inputs, json, config.as_deref()),
        Command::Run {
            config,
            source,
            display,
            realtime,
        } => run(&config, source, display, realtime),
        Command::CheckConfig { file } => check_config(&file),
        Command::Eval { data, model, json } => eval(&data, &model, json),
        Command::Cameras => cameras(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::defaults(Path::new(".")),
    })
}

fn check_config(file: &Path) -> Result<ExitCode> {
    let config = Config::load(file)?;
    // Model manifests are part of the configuration's promise: check they
    // parse and name files that exist, without loading the networks.
    for m in [&config.detector.model, &config.classifier.model] {
        let path = config.resolve(m);
        let manifest = ferd::vision::Manifest::load(&path)?;
        let file = path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&manifest.model.file);
        if !file.is_file() {
            bail!(
                "{}: model file {} does not exist",
                path.display(),
                file.display()
            );
        }
    }
    if let Some(spec) = &config.display.output {
        parse_display(spec)?;
    }
    println!("{}: ok ({} rules)", file.display(), config.rules.len());
    Ok(ExitCode::SUCCESS)
}

fn detect(inputs: &[PathBuf], json: bool, config: Option<&Path>) -> Result<ExitCode> {
    let config = load_config(config)?;
    let analyzer = Analyzer::load(&config)?;
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
                    let mut ranked: Vec<_> = ferd::expression::Expression::ALL
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
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// A display spec: `png:PATH`, `fb:/dev/fbN` or `ssd1306:/dev/i2c-N[@ADDR]`.
enum DisplaySpec<'a> {
    Png(&'a str),
    Framebuffer(&'a str),
    Ssd1306(&'a str),
}

/// Parses a `--display` spec without touching any device.
fn parse_display(spec: &str) -> Result<DisplaySpec<'_>> {
    match spec.split_once(':') {
        Some(("png", path)) if !path.is_empty() => Ok(DisplaySpec::Png(path)),
        Some(("fb", path)) if !path.is_empty() => Ok(DisplaySpec::Framebuffer(path)),
        Some(("ssd1306", target)) => {
            check_ssd1306(target)?;
            Ok(DisplaySpec::Ssd1306(target))
        }
        _ => bail!(
            "unknown display {spec:?}: expected png:PATH, fb:/dev/fbN or ssd1306:/dev/i2c-N[@0x3c]"
        ),
    }
}

#[cfg(feature = "ssd1306")]
fn check_ssd1306(target: &str) -> Result<()> {
    ferd::sink::ssd1306::parse_target(target)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("display ssd1306:{target}: {e}"))
}

#[cfg(not(feature = "ssd1306"))]
fn check_ssd1306(_target: &str) -> Result<()> {
    bail!("this ferd was built without the `ssd1306` feature")
}

#[cfg(feature = "ssd1306")]
fn open_ssd1306(target: &str) -> Result<Box<dyn Display + Send>> {
    let (path, address) = ferd::sink::ssd1306::parse_target(target).map_err(anyhow::Error::msg)?;
    Ok(Box::new(ferd::sink::ssd1306::open(
        Path::new(path),
        address,
    )?))
}

#[cfg(not(feature = "ssd1306"))]
fn open_ssd1306(_target: &str) -> Result<Box<dyn Display + Send>> {
    bail!("this ferd was built without the `ssd1306` feature")
}

fn open_display(spec: &str) -> Result<Box<dyn Display + Send>> {
    Ok(match parse_display(spec)? {
        DisplaySpec::Png(path) => Box::new(PngDisplay::new(PathBuf::from(path))),
        DisplaySpec::Framebuffer(path) => {
            Box::new(ferd::sink::framebuffer::FbDisplay::open(Path::new(path))?)
        }
        DisplaySpec::Ssd1306(target) => open_ssd1306(target)?,
    })
}

fn run(
    config_path: &Path,
    source: Option<PathBuf>,
    display: Vec<String>,
    realtime: bool,
) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let specs: Vec<&str> = if display.is_empty() {
        config.display.output.iter().map(String::as_str).collect()
    } else {
        display.iter().map(String::as_str).collect()
    };
    let mut displays = specs
        .into_iter()
        .map(open_display)
        .collect::<Result<Vec<_>>>()?;
    let display: Option<Box<dyn Display + Send>> = match displays.len() {
        0 => None,
        1 => displays.pop(),
        _ => Some(Box::new(ferd::sink::Fanout(displays))),
    };
    let sink: Box<dyn EventSink + Send> = if config.events.output == "-" {
        Box::new(JsonLines::stdout())
    } else {
        Box::new(JsonLines::append(
            config.resolve(Path::new(&config.events.output)),
        )?)
    };
    let analyzer = Analyzer::load(&config)?;
    let (src, source_name) = open_source(&config, config_path, source)?;
    log::info!("source: {}", src.describe());

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    // Outputs before the pipeline starts: a wrong chip or line is a start-up
    // error, and the driver (dropped on every exit path, panics included)
    // leaves every line inactive.
    let gpio_state = Arc::new(std::sync::Mutex::new(ferd::sink::gpio::GpioState::default()));
    let _gpio = open_gpio(&config, &gpio_state)?;
    let mut pipeline = ferd::pipeline::Pipeline::new(analyzer, &config, vec![sink], display);
    let mut notifier = ferd::systemd::Notifier::from_env();
    if let Some(w) = notifier.watchdog() {
        log::info!("watchdog: {} s", w.as_secs_f64());
    }
    notifier.ready(&format!("analysing {source_name}"));
    let summary = ferd::pipeline::run(
        src,
        &mut pipeline,
        realtime || config.source.realtime,
        &stop,
        &mut |p, progress| {
            // The watchdog is fed while frames are analysed and while a lost
            // camera is being reopened; the heartbeat line only for frames.
            notifier.alive();
            let mut s = gpio_state.lock().unwrap_or_else(|e| e.into_inner());
            s.alerts.clear();
            s.alerts.extend(p.active_alerts().map(str::to_string));
            if progress == ferd::pipeline::Progress::Frame {
                s.last_frame = Some(std::time::Instant::now());
            }
        },
    );
    notifier.stopping();
    log::info!(
        "{} frames analysed, {} skipped, {} dropped, {} faces, {} tracks",
        summary.frames,
        summary.skipped,
        summary.dropped,
        summary.faces,
        summary.tracks
    );
    if summary.sink_errors > 0 {
        log::error!("{} events could not be written", summary.sink_errors);
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn eval(data: &Path, model: &Path, json: bool) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let config = Config::defaults(Path::new("."));
    let classifier = ferd::vision::Classifier::load(model, &config.classifier)?;
    let samples = ferd::eval::list_dataset(data)?;
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(samples.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let result = ferd::eval::evaluate(&classifier, &samples, || bar.inc(1))?;
    bar.finish_and_clear();
    let name = &classifier.model().manifest.model.name;
    let mut out = std::io::stdout().lock();
    // The JSON summary comes first so that the last line is always the
    // `accuracy:` line scripts look for.
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&result.summary(name, data))?
        )?;
    }
    writeln!(out, "model: {name} ({})", model.display())?;
    writeln!(
        out,
        "data: {} ({} images, {} skipped)",
        data.display(),
        result.confusion.total(),
        result.skipped.len()
    )?;
    write!(out, "{}", result.confusion.report())?;
    Ok(if result.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(feature = "gpio")]
fn open_gpio(
    config: &Config,
    state: &Arc<std::sync::Mutex<ferd::sink::gpio::GpioState>>,
) -> Result<Option<ferd::sink::gpio::GpioDriver>> {
    if config.gpio.is_empty() {
        return Ok(None);
    }
    let outputs = ferd::sink::gpio::open(&config.gpio)?;
    let driver = ferd::sink::gpio::GpioDriver::spawn(outputs, Arc::clone(state))
        .context("starting the gpio thread")?;
    Ok(Some(driver))
}

#[cfg(not(feature = "gpio"))]
fn open_gpio(
    config: &Config,
    _state: &Arc<std::sync::Mutex<ferd::sink::gpio::GpioState>>,
) -> Result<Option<()>> {
    if !config.gpio.is_empty() {
        bail!(
            "this ferd was built without the `gpio` feature, but the config has [[gpio]] outputs"
        );
    }
    Ok(None)
}

#[cfg(feature = "v4l2")]
fn cameras() -> Result<ExitCode> {
    let found = ferd::source::v4l2::list_cameras();
    if found.is_empty() {
        println!("no /dev/video* devices");
    }
    for c in found {
        println!("{c}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "v4l2"))]
fn cameras() -> Result<ExitCode> {
    bail!("this ferd was built without the `v4l2` feature")
}

/// The frame source: `--source`, else `[source] path`, else `[camera]`.
fn open_source(
    config: &Config,
    config_path: &Path,
    source: Option<PathBuf>,
) -> Result<(Box<dyn FrameSource + Send>, String)> {
    if let Some(p) = source.or_else(|| config.source.path.as_ref().map(|p| config.resolve(p))) {
        let src = source::open(&p)?;
        return Ok((src, p.display().to_string()));
    }
    match &config.camera {
        Some(cam) => open_camera(cam),
        None => bail!(
            "no input: give --source, or set [source] path or a [camera] in {}",
            config_path.display()
        ),
    }
}

#[cfg(feature = "v4l2")]
fn open_camera(cam: &ferd::config::CameraConfig) -> Result<(Box<dyn FrameSource + Send>, String)> {
    let src = ferd::source::v4l2::V4l2Source::open_camera(cam)?;
    Ok((Box::new(src), cam.device.display().to_string()))
}

#[cfg(not(feature = "v4l2"))]
fn open_camera(_cam: &ferd::config::CameraConfig) -> Result<(Box<dyn FrameSource + Send>, String)> {
    bail!("this ferd was built without the `v4l2` feature, but the config has a [camera]")
}
