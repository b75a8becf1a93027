//! The vision stages: finding faces and classifying their expressions.

pub mod classifier;
pub mod detector;
pub mod model;

use std::path::Path;

pub use classifier::Classifier;
pub use detector::{BBox, Detector, Face};
pub use model::{LoadedModel, Manifest, ModelError};

use crate::config::Config;
use crate::expression::Probs;
use crate::frame::Frame;

/// A face found in one frame, with its expression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// What the detector found.
    pub face: Face,
    /// Expression probabilities of this frame alone (unsmoothed).
    pub probs: Probs,
}

/// Detector and classifier together: one frame in, observations out.
pub struct Analyzer {
    /// The face detector.
    pub detector: Detector,
    /// The expression classifier.
    pub classifier: Classifier,
}

impl Analyzer {
    /// Loads both models named in the config.
    pub fn load(config: &Config) -> Result<Analyzer, ModelError> {
        Ok(Analyzer {
            detector: Detector::load(&config.resolve(&config.detector.model), &config.detector)?,
            classifier: Classifier::load(
                &config.resolve(&config.classifier.model),
                &config.classifier,
            )?,
        })
    }

    /// Loads the models from explicit manifest paths.
    pub fn load_from(
        detector: &Path,
        classifier: &Path,
        config: &Config,
    ) -> Result<Analyzer, ModelError> {
        Ok(Analyzer {
            detector: Detector::load(detector, &config.detector)?,
            classifier: Classifier::load(classifier, &config.classifier)?,
        })
    }

    /// Finds and classifies every face of a frame.
    pub fn analyze(&self, frame: &Frame) -> Result<Vec<Observation>, ModelError> {
        let faces = self.detector.detect(frame)?;
        let mut out = Vec::with_capacity(faces.len());
        for face in faces {
            let probs = self.classifier.classify_face(frame, &face)?;
            out.push(Observation { face, probs });
        }
        Ok(out)
    }
}
