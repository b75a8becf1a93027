//! The `ferd` command line: argument parsing only. Every command is a
//! function of the library (`ferd::daemon`, `ferd::commands`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        /// defaults with models from ./models, else the packaged ones).
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
        after_help = "Examples:\n  ferd eval --data ../shared/datasets/fer2013/val\n  ferd eval --data val/ --model models/expression.toml --json\n  ferd eval --data val/ --scenes --landmarks\n\nThe last line of the text report is `accuracy: 0.XXXX`."
    )]
    Eval {
        /// The dataset folder.
        #[arg(long)]
        data: PathBuf,
        /// Manifest of the expression model (default the shipped int8 model,
        /// models/expression-kd-int8-nnef.toml, else the packaged one).
        #[arg(long, default_value = ferd::config::DEFAULT_EXPRESSION_MODEL)]
        model: PathBuf,
        /// Also print a JSON summary (as the first line).
        #[arg(long)]
        json: bool,
        /// Also paste each image, enlarged to 144×144, into a 320×240 noisy
        /// scene, find it with the detector (models/retinaface-mnet025.toml)
        /// and classify the detector's crop of the best face.
        #[arg(long)]
        scenes: bool,
        /// With --scenes: also classify the crop from the face mesh's box
        /// (models/face-landmark.toml), as `run` does with landmarks.
        #[arg(long, requires = "scenes")]
        landmarks: bool,
    },
    /// Time the configured pipeline on a recorded clip, stage by stage
    /// (no display, no GPIO, events to nowhere).
    #[command(
        after_help = "Examples:\n  ferd bench --config systemd/ferd.toml --source clip.y4m\n  ferd bench --config ferd.toml --source clip.y4m --frames 300 --json\n\nThe last line of the text report is `fps: N.N`; --json prints one object whose frame_ms.median is the median whole-frame time."
    )]
    Bench {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The clip: a .y4m file, an image or a folder of images.
        #[arg(long)]
        source: PathBuf,
        /// Count at most this many frames (default: the whole clip).
        #[arg(long)]
        frames: Option<u64>,
        /// Frames run first and not counted.
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        /// One JSON object instead of the text report.
        #[arg(long)]
        json: bool,
        /// Write each counted frame's face boxes to FILE
        /// ({"frame": i, "boxes": [[x, y, w, h], ...]} per line).
        #[arg(long, value_name = "FILE")]
        faces_out: Option<PathBuf>,
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
    ferd::systemd::init_logging();
    let result = match Cli::parse().command {
        Command::Detect {
            inputs,
            json,
            config,
        } => ferd::commands::detect(&inputs, json, config.as_deref()),
        Command::Run {
            config,
            source,
            display,
            realtime,
        } => ferd::commands::run(&ferd::daemon::RunOptions {
            config,
            source,
            displays: display,
            realtime,
        }),
        Command::CheckConfig { file } => ferd::commands::check_config(&file),
        Command::Eval {
            data,
            model,
            json,
            scenes,
            landmarks,
        } => ferd::commands::eval(&data, &model, json, scenes, landmarks),
        Command::Bench {
            config,
            source,
            frames,
            warmup,
            json,
            faces_out,
        } => ferd::commands::bench(
            &ferd::bench::BenchOptions {
                config,
                source,
                frames,
                warmup,
                faces_out,
            },
            json,
        ),
        Command::Cameras => ferd::commands::cameras(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            // `{:#}`: the whole chain on one line, each cause once.
            eprintln!("error: {e:#}");
            ExitCode::from(ferd::commands::exit_status(&e))
        }
    }
}
