//! Model manifests and loading a model through tract.
//!
//! Every model file ships with a TOML manifest beside it. The manifest is
//! the contract between the training side and the runtime: input shape and
//! normalisation, labels, checksum. Loading checks the checksum before the
//! bytes reach the ONNX parser and checks the graph's declared input shape
//! against the manifest, so a wrong or corrupt file is a clear start-up
//! error instead of a silent garbage result.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Largest manifest read: 1 MiB. Manifests are a few KB of TOML; the
/// bound keeps a wrong path (a log, a device) from being read whole.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// Largest model file read: 256 MiB. The file is read whole for its
/// checksum and then parsed, so a Pi briefly holds it twice or more;
/// ferd's networks are 0.7–2.6 MB and the largest detector worth running
/// on a Pi (RetinaFace-ResNet50) about 105 MB, so this leaves room for a
/// retrained model while refusing a wrong path to a disk image or a device.
pub const MAX_MODEL_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Largest network input side (height or width) accepted, from a manifest's
/// `input.shape` or a detector's configured `input_size`: 4096. A 3×4096×4096
/// f32 input is 192 MiB, built for every frame; real face models take
/// 48–1024 pixels.
pub const MAX_INPUT_SIDE: usize = 4096;

/// What went wrong loading a model, always naming the file.
///
/// Causes are part of the message, never also [`std::error::Error::source`],
/// so that anyhow's `{:#}` prints each once.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A manifest or model file could not be read (missing, not a regular
    /// file, larger than its limit).
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error; shown in the message, not chained.
        error: std::io::Error,
    },
    /// The manifest is not valid TOML or misses or mistypes a key.
    #[error("invalid model manifest {path}: {message}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The model file's bytes are not the ones the manifest describes.
    #[error("model file {path} is corrupt or not the one its manifest describes: sha256 is {actual}, manifest says {expected}")]
    Checksum {
        /// The model file.
        path: PathBuf,
        /// sha256 from the manifest.
        expected: String,
        /// sha256 of the file.
        actual: String,
    },
    /// The graph does not have the input the manifest promises.
    #[error("model file {path}: {message}")]
    Shape {
        /// The model file.
        path: PathBuf,
        /// What differs.
        message: String,
    },
    /// tract could not parse, type or optimise the graph.
    #[error("model file {path}: tract failed to {stage}: {message}")]
    Tract {
        /// The model file.
        path: PathBuf,
        /// What tract was doing.
        stage: &'static str,
        /// tract's error chain.
        message: String,
    },
}

/// A parsed manifest (the raw TOML, typed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Identity, checksum, licence.
    pub model: ModelInfo,
    /// What the network expects.
    pub input: InputSpec,
    /// What the network returns.
    pub output: OutputSpec,
    /// Anchor parameters for detector models.
    pub detector: Option<DetectorSpec>,
    /// Free-form measured figures (accuracy, size); informational.
    pub metrics: Option<toml::Table>,
}

/// `[model]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// Short name.
    pub name: String,
    /// The ONNX file, relative to the manifest.
    pub file: PathBuf,
    /// What the model does.
    pub task: Task,
    /// Lowercase hex sha256 of the ONNX file.
    pub sha256: String,
    /// Licence of the weights.
    pub licence: String,
    /// Where the weights come from.
    pub provenance: String,
}

/// The job a model does; the loader refuses a model given for the wrong job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Finds faces.
    FaceDetector,
    /// Classifies a face crop into the seven expressions.
    Expression,
    /// Places the 468-point face mesh on a face crop.
    FaceLandmarks,
    /// Places the eye contour and iris on an eye crop.
    IrisLandmarks,
}

/// `[input]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// NCHW shape: batch 1, channels as `color` says, height and width at
    /// most [`MAX_INPUT_SIDE`]; a detector may leave height and width free
    /// (0), to be filled from its configured `input_size`.
    pub shape: Vec<usize>,
    /// `NCHW`, or `NHWC` for the landmark models (converted from TFLite,
    /// which keeps its layout).
    pub layout: String,
    /// Channel order of the input.
    pub color: ColorOrder,
    /// Multiplier applied to 0..255 pixel values first.
    pub scale: f32,
    /// Per-channel mean subtracted after scaling, in the order of `color`.
    pub mean: Vec<f32>,
    /// Per-channel divisor applied last.
    pub std: Vec<f32>,
}

/// Channel order of a network input. Both models build their input from
/// it: one plane of luma for `grey`, three planes in the named order for
/// `rgb` and `bgr`; `input.shape[1]`, `input.mean` and `input.std` must
/// have that many channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    /// One grey channel.
    Grey,
    /// Blue, green, red.
    Bgr,
    /// Red, green, blue.
    Rgb,
}

/// `[output]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// How to read the output.
    pub kind: OutputKind,
    /// Class labels in output order (classifiers).
    pub labels: Option<Vec<String>>,
    /// Points of a face mesh (`face-mesh-468`: 468).
    pub landmarks: Option<usize>,
    /// How the face-presence output reads (`sigmoid`: a logit).
    pub presence: Option<String>,
    /// Eye-contour points of an iris model (71).
    pub contour_points: Option<usize>,
    /// Iris points of an iris model (5).
    pub iris_points: Option<usize>,
}

/// How a model's output is interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Unnormalised scores; ferd applies softmax.
    Logits,
    /// Already probabilities.
    Probabilities,
    /// RetinaFace's loc / conf / landmark triple.
    Retinaface,
    /// MediaPipe's face mesh: 468 × (x, y, z) in crop pixels, and a
    /// face-presence logit.
    #[serde(rename = "face-mesh-468")]
    FaceMesh468,
    /// MediaPipe's iris model: 71 eye-contour and 5 iris points × (x, y,
    /// z) in crop pixels.
    #[serde(rename = "iris-landmark")]
    IrisLandmark,
}

/// `[detector]` section: anchor layout of a RetinaFace-style detector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSpec {
    /// Feature-map strides, one per level.
    pub strides: Vec<u32>,
    /// Anchor side lengths per level, in input pixels.
    pub anchor_sizes: Vec<Vec<f32>>,
    /// Centre and size variances of the box encoding.
    pub variance: [f32; 2],
}

/// A model ready to run, with its manifest.
#[derive(Debug)]
pub struct LoadedModel {
    /// The manifest it was loaded from.
    pub manifest: Manifest,
    /// The ONNX file.
    pub path: PathBuf,
    /// The concrete input shape it was optimised for.
    pub input_shape: Vec<usize>,
    /// The optimised plan.
    pub plan: Arc<TypedRunnableModel>,
    /// What one run needs, kept from run to run so that a frame allocates
    /// neither an input tensor nor tract's per-run state. A mutex, not a
    /// `RefCell`: `ferd eval` shares models between threads. Runs of one
    /// model never overlap in the daemon, so it is never contended there.
    scratch: Mutex<Scratch>,
}

/// The reusable part of a run.
#[derive(Debug)]
struct Scratch {
    /// tract's per-run state (its value slots and op states).
    state: TypedSimpleState,
    /// The input, shared with tract during a run and unique again after
    /// it (the state drops its values at the end of each run).
    input: Arc<Tensor>,
}

impl InputSpec {
    /// The axes of height and width in `shape`: 2 and 3 (NCHW), or 1 and 2
    /// (NHWC).
    pub fn spatial_axes(&self) -> [usize; 2] {
        if self.layout == "NHWC" {
            [1, 2]
        } else {
            [2, 3]
        }
    }
}

impl ColorOrder {
    /// Number of input channels this order means.
    pub fn channels(self) -> usize {
        match self {
            ColorOrder::Grey => 1,
            ColorOrder::Bgr | ColorOrder::Rgb => 3,
        }
    }
}

impl Manifest {
    /// Reads and checks a manifest file (a regular file of at most
    /// [`MAX_MANIFEST_BYTES`]).
    pub fn load(path: &Path) -> Result<Manifest, ModelError> {
        let read = |error| ModelError::Read {
            path: path.to_path_buf(),
            error,
        };
        let bytes = crate::source::read_regular_file(path, MAX_MANIFEST_BYTES).map_err(read)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            read(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
            ))
        })?;
        Manifest::parse(&text, path)
    }

    /// Parses and checks a manifest's text, as [`Manifest::load`] does
    /// after reading the file; `path` names it in errors. Relative paths in
    /// it stay as written (the loader resolves them against the manifest's
    /// folder).
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ModelError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ModelError::Manifest {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        m.check(path)?;
        Ok(m)
    }

    /// Everything the runtime relies on, so that a manifest that passes
    /// here (and `ferd check-config`) cannot make a model fail or panic at
    /// the first frame. Errors name the key.
    fn check(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |key: &str, message: String| ModelError::Manifest {
            path: path.to_path_buf(),
            message: format!("key `{key}`: {message}"),
        };
        let i = &self.input;
        let nhwc_ok = matches!(self.model.task, Task::FaceLandmarks | Task::IrisLandmarks);
        let nhwc = match i.layout.as_str() {
            "NCHW" => false,
            "NHWC" if nhwc_ok => true,
            other => {
                let allowed = if nhwc_ok { "NCHW or NHWC" } else { "only NCHW" };
                return Err(bad(
                    "input.layout",
                    format!("{other:?} unsupported ({allowed})"),
                ));
            }
        };
        let &[batch, a, b, c] = &i.shape[..] else {
            return Err(bad(
                "input.shape",
                format!(
                    "must have 4 dimensions ({}), has {}",
                    i.layout,
                    i.shape.len()
                ),
            ));
        };
        let (channels, height, width) = if nhwc { (c, a, b) } else { (a, b, c) };
        if batch != 1 {
            return Err(bad(
                "input.shape",
                format!(
                    "the batch dimension must be 1 (ferd runs one image at a time), got {batch}"
                ),
            ));
        }
        let wanted = i.color.channels();
        if channels != wanted || i.mean.len() != wanted || i.std.len() != wanted {
            return Err(bad(
                "input.color",
                format!(
                    "{:?} needs {wanted} channel(s) in input.shape[1], input.mean and input.std; they have {channels}, {} and {}",
                    i.color,
                    i.mean.len(),
                    i.std.len()
                ),
            ));
        }
        for (name, side) in [("height", height), ("width", width)] {
            if side > MAX_INPUT_SIDE {
                return Err(bad(
                    "input.shape",
                    format!("{name} {side} is larger than {MAX_INPUT_SIDE}"),
                ));
            }
        }
        if i.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(bad("input.std", "must be finite and non-zero".into()));
        }
        if i.mean.iter().any(|m| !m.is_finite()) {
            return Err(bad("input.mean", "must be finite".into()));
        }
        if !i.scale.is_finite() {
            return Err(bad("input.scale", "must be finite".into()));
        }
        if self.model.sha256.len() != 64
            || !self.model.sha256.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(bad("model.sha256", "must be 64 hex digits".into()));
        }
        match self.model.task {
            Task::Expression => {
                let labels = self.output.labels.as_deref().unwrap_or(&[]);
                let expected: Vec<&str> = crate::expression::Expression::ALL
                    .iter()
                    .map(|e| e.name())
                    .collect();
                if labels != expected.as_slice() {
                    return Err(bad(
                        "output.labels",
                        format!("must be the FER2013 order {expected:?}, got {labels:?}"),
                    ));
                }
                if self.output.kind == OutputKind::Retinaface {
                    return Err(bad(
                        "output.kind",
                        "must be logits or probabilities for an expression model".into(),
                    ));
                }
                if height == 0 || width == 0 {
                    return Err(bad(
                        "input.shape",
                        "an expression model needs a fixed height and width (no 0)".into(),
                    ));
                }
            }
            Task::FaceDetector => {
                let Some(d) = &self.detector else {
                    return Err(bad(
                        "detector",
                        "a face-detector manifest needs a [detector] section".into(),
                    ));
                };
                if d.strides.is_empty() || d.strides.len() != d.anchor_sizes.len() {
                    return Err(bad(
                        "detector.strides",
                        format!(
                            "detector.strides and detector.anchor_sizes must have the same, non-zero length; they have {} and {}",
                            d.strides.len(),
                            d.anchor_sizes.len()
                        ),
                    ));
                }
                if d.strides.contains(&0) {
                    return Err(bad(
                        "detector.strides",
                        format!("must be positive, got {:?}", d.strides),
                    ));
                }
                if d.anchor_sizes.iter().any(|level| {
                    level.is_empty() || level.iter().any(|&s| !(s > 0.0 && s.is_finite()))
                }) {
                    return Err(bad(
                        "detector.anchor_sizes",
                        "every level must list at least one size, each finite and positive".into(),
                    ));
                }
                if d.variance.iter().any(|&v| !(v > 0.0 && v.is_finite())) {
                    return Err(bad(
                        "detector.variance",
                        format!("must be finite and positive, got {:?}", d.variance),
                    ));
                }
                if self.output.kind != OutputKind::Retinaface {
                    return Err(bad(
                        "output.kind",
                        "must be retinaface for a face detector".into(),
                    ));
                }
            }
            Task::FaceLandmarks | Task::IrisLandmarks => {
                let (kind, what) = if self.model.task == Task::FaceLandmarks {
                    (OutputKind::FaceMesh468, "face-mesh-468")
                } else {
                    (OutputKind::IrisLandmark, "iris-landmark")
                };
                if self.output.kind != kind {
                    return Err(bad("output.kind", format!("must be {what} for this task")));
                }
                if height == 0 || width == 0 || i.color != ColorOrder::Rgb {
                    return Err(bad(
                        "input.shape",
                        "a landmark model needs a fixed height and width and RGB input".into(),
                    ));
                }
                let expected = if self.model.task == Task::FaceLandmarks {
                    [(self.output.landmarks, 468, "output.landmarks")]
                } else {
                    [(self.output.contour_points, 71, "output.contour_points")]
                };
                for (got, want, key) in expected {
                    if got != Some(want) {
                        return Err(bad(key, format!("must be {want}, got {got:?}")));
                    }
                }
                if self.model.task == Task::IrisLandmarks && self.output.iris_points != Some(5) {
                    return Err(bad(
                        "output.iris_points",
                        format!("must be 5, got {:?}", self.output.iris_points),
                    ));
                }
                if self.model.task == Task::FaceLandmarks
                    && self.output.presence.as_deref() != Some("sigmoid")
                {
                    return Err(bad(
                        "output.presence",
                        "must be \"sigmoid\" (the face-presence output is a logit)".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl LoadedModel {
    /// Loads the model a manifest describes, checking task, checksum and
    /// input shape (a regular file of at most [`MAX_MODEL_FILE_BYTES`]).
    /// `size` is the height and width used where the manifest leaves them
    /// free (0); the manifest check keeps batch and channels fixed. The
    /// plan is optimised for the resulting concrete shape.
    pub fn load(
        manifest_path: &Path,
        task: Task,
        size: Option<[usize; 2]>,
    ) -> Result<LoadedModel, ModelError> {
        Ok(LoadedModel::load_edited(manifest_path, task, size, 0)?.0)
    }

    /// [`LoadedModel::load`] for a detector whose outputs each
    /// concatenate its pyramid levels' anchors, finest first (RetinaFace's
    /// form), with the first `levels` of them dropped and the layers that
    /// only fed them gone from the plan ([`drop_first_levels`]): for faces
    /// too large for those levels' anchors, at a fraction of the cost.
    /// `None` when the graph does not have that form.
    pub fn load_without_levels(
        manifest_path: &Path,
        size: [usize; 2],
        levels: usize,
    ) -> Result<Option<LoadedModel>, ModelError> {
        let (model, dropped) =
            LoadedModel::load_edited(manifest_path, Task::FaceDetector, Some(size), levels)?;
        Ok(dropped.then_some(model))
    }

    /// [`LoadedModel::load`], dropping the first `drop_levels` pyramid
    /// levels where the graph allows (0: none); says whether it did.
    fn load_edited(
        manifest_path: &Path,
        task: Task,
        size: Option<[usize; 2]>,
        drop_levels: usize,
    ) -> Result<(LoadedModel, bool), ModelError> {
        let manifest = Manifest::load(manifest_path)?;
        if manifest.model.task != task {
            return Err(ModelError::Manifest {
                path: manifest_path.to_path_buf(),
                message: format!(
                    "key `model.task`: is {:?}, but this slot needs {:?}",
                    manifest.model.task, task
                ),
            });
        }
        let dir = manifest_path.parent().unwrap_or(Path::new("."));
        let path = dir.join(&manifest.model.file);
        let bytes =
            crate::source::read_regular_file(&path, MAX_MODEL_FILE_BYTES).map_err(|error| {
                ModelError::Read {
                    path: path.clone(),
                    error,
                }
            })?;
        let actual = hex(&Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&manifest.model.sha256) {
            return Err(ModelError::Checksum {
                path,
                expected: manifest.model.sha256.clone(),
                actual,
            });
        }

        // Four dimensions, batch and channels non-zero: `Manifest::check`.
        let mut input_shape = manifest.input.shape.clone();
        let first = manifest.input.spatial_axes()[0];
        for (axis, name) in [(first, "height"), (first + 1, "width")] {
            if input_shape[axis] != 0 {
                continue;
            }
            match size.map(|s| s[axis - first]) {
                Some(f) if f > 0 && f <= MAX_INPUT_SIDE => input_shape[axis] = f,
                Some(f) => {
                    return Err(ModelError::Shape {
                        path,
                        message: format!(
                            "the configured input {name} {f} (for the free {name} in {}'s input.shape) is outside 1..={MAX_INPUT_SIDE}",
                            manifest_path.display()
                        ),
                    })
                }
                None => {
                    return Err(ModelError::Shape {
                        path,
                        message: format!(
                            "no size given for the free input {name} (0 in {}'s input.shape)",
                            manifest_path.display()
                        ),
                    })
                }
            }
        }

        let tract_err = |stage: &'static str, path: &Path, e: anyhow::Error| ModelError::Tract {
            path: path.to_path_buf(),
            stage,
            message: format!("{e:#}"),
        };
        // tract's parsers and optimiser assume well-formed graphs: a
        // hostile file whose checksum matches its (equally hostile)
        // manifest may make them panic. That must be this model's error,
        // not the process's end (exit status 101).
        let mut dropped = false;
        let built =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<_, ModelError> {
                let model = if is_nnef(&manifest.model.file) {
                    // tract's own format: already typed (and, for int8 models,
                    // holding the integer convolutions tract runs as such).
                    let model = tract_nnef::nnef()
                        .model_for_read(&mut &bytes[..])
                        .map_err(|e| tract_err("parse the NNEF archive", &path, e))?;
                    check_typed_input(&model, &input_shape, &path, manifest_path)?;
                    let mut model = model;
                    dropped = drop_first_levels(&mut model, drop_levels)
                        .map_err(|e| tract_err("drop the finest levels", &path, e))?;
                    model
                        .into_optimized()
                        .map_err(|e| tract_err("optimise the graph", &path, e))?
                } else {
                    let model = tract_onnx::onnx()
                        .model_for_read(&mut &bytes[..])
                        .map_err(|e| tract_err("parse the ONNX graph", &path, e))?;
                    check_declared_input(&model, &manifest.input, &path, manifest_path)?;
                    model
                        .with_input_fact(0, f32::fact(&input_shape).into())
                        .and_then(|m| m.into_typed())
                        .and_then(|mut m| {
                            // Constants folded first (a bias cast for each
                            // of two equal layers becomes a constant each).
                            m.prop_consts()?;
                            merge_equal_constants(&mut m)?;
                            dropped = drop_first_levels(&mut m, drop_levels)?;
                            m.into_optimized()
                        })
                        .map_err(|e| tract_err("type and optimise the graph", &path, e))?
                };
                let plan = model
                    .into_runnable()
                    .map_err(|e| tract_err("build the execution plan", &path, e))?;
                let state = TypedSimpleState::new(&plan)
                    .map_err(|e| tract_err("build the execution state", &path, e))?;
                let input = Arc::new(
                    Tensor::zero::<f32>(&input_shape)
                        .map_err(|e| tract_err("allocate the input", &path, e))?,
                );
                Ok((plan, state, input))
            }))
            .unwrap_or_else(|panic| {
                Err(ModelError::Tract {
                    path: path.clone(),
                    stage: "load the model (tract panicked)",
                    message: crate::panic_message(&*panic),
                })
            });
        let (plan, state, input) = built?;
        let model = LoadedModel {
            manifest,
            path,
            input_shape,
            plan,
            scratch: Mutex::new(Scratch { state, input }),
        };
        Ok((model, dropped))
    }

    /// The matrix-product kernels the plan runs, as tract describes its
    /// matrix-product nodes (their `Mult:` lines), one per line: which of
    /// tract's kernels this machine and the knobs in force at load chose.
    /// For tests and benchmarks; allocates.
    pub fn kernels(&self) -> String {
        self.plan
            .model()
            .nodes()
            .iter()
            .flat_map(|n| n.op().info().unwrap_or_default())
            .filter(|line| line.starts_with("Mult:"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Another runner of the same optimised plan, with its own tract state
    /// and input tensor, so that a second thread can run this model while
    /// this one does (the plan is shared and read-only; nothing is loaded
    /// or optimised again).
    pub fn twin(&self) -> Result<LoadedModel, ModelError> {
        let tract_err = |stage: &'static str, e: anyhow::Error| ModelError::Tract {
            path: self.path.clone(),
            stage,
            message: format!("{e:#}"),
        };
        let state = TypedSimpleState::new(&self.plan)
            .map_err(|e| tract_err("build the execution state", e))?;
        let input = Tensor::zero::<f32>(&self.input_shape)
            .map_err(|e| tract_err("allocate the input", e))?;
        Ok(LoadedModel {
            manifest: self.manifest.clone(),
            path: self.path.clone(),
            input_shape: self.input_shape.clone(),
            plan: Arc::clone(&self.plan),
            scratch: Mutex::new(Scratch {
                state,
                input: Arc::new(input),
            }),
        })
    }

    /// Runs the model once: `fill` writes the input (every value of the
    /// `input_shape` tensor, in its layout; the buffer holds the previous
    /// run's values), `read` takes what it needs from the outputs.
    pub fn run_with<R>(
        &self,
        fill: impl FnOnce(&mut [f32]),
        read: impl FnOnce(&[TValue]) -> Result<R, ModelError>,
    ) -> Result<R, ModelError> {
        let tract_err = |e: anyhow::Error| ModelError::Tract {
            path: self.path.clone(),
            stage: "run",
            message: format!("{e:#}"),
        };
        // A panic inside an earlier run poisons the lock; the state is
        // reset at the start of every run, so it is still usable.
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let scratch = &mut *scratch;
        if Arc::get_mut(&mut scratch.input).is_none() {
            // tract kept a reference (it does not in 0.23: values are
            // dropped at the end of a run); start a fresh buffer.
            let fresh = Tensor::zero::<f32>(&self.input_shape).map_err(tract_err)?;
            scratch.input = Arc::new(fresh);
        }
        // Unique: checked or made so just above.
        let tensor = Arc::get_mut(&mut scratch.input).expect("the input is not shared");
        let mut view = tensor.to_plain_array_view_mut::<f32>().map_err(tract_err)?;
        // A fresh f32 tensor is contiguous.
        fill(
            view.as_slice_mut()
                .expect("a tensor's own buffer is contiguous"),
        );
        let outputs = {
            let _scope = TractScope::enter();
            let input = TValue::from_const(Arc::clone(&scratch.input));
            // As at load: a hostile graph's panic fails this frame only.
            let run = std::panic::AssertUnwindSafe(|| scratch.state.run(tvec!(input)));
            match std::panic::catch_unwind(run) {
                Ok(outputs) => outputs.map_err(tract_err)?,
                Err(panic) => {
                    return Err(ModelError::Tract {
                        path: self.path.clone(),
                        stage: "run (tract panicked)",
                        message: crate::panic_message(&*panic),
                    })
                }
            }
        };
        read(&outputs)
    }
}

/// Makes the constants of `model` that hold equal values one node, and
/// says how many it merged. Why: tract's declutter already computes once
/// what two nodes with the same op and the same inputs compute (its
/// `PushSplitDown` pass), but a layer that an exporter wrote out twice has
/// its own copy of the weights, so its inputs differ. RetinaFace's ONNX
/// export is such a model: each SSH module's first 5×5-context convolution
/// (and its activation) is there twice with equal weights, 7% of the
/// detector's multiply-adds. Translate-time only: a plan is optimised once.
fn merge_equal_constants(model: &mut TypedModel) -> TractResult<usize> {
    use std::collections::HashMap;
    use std::hash::{Hash, Hasher};
    use tract_onnx::tract_core::ops::konst::Const;
    let consts = model.nodes().iter().filter_map(|n| {
        let k = n.op_as::<Const>()?;
        // A constant with an exotic fact (packed weights) is more than its
        // values.
        k.exotic_fact().is_none().then(|| (n.id, k.val()))
    });
    // Each duplicate with the first node of its values: found through a
    // hash of type, shape and bytes, so that a hostile file with very many
    // constants costs one pass, not a comparison of every pair (equal
    // hashes are confirmed by comparing the values), and all rewired in
    // one patch. Constants of other than plain numbers are left alone.
    let mut first: HashMap<u64, Vec<(usize, &Arc<Tensor>)>> = HashMap::new();
    let mut merges = 0;
    let mut patch = TypedModelPatch::default();
    let mut taps: HashMap<usize, OutletId> = HashMap::new();
    for (id, value) in consts {
        if !value.datum_type().is_copy() {
            continue;
        }
        let key = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (value.datum_type(), value.shape(), value.as_bytes()).hash(&mut h);
            h.finish()
        };
        let seen = first.entry(key).or_default();
        let Some(&(keep, _)) = seen.iter().find(|(_, v)| v == &value) else {
            seen.push((id, value));
            continue;
        };
        let tap = match taps.get(&keep) {
            Some(&tap) => tap,
            None => {
                let tap = patch.tap_model(model, OutletId::new(keep, 0))?;
                taps.insert(keep, tap);
                tap
            }
        };
        patch.shunt_outside(model, OutletId::new(id, 0), tap)?;
        merges += 1;
    }
    if merges > 0 {
        patch.apply(model)?;
    }
    Ok(merges)
}

/// Drops the first `levels` inputs of each output's concatenation along
/// the anchor axis (1; seen through a softmax over other axes), so that
/// the layers that only fed them are never computed: a detector's finest
/// pyramid levels. Says whether it did: every output must have that form
/// with more than `levels` inputs, or nothing is changed (and with
/// `levels` 0 nothing is). Translate-time only.
///
/// RetinaFace's stride-8 level is half its multiply-adds (its FPN merge
/// and SSH module run at the finest resolution) and its anchors (16 and
/// 32 px) are trained for small faces only.
fn drop_first_levels(model: &mut TypedModel, levels: usize) -> TractResult<bool> {
    use tract_onnx::tract_core::ops::array::TypedConcat;
    use tract_onnx::tract_core::ops::nn::Softmax;
    if levels == 0 {
        return Ok(false);
    }
    let outputs = model.output_outlets()?.to_vec();
    // Each output's concatenation and the softmax after it, if any.
    let mut found = Vec::with_capacity(outputs.len());
    for out in &outputs {
        let node = model.node(out.node);
        let (concat, softmax) = match node.op_as::<Softmax>() {
            Some(sm) => (model.node(node.inputs[0].node), Some(sm.clone())),
            None => (node, None),
        };
        let Some(op) = concat.op_as::<TypedConcat>() else {
            return Ok(false);
        };
        if op.axis != 1
            || concat.inputs.len() <= levels
            || softmax.as_ref().is_some_and(|sm| sm.axes.contains(&1))
        {
            return Ok(false);
        }
        found.push((concat.id, op.clone(), softmax));
    }
    let mut coarse = Vec::with_capacity(outputs.len());
    for (concat, op, softmax) in found {
        let name = model.node(concat).name.clone();
        let inputs = model.node(concat).inputs[levels..].to_vec();
        let mut wire = model.wire_node(format!("{name}.coarse"), op, &inputs)?;
        if let Some(sm) = softmax {
            wire = model.wire_node(format!("{name}.coarse.softmax"), sm, &wire)?;
        }
        coarse.push(wire[0]);
    }
    // The old outputs and what fed only them are left unreachable, and
    // optimising removes them.
    model.select_output_outlets(&coarse)?;
    Ok(true)
}

/// One of a run's outputs as f32 values, or a shape error naming the
/// model file: not f32, or (never seen from tract) not contiguous.
pub fn output_floats<'a>(path: &Path, v: &'a TValue) -> Result<&'a [f32], ModelError> {
    let bad = |message: String| ModelError::Shape {
        path: path.to_path_buf(),
        message,
    };
    let view = v
        .to_plain_array_view::<f32>()
        .map_err(|e| bad(format!("an output is not f32: {e}")))?;
    view.to_slice()
        .ok_or_else(|| bad("an output is not contiguous".into()))
}

/// Runs tract's matrix products on `threads` threads from now on (1: on
/// the calling thread, tract's default). Process-wide: tract keeps one
/// default executor, and a process runs one pipeline. The pool is built
/// here rather than by `Executor::multithread`, which panics when threads
/// cannot be started.
pub fn use_threads(threads: usize) -> Result<(), rayon::ThreadPoolBuildError> {
    use tract_linalg::multithread::{set_default_executor, Executor};
    set_default_executor(if threads > 1 {
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("ferd-tract-{i}"))
            .num_threads(threads)
            .build()?;
        Executor::MultiThread(Arc::new(pool))
    } else {
        Executor::SingleThread
    });
    Ok(())
}

thread_local! {
    /// Whether this thread is inside a tract call ([`in_tract`]).
    static IN_TRACT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is inside a tract call made by
/// [`LoadedModel::run`]. A counting allocator (tests/alloc.rs) uses it to
/// tell tract's allocations from ferd's own; it costs two thread-local
/// writes per model run.
pub fn in_tract() -> bool {
    IN_TRACT.with(|t| t.get())
}

/// Marks the thread as inside tract until dropped (an unwinding panic
/// included).
struct TractScope;

impl TractScope {
    fn enter() -> TractScope {
        IN_TRACT.with(|t| t.set(true));
        TractScope
    }
}

impl Drop for TractScope {
    fn drop(&mut self) {
        IN_TRACT.with(|t| t.set(false));
    }
}

/// Whether a manifest's `file` is an NNEF archive (`.nnef.tgz` or
/// `.nnef.tar`) rather than ONNX.
pub fn is_nnef(file: &Path) -> bool {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    name.ends_with(".nnef.tgz") || name.ends_with(".nnef.tar")
}

/// An NNEF graph fixes its input: it must be f32 and of exactly the shape
/// the manifest (with the configured size) gives.
fn check_typed_input(
    model: &TypedModel,
    expected: &[usize],
    path: &Path,
    manifest: &Path,
) -> Result<(), ModelError> {
    let bad = |message: String| ModelError::Shape {
        path: path.to_path_buf(),
        message,
    };
    let fact = model
        .input_fact(0)
        .map_err(|e| bad(format!("no input: {e:#}")))?;
    if fact.datum_type != f32::datum_type() {
        return Err(bad(format!(
            "graph input is {:?}, ferd feeds f32",
            fact.datum_type
        )));
    }
    match fact.shape.as_concrete() {
        Some(dims) if dims == expected => Ok(()),
        _ => Err(bad(format!(
            "graph input shape is {:?}, {} says input.shape = {expected:?}",
            fact.shape,
            manifest.display()
        ))),
    }
}

/// The ONNX file's declared input must agree with the manifest wherever
/// both give a concrete size; a 3-channel model under a grey manifest would
/// otherwise fail later with a less helpful message, or not at all. A graph
/// whose input shape is open (undeclared) is checked by tract instead, when
/// the plan is typed for the manifest's shape.
fn check_declared_input(
    model: &InferenceModel,
    spec: &InputSpec,
    path: &Path,
    manifest: &Path,
) -> Result<(), ModelError> {
    let expected = &spec.shape;
    let fact = model.input_fact(0).map_err(|e| ModelError::Tract {
        path: path.to_path_buf(),
        stage: "read the input fact",
        message: format!("{e:#}"),
    })?;
    if fact.shape.is_open() {
        return Ok(());
    }
    let dims: Vec<_> = fact.shape.dims().collect();
    if dims.len() != expected.len() {
        return Err(ModelError::Shape {
            path: path.to_path_buf(),
            message: format!(
                "graph input has rank {}, {} says input.shape = {expected:?}",
                dims.len(),
                manifest.display()
            ),
        });
    }
    for (i, (d, &e)) in dims.iter().zip(expected).enumerate() {
        let declared = d.concretize().and_then(|d| d.to_i64().ok());
        if let Some(declared) = declared {
            if e != 0 && declared != e as i64 {
                let what = if i == 1 {
                    format!(" (channels; input.color = {:?})", spec.color)
                } else {
                    String::new()
                };
                return Err(ModelError::Shape {
                    path: path.to_path_buf(),
                    message: format!(
                        "graph input dimension {i} is {declared}, {} says input.shape = {expected:?}{what}",
                        manifest.display()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(file)
    }

    /// A copy of a shipped manifest in `dir` with `edits` applied.
    fn edited(dir: &Path, file: &str, edits: &[(&str, &str)]) -> PathBuf {
        let mut text = std::fs::read_to_string(shipped(file)).unwrap();
        for (from, to) in edits {
            assert!(text.contains(from), "{from:?} not in {file}");
            text = text.replace(from, to);
        }
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load_err(path: &Path) -> String {
        Manifest::load(path).unwrap_err().to_string()
    }

    /// Equal constants become one node, unequal ones (another value or
    /// shape) stay, and the model computes what it did; a thousand equal
    /// ones are merged in one pass.
    #[test]
    fn equal_constants_are_merged_and_others_kept() {
        use tract_onnx::tract_core::ops::math;
        let mut model = TypedModel::default();
        let mut wire = model.add_source("x", f32::fact([3, 3])).unwrap();
        // The same bytes in another shape, and another value, stay apart.
        let consts = [
            tensor2(&[[1f32, 2.0, 3.0]]),
            tensor2(&[[1f32, 2.0, 3.0]]),
            tensor2(&[[1f32, 2.0, 4.0]]),
            tensor2(&[[1f32], [2.0], [3.0]]),
        ];
        let mut all = consts.to_vec();
        all.extend(std::iter::repeat_n(tensor2(&[[0.5f32, 0.25, 0.125]]), 1000));
        for (i, c) in all.into_iter().enumerate() {
            // As tract's own passes make them (`add_const` would share an
            // equal value already in the model).
            let c = c.into_arc_tensor();
            let fact = TypedFact::try_from(c.clone()).unwrap();
            let op = tract_onnx::tract_core::ops::konst::Const::new(c).unwrap();
            let c = model
                .add_node(format!("c{i}"), op, tvec!(fact))
                .unwrap()
                .into();
            wire = model
                .wire_node(format!("add{i}"), math::add(), &[wire, c])
                .unwrap()[0];
        }
        model.select_output_outlets(&[wire]).unwrap();
        let input = tvec![tensor2(&[[10f32, 20.0, 30.0]; 3]).into_tvalue()];
        let before = model
            .clone()
            .into_runnable()
            .unwrap()
            .run(input.clone())
            .unwrap();
        // The second is the first; the thousand are one.
        assert_eq!(merge_equal_constants(&mut model).unwrap(), 1 + 999);
        let after = model.into_runnable().unwrap().run(input).unwrap();
        assert_eq!(before, after);
    }

    /// A window network without the finest level computes fewer layers
    /// and gives, for every anchor it keeps, what the full one gives.
    #[test]
    fn the_coarse_detector_is_the_full_ones_coarser_anchors_bit_for_bit() {
        let manifest = shipped("retinaface-mnet025.toml");
        let full = LoadedModel::load(&manifest, Task::FaceDetector, Some([192, 192])).unwrap();
        let coarse = LoadedModel::load_without_levels(&manifest, [192, 192], 1)
            .unwrap()
            .expect("RetinaFace's outputs concatenate its levels");
        // Convolutions run as products, or computed directly (the patched
        // tract's `DirectConv`, on x86_64: the 1×1 lateral one among them).
        let products = |m: &LoadedModel| {
            let nodes = m.plan.model().nodes();
            nodes
                .iter()
                .filter(|n| ["OptMatMul", "DirectConv"].contains(&&*n.op().name()))
                .count()
        };
        // The stride-8 level's lateral and merge convolutions, its SSH
        // module (five) and its three heads.
        assert_eq!(products(&coarse) + 10, products(&full));
        let outputs = |m: &LoadedModel| {
            let fill = |input: &mut [f32]| {
                for (i, v) in input.iter_mut().enumerate() {
                    *v = ((i * 7919) % 255) as f32 - 120.0;
                }
            };
            m.run_with(fill, |outputs| {
                // By the last dimension (loc 4, conf 2, landmarks 10), as
                // the detector reads them.
                let mut by_width: Vec<(usize, Vec<u32>)> = outputs
                    .iter()
                    .map(|o| {
                        let v = o.to_plain_array_view::<f32>().unwrap();
                        (o.shape()[2], v.iter().map(|x| x.to_bits()).collect())
                    })
                    .collect();
                by_width.sort();
                Ok(by_width)
            })
            .unwrap()
        };
        let (full, coarse) = (outputs(&full), outputs(&coarse));
        // Two anchors per cell of the 24 × 24 stride-8 map.
        let dropped = 2 * 24 * 24;
        for ((width, f), (coarse_width, c)) in full.iter().zip(&coarse) {
            assert_eq!(width, coarse_width);
            assert_eq!(c.len() + dropped * width, f.len());
            assert!(
                c[..] == f[dropped * width..],
                "outputs of width {width} differ"
            );
        }
    }

    /// A graph whose outputs are not concatenations is left as it is.
    #[test]
    fn a_graph_of_another_form_keeps_its_levels() {
        let mut model = tract_onnx::onnx()
            .model_for_path(shipped("expression-kd.onnx"))
            .unwrap()
            .into_typed()
            .unwrap();
        let before = model.nodes().len();
        assert!(!drop_first_levels(&mut model, 1).unwrap());
        assert_eq!(model.nodes().len(), before);
    }

    /// RetinaFace's export has each SSH module's first context convolution
    /// twice with equal weights: the plan computes it once, and its outputs
    /// are the unmerged plan's, bit for bit.
    #[test]
    fn layers_exported_twice_are_computed_once() {
        let manifest = shipped("retinaface-mnet025.toml");
        let merged = LoadedModel::load(&manifest, Task::FaceDetector, Some([240, 320])).unwrap();
        let plain = tract_onnx::onnx()
            .model_for_path(shipped("retinaface-mnet025.onnx"))
            .unwrap()
            .with_input_fact(0, f32::fact([1, 3, 240, 320]).into())
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        // Products and, on x86_64, directly computed convolutions (the
        // SSH modules' 3×3 ones among them).
        let convolutions = |m: &TypedModel| {
            m.nodes()
                .iter()
                .filter(|n| ["OptMatMul", "DirectConv"].contains(&n.op().name().as_ref()))
                .count()
        };
        assert_eq!(
            convolutions(merged.plan.model()) + 3,
            convolutions(plain.model()),
            "one convolution fewer per SSH module"
        );
        let values: Vec<f32> = (0..3 * 240 * 320)
            .map(|i| ((i * 7919) % 255) as f32 - 120.0)
            .collect();
        let input: Tensor = tract_ndarray::ArrayD::from_shape_vec(vec![1, 3, 240, 320], values)
            .unwrap()
            .into();
        let run = |plan: &Arc<TypedRunnableModel>| -> Vec<Vec<u32>> {
            plan.run(tvec![input.clone().into_tvalue()])
                .unwrap()
                .iter()
                .map(|o| {
                    let v = o.to_plain_array_view::<f32>().unwrap();
                    v.iter().map(|x| x.to_bits()).collect()
                })
                .collect()
        };
        assert_eq!(run(&merged.plan), run(&plain));
    }

    #[test]
    fn shipped_manifests_pass() {
        for file in [
            "retinaface-mnet025.toml",
            "expression.toml",
            "expression-kd-int8.toml",
            "expression-kd-int8-nnef.toml",
            "face-landmark.toml",
            "iris-landmark.toml",
        ] {
            Manifest::load(&shipped(file)).unwrap();
        }
    }

    /// One run of `model` on a ramp image, its 7 logits.
    fn logits(model: &LoadedModel) -> [f32; 7] {
        model
            .run_with(
                |input| {
                    for (i, v) in input.iter_mut().enumerate() {
                        *v = ((i % 48) as f32 / 47.0 - 0.5) / 0.5;
                    }
                },
                |outputs| {
                    let v = outputs[0].to_plain_array_view::<f32>().unwrap();
                    Ok(std::array::from_fn(|i| v.as_slice().unwrap()[i]))
                },
            )
            .unwrap()
    }

    #[test]
    fn the_int8_nnef_model_runs_as_its_fp32_twin_does() {
        let fp32 = LoadedModel::load(&shipped("expression.toml"), Task::Expression, None).unwrap();
        let int8 = LoadedModel::load(
            &shipped("expression-kd-int8-nnef.toml"),
            Task::Expression,
            None,
        )
        .unwrap();
        let (a, b) = (logits(&fp32), logits(&int8));
        let top = |l: &[f32; 7]| (0..7).max_by(|&i, &j| l[i].total_cmp(&l[j])).unwrap();
        assert_eq!(top(&a), top(&b), "{a:?} {b:?}");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 0.5, "{a:?} {b:?}");
        }
        // The reused input and state give the same answer twice.
        assert_eq!(logits(&int8), b);
        // The patched tract's lazy int8 path (vendor/TRACT-PATCH.md: its
        // gather, and the kernel it picks for this CPU; CI also runs this
        // test under qemu-aarch64) equals stock tract's eager im2col.
        let eager = tract_onnx::tract_core::knobs::KnobScope::new([
            ("TRACT_QUANT_EAGER_IM2COL", "1"),
            ("TRACT_FERD_AVX2_I8_KMAJOR", "1"),
        ])
        .unwrap()
        .enter(|| {
            LoadedModel::load(
                &shipped("expression-kd-int8-nnef.toml"),
                Task::Expression,
                None,
            )
        })
        .unwrap();
        assert_eq!(logits(&eager), b);
    }

    #[test]
    fn an_nnef_model_whose_input_differs_from_its_manifest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = edited(
            dir.path(),
            "expression-kd-int8-nnef.toml",
            &[("shape = [1, 1, 48, 48]", "shape = [1, 1, 64, 64]")],
        );
        std::fs::copy(
            shipped("expression-kd-int8.nnef.tgz"),
            dir.path().join("expression-kd-int8.nnef.tgz"),
        )
        .unwrap();
        let e = LoadedModel::load(&manifest, Task::Expression, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("graph input shape") && e.contains("[1, 1, 64, 64]"),
            "{e}"
        );
    }

    #[test]
    fn a_zero_stride_is_refused_naming_the_manifest_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = edited(
            dir.path(),
            "retinaface-mnet025.toml",
            &[("strides = [8, 16, 32]", "strides = [8, 0, 32]")],
        );
        let err = load_err(&path);
        assert!(
            err.contains(&path.display().to_string())
                && err.contains("key `detector.strides`: must be positive"),
            "{err}"
        );
    }

    /// Text replacements in a manifest: (from, to).
    type Edits = &'static [(&'static str, &'static str)];

    #[test]
    fn every_key_the_runtime_relies_on_is_checked() {
        let det = "retinaface-mnet025.toml";
        let expr = "expression.toml";
        let cases: [(&str, Edits, &str); 12] = [
            (
                det,
                &[("[[16, 32], [64", "[[], [64")],
                "detector.anchor_sizes",
            ),
            (det, &[("[[16, 32]", "[[-16, 32]")], "detector.anchor_sizes"),
            (det, &[("[0.1, 0.2]", "[0.1, inf]")], "detector.variance"),
            (det, &[("[1, 3, 0, 0]", "[0, 3, 0, 0]")], "input.shape"),
            (det, &[("[1, 3, 0, 0]", "[1, 3, 5000, 0]")], "input.shape"),
            (det, &[("[1, 3, 0, 0]", "[1, 3, 0]")], "input.shape"),
            (
                det,
                &[("[104.0, 117.0, 127.0]", "[104.0, nan, 127.0]")],
                "input.mean",
            ),
            (det, &[("scale = 1.0", "scale = inf")], "input.scale"),
            (
                det,
                &[("color = \"bgr\"", "color = \"grey\"")],
                "input.color",
            ),
            (expr, &[("[1, 1, 48, 48]", "[1, 1, 48, 0]")], "input.shape"),
            (expr, &[("std = [0.5]", "std = [0.0]")], "input.std"),
            (
                expr,
                &[("color = \"grey\"", "color = \"rgb\"")],
                "input.color",
            ),
        ];
        for (file, edits, key) in cases {
            let dir = tempfile::tempdir().unwrap();
            let err = load_err(&edited(dir.path(), file, edits));
            assert!(
                err.contains(file) && err.contains(&format!("key `{key}`")),
                "{edits:?}: {err}"
            );
        }
        // A colour expression manifest is fine as a manifest: the
        // classifier feeds such a model three planes.
        let dir = tempfile::tempdir().unwrap();
        let rgb = edited(
            dir.path(),
            expr,
            &[
                ("[1, 1, 48, 48]", "[1, 3, 48, 48]"),
                ("color = \"grey\"", "color = \"rgb\""),
                ("mean = [0.5]", "mean = [0.5, 0.5, 0.5]"),
                ("std = [0.5]", "std = [0.5, 0.5, 0.5]"),
            ],
        );
        assert_eq!(Manifest::load(&rgb).unwrap().input.color, ColorOrder::Rgb);
    }

    #[test]
    fn a_wrapped_read_error_prints_its_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = edited(
            dir.path(),
            "expression.toml",
            &[("file = \"expression-kd.onnx\"", "file = \"gone.onnx\"")],
        );
        let io = std::fs::metadata(dir.path().join("gone.onnx"))
            .unwrap_err()
            .to_string();
        let err = LoadedModel::load(&path, Task::Expression, None).unwrap_err();
        assert!(matches!(err, ModelError::Read { .. }), "{err}");
        let chain = format!("{:#}", anyhow::Error::new(err).context("loading"));
        assert_eq!(chain.matches(&io).count(), 1, "{chain}");
        assert!(chain.contains("gone.onnx"), "{chain}");
    }

    #[test]
    fn model_and_manifest_files_must_be_regular_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = edited(
            dir.path(),
            "expression.toml",
            &[("file = \"expression-kd.onnx\"", "file = \"/dev/zero\"")],
        );
        let err = LoadedModel::load(&path, Task::Expression, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/dev/zero") && err.contains("character device"),
            "{err}"
        );

        let big = edited(
            dir.path(),
            "expression.toml",
            &[("file = \"expression-kd.onnx\"", "file = \"big.onnx\"")],
        );
        // Sparse: a size, no data, nothing hashed.
        std::fs::File::create(dir.path().join("big.onnx"))
            .unwrap()
            .set_len(MAX_MODEL_FILE_BYTES + 1)
            .unwrap();
        let err = LoadedModel::load(&big, Task::Expression, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("big.onnx") && err.contains("256 MiB limit"),
            "{err}"
        );

        // A manifest that is a FIFO with no writer: refused, not waited on.
        let fifo = dir.path().join("fifo.toml");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo has no other inputs.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = load_err(&fifo);
        assert!(err.contains("fifo.toml") && err.contains("a FIFO"), "{err}");
    }
}
