//! Snapshot of the status screen for a fixed state, independent of the
//! models: the renderer drawn through the PNG backend must match
//! tests/data/status-screen.png pixel for pixel.

use std::path::Path;

use ferd::expression::Probs;
use ferd::sink::png::PngDisplay;
use ferd::sink::{Display, StatusScreen};

#[test]
fn status_screen_matches_reference() {
    let screen = StatusScreen {
        faces: 3,
        probs: Some(Probs([0.42, 0.01, 0.2, 0.02, 0.25, 0.05, 0.05])),
        alerts: vec!["distress".into()],
        degraded: false,
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("screen.png");
    let mut d = PngDisplay::new(out.clone());
    d.show(&screen).unwrap();
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/status-screen.png");
    if std::env::var_os("FERD_BLESS").is_some() {
        std::fs::copy(&out, &reference).unwrap();
    }
    let got = image::open(&out).unwrap().into_luma8();
    let want = image::open(&reference).unwrap().into_luma8();
    assert_eq!(got.dimensions(), (512, 256));
    assert!(got == want, "screen differs from {}", reference.display());
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
