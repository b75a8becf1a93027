//! Following faces over time.
//!
//! Faces are associated with existing tracks greedily by IoU, best pairs
//! first. A track keeps an exponential moving average of the expression
//! probabilities, so a single misclassified frame does not flip its
//! expression, and a [`DriverTrack`] fed with the face's measurements every
//! frame (nothing when the face was missed). All timing comes from frame
//! timestamps, so replays are deterministic.

use std::time::Duration;

use crate::config::TrackerConfig;
use crate::driver::DriverTrack;
use crate::expression::Probs;
use crate::vision::{BBox, Observation};

/// A face followed across frames.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// Stable id, from 1, never reused within a run.
    pub id: u64,
    /// Box of the latest observation.
    pub bbox: BBox,
    /// Detector score of the latest observation.
    pub score: f32,
    /// Smoothed expression probabilities.
    pub probs: Probs,
    /// Frame time the track was created.
    pub first_seen: Duration,
    /// Frame time of the latest observation.
    pub last_seen: Duration,
    /// Whether the track was observed in the latest frame.
    pub seen_now: bool,
    /// Driver-state signals (eyes, mouth, head), fed every frame.
    pub driver: DriverTrack,
}

/// A change in the set of tracks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrackChange {
    /// A new face.
    Appeared {
        /// The new track's id.
        id: u64,
    },
    /// A face not seen for `lost_after`.
    Lost {
        /// The lost track's id.
        id: u64,
        /// How long it was followed, first to last observation.
        duration: Duration,
    },
}

/// The tracker state.
#[derive(Debug)]
pub struct Tracker {
    min_iou: f32,
    smoothing: f32,
    lost_after: Duration,
    tracks: Vec<Track>,
    next_id: u64,
    pairs: Vec<(f32, usize, usize)>,
    /// Per track, the observation it was matched with in this frame.
    matched: Vec<Option<usize>>,
    /// Per observation, whether a track took it in this frame.
    taken: Vec<bool>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(cfg: &TrackerConfig) -> Tracker {
        let mut tracker = Tracker {
            min_iou: 0.0,
            smoothing: 0.0,
            lost_after: Duration::ZERO,
            tracks: Vec::new(),
            next_id: 1,
            pairs: Vec::new(),
            matched: Vec::new(),
            taken: Vec::new(),
        };
        tracker.set_config(cfg);
        tracker
    }

    /// Takes the settings of a reloaded configuration; the live tracks and
    /// their ids are kept.
    pub fn set_config(&mut self, cfg: &TrackerConfig) {
        self.min_iou = cfg.min_iou.0;
        self.smoothing = cfg.smoothing.0;
        self.lost_after = Duration::from_secs_f64(cfg.lost_after.0);
    }

    /// The live tracks, oldest first.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// Feeds the observations of the frame at time `t`; appends what
    /// changed to `changes` (appearances in observation order, then losses).
    pub fn update(
        &mut self,
        t: Duration,
        observations: &[Observation],
        changes: &mut Vec<TrackChange>,
    ) {
        self.pairs.clear();
        for (ti, track) in self.tracks.iter().enumerate() {
            for (oi, o) in observations.iter().enumerate() {
                let iou = track.bbox.iou(&o.face.bbox);
                if iou >= self.min_iou {
                    self.pairs.push((iou, ti, oi));
                }
            }
        }
        // Best overlaps first; ties broken by index so the result does not
        // depend on sort stability (the unstable sort needs no buffer).
        self.pairs
            .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        self.matched.clear();
        self.matched.resize(self.tracks.len(), None);
        self.taken.clear();
        self.taken.resize(observations.len(), false);
        for t in &mut self.tracks {
            t.seen_now = false;
        }
        for &(_, ti, oi) in &self.pairs {
            if self.matched[ti].is_some() || self.taken[oi] {
                continue;
            }
            self.matched[ti] = Some(oi);
            self.taken[oi] = true;
            let track = &mut self.tracks[ti];
            let o = &observations[oi];
            track.bbox = o.face.bbox;
            track.score = o.face.score;
            track.probs.blend(&o.probs, self.smoothing);
            track.last_seen = t;
            track.seen_now = true;
        }
        // Every track's driver signals advance every frame, a missed face
        // with nothing: their timing (closure, PERCLOS, gaps) is in frame
        // time, and a face not seen is an unknown eye state.
        for (track, oi) in self.tracks.iter_mut().zip(&self.matched) {
            let measure = oi.and_then(|oi| observations[oi].measure);
            track.driver.update(t, measure.as_ref());
        }
        for (oi, o) in observations.iter().enumerate() {
            if self.taken[oi] {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let mut driver = DriverTrack::new();
            driver.update(t, o.measure.as_ref());
            self.tracks.push(Track {
                id,
                bbox: o.face.bbox,
                score: o.face.score,
                probs: o.probs,
                first_seen: t,
                last_seen: t,
                seen_now: true,
                driver,
            });
            changes.push(TrackChange::Appeared { id });
        }
        let lost_after = self.lost_after;
        self.tracks.retain(|track| {
            let lost = !track.seen_now && t.saturating_sub(track.last_seen) >= lost_after;
            if lost {
                changes.push(TrackChange::Lost {
                    id: track.id,
                    duration: track.last_seen - track.first_seen,
                });
            }
            !lost
        });
    }

    /// Ends every track (end of input, shutdown).
    pub fn finish(&mut self, changes: &mut Vec<TrackChange>) {
        for track in self.tracks.drain(..) {
            changes.push(TrackChange::Lost {
                id: track.id,
                duration: track.last_seen - track.first_seen,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Probability, Seconds};
    use crate::vision::Face;

    fn obs(x: f32, p0: f32) -> Observation {
        let mut p = [0.0; 7];
        p[0] = p0;
        p[6] = 1.0 - p0;
        Observation {
            face: Face {
                bbox: BBox {
                    x,
                    y: 0.0,
                    w: 10.0,
                    h: 10.0,
                },
                score: 0.9,
                landmarks: [[0.0; 2]; 5],
            },
            probs: Probs(p),
            measure: None,
        }
    }

    fn tracker() -> Tracker {
        Tracker::new(&TrackerConfig {
            min_iou: Probability(0.3),
            smoothing: Probability(0.5),
            lost_after: Seconds(1.0),
        })
    }

    #[test]
    fn ids_are_stable_and_probs_smoothed() {
        let mut tr = tracker();
        let mut ch = Vec::new();
        tr.update(Duration::ZERO, &[obs(0.0, 1.0), obs(50.0, 0.0)], &mut ch);
        assert_eq!(
            ch,
            vec![
                TrackChange::Appeared { id: 1 },
                TrackChange::Appeared { id: 2 }
            ]
        );
        ch.clear();
        // Same faces, listed in the other order and moved a little.
        tr.update(
            Duration::from_millis(100),
            &[obs(51.0, 0.0), obs(1.0, 0.0)],
            &mut ch,
        );
        assert!(ch.is_empty());
        let t1 = &tr.tracks()[0];
        assert_eq!(t1.id, 1);
        assert_eq!(t1.bbox.x, 1.0);
        assert_eq!(t1.probs.0[0], 0.5);
    }

    #[test]
    fn track_is_lost_after_timeout_not_before() {
        let mut tr = tracker();
        let mut ch = Vec::new();
        tr.update(Duration::ZERO, &[obs(0.0, 1.0)], &mut ch);
        ch.clear();
        tr.update(Duration::from_millis(900), &[], &mut ch);
        assert!(ch.is_empty());
        tr.update(Duration::from_millis(1000), &[], &mut ch);
        assert_eq!(
            ch,
            vec![TrackChange::Lost {
                id: 1,
                duration: Duration::ZERO
            }]
        );
        assert!(tr.tracks().is_empty());
        // A new face at the same place gets a new id.
        ch.clear();
        tr.update(Duration::from_millis(1100), &[obs(0.0, 1.0)], &mut ch);
        assert_eq!(ch, vec![TrackChange::Appeared { id: 2 }]);
    }

    #[test]
    fn driver_signals_are_fed_every_frame_and_unknown_when_missed() {
        let mut tr = tracker();
        let mut ch = Vec::new();
        let closed = crate::driver::FaceMeasure {
            eyes: [Some(0.03); 2],
            mouth: None,
            pose: None,
        };
        let with = |x: f32| Observation {
            measure: Some(closed),
            ..obs(x, 1.0)
        };
        tr.update(Duration::ZERO, &[with(0.0)], &mut ch);
        tr.update(Duration::from_millis(100), &[with(1.0)], &mut ch);
        let d = &tr.tracks()[0].driver;
        assert_eq!(d.eye(), crate::driver::EyeState::Closed);
        assert_eq!(
            d.closed_for(Duration::from_millis(100)),
            Some(Duration::from_millis(100))
        );
        // Missed by the detector: the eyes are unknown.
        tr.update(Duration::from_millis(200), &[], &mut ch);
        assert_eq!(
            tr.tracks()[0].driver.eye(),
            crate::driver::EyeState::Unknown
        );
    }

    #[test]
    fn finish_loses_everything() {
        let mut tr = tracker();
        let mut ch = Vec::new();
        tr.update(Duration::ZERO, &[obs(0.0, 1.0)], &mut ch);
        tr.update(Duration::from_secs(2), &[obs(0.0, 1.0)], &mut ch);
        ch.clear();
        tr.finish(&mut ch);
        assert_eq!(
            ch,
            vec![TrackChange::Lost {
                id: 1,
                duration: Duration::from_secs(2)
            }]
        );
    }
}
