//! The vision stages: finding faces and classifying their expressions.
//!
//! [`Analyze`] is the seam between the pipeline and these stages: the
//! pipeline hands it a frame and gets observations back, so it runs the
//! same with the real models ([`Analyzer`]) or a fake in tests. A further
//! stage (a face mesh, loaded only when a rule needs it) joins behind the
//! same trait by adding to [`Observation`].

pub mod classifier;
pub mod detector;
pub mod follow;
pub mod landmarks;
pub mod model;
pub mod worker;

use std::path::Path;
use std::time::{Duration, Instant};

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

/// Where one frame's analysis time went, stage by stage (`ferd bench`).
/// Each is the wall time of that stage's calls, pre- and post-processing
/// included (the detector's resize and decoding are in `detect`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    /// The face detector.
    pub detect: Duration,
    /// The landmark stage (mesh, eyes, pose), all faces.
    pub landmarks: Duration,
    /// The expression classifier, all faces.
    pub classify: Duration,
    /// How the detector searched the frame; `None` when it did not run
    /// (faces followed by their meshes).
    pub search: Option<follow::Search>,
}

/// Runs `f`, adding its wall time to `total`. Two clock reads per stage
/// call: a few tens of nanoseconds against milliseconds of model time.
fn timed<T>(total: &mut Duration, f: impl FnOnce() -> T) -> T {
    let began = Instant::now();
    let out = f();
    *total += began.elapsed();
    out
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

    /// Where the last [`Analyze::analyze_into`] spent its time; zero for
    /// analysers that do not measure it.
    fn stage_times(&self) -> StageTimes {
        StageTimes::default()
    }
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
    /// Faces followed by their meshes between detections.
    follow: Follow,
    /// Without the landmark stage: faces followed by the detector around
    /// their last boxes between whole-frame searches
    /// ([`Analyzer::follow_faces`]); `None`: the whole frame every frame.
    around: Option<follow::FaceFollow>,
    /// The last frame's stage times.
    times: StageTimes,
    /// The detector's faces of the current frame (kept for its
    /// allocation).
    faces: Vec<Face>,
    /// Their expressions (kept for its allocation).
    probs: Vec<Probs>,
}

/// MediaPipe's way of following faces: the mesh of one frame gives the
/// crop for the next, so the detector runs only every `every` frames (to
/// find new faces) and when a followed face is lost (its mesh's presence
/// drops).
#[derive(Debug, Default)]
struct Follow {
    /// Next frame's crops, one per followed face.
    rois: Vec<classifier::Crop>,
    /// A spare buffer for the crops after next (swapped with `rois`).
    next: Vec<classifier::Crop>,
    /// Frames analysed since the detector last ran.
    since_detect: u32,
    /// Run the detector at least every this many frames.
    every: u32,
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
            follow: Follow {
                every: config.landmarks.detect_every.0,
                ..Follow::default()
            },
            around: None,
            times: StageTimes::default(),
            faces: Vec::new(),
            probs: Vec::new(),
        })
    }

    /// From now on, without the landmark stage, follows faces from frame
    /// to frame by looking only around their last boxes, searching the
    /// whole frame every `config.detector.full_frame_every` frames and
    /// whenever [`follow::FaceFollow`] says so. Loads the detector again
    /// for each window size ([`Detector::load_around`]); a detector whose
    /// input size the manifest fixes, or `full_frame_every = 1`, keeps
    /// searching whole frames.
    pub fn follow_faces(&mut self, manifest: &Path, config: &Config) -> Result<(), ModelError> {
        let every = config.detector.full_frame_every.0;
        if every > 1 && self.detector.load_around(manifest, &config.detector)? {
            self.around = Some(follow::FaceFollow::new(every));
        }
        Ok(())
    }

    /// Finds and classifies every face of a frame, searching the whole
    /// frame (one image after another: nothing is followed).
    pub fn analyze(&self, frame: &Frame) -> Result<Vec<Observation>, ModelError> {
        let mut out = Vec::new();
        let (mut faces, mut probs) = (Vec::new(), Vec::new());
        self.detector.detect_into(frame, &mut faces)?;
        let mut times = StageTimes::default();
        self.describe(frame, &faces, &mut probs, &mut out, &mut times)?;
        Ok(out)
    }

    /// The expression (and with the landmark stage, the measures) of each
    /// of `faces` into `out` (cleared first); `probs` is a buffer.
    fn describe(
        &self,
        frame: &Frame,
        faces: &[Face],
        probs: &mut Vec<Probs>,
        out: &mut Vec<Observation>,
        times: &mut StageTimes,
    ) -> Result<(), ModelError> {
        out.clear();
        timed(&mut times.classify, || {
            self.classifier.classify_faces(frame, faces, probs)
        })?;
        for (&face, &probs) in faces.iter().zip(probs.iter()) {
            let measure = match &self.landmarker {
                Some(l) => Some(
                    timed(&mut times.landmarks, || {
                        l.measure(frame, &landmarks::roi_for_face(&face))
                    })?
                    .1,
                ),
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

    /// One frame without the landmark stage: faces from the follower or
    /// the whole frame, then their expressions.
    fn observe(&mut self, frame: &Frame, out: &mut Vec<Observation>) -> Result<(), ModelError> {
        out.clear();
        let mut times = StageTimes::default();
        let (mut faces, mut probs) = (
            std::mem::take(&mut self.faces),
            std::mem::take(&mut self.probs),
        );
        let found = timed(&mut times.detect, || match &mut self.around {
            Some(around) => around.find(&self.detector, frame, &mut faces),
            None => self
                .detector
                .detect_into(frame, &mut faces)
                .map(|()| follow::Search::Whole),
        });
        let r = found.and_then(|search| {
            times.search = Some(search);
            self.describe(frame, &faces, &mut probs, out, &mut times)
        });
        (self.times, self.faces, self.probs) = (times, faces, probs);
        r
    }
}

impl Analyzer {
    /// One frame with the landmark stage: faces from the detector (every
    /// `detect_every` frames, when nothing is followed, or after a
    /// followed face was lost), otherwise from the crops the previous
    /// meshes gave.
    fn observe_with_landmarks(
        &mut self,
        l: &landmarks::Landmarker,
        frame: &Frame,
        out: &mut Vec<Observation>,
    ) -> Result<(), ModelError> {
        out.clear();
        let times = &mut self.times;
        let follow = &mut self.follow;
        let detect = follow.rois.is_empty() || follow.since_detect + 1 >= follow.every;
        // This frame's crops: from the detector, or the last meshes'.
        let mut rois = std::mem::take(&mut follow.rois);
        if detect {
            follow.since_detect = 0;
            times.search = Some(follow::Search::Whole);
            let faces = &mut self.faces;
            timed(&mut times.detect, || {
                self.detector.detect_into(frame, faces)
            })?;
            rois.clear();
            rois.extend(faces.iter().map(landmarks::roi_for_face));
        } else {
            follow.since_detect += 1;
        }
        // The next frame's crops, in the buffer of the frame before.
        let mut next = std::mem::take(&mut follow.next);
        next.clear();
        let mut lost = false;
        for roi in &rois {
            let (mesh, measure) = timed(&mut times.landmarks, || l.measure(frame, roi))?;
            if mesh.presence < landmarks::MIN_PRESENCE {
                // Not a face (any more): look again with the detector.
                lost = true;
                continue;
            }
            let face = face_from_mesh(&mesh);
            // Two crops that drifted onto one face: keep the first.
            if out.iter().any(|o| o.face.bbox.iou(&face.bbox) > 0.5) {
                continue;
            }
            let probs = timed(&mut times.classify, || {
                self.classifier.classify_face(frame, &face)
            })?;
            next.push(landmarks::roi_from_mesh(&mesh));
            out.push(Observation {
                face,
                probs,
                measure: Some(measure),
            });
        }
        self.follow.rois = next;
        self.follow.next = rois;
        if lost {
            self.follow.since_detect = self.follow.every;
        }
        Ok(())
    }
}

/// A detection made from a mesh: the box around its points (the face
/// oval: forehead, chin, cheeks, about what the detector boxes), its
/// presence as the score, and the detector's five landmarks taken from
/// the mesh (eye centres, nose tip, mouth corners), so the expression crop
/// and the tracker treat it as they treat a detection.
pub(crate) fn face_from_mesh(mesh: &landmarks::Mesh) -> Face {
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for p in &mesh.points {
        x0 = x0.min(p[0]);
        y0 = y0.min(p[1]);
        x1 = x1.max(p[0]);
        y1 = y1.max(p[1]);
    }
    let p = |i: usize| [mesh.points[i][0], mesh.points[i][1]];
    let mid = |a: usize, b: usize| {
        let (a, b) = (p(a), p(b));
        [(a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0]
    };
    Face {
        bbox: BBox {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        },
        score: mesh.presence,
        landmarks: [mid(33, 133), mid(362, 263), p(1), p(61), p(291)],
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
        self.times = StageTimes::default();
        match self.landmarker.take() {
            Some(l) => {
                let r = self.observe_with_landmarks(&l, frame, out);
                self.landmarker = Some(l);
                r
            }
            None => self.observe(frame, out),
        }
    }

    fn stage_times(&self) -> StageTimes {
        self.times
    }
}
