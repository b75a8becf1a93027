//! `ferd eval --scenes --landmarks` on one FER2013 val image per class:
//! it runs, and its counts add up.

use std::path::PathBuf;
use std::process::Command;

mod common;

#[test]
fn eval_scenes_counts_add_up() {
    let Some(val) = common::fer2013_val() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let classes = [
        "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral",
    ];
    for class in classes {
        let mut files: Vec<PathBuf> = std::fs::read_dir(val.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let first = &files[0];
        std::fs::create_dir_all(dir.path().join(class)).unwrap();
        std::fs::copy(
            first,
            dir.path().join(class).join(first.file_name().unwrap()),
        )
        .unwrap();
    }
    let o = Command::new(env!("CARGO_BIN_EXE_ferd"))
        .args(["eval", "--data", dir.path().to_str().unwrap()])
        .args(["--scenes", "--landmarks", "--json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    let j: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    assert_eq!(n(&j["images"]), 7);
    let s = &j["scenes"];
    assert_eq!(n(&s["images"]), 7);
    assert_eq!(n(&s["detected"]) + n(&s["misses"]), 7);
    let predicted = |m: &serde_json::Value| -> u64 {
        m.as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(n))
            .sum()
    };
    // Every detection got a detector-crop prediction; every one whose
    // mesh was present got a mesh-crop prediction.
    assert_eq!(predicted(&s["detector"]["confusion"]), n(&s["detected"]));
    assert_eq!(
        predicted(&s["mesh"]["confusion"]) + n(&s["mesh_lost"]),
        n(&s["detected"])
    );
    for crop in ["detector", "mesh"] {
        let correct = n(&s[crop]["correct"]);
        assert!(correct <= n(&s["detected"]));
        let accuracy = s[crop]["accuracy"].as_f64().unwrap();
        assert!(
            (accuracy - correct as f64 / 7.0).abs() < 1e-9,
            "{crop}: {s}"
        );
    }
    // The text report keeps `accuracy:` (the bare crops) as its last line
    // and states both scene accuracies.
    assert!(out.contains("detector crop accuracy: "), "{out}");
    assert!(out.contains("mesh crop accuracy: "), "{out}");
    let last = out.lines().last().unwrap();
    let bare: f64 = last.strip_prefix("accuracy: ").unwrap().parse().unwrap();
    assert!((bare - j["accuracy"].as_f64().unwrap()).abs() < 1e-4);
}
