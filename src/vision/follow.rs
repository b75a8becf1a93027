//! Following faces with the detector: between searches of the whole
//! frame, the detector looks only in a small square around each face it
//! follows ([`Detector::detect_around_into`]), at the scale the whole
//! search sees it at, which costs a fraction of a whole frame (a 96×96
//! input 2.4 ms against 14–16 ms for 320×240 on the dev VM).
//!
//! What a whole-frame search would find must not be lost to this, so the
//! whole frame is searched again at once, on the same frame, when:
//!
//! - `every` frames have passed since the last whole search;
//! - a followed face is not found around its last box (it left, turned
//!   away, or moved farther than its window);
//! - a square around one face holds another face that is not followed
//!   (someone stepped up beside it);
//! - the picture changed away from the followed faces ([`SceneGate`]):
//!   someone may have stepped in anywhere else.
//!
//! With no face followed, the whole frame is searched only when the
//! picture changed since the last whole search (which found nothing) or
//! `every` frames have passed: an empty, still scene costs a thumbnail a
//! frame.
//!
//! The expression pipeline uses this; the landmark stage follows faces by
//! their meshes instead (`Analyzer::observe_with_landmarks`).

use super::detector::{around_side, BBox, Detector, Face, Window};
use super::model::ModelError;
use crate::frame::Frame;

/// A face found around a followed one continues it when their boxes
/// overlap by at least this much; otherwise the followed face is lost
/// (and a face found there that continues no followed face is new).
pub const FOLLOW_MIN_IOU: f32 = 0.3;

/// Two followed faces whose boxes overlap by more than this have drifted
/// onto one face: the first is kept.
const SAME_FACE_IOU: f32 = 0.5;

/// How a frame's faces were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// The whole frame was searched.
    Whole,
    /// Only the windows around the followed faces.
    Around,
    /// Nothing: no face was followed, and the picture had not changed
    /// since a whole search that found none.
    Skipped,
}

/// A face being followed: its last box, and the window it was last
/// found in (kept while the face stays near its centre).
#[derive(Debug, Clone, Copy)]
struct Followed {
    face: Face,
    window: Option<Window>,
}

/// The detector's face follower: its state from frame to frame.
#[derive(Debug)]
pub struct FaceFollow {
    /// Search the whole frame at least every this many frames.
    every: u32,
    /// Frames since the last whole-frame search.
    since_whole: u32,
    /// The last frame's faces: where to look in this one.
    last: Vec<Followed>,
    /// This frame's, while they are found (swapped with `last`).
    next: Vec<Followed>,
    /// This frame's window for each followed face (kept for its
    /// allocation).
    windows: Vec<Window>,
    /// The faces found in each window (kept for their allocations).
    found: Vec<Vec<Face>>,
    /// Whether the picture changed away from the followed faces.
    gate: SceneGate,
}

impl FaceFollow {
    /// A follower that searches the whole frame at least every `every`
    /// frames (1: every frame, i.e. no following).
    pub fn new(every: u32) -> FaceFollow {
        FaceFollow {
            every: every.max(1),
            since_whole: 0,
            last: Vec::new(),
            next: Vec::new(),
            windows: Vec::new(),
            found: Vec::new(),
            gate: SceneGate::default(),
        }
    }

    /// Finds the faces of `frame` into `faces` (cleared first, highest
    /// score first after a whole search, in the order followed otherwise)
    /// and says how. Nothing of ferd's is allocated once the buffers have
    /// grown to the most faces seen.
    pub fn find(
        &mut self,
        detector: &Detector,
        frame: &Frame,
        faces: &mut Vec<Face>,
    ) -> Result<Search, ModelError> {
        let squares = self.last.iter().map(|f| square_around(&f.face.bbox));
        let changed = self.gate.update(frame, squares);
        let due = self.every <= 1 || self.since_whole + 1 >= self.every || changed;
        self.next.clear();
        if !due && self.last.is_empty() {
            // An empty, still scene (an idle kiosk, a parked car): the
            // whole search would find what the last one found, nothing.
            self.since_whole += 1;
            faces.clear();
            return Ok(Search::Skipped);
        }
        if !due && self.follow(detector, frame)? {
            self.since_whole += 1;
        } else {
            // A follow that gave up midway left part of its faces here.
            self.next.clear();
            detector.detect_into(frame, faces)?;
            if self.every > 1 {
                self.keep_followed_boxes(detector, frame, faces)?;
            } else {
                self.next
                    .extend(faces.iter().map(|&face| Followed { face, window: None }));
            }
            self.since_whole = 0;
            self.gate.keep_as_reference();
        }
        std::mem::swap(&mut self.last, &mut self.next);
        faces.clear();
        faces.extend(self.last.iter().map(|f| f.face));
        Ok(if self.since_whole == 0 {
            Search::Whole
        } else {
            Search::Around
        })
    }

    /// The window to look for a followed face in: the one it was last
    /// found in while that still serves, else one placed on its last box;
    /// `None` when the detector has no windows.
    fn window(detector: &Detector, frame: &Frame, prev: &Followed) -> Option<Window> {
        let fresh = detector.window_around(frame, &prev.face.bbox)?;
        Some(match prev.window {
            Some(kept) if kept.still_serves(&fresh) => kept,
            _ => fresh,
        })
    }

    /// Looks around each followed face into `next`; `false` when one was
    /// not found or a face that is not followed showed up beside one,
    /// i.e. the whole frame must be searched. Windows are searched two at
    /// a time when the detector has its second thread.
    fn follow(&mut self, detector: &Detector, frame: &Frame) -> Result<bool, ModelError> {
        self.windows.clear();
        for prev in &self.last {
            match Self::window(detector, frame, prev) {
                Some(window) => self.windows.push(window),
                None => return Ok(false),
            }
        }
        // Grows only to the most faces followed at once.
        if self.found.len() < self.windows.len() {
            self.found.resize_with(self.windows.len(), Vec::new);
        }
        for (windows, found) in self.windows.chunks(2).zip(self.found.chunks_mut(2)) {
            match (windows, found) {
                ([a, b], [found_a, found_b, ..]) => {
                    detector.detect_in_windows(frame, [a, b], found_a, found_b)?
                }
                ([a], [found_a, ..]) => detector.detect_in_window(frame, a, found_a)?,
                // Chunks of a non-empty slice, and `found` is as long.
                _ => return Ok(false),
            }
        }
        for ((prev, window), found) in self.last.iter().zip(&self.windows).zip(&self.found) {
            let someone_new = found.iter().any(|f| {
                self.last
                    .iter()
                    .all(|g| f.bbox.iou(&g.face.bbox) < FOLLOW_MIN_IOU)
            });
            let Some(face) = continuation(found, &prev.face.bbox).filter(|_| !someone_new) else {
                return Ok(false);
            };
            if self
                .next
                .iter()
                .all(|g| g.face.bbox.iou(&face.bbox) <= SAME_FACE_IOU)
            {
                self.next.push(Followed {
                    face,
                    window: Some(*window),
                });
            }
        }
        Ok(true)
    }

    /// After a whole search, its `faces` into `next`: each that continues
    /// a followed face with the box found in that face's window, when
    /// that is the same face. The network boxes a face a little
    /// differently in a window than in the whole frame (what lies outside
    /// the window changes its output); without this a followed face's
    /// box, and so its expression crop, would jump at every whole search,
    /// and an expression between two others would flip back and forth.
    fn keep_followed_boxes(
        &mut self,
        detector: &Detector,
        frame: &Frame,
        faces: &[Face],
    ) -> Result<(), ModelError> {
        for &face in faces {
            let mut kept = Followed { face, window: None };
            let prev =
                best_overlap(self.last.iter().map(|p| &p.face), &face.bbox).map(|k| &self.last[k]);
            if let Some(window) = prev.and_then(|p| Self::window(detector, frame, p)) {
                if self.found.is_empty() {
                    self.found.push(Vec::new());
                }
                let found = &mut self.found[0];
                detector.detect_in_window(frame, &window, found)?;
                if let Some(again) = continuation(found, &face.bbox) {
                    if again.bbox.iou(&face.bbox) > SAME_FACE_IOU {
                        kept = Followed {
                            face: again,
                            window: Some(window),
                        };
                    }
                }
            }
            self.next.push(kept);
        }
        Ok(())
    }
}

/// The face among `found` (looked for around `last`) that continues the
/// face whose box was `last`: the one overlapping it most, if by at least
/// [`FOLLOW_MIN_IOU`].
pub fn continuation(found: &[Face], last: &BBox) -> Option<Face> {
    best_overlap(found.iter(), last).map(|k| found[k])
}

/// The index of the face among `faces` overlapping `target` most, if by
/// at least [`FOLLOW_MIN_IOU`].
fn best_overlap<'a>(faces: impl Iterator<Item = &'a Face>, target: &BBox) -> Option<usize> {
    faces
        .map(|f| f.bbox.iou(target))
        .enumerate()
        .filter(|&(_, overlap)| overlap >= FOLLOW_MIN_IOU)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, _)| k)
}

/// The least square the detector searches around a box, as a box (the
/// one it searches is as large or larger).
pub fn square_around(bbox: &BBox) -> BBox {
    let side = around_side(bbox);
    let (cx, cy) = bbox.center();
    BBox {
        x: cx - side / 2.0,
        y: cy - side / 2.0,
        w: side,
        h: side,
    }
}

/// Columns and rows of the [`SceneGate`]'s thumbnail (20×20-pixel cells
/// on a 640×480 frame).
const GATE_COLS: usize = 32;
/// See [`GATE_COLS`].
const GATE_ROWS: usize = 24;
/// Luma samples per cell side: 16 per cell, about 12,000 per frame.
const GATE_SAMPLES: usize = 4;
/// A cell whose mean luma moved by more than this (of 255) since the last
/// whole search has changed: about a twentieth of the range, well above a
/// webcam's noise averaged over 16 samples (under 1 level), well below a
/// face pasted on a background or a person stepping in front of a wall.
pub const GATE_CHANGE: f32 = 12.0;

/// Tells whether the picture changed away from the followed faces since
/// the last whole-frame search: a 32×24 thumbnail of mean luma, compared
/// cell by cell with the one kept at that search, ignoring the cells that
/// touch a square the follower searches anyway. A flickering light or a
/// moving background makes it fire on every frame, which costs a whole
/// search per frame (what following saves), never a face.
#[derive(Debug, Default)]
pub struct SceneGate {
    /// The thumbnail of the frame of the last whole search.
    reference: Vec<f32>,
    /// This frame's thumbnail.
    current: Vec<f32>,
    /// The frame size `reference` was taken at; `None`: no reference.
    reference_size: Option<(u32, u32)>,
    /// The frame size `current` was taken at.
    current_size: (u32, u32),
}

impl SceneGate {
    /// Takes `frame`'s thumbnail and says whether any cell outside
    /// `squares` (frame pixels) changed by more than [`GATE_CHANGE`] since
    /// the reference; `true` without a reference of this frame's size.
    pub fn update(&mut self, frame: &Frame, squares: impl Iterator<Item = BBox> + Clone) -> bool {
        let (w, h) = (frame.width, frame.height);
        self.current.resize(GATE_COLS * GATE_ROWS, 0.0);
        self.current_size = (w, h);
        if w == 0 || h == 0 {
            return true;
        }
        let cell_w = w as f32 / GATE_COLS as f32;
        let cell_h = h as f32 / GATE_ROWS as f32;
        let n = GATE_SAMPLES as f32;
        // Sample positions inside a cell: the centres of a 4×4 grid.
        let at = |cell: usize, side: f32, k: usize, max: u32| {
            let p = (cell as f32 + (k as f32 + 0.5) / n) * side;
            (p as u32).min(max - 1)
        };
        for row in 0..GATE_ROWS {
            for col in 0..GATE_COLS {
                let mut sum = 0.0;
                for j in 0..GATE_SAMPLES {
                    let y = at(row, cell_h, j, h);
                    for i in 0..GATE_SAMPLES {
                        sum += frame.luma(at(col, cell_w, i, w), y);
                    }
                }
                self.current[row * GATE_COLS + col] = sum / (n * n);
            }
        }
        if self.reference_size != Some((w, h)) {
            return true;
        }
        for row in 0..GATE_ROWS {
            let (y0, y1) = (row as f32 * cell_h, (row + 1) as f32 * cell_h);
            for col in 0..GATE_COLS {
                let k = row * GATE_COLS + col;
                if (self.current[k] - self.reference[k]).abs() <= GATE_CHANGE {
                    continue;
                }
                let (x0, x1) = (col as f32 * cell_w, (col + 1) as f32 * cell_w);
                let followed = squares
                    .clone()
                    .any(|s| s.x < x1 && s.x + s.w > x0 && s.y < y1 && s.y + s.h > y0);
                if !followed {
                    return true;
                }
            }
        }
        false
    }

    /// The thumbnail of the last [`SceneGate::update`] becomes the
    /// reference (called at each whole-frame search).
    pub fn keep_as_reference(&mut self) {
        std::mem::swap(&mut self.reference, &mut self.current);
        self.reference_size = Some(self.current_size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PixelFormat;

    fn grey(w: u32, h: u32, paint: impl Fn(u32, u32) -> u8) -> Frame {
        let data = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| paint(x, y))
            .collect();
        Frame::new(w, h, PixelFormat::Grey, data)
    }

    fn square(x: f32, y: f32, side: f32) -> BBox {
        BBox {
            x,
            y,
            w: side,
            h: side,
        }
    }

    /// Noise-like texture (a fixed pattern), so unchanged means unchanged
    /// texture, not a flat picture.
    fn texture(x: u32, y: u32) -> u8 {
        (((x * 7919) ^ (y * 104_729)) % 200) as u8 + 20
    }

    #[test]
    fn the_gate_fires_without_a_reference_and_on_a_new_size() {
        let mut gate = SceneGate::default();
        let f = grey(64, 48, texture);
        assert!(gate.update(&f, std::iter::empty()));
        gate.keep_as_reference();
        assert!(!gate.update(&f, std::iter::empty()));
        let bigger = grey(128, 96, texture);
        assert!(gate.update(&bigger, std::iter::empty()));
    }

    #[test]
    fn the_gate_sees_a_change_away_from_the_faces_only() {
        let mut gate = SceneGate::default();
        let before = grey(640, 480, texture);
        gate.update(&before, std::iter::empty());
        gate.keep_as_reference();
        // A bright 60-px patch at (400, 300): someone stepping in there.
        let patch = |x: u32, y: u32| (400..460).contains(&x) && (300..360).contains(&y);
        let after = grey(
            640,
            480,
            |x, y| if patch(x, y) { 250 } else { texture(x, y) },
        );
        assert!(gate.update(&after, std::iter::empty()));
        // The same change inside a followed face's square is the
        // follower's business.
        assert!(!gate.update(&after, [square(380.0, 280.0, 100.0)].into_iter()));
        // A square elsewhere does not hide it.
        assert!(gate.update(&after, [square(0.0, 0.0, 100.0)].into_iter()));
        // A change of a few levels everywhere (noise, a small exposure
        // step) is no change.
        let dimmer = grey(640, 480, |x, y| texture(x, y) - 5);
        assert!(!gate.update(&dimmer, std::iter::empty()));
        // The reference stays the frame of the last whole search.
        assert!(gate.update(&after, std::iter::empty()));
    }
}
