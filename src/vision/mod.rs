//! The vision stages: finding faces and classifying their expressions.
//!
//! [`Analyze`] is the seam between the pipeline and these stages: the
//! pipeline hands it a frame and gets observations back, so it runs the
//! same with the real models ([`Analyzer`]) or a fake in tests. A further
//! stage (a face mesh, loaded only when a rule needs it) joins behind the
//! same trait by adding to [`Observation`].

pub mod classifier;
pub mod detector;
pub mod landmarks;
pub mod model;

use std::path::Path;

pub use classifier::Classifier;
pub use detector::{BBox, Detector, Face};
pub use model::{LoadedModel, Manifest, ModelError};

use crate::config::Config;
use crate::driver::FaceMeasure;
use crate::expression::Probs;
use crate::frame::Frame;

/// A face found in one frame, with its expression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// What the detector found.
    pub face: Face,
    /// Expression probabilities of this frame alone (unsmoothed).
    pub probs: Probs,
    /// Eye, mouth and head measurements from the landmark stage; `None`
    /// when no landmark stage ran.
    pub measure: Option<FaceMeasure>,
}

/// One frame in, the faces seen in it out.
pub trait Analyze {
    /// The expression model's name, for the `started` event.
    fn model_name(&self) -> &str;

    /// Finds and describes every face of `frame` into `out` (cleared
    /// first, so its allocation is reused frame after frame). An error
    /// means this frame could not be analysed; the next one may be.
    fn analyze_into(&mut self, frame: &Frame, out: &mut Vec<Observation>)
        -> Result<(), ModelError>;
}

/// Detector and classifier together: one frame in, observations out.
pub struct Analyzer {
    /// The face detector.
    pub detector: Detector,
    /// The expression classifier.
    pub classifier: Classifier,
    /// The landmark stage, present only when a rule needs it
    /// ([`crate::config::Config::needs_landmarks`]).
    pub landmarker: Option<landmarks::Landmarker>,
}

impl Analyzer {
    /// Loads the models from their manifests (found with
    /// [`Config::detector_model`] and [`Config::classifier_model`]), with
    /// the config's settings.
    pub fn load(
        detector: &Path,
        classifier: &Path,
        config: &Config,
    ) -> Result<Analyzer, ModelError> {
        Ok(Analyzer {
            detector: Detector::load(detector, &config.detector)?,
            classifier: Classifier::load(classifier, &config.classifier)?,
            landmarker: None,
        })
    }

    /// Finds and classifies every face of a frame.
    pub fn analyze(&self, frame: &Frame) -> Result<Vec<Observation>, ModelError> {
        let mut out = Vec::new();
        self.observe(frame, &mut out)?;
        Ok(out)
    }

    fn observe(&self, frame: &Frame, out: &mut Vec<Observation>) -> Result<(), ModelError> {
        out.clear();
        for face in self.detector.detect(frame)? {
            let probs = self.classifier.classify_face(frame, &face)?;
            let measure = match &self.landmarker {
                Some(l) => Some(l.measure(frame, &landmarks::roi_for_face(&face))?.1),
                None => None,
            };
            out.push(Observation {
                face,
                probs,
                measure,
            });
        }
        Ok(())
    }
}

impl Analyze for Analyzer {
    fn model_name(&self) -> &str {
        &self.classifier.model().manifest.model.name
    }

    fn analyze_into(
        &mut self,
        frame: &Frame,
        out: &mut Vec<Observation>,
    ) -> Result<(), ModelError> {
        self.observe(frame, out)
    }
}
