//! Accuracy of the expression classifier on a labelled dataset, measured
//! through the same runtime and preprocessing the device uses.
//!
//! The dataset is the Kaggle folder layout of FER2013 (`DIR/<label>/*.jpg`).
//! Its images are already face crops, so each one is classified whole
//! ([`Crop::whole`]) through the same sampler and normalisation that crops
//! detected faces in `ferd run`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::expression::Expression;
use crate::source::{decode_image, SourceError};
use crate::vision::classifier::Crop;
use crate::vision::{Classifier, ModelError};

/// Why a dataset could not be evaluated. Causes are part of the message,
/// never also `source()`, so that anyhow's `{:#}` prints each once.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The folder or one of its class folders could not be listed.
    #[error("{path}: {error}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The I/O error; shown in the message, not chained.
        error: std::io::Error,
    },
    /// No class folder with images was found.
    #[error("{0}: no images in class folders named after the expressions (angry/, disgust/, ..., neutral/)")]
    Empty(PathBuf),
    /// The model failed on an image.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A labelled image.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The image file.
    pub path: PathBuf,
    /// Its label (from the folder name).
    pub label: Expression,
}

/// Lists `DIR/<label>/*.{jpg,jpeg,png}`, sorted; folders that are not an
/// expression name are logged and ignored. Files are chosen by name: one
/// that is not a regular image file is skipped with its reason by
/// [`evaluate`], without being opened.
pub fn list_dataset(dir: &Path) -> Result<Vec<Sample>, EvalError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| EvalError::Io { path, error }
    };
    let mut samples = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort();
    for class_dir in entries.into_iter().filter(|p| p.is_dir()) {
        let name = class_dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Ok(label) = name.parse::<Expression>() else {
            log::warn!("{}: not an expression name, ignored", class_dir.display());
            continue;
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class_dir)
            .map_err(io(&class_dir))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io(&class_dir))?;
        files.retain(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                ["jpg", "jpeg", "png"]
                    .iter()
                    .any(|x| e.eq_ignore_ascii_case(x))
            })
        });
        files.sort();
        samples.extend(files.into_iter().map(|path| Sample { path, label }));
    }
    if samples.is_empty() {
        return Err(EvalError::Empty(dir.to_path_buf()));
    }
    Ok(samples)
}

/// A confusion matrix over the seven classes: `counts[truth][predicted]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    /// The counts.
    pub counts: [[u64; 7]; 7],
}

impl Confusion {
    /// Records one prediction.
    pub fn add(&mut self, truth: Expression, predicted: Expression) {
        self.counts[truth.index()][predicted.index()] += 1;
    }

    /// Number of samples.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Fraction predicted correctly (0 when empty).
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..7).map(|i| self.counts[i][i]).sum();
        ratio(correct, self.total())
    }

    /// Of the samples predicted as `c`, the fraction that are `c`.
    pub fn precision(&self, c: Expression) -> f64 {
        let i = c.index();
        ratio(self.counts[i][i], (0..7).map(|t| self.counts[t][i]).sum())
    }

    /// Of the samples that are `c`, the fraction predicted as `c`.
    pub fn recall(&self, c: Expression) -> f64 {
        let i = c.index();
        ratio(self.counts[i][i], self.counts[i].iter().sum())
    }

    /// Mean recall over the classes present in the data.
    pub fn macro_recall(&self) -> f64 {
        let present: Vec<Expression> = Expression::ALL
            .into_iter()
            .filter(|c| self.counts[c.index()].iter().sum::<u64>() > 0)
            .collect();
        if present.is_empty() {
            return 0.0;
        }
        present.iter().map(|&c| self.recall(c)).sum::<f64>() / present.len() as f64
    }

    /// A text report: per-class precision/recall, the matrix, and a last
    /// line `accuracy: 0.XXXX`.
    pub fn report(&self) -> String {
        let mut s = String::new();
        s.push_str("class       precision  recall  support\n");
        for c in Expression::ALL {
            s.push_str(&format!(
                "{:<10}  {:>9.4}  {:>6.4}  {:>7}\n",
                c.name(),
                self.precision(c),
                self.recall(c),
                self.counts[c.index()].iter().sum::<u64>()
            ));
        }
        s.push_str(&format!(
            "macro recall: {:.4}\n\nconfusion (rows: truth, columns: predicted)\n",
            self.macro_recall()
        ));
        s.push_str("          ");
        for c in Expression::ALL {
            s.push_str(&format!("{:>6}", &c.name()[..3]));
        }
        s.push('\n');
        for t in Expression::ALL {
            s.push_str(&format!("{:<10}", t.name()));
            for p in Expression::ALL {
                s.push_str(&format!("{:>6}", self.counts[t.index()][p.index()]));
            }
            s.push('\n');
        }
        s.push_str(&format!("accuracy: {:.4}\n", self.accuracy()));
        s
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// The outcome of an evaluation.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Predictions against labels.
    pub confusion: Confusion,
    /// Images that could not be read, with the reason.
    pub skipped: Vec<String>,
}

/// JSON summary of an evaluation.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    /// The model's name from its manifest.
    pub model: &'a str,
    /// The dataset folder.
    pub data: &'a Path,
    /// Images evaluated.
    pub images: u64,
    /// Images that could not be read.
    pub skipped: usize,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Mean per-class recall.
    pub macro_recall: f64,
    /// Per-class precision, FER2013 order.
    pub precision: [f64; 7],
    /// Per-class recall, FER2013 order.
    pub recall: [f64; 7],
    /// Class labels, FER2013 order.
    pub labels: [&'static str; 7],
    /// `confusion[truth][predicted]`.
    pub confusion: [[u64; 7]; 7],
}

impl Evaluation {
    /// The JSON summary.
    pub fn summary<'a>(&self, model: &'a str, data: &'a Path) -> Summary<'a> {
        let c = &self.confusion;
        Summary {
            model,
            data,
            images: c.total(),
            skipped: self.skipped.len(),
            accuracy: c.accuracy(),
            macro_recall: c.macro_recall(),
            precision: Expression::ALL.map(|e| c.precision(e)),
            recall: Expression::ALL.map(|e| c.recall(e)),
            labels: Expression::ALL.map(|e| e.name()),
            confusion: c.counts,
        }
    }
}

/// Classifies every sample; `progress` is called after each image.
pub fn evaluate(
    classifier: &Classifier,
    samples: &[Sample],
    mut progress: impl FnMut(),
) -> Result<Evaluation, EvalError> {
    let mut out = Evaluation::default();
    for s in samples {
        match decode_image(&s.path) {
            Ok(frame) => {
                let probs = classifier.classify(&frame, &Crop::whole(&frame))?;
                out.confusion.add(s.label, probs.top().0);
            }
            Err(e @ (SourceError::Io { .. } | SourceError::Format { .. })) => {
                log::warn!("skipped: {e}");
                out.skipped.push(e.to_string());
            }
        }
        progress();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_from_a_small_matrix() {
        let mut c = Confusion::default();
        c.add(Expression::Happy, Expression::Happy);
        c.add(Expression::Happy, Expression::Happy);
        c.add(Expression::Happy, Expression::Sad);
        c.add(Expression::Sad, Expression::Sad);
        assert_eq!(c.total(), 4);
        assert_eq!(c.accuracy(), 0.75);
        assert_eq!(c.recall(Expression::Happy), 2.0 / 3.0);
        assert_eq!(c.precision(Expression::Sad), 0.5);
        assert_eq!(c.macro_recall(), (2.0 / 3.0 + 1.0) / 2.0);
        assert!(c.report().ends_with("accuracy: 0.7500\n"));
    }

    #[test]
    fn a_wrapped_listing_error_prints_its_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        let io = std::fs::read_dir(&missing).unwrap_err().to_string();
        let err = list_dataset(&missing).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::new(err).context("evaluating"));
        assert_eq!(chain.matches(&io).count(), 1, "{chain}");
        assert!(chain.contains("nowhere"), "{chain}");
    }

    #[test]
    fn dataset_listing_uses_class_folders() {
        let dir = tempfile::tempdir().unwrap();
        for (class, file) in [
            ("happy", "b.png"),
            ("happy", "a.png"),
            ("sad", "c.jpg"),
            ("other", "d.png"),
        ] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            std::fs::write(dir.path().join(class).join(file), b"x").unwrap();
        }
        let s = list_dataset(dir.path()).unwrap();
        let names: Vec<_> = s
            .iter()
            .map(|s| s.path.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.png", "b.png", "c.jpg"]);
        assert_eq!(s[2].label, Expression::Sad);
        assert!(matches!(
            list_dataset(&dir.path().join("other")),
            Err(EvalError::Empty(_))
        ));
    }
}
