//! The daemon: wiring a configuration into a running pipeline.
//!
//! Everything `ferd run` does lives here, so that every way of running the
//! pipeline (the command line, a benchmark, a config reload) drives the
//! same code: the source, sink, display and GPIO factories, signals,
//! systemd notification and [`pipeline::run`].
//!
//! Start-up order matters for safety: outputs are opened before the
//! pipeline runs, so a wrong GPIO chip or display is a start-up error, and
//! the GPIO driver is dropped last, after [`Pipeline::finish`] has cleared
//! every alert, on every exit path.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::pipeline::{self, Pace, Pipeline, RunError, Service, Summary};
use crate::sink::bus::{self, Stamp, Worker};
use crate::sink::display::DisplayError;
use crate::sink::gpio::{GpioError, GpioSink};
use crate::sink::png::PngDisplay;
use crate::sink::{Display, EventSink, Fanout, JsonLines, SinkError};
use crate::source::{self, FrameSource, SourceError};
use crate::vision::landmarks::Landmarker;
use crate::vision::{Analyzer, ModelError};

/// Why the daemon could not start or ended early. Each variant names its
/// file or device through the error it wraps.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration is invalid or a model cannot be found.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A model could not be loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The input could not be opened.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The event output could not be opened.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The event socket could not be set up.
    #[error(transparent)]
    Socket(#[from] crate::sink::socket::SocketError),
    /// The MQTT output could not be set up.
    #[cfg(feature = "mqtt")]
    #[error(transparent)]
    Mqtt(#[from] crate::sink::mqtt::MqttError),
    /// A display could not be opened.
    #[error(transparent)]
    Display(#[from] DisplayError),
    /// A GPIO line could not be requested.
    #[error(transparent)]
    Gpio(#[from] GpioError),
    /// The run ended on an error (outputs were made safe first).
    #[error(transparent)]
    Run(#[from] RunError),
    /// A display spec is malformed.
    #[error("display {spec:?}: {message}")]
    DisplaySpec {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        message: String,
    },
    /// The config asks for something this build leaves out.
    #[error("{0}")]
    Unsupported(String),
    /// Neither `--source`, `[source] path` nor `[camera]`.
    #[error("no input: give --source, or set [source] path or a [camera] in {0}")]
    NoInput(PathBuf),
    /// A thread or signal handler could not be set up.
    #[error("{what}: {error}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
}

/// What `ferd run` was asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The configuration file.
    pub config: PathBuf,
    /// `--source`: overrides `[source] path` and `[camera]`.
    pub source: Option<PathBuf>,
    /// `--display` specs: override `[display] output`.
    pub displays: Vec<String>,
    /// `--realtime`: replay files at their own frame rate.
    pub realtime: bool,
}

/// A display spec: `png:PATH`, `fb:/dev/fbN` or `ssd1306:/dev/i2c-N[@ADDR]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplaySpec<'a> {
    /// A PNG file, rewritten when the picture changes.
    Png(&'a str),
    /// A Linux framebuffer device.
    Framebuffer(&'a str),
    /// An SSD1306 panel: bus and optional address.
    Ssd1306(&'a str),
}

/// Parses a display spec without touching any device.
pub fn parse_display(spec: &str) -> Result<DisplaySpec<'_>, DaemonError> {
    let bad = |message: String| DaemonError::DisplaySpec {
        spec: spec.to_string(),
        message,
    };
    match spec.split_once(':') {
        Some(("png", path)) if !path.is_empty() => Ok(DisplaySpec::Png(path)),
        Some(("fb", path)) if !path.is_empty() => Ok(DisplaySpec::Framebuffer(path)),
        Some(("ssd1306", target)) => {
            check_ssd1306(target).map_err(bad)?;
            Ok(DisplaySpec::Ssd1306(target))
        }
        _ => Err(bad(
            "unknown display: expected png:PATH, fb:/dev/fbN or ssd1306:/dev/i2c-N[@0x3c]".into(),
        )),
    }
}

#[cfg(feature = "ssd1306")]
fn check_ssd1306(target: &str) -> Result<(), String> {
    crate::sink::ssd1306::parse_target(target).map(|_| ())
}

#[cfg(not(feature = "ssd1306"))]
fn check_ssd1306(_target: &str) -> Result<(), String> {
    Err("this ferd was built without the `ssd1306` feature".into())
}

/// Opens the display a spec names.
pub fn open_display(spec: &str) -> Result<Box<dyn Display + Send>, DaemonError> {
    Ok(match parse_display(spec)? {
        DisplaySpec::Png(path) => Box::new(PngDisplay::new(PathBuf::from(path))),
        DisplaySpec::Framebuffer(path) => {
            Box::new(crate::sink::framebuffer::FbDisplay::open(Path::new(path))?)
        }
        DisplaySpec::Ssd1306(target) => open_ssd1306(target)?,
    })
}

#[cfg(feature = "ssd1306")]
fn open_ssd1306(target: &str) -> Result<Box<dyn Display + Send>, DaemonError> {
    let (path, address) =
        crate::sink::ssd1306::parse_target(target).map_err(|message| DaemonError::DisplaySpec {
            spec: format!("ssd1306:{target}"),
            message,
        })?;
    Ok(Box::new(crate::sink::ssd1306::open(
        Path::new(path),
        address,
    )?))
}

#[cfg(not(feature = "ssd1306"))]
fn open_ssd1306(_target: &str) -> Result<Box<dyn Display + Send>, DaemonError> {
    Err(DaemonError::Unsupported(
        "this ferd was built without the `ssd1306` feature".into(),
    ))
}

/// The displays of a run: `specs` if any, else `[display] output`; several
/// show the same screen.
pub fn open_displays(
    config: &Config,
    specs: &[String],
) -> Result<Option<Box<dyn Display + Send>>, DaemonError> {
    let specs: Vec<&str> = if specs.is_empty() {
        config.display.output.iter().map(String::as_str).collect()
    } else {
        specs.iter().map(String::as_str).collect()
    };
    let mut displays = specs
        .into_iter()
        .map(open_display)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match displays.len() {
        0 => None,
        1 => displays.pop(),
        _ => Some(Box::new(Fanout(displays))),
    })
}

/// The sinks that run on their own threads behind the event bus: the
/// JSON-lines output of `[events] output`, and those configured.
pub fn open_workers(config: &Config) -> Result<Vec<bus::Named>, DaemonError> {
    let output: Box<dyn Worker> = if config.events.output == "-" {
        Box::new(JsonLines::stdout())
    } else {
        Box::new(JsonLines::append(
            config.resolve(Path::new(&config.events.output)),
        )?)
    };
    let mut workers = vec![("output", output)];
    if let Some(path) = &config.events.socket {
        let path = config.resolve(path);
        let socket =
            crate::sink::socket::SocketSink::bind(&path, config.events.socket_group.as_deref())?;
        log::info!("events on socket {}", path.display());
        workers.push(("socket", Box::new(socket)));
    }
    if let Some(mqtt) = &config.mqtt {
        workers.push(("mqtt", open_mqtt(config, mqtt)?));
    }
    Ok(workers)
}

#[cfg(feature = "mqtt")]
fn open_mqtt(
    config: &Config,
    mqtt: &crate::config::MqttConfig,
) -> Result<Box<dyn Worker>, DaemonError> {
    let sink = crate::sink::mqtt::MqttSink::open(config, mqtt)?;
    log::info!(
        "events to MQTT broker {} as ferd/{}",
        mqtt.url,
        sink.device_id()
    );
    Ok(Box::new(sink))
}

#[cfg(not(feature = "mqtt"))]
fn open_mqtt(_: &Config, _: &crate::config::MqttConfig) -> Result<Box<dyn Worker>, DaemonError> {
    Err(DaemonError::Unsupported(
        "this ferd was built without the `mqtt` feature, but the config has an [mqtt] table".into(),
    ))
}

/// The GPIO outputs: the sink the pipeline feeds and the thread that
/// drives the lines (which makes them safe when dropped). `None` without
/// `[[gpio]]` outputs.
#[cfg(feature = "gpio")]
pub fn open_gpio(
    config: &Config,
) -> Result<Option<(GpioSink, crate::sink::gpio::GpioDriver)>, DaemonError> {
    if config.gpio.is_empty() {
        return Ok(None);
    }
    let outputs = crate::sink::gpio::open(&config.gpio)?;
    let shared = Arc::new(std::sync::Mutex::new(
        crate::sink::gpio::GpioState::default(),
    ));
    let sink = GpioSink::new(&config.gpio, Arc::clone(&shared));
    let stale_after = Duration::from_secs_f64(config.health.degraded_after.0);
    let driver =
        crate::sink::gpio::GpioDriver::spawn(outputs, shared, stale_after).map_err(|error| {
            DaemonError::Setup {
                what: "starting the gpio thread",
                error,
            }
        })?;
    Ok(Some((sink, driver)))
}

/// The GPIO outputs (this build has none).
#[cfg(not(feature = "gpio"))]
pub fn open_gpio(config: &Config) -> Result<Option<(GpioSink, ())>, DaemonError> {
    if !config.gpio.is_empty() {
        return Err(DaemonError::Unsupported(
            "this ferd was built without the `gpio` feature, but the config has [[gpio]] outputs"
                .into(),
        ));
    }
    Ok(None)
}

/// An open input: the source, its name for events, and how to pace it.
pub struct Input {
    /// The frames.
    pub source: Box<dyn FrameSource + Send>,
    /// The file or device, for logs.
    pub name: String,
    /// A camera is always `Live`; files replay frame by frame, or at their
    /// own rate with `realtime`.
    pub pace: Pace,
}

/// The input: `source`, else `[source] path`, else `[camera]`.
pub fn open_input(
    config: &Config,
    config_path: &Path,
    source: Option<&Path>,
    realtime: bool,
) -> Result<Input, DaemonError> {
    let path = source
        .map(Path::to_path_buf)
        .or_else(|| config.source.path.as_ref().map(|p| config.resolve(p)));
    if let Some(p) = path {
        return Ok(Input {
            source: source::open(&p)?,
            name: p.display().to_string(),
            pace: if realtime || config.source.realtime {
                Pace::Realtime
            } else {
                Pace::Replay
            },
        });
    }
    match &config.camera {
        Some(cam) => open_camera(cam),
        None => Err(DaemonError::NoInput(config_path.to_path_buf())),
    }
}

#[cfg(feature = "v4l2")]
fn open_camera(cam: &crate::config::CameraConfig) -> Result<Input, DaemonError> {
    Ok(Input {
        source: Box::new(crate::source::v4l2::V4l2Source::open_camera(cam)?),
        name: cam.device.display().to_string(),
        pace: Pace::Live,
    })
}

#[cfg(not(feature = "v4l2"))]
fn open_camera(_cam: &crate::config::CameraConfig) -> Result<Input, DaemonError> {
    Err(DaemonError::Unsupported(
        "this ferd was built without the `v4l2` feature, but the config has a [camera]".into(),
    ))
}

/// The models of a config, found with [`Config::find_model`]; the
/// landmark models only when a rule needs them. Also sets tract's thread
/// pool for the process from `[runtime] threads`.
pub fn load_analyzer(config: &Config) -> Result<Analyzer, DaemonError> {
    crate::vision::model::use_threads(config.runtime.threads.resolve()).map_err(|e| {
        DaemonError::Setup {
            what: "starting tract's threads ([runtime] threads)",
            error: std::io::Error::other(e),
        }
    })?;
    let mut analyzer = Analyzer::load(
        &config.detector_model()?,
        &config.classifier_model()?,
        config,
    )?;
    // With a second core (and `[runtime] parallel`), work of one frame
    // that does not wait on itself runs on two threads: the two eyes' iris
    // runs (each costs about what the face mesh does) with the landmark
    // stage, else the faces' classifications. On one core a second thread
    // would only take turns with the first.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parallel = config.runtime.parallel && cores > 1;
    if config.needs_landmarks() {
        let [mesh, iris, geometry] = config.landmark_models()?;
        let landmarker = Landmarker::load(&mesh, &iris, &geometry)?;
        analyzer.landmarker = Some(if parallel {
            log::info!(
                "landmarks: the left eye's iris model runs on a second thread ({cores} cores)"
            );
            landmarker.with_eye_thread()?
        } else {
            landmarker
        });
    } else {
        // Without meshes to follow faces by, the detector follows them
        // itself between whole-frame searches.
        analyzer.follow_faces(&config.detector_model()?, config)?;
        if parallel {
            log::info!(
                "classifier: faces are classified, and looked for around, two at a time on two threads ({cores} cores)"
            );
            analyzer.classifier = analyzer.classifier.with_thread()?;
            analyzer.detector = analyzer.detector.with_window_thread()?;
        }
    }
    Ok(analyzer)
}

/// How long `ferd run` waits at its end for the sink threads to deliver
/// what they hold (a spool draining to a broker has its own, shorter,
/// limit inside this one).
pub const SINK_DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Runs the daemon as `ferd run` does, until the input ends or SIGINT or
/// SIGTERM; SIGHUP reloads the configuration ([`Supervisor`]). Returns
/// the run's counters; events that could not be written are in
/// `sink_errors`.
pub fn run(options: &RunOptions) -> Result<Summary, DaemonError> {
    let config = Config::load(&options.config)?;
    let display = open_displays(&config, &options.displays)?;
    let workers = open_workers(&config)?;
    // The outputs before the models: a missing GPIO chip or line is
    // reported at once, not after seconds of model loading. The driver
    // outlives the pipeline (declared before it, dropped after it): its
    // drop drives every line inactive, on every exit path.
    let gpio = open_gpio(&config)?;
    let analyzer = load_analyzer(&config)?;
    let input = open_input(
        &config,
        &options.config,
        options.source.as_deref(),
        options.realtime,
    )?;
    log::info!("source: {}", input.source.describe());

    let stop = Arc::new(AtomicBool::new(false));
    let hangup = Arc::new(AtomicBool::new(false));
    for (signal, flag) in [
        (signal_hook::consts::SIGINT, &stop),
        (signal_hook::consts::SIGTERM, &stop),
        (signal_hook::consts::SIGHUP, &hangup),
    ] {
        signal_hook::flag::register(signal, Arc::clone(flag)).map_err(|error| {
            DaemonError::Setup {
                what: "installing signal handlers",
                error,
            }
        })?;
    }
    let stamp = Stamp::new();
    log::info!("run id: {}", stamp.run());
    let (bus, workers) = bus::start(&stamp, workers, bus::QUEUE_CAPACITY)?;
    let mut sinks: Vec<Box<dyn EventSink + Send>> = vec![Box::new(bus)];
    let _driver = gpio.map(|(sink, driver)| {
        sinks.push(Box::new(sink));
        driver
    });
    let mut pipeline = Pipeline::new(Box::new(analyzer), &config, sinks, display);
    let notifier = crate::systemd::Notifier::from_env();
    if let Some(w) = notifier.watchdog() {
        log::info!("watchdog: {} s", w.as_secs_f64());
    }
    let status = format!("analysing {}", input.name);
    notifier.ready(&status);
    let mut supervisor = Supervisor {
        notifier,
        hangup,
        options,
        config,
        status,
    };
    let result = pipeline::run(
        input.source,
        &mut pipeline,
        input.pace,
        &stop,
        &mut supervisor,
    );
    supervisor.notifier.stopping();
    let mut summary = pipeline.summary();
    // Dropping the pipeline drops the bus: the sink threads deliver what
    // they hold and end.
    drop(pipeline);
    summary.sink_errors += workers.join(SINK_DRAIN_LIMIT).lost;
    log::info!(
        "{} frames analysed, {} failed, {} skipped, {} dropped, {} faces, {} tracks",
        summary.frames,
        summary.failed,
        summary.skipped,
        summary.dropped,
        summary.faces,
        summary.tracks
    );
    // The run's own summary is the pipeline's; this one adds what the
    // output threads lost.
    result?;
    Ok(summary)
}

/// The daemon's [`Service`]: systemd's watchdog, and configuration
/// reloads on SIGHUP.
///
/// A reload reads the configuration file again, with every check of a
/// start (`ferd check-config`'s), and loads and verifies its models
/// (sha256 against the manifests: a model swapped on disk since the start
/// is used only after a reload that verified it). Only then does it
/// switch the pipeline over ([`Pipeline::reconfigure`]): rules, models,
/// thresholds, tracker and health settings. A configuration that fails,
/// or that changes what is opened once at start (see
/// [`restart_needed_for`]), is refused as a whole: the running one stays.
/// systemd hears `RELOADING=1`, then `READY=1` either way. Frames that
/// arrive while models load are dropped and counted, as when analysis is
/// slow.
struct Supervisor<'a> {
    notifier: crate::systemd::Notifier,
    hangup: Arc<AtomicBool>,
    options: &'a RunOptions,
    /// The configuration in force.
    config: Config,
    /// The systemd status line.
    status: String,
}

impl Service for Supervisor<'_> {
    fn alive(&mut self) {
        self.notifier.alive();
    }

    fn between_frames(&mut self, pipeline: &mut Pipeline) {
        if !self
            .hangup
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let name = self.options.config.display().to_string();
        self.notifier.reloading();
        log::info!("SIGHUP: reloading {name}");
        match self.load() {
            Ok((analyzer, config)) => {
                pipeline.reconfigure(Box::new(analyzer), &config, &name);
                log::info!("reloaded {name}: {} rules", config.rules.len());
                self.config = config;
                self.notifier.ready(&self.status);
            }
            Err(error) => {
                let error = format!("{error:#}");
                pipeline.reload_failed(&name, &error);
                self.notifier
                    .ready(&format!("{} (reload refused: {error})", self.status));
            }
        }
    }
}

impl Supervisor<'_> {
    /// The new configuration and its analyser, or why not.
    fn load(&self) -> anyhow::Result<(Analyzer, Config)> {
        let config = Config::load(&self.options.config)?;
        let changed = restart_needed_for(&self.config, &config, self.options);
        if !changed.is_empty() {
            anyhow::bail!(
                "{} changed {}, which ferd opens only at start: restart it to apply \
                 (systemctl restart ferd)",
                self.options.config.display(),
                changed.join(", ")
            );
        }
        let analyzer = load_analyzer(&config)?;
        Ok((analyzer, config))
    }
}

/// What a reload from `old` to `new` would change that is opened or
/// announced only at start: the input, the outputs, the MQTT connection,
/// and with MQTT the set of rule names (Home Assistant's entities are
/// announced once). Sections the command line overrides (`--source`,
/// `--display`) do not count.
pub fn restart_needed_for(old: &Config, new: &Config, options: &RunOptions) -> Vec<&'static str> {
    let names = |c: &Config| c.rules.iter().map(|r| r.name.0.clone()).collect::<Vec<_>>();
    let events = |c: &Config| {
        (
            c.events.output.clone(),
            c.events.socket.clone(),
            c.events.socket_group.clone(),
        )
    };
    [
        (old.camera != new.camera, "[camera]"),
        (
            options.source.is_none() && old.source != new.source,
            "[source]",
        ),
        (
            options.displays.is_empty() && old.display != new.display,
            "[display]",
        ),
        (old.gpio != new.gpio, "[[gpio]]"),
        (
            events(old) != events(new),
            "[events] output, socket or socket_group",
        ),
        (old.mqtt != new.mqtt, "[mqtt]"),
        (
            new.mqtt.is_some() && names(old) != names(new),
            "the rule names (announced to Home Assistant through [mqtt])",
        ),
    ]
    .into_iter()
    .filter_map(|(changed, what)| changed.then_some(what))
    .collect()
}
