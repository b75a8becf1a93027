//! The detector's face following (`ferd::vision::follow`) with the
//! shipped models: no face the whole-frame search finds is lost, new faces
//! are found on the frame they appear, and the window thread finds what
//! one thread finds. Here rather than in the library's unit tests because
//! CI runs those under qemu-user for aarch64 too, where these model runs
//! took 14 minutes.

use std::path::Path;

use ferd::frame::Frame;
use ferd::vision::detector::{BBox, Detector, Face, Window, AROUND_SIDES};
use ferd::vision::follow::{square_around, FaceFollow, Search};

/// The packaged config's detector with its windows loaded.
fn shipped_with_windows() -> Detector {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = ferd::config::Config::load(&root.join("systemd/ferd.toml")).unwrap();
    let manifest = config.detector_model().unwrap();
    let mut detector = Detector::load(&manifest, &config.detector).unwrap();
    assert!(detector.load_around(&manifest, &config.detector).unwrap());
    detector
}

/// The fixture with two faces, 320×240 grey.
fn two_faces() -> Frame {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    ferd::source::open(&root.join("tests/data/faces/two_faces.png"))
        .unwrap()
        .next_frame()
        .unwrap()
        .unwrap()
}

/// On the demo clip (faces 58–107 px, changing every second),
/// following finds every face the whole-frame search finds on the
/// same frame, with nearly the same box.
#[test]
fn following_loses_no_face_the_whole_search_finds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let detector = shipped_with_windows();
    let mut follow = FaceFollow::new(10);
    let mut clip = ferd::source::open(&root.join("examples/demo.y4m")).unwrap();
    let (mut frames, mut around, mut matched) = (0, 0, 0);
    let mut faces = Vec::new();
    while let Some(frame) = clip.next_frame() {
        let frame = frame.unwrap();
        let searched = follow.find(&detector, &frame, &mut faces).unwrap();
        let truth = detector.detect(&frame).unwrap();
        for t in &truth {
            let best = faces
                .iter()
                .map(|f| f.bbox.iou(&t.bbox))
                .fold(0.0, f32::max);
            assert!(
                best >= 0.6,
                "frame {}: the whole search's face {:?} was not found ({searched:?}; found {:?})",
                frame.sequence,
                t.bbox,
                faces
            );
            matched += 1;
        }
        assert_eq!(faces.len(), truth.len(), "frame {}", frame.sequence);
        frames += 1;
        around += usize::from(searched == Search::Around);
    }
    assert_eq!(frames, 105);
    assert!(matched > 100, "{matched} faces");
    // The demo changes its picture every 5 frames (a whole search at
    // each change, by the gate); the frames in between are followed.
    assert!(
        around >= frames / 2,
        "followed on only {around} of {frames} frames"
    );
}

/// An empty scene is searched every `every` frames; someone stepping
/// in, and then someone else beside the followed face, outside its
/// window: the gate sends each of those frames to a whole search,
/// which finds them.
#[test]
fn a_face_stepping_in_away_from_the_followed_one_is_found_at_once() {
    let detector = shipped_with_windows();
    let both = two_faces();
    let found = detector.detect(&both).unwrap();
    assert_eq!(found.len(), 2);
    // The same picture with the second face painted over.
    let gone = found[1].bbox;
    let mut one = both.clone();
    for y in (gone.y - 10.0) as u32..(gone.y + gone.h + 10.0) as u32 {
        for x in (gone.x - 10.0) as u32..(gone.x + gone.w + 10.0) as u32 {
            one.data[(y * one.width + x) as usize] = 128;
        }
    }
    // And with neither: an empty scene.
    let mut empty = one.clone();
    let first = found[0].bbox;
    for y in (first.y - 10.0) as u32..(first.y + first.h + 10.0) as u32 {
        for x in (first.x - 10.0) as u32..(first.x + first.w + 10.0) as u32 {
            empty.data[(y * empty.width + x) as usize] = 128;
        }
    }
    let mut follow = FaceFollow::new(10);
    let mut faces = Vec::new();
    let mut find =
        |frame: &Frame, faces: &mut Vec<Face>| follow.find(&detector, frame, faces).unwrap();
    // Nothing to find in a still, empty scene: searched once, then
    // again only after `every` frames.
    assert_eq!(find(&empty, &mut faces), Search::Whole);
    assert!(faces.is_empty());
    for _ in 0..9 {
        assert_eq!(find(&empty, &mut faces), Search::Skipped);
        assert!(faces.is_empty());
    }
    assert_eq!(find(&empty, &mut faces), Search::Whole);
    assert_eq!(find(&empty, &mut faces), Search::Skipped);
    // Someone steps in: found on that frame.
    assert_eq!(find(&one, &mut faces), Search::Whole);
    assert_eq!(faces.len(), 1);
    for _ in 0..3 {
        assert_eq!(find(&one, &mut faces), Search::Around);
        assert_eq!(faces.len(), 1);
    }
    // Outside the followed face's square, as the test needs.
    assert!(square_around(&faces[0].bbox).iou(&gone) == 0.0);
    assert_eq!(find(&both, &mut faces), Search::Whole);
    assert_eq!(faces.len(), 2);
    assert_eq!(find(&both, &mut faces), Search::Around);
    assert_eq!(faces.len(), 2);
}

/// The window thread changes where a window is searched, not what is
/// found: the same faces as one thread, pair after pair, each window
/// in its own place (a swap would show: the faces differ).
#[test]
fn two_threads_search_windows_exactly_as_one_does() {
    let one = shipped_with_windows();
    let two = shipped_with_windows().with_window_thread().unwrap();
    assert!(two.has_window_thread() && !one.has_window_thread());
    let frame = two_faces();
    let found = one.detect(&frame).unwrap();
    assert_eq!(found.len(), 2);
    let mut windows: Vec<Window> = found
        .iter()
        .map(|f| one.window_around(&frame, &f.bbox).unwrap())
        .collect();
    // And the smallest network's window on the first face, so that
    // the worker switches plans between jobs.
    let (cx, cy) = found[0].bbox.center();
    let small = BBox {
        x: cx - 20.0,
        y: cy - 20.0,
        w: 40.0,
        h: 40.0,
    };
    windows.push(one.window_around(&frame, &small).unwrap());
    assert_eq!(windows[2].side(), AROUND_SIDES[0]);
    assert_ne!(windows[0].side(), windows[2].side());
    let (mut a1, mut b1, mut a2, mut b2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, j) in [(0, 1), (1, 0), (0, 2), (2, 1)] {
        let pair = [&windows[i], &windows[j]];
        for _ in 0..2 {
            one.detect_in_windows(&frame, pair, &mut a1, &mut b1)
                .unwrap();
            two.detect_in_windows(&frame, pair, &mut a2, &mut b2)
                .unwrap();
            assert_eq!((&a1, &b1), (&a2, &b2), "windows {i} and {j}");
        }
        // The two faces' windows find each its own face: a swap of
        // results would show.
        if (i, j) == (0, 1) {
            assert!(!a1.is_empty() && !b1.is_empty());
            assert_ne!(a1, b1);
        }
    }
}

/// A face large in its window is searched without the detector's finest
/// pyramid level (half its multiply-adds) and found exactly as with it; a
/// small one keeps that level.
#[test]
fn large_faces_are_searched_without_the_finest_level_and_found_as_with_it() {
    let detector = shipped_with_windows();
    let frame = two_faces();
    let faces = detector.detect(&frame).unwrap();
    assert_eq!(faces.len(), 2);
    let (mut coarse, mut full) = (Vec::new(), Vec::new());
    for face in &faces {
        let window = detector.window_around(&frame, &face.bbox).unwrap();
        assert!(window.is_coarse(), "{:?} in {window:?}", face.bbox);
        let every = window.with_every_level();
        assert!(!every.is_coarse() && every.place == window.place);
        detector
            .detect_in_window(&frame, &window, &mut coarse)
            .unwrap();
        detector
            .detect_in_window(&frame, &every, &mut full)
            .unwrap();
        assert!(!coarse.is_empty());
        assert_eq!(coarse, full);
    }
    // 40 px at the whole search's scale: the 32-px anchors' size.
    let (cx, cy) = faces[0].bbox.center();
    let small = BBox {
        x: cx - 20.0,
        y: cy - 20.0,
        w: 40.0,
        h: 40.0,
    };
    let window = detector.window_around(&frame, &small).unwrap();
    assert!(!window.is_coarse(), "{window:?}");
}
