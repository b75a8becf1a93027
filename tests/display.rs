//! Snapshots of the status screen for fixed states, independent of the
//! models: the renderer drawn through the PNG backend must match the PNGs
//! under tests/data/ pixel for pixel. After a deliberate change of the
//! layout, `FERD_BLESS=1 cargo test --release --test display` rewrites
//! them (review the pictures before committing).

use std::path::Path;
use std::time::Duration;

use ferd::driver::EyeState;
use ferd::expression::Probs;
use ferd::sink::png::PngDisplay;
use ferd::sink::{Display, DriverLine, StatusScreen};

/// Draws `screen` through the PNG backend and compares it with
/// `tests/data/<name>` (written first under `FERD_BLESS`).
fn matches_reference(screen: &StatusScreen, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("screen.png");
    let mut d = PngDisplay::new(out.clone());
    d.show(screen).unwrap();
    let reference = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    if std::env::var_os("FERD_BLESS").is_some() {
        std::fs::copy(&out, &reference).unwrap();
    }
    let got = image::open(&out).unwrap().into_luma8();
    let want = image::open(&reference).unwrap().into_luma8();
    assert_eq!(got.dimensions(), (512, 256));
    assert!(got == want, "screen differs from {}", reference.display());
}

/// An expression-only config: no driver line, the layout of before.
#[test]
fn status_screen_matches_reference() {
    let screen = StatusScreen {
        faces: 3,
        probs: Some(Probs([0.42, 0.01, 0.2, 0.02, 0.25, 0.05, 0.05])),
        alerts: vec!["distress".into()],
        degraded: false,
        driver: None,
    };
    matches_reference(&screen, "status-screen.png");
}

/// A fatigue config with the eyes closed for 2.4 s, PERCLOS 18% and the
/// `eyes_closed` alert raised.
#[test]
fn driver_screen_matches_reference() {
    let screen = StatusScreen {
        faces: 1,
        probs: Some(Probs([0.05, 0.02, 0.08, 0.04, 0.31, 0.03, 0.47])),
        alerts: vec!["eyes_closed".into()],
        degraded: false,
        driver: Some(DriverLine {
            eyes: EyeState::Closed,
            closed_for: Some(Duration::from_millis(2400)),
            perclos: Some(0.18),
            watching: true,
        }),
    };
    matches_reference(&screen, "status-screen-driver.png");
}

/// A fatigue config that cannot see the eyes (sunglasses): unknown eyes,
/// PERCLOS without enough coverage, the driver unwatched.
#[test]
fn unwatched_driver_screen_matches_reference() {
    let screen = StatusScreen {
        faces: 1,
        probs: Some(Probs([0.02, 0.01, 0.03, 0.1, 0.04, 0.05, 0.75])),
        alerts: vec![],
        degraded: false,
        driver: Some(DriverLine {
            eyes: EyeState::Unknown,
            closed_for: None,
            perclos: None,
            watching: false,
        }),
    };
    matches_reference(&screen, "status-screen-unwatched.png");
}

#[test]
fn unchanged_screen_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("screen.png");
    let mut d = PngDisplay::new(out.clone());
    let screen = StatusScreen::default();
    d.show(&screen).unwrap();
    std::fs::remove_file(&out).unwrap();
    d.show(&screen).unwrap();
    assert!(!out.exists(), "same picture, no write");
    d.show(&StatusScreen { faces: 1, ..screen }).unwrap();
    assert!(out.exists());
}
