//! Shared by the integration tests: prerequisites a fresh machine may
//! lack, and scratch copies of the models.
//!
//! Each test crate compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// Whether the calling test has what it needs: `what` (e.g.
/// "systemd-analyze") is `available`. When it is not, the test must not
/// pass silently as if it had run. Outside CI it prints one plain line on
/// stderr and returns false, so the caller returns early and `cargo test`
/// on a fresh machine still passes while saying what it left out. Under
/// `CI=true` (set by `.ci/run`) it panics saying the same, so CI can
/// never pass without running the test.
pub fn require(what: &str, available: bool, how_to_get: &str) -> bool {
    if available {
        return true;
    }
    // libtest names each test's thread after the test; with
    // --test-threads=1 the tests may run on the main thread instead.
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(name) if name != "main" => name,
        _ => "this test",
    };
    let missing = format!("{test}: needs {what} ({how_to_get})");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{missing}; with CI=true a missing prerequisite is a failure");
    }
    // Straight to the stderr handle: libtest captures eprintln! from
    // passing tests, which would hide the skip.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {missing}; set CI=true to make this a failure"
    );
    false
}

/// A config in a scratch directory pointing at copies of the shipped
/// models, so tests can break them.
pub fn scratch_models(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    for entry in std::fs::read_dir(root.join("models")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, models.join(p.file_name().unwrap())).unwrap();
    }
    let config = dir.join("ferd.toml");
    std::fs::write(
        &config,
        "[detector]\nmodel = \"models/retinaface-mnet025.toml\"\n[classifier]\nmodel = \"models/expression.toml\"\n",
    )
    .unwrap();
    config
}

/// FER2013 PublicTest (`val/`): `../shared/datasets/fer2013/val` beside the
/// repository, or `$FERD_FER2013/val`. None (the test SKIPs, or fails under
/// CI=true) where the dataset is absent, as on a fresh machine.
pub fn fer2013_val() -> Option<PathBuf> {
    let base = std::env::var_os("FERD_FER2013")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/fer2013")
        });
    let val = base.join("val");
    let found = val.is_dir();
    require(
        &format!("the FER2013 dataset's val/ folder at {}", val.display()),
        found,
        "put the dataset at ../shared/datasets/fer2013 beside the repository, or set FERD_FER2013 to its folder",
    )
    .then_some(val)
}
