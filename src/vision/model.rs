//! Model manifests and loading a model through tract.
//!
//! Every model file ships with a TOML manifest beside it. The manifest is
//! the contract between the training side and the runtime: input shape and
//! normalisation, labels, checksum. Loading checks the checksum before the
//! bytes reach the ONNX parser and checks the graph's declared input shape
//! against the manifest, so a wrong or corrupt file is a clear start-up
//! error instead of a silent garbage result.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// What went wrong loading a model, always naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A manifest or model file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
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
}

/// `[input]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// NCHW shape; 0 marks a free dimension.
    pub shape: Vec<usize>,
    /// Only `NCHW` is supported.
    pub layout: String,
    /// Channel order of the input.
    pub color: ColorOrder,
    /// Multiplier applied to 0..255 pixel values first.
    pub scale: f32,
    /// Per-channel mean subtracted after scaling.
    pub mean: Vec<f32>,
    /// Per-channel divisor applied last.
    pub std: Vec<f32>,
}

/// Channel order of a network input.
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
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The manifest it was loaded from.
    pub manifest: Manifest,
    /// The ONNX file.
    pub path: PathBuf,
    /// The concrete input shape it was optimised for.
    pub input_shape: Vec<usize>,
    /// The optimised plan.
    pub plan: Arc<TypedRunnableModel>,
}

impl Manifest {
    /// Reads and checks a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let m: Manifest = toml::from_str(&text).map_err(|e| ModelError::Manifest {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        m.check(path)?;
        Ok(m)
    }

    fn check(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |message: String| ModelError::Manifest {
            path: path.to_path_buf(),
            message,
        };
        let i = &self.input;
        if i.layout != "NCHW" {
            return Err(bad(format!(
                "input.layout {:?} unsupported (only NCHW)",
                i.layout
            )));
        }
        if i.shape.len() != 4 {
            return Err(bad(format!(
                "input.shape must have 4 dimensions, has {}",
                i.shape.len()
            )));
        }
        let channels = match i.color {
            ColorOrder::Grey => 1,
            ColorOrder::Bgr | ColorOrder::Rgb => 3,
        };
        if i.shape[1] != channels || i.mean.len() != channels || i.std.len() != channels {
            return Err(bad(format!(
                "input.color {:?} needs {channels} channels in input.shape[1], input.mean and input.std",
                i.color
            )));
        }
        if i.std.iter().any(|&s| s == 0.0 || !s.is_finite()) || !i.scale.is_finite() {
            return Err(bad(
                "input.std must be non-zero and input.scale finite".into()
            ));
        }
        if self.model.sha256.len() != 64
            || !self.model.sha256.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(bad("model.sha256 must be 64 hex digits".into()));
        }
        match self.model.task {
            Task::Expression => {
                let labels = self.output.labels.as_deref().unwrap_or(&[]);
                let expected: Vec<&str> = crate::expression::Expression::ALL
                    .iter()
                    .map(|e| e.name())
                    .collect();
                if labels != expected.as_slice() {
                    return Err(bad(format!(
                        "output.labels must be the FER2013 order {expected:?}, got {labels:?}"
                    )));
                }
                if self.output.kind == OutputKind::Retinaface {
                    return Err(bad(
                        "an expression model's output.kind must be logits or probabilities".into(),
                    ));
                }
                if i.shape.contains(&0) {
                    return Err(bad("an expression model needs a fixed input.shape".into()));
                }
            }
            Task::FaceDetector => {
                let Some(d) = &self.detector else {
                    return Err(bad(
                        "a face-detector manifest needs a [detector] section".into()
                    ));
                };
                if d.strides.is_empty() || d.strides.len() != d.anchor_sizes.len() {
                    return Err(bad("detector.strides and detector.anchor_sizes must have the same, non-zero length".into()));
                }
                if self.output.kind != OutputKind::Retinaface {
                    return Err(bad(
                        "a face detector's output.kind must be retinaface".into()
                    ));
                }
            }
        }
        Ok(())
    }
}

impl LoadedModel {
    /// Loads the model a manifest describes, checking task, checksum and
    /// input shape. `free_dims` fills the manifest's free (0) dimensions, in
    /// order; the plan is optimised for the resulting concrete shape.
    pub fn load(
        manifest_path: &Path,
        task: Task,
        free_dims: &[usize],
    ) -> Result<LoadedModel, ModelError> {
        let manifest = Manifest::load(manifest_path)?;
        if manifest.model.task != task {
            return Err(ModelError::Manifest {
                path: manifest_path.to_path_buf(),
                message: format!(
                    "model.task is {:?}, but this slot needs {:?}",
                    manifest.model.task, task
                ),
            });
        }
        let dir = manifest_path.parent().unwrap_or(Path::new("."));
        let path = dir.join(&manifest.model.file);
        let bytes = std::fs::read(&path).map_err(|source| ModelError::Read {
            path: path.clone(),
            source,
        })?;
        let actual = hex(&Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&manifest.model.sha256) {
            return Err(ModelError::Checksum {
                path,
                expected: manifest.model.sha256.clone(),
                actual,
            });
        }

        let mut free = free_dims.iter();
        let mut input_shape = Vec::with_capacity(4);
        for &d in &manifest.input.shape {
            if d == 0 {
                match free.next() {
                    Some(&f) if f > 0 => input_shape.push(f),
                    _ => {
                        return Err(ModelError::Shape {
                            path,
                            message: "no size given for a free input dimension".into(),
                        })
                    }
                }
            } else {
                input_shape.push(d);
            }
        }

        let tract_err = |stage: &'static str, path: &Path, e: anyhow::Error| ModelError::Tract {
            path: path.to_path_buf(),
            stage,
            message: format!("{e:#}"),
        };
        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(|e| tract_err("parse the ONNX graph", &path, e))?;
        check_declared_input(&model, &manifest.input.shape, &path)?;
        let model = model
            .with_input_fact(0, f32::fact(&input_shape).into())
            .and_then(|m| m.into_optimized())
            .map_err(|e| tract_err("type and optimise the graph", &path, e))?;
        let plan = model
            .into_runnable()
            .map_err(|e| tract_err("build the execution plan", &path, e))?;
        Ok(LoadedModel {
            manifest,
            path,
            input_shape,
            plan,
        })
    }

    /// Runs the plan on one input tensor and returns its outputs.
    pub fn run(&self, input: Tensor) -> Result<TVec<TValue>, ModelError> {
        self.plan
            .run(tvec!(input.into()))
            .map_err(|e| ModelError::Tract {
                path: self.path.clone(),
                stage: "run",
                message: format!("{e:#}"),
            })
    }
}

/// The ONNX file's declared input must agree with the manifest wherever
/// both give a concrete size; a 3-channel model under a grey manifest would
/// otherwise fail later with a less helpful message, or not at all.
fn check_declared_input(
    model: &InferenceModel,
    expected: &[usize],
    path: &Path,
) -> Result<(), ModelError> {
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
                "graph input has rank {}, manifest says shape {expected:?}",
                dims.len()
            ),
        });
    }
    for (i, (d, &e)) in dims.iter().zip(expected).enumerate() {
        let declared = d.concretize().and_then(|d| d.to_i64().ok());
        if let Some(declared) = declared {
            if e != 0 && declared != e as i64 {
                return Err(ModelError::Shape {
                    path: path.to_path_buf(),
                    message: format!(
                        "graph input dimension {i} is {declared}, manifest says shape {expected:?}"
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
