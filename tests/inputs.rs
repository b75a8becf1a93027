//! Integration tests for inputs a user or a device can hand in: every one
//! ends in a clear error naming the file (exit status 3, 4 or 5 at start,
//! 1 for an input among others), or is processed;
//! none panics (exit status 101), hangs, or is read into memory unbounded.
//!
//! Bad model manifests are edited copies of the shipped ones in a scratch
//! folder; the models that ferd does not ship (a one-channel detector, a
//! colour expression classifier) are tiny ONNX graphs written by the
//! [`onnx`] module below.

use std::path::{Path, PathBuf};

mod common;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Longest a single `ferd` run may take here; one that reads a FIFO or
/// `/dev/zero` would never end, and is killed and failed instead.
const TIMEOUT: Duration = Duration::from_secs(120);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `ferd` with `args` in the repository root, killed after [`TIMEOUT`].
fn ferd(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferd"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferd runs");
    let start = Instant::now();
    while child.try_wait().expect("wait for ferd").is_none() {
        if start.elapsed() > TIMEOUT {
            child.kill().ok();
            let o = child.wait_with_output().unwrap();
            panic!(
                "ferd {args:?} still running after {TIMEOUT:?}; stderr:\n{}",
                stderr(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `ferd run` with the shipped config on one source.
fn run_on(source: &Path) -> Output {
    ferd(&[
        "run",
        "--config",
        "systemd/ferd.toml",
        "--source",
        s(source),
    ])
}

/// Asserts a refusal: exit status 1 (an error, not a panic) and every
/// needle in stderr.
/// Refused: exit status 3, 4 or 5 (config, model, input: the README's
/// table), never 101 (a panic), and the message names each of `needles`.
fn assert_refused(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        matches!(o.status.code(), Some(3..=5)),
        "{:?}: {err}",
        o.status
    );
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} missing from:\n{err}");
    }
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
}

/// The last stdout line of `ferd run`: its status summary.
fn summary(o: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).lines().last().expect("a status line")).unwrap()
}

#[test]
fn y4m_header_with_a_non_ascii_byte_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("accent.y4m");
    // "é" as a header token used to be split inside its two bytes (a panic).
    let mut bytes = "YUV4MPEG2 W4 H4 F25:1 é Cmono\nFRAME\n".as_bytes().to_vec();
    bytes.extend([0u8; 16]);
    std::fs::write(&clip, bytes).unwrap();
    assert_refused(&run_on(&clip), &["accent.y4m", "not ASCII"]);
}

#[test]
fn fifo_and_endless_devices_are_refused_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    // No writer ever opens it: reading it would block forever.
    let fifo = dir.path().join("camera.jpg");
    mkfifo(&fifo);
    for (source, what) in [
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/zero"), "a character device"),
        (Path::new("/dev/urandom"), "a character device"),
    ] {
        assert_refused(&run_on(source), &[s(source), "not a regular file", what]);
        // `detect` goes on with the other inputs: exit status 1.
        let o = ferd(&["detect", "--json", s(source)]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains(s(source)) && err.contains("not a regular file"),
            "{err}"
        );
    }
}

#[test]
fn oversized_still_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.png");
    // Sparse: 64 MiB + 1 in size, nothing on disk.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(ferd::source::MAX_IMAGE_FILE_BYTES + 1)
        .unwrap();
    assert_refused(&run_on(&big), &["big.png", "64 MiB limit"]);
}

#[test]
fn folder_with_a_fifo_reports_it_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("tests/data/faces/one_face.png"),
        dir.path().join("a.png"),
    )
    .unwrap();
    let fifo = dir.path().join("b.png");
    mkfifo(&fifo);
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("c.jpg")).unwrap();
    let o = run_on(dir.path());
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("b.png") && err.contains("a FIFO"), "{err}");
    assert!(
        err.contains("c.jpg") && err.contains("character device"),
        "{err}"
    );
    let status = summary(&o);
    assert_eq!(
        (status["frames"].as_u64(), status["skipped"].as_u64()),
        (Some(1), Some(2))
    );
}

#[test]
fn errors_print_their_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.png");
    let io = std::fs::metadata(&missing).unwrap_err().to_string();
    let o = run_on(&missing);
    assert_refused(&o, &["missing.png"]);
    assert_eq!(stderr(&o).matches(&io).count(), 1, "{}", stderr(&o));

    // A model file that is gone: ModelError::Read.
    let config = common::scratch_models(dir.path());
    std::fs::remove_file(dir.path().join("models/retinaface-mnet025.onnx")).unwrap();
    let face = root().join("tests/data/faces/one_face.png");
    let o = ferd(&["run", "--config", s(&config), "--source", s(&face)]);
    assert_refused(&o, &["retinaface-mnet025.onnx", "cannot read"]);
    assert_eq!(stderr(&o).matches(&io).count(), 1, "{}", stderr(&o));
}

#[test]
fn model_files_that_are_not_regular_or_too_large_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::scratch_models(dir.path());
    let face = root().join("tests/data/faces/one_face.png");
    let onnx = dir.path().join("models/retinaface-mnet025.onnx");
    std::fs::remove_file(&onnx).unwrap();
    mkfifo(&onnx);
    let o = ferd(&["run", "--config", s(&config), "--source", s(&face)]);
    assert_refused(&o, &["retinaface-mnet025.onnx", "a FIFO"]);
    std::fs::remove_file(&onnx).unwrap();
    std::fs::File::create(&onnx)
        .unwrap()
        .set_len(ferd::vision::model::MAX_MODEL_FILE_BYTES + 1)
        .unwrap();
    let o = ferd(&["run", "--config", s(&config), "--source", s(&face)]);
    assert_refused(&o, &["retinaface-mnet025.onnx", "256 MiB limit"]);
}

#[test]
fn hostile_model_files_with_matching_checksums_are_refused_by_name() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let config = common::scratch_models(dir.path());
    let face = root().join("tests/data/faces/one_face.png");
    let good = std::fs::read(root().join("models/expression-kd.onnx")).unwrap();
    let mut flipped = good.clone();
    for b in &mut flipped[2000..2100] {
        *b = 0xff;
    }
    let cases: [(&str, Vec<u8>); 4] = [
        ("empty", Vec::new()),
        ("truncated", good[..good.len() / 3].to_vec()),
        (
            "noise",
            (0..100_000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
        ("flipped", flipped),
    ];
    let manifest = std::fs::read_to_string(dir.path().join("models/expression.toml")).unwrap();
    for (name, bytes) in cases {
        let file = format!("{name}.onnx");
        std::fs::write(dir.path().join("models").join(&file), &bytes).unwrap();
        let sha = ferd::vision::model::hex(&sha2::Sha256::digest(&bytes));
        let text: String = manifest
            .lines()
            .map(|l| {
                if l.starts_with("file = ") {
                    format!("file = \"{file}\"")
                } else if l.starts_with("sha256 = ") {
                    format!("sha256 = \"{sha}\"")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.path().join("models/expression.toml"), text).unwrap();
        let o = ferd(&["run", "--config", s(&config), "--source", s(&face)]);
        assert_refused(&o, &[&file]);
        assert_eq!(o.status.code(), Some(4), "{name}: {}", stderr(&o));
    }
}

/// Rewrites `file` in the scratch models, replacing each `from` (which
/// must occur) by its `to`.
fn edit(dir: &Path, file: &str, edits: &[(&str, &str)]) {
    let path = dir.join("models").join(file);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{from:?} not in {file}");
        text = text.replace(from, to);
    }
    std::fs::write(&path, text).unwrap();
}

/// `ferd check-config` and `ferd run` on the scratch config must both
/// refuse, naming the manifest and the key.
fn assert_manifest_refused(config: &Path, manifest: &str, key: &str) {
    let face = root().join("tests/data/faces/one_face.png");
    let needles = [manifest, key];
    assert_refused(&ferd(&["check-config", s(config)]), &needles);
    assert_refused(
        &ferd(&["run", "--config", s(config), "--source", s(&face)]),
        &needles,
    );
}

#[test]
fn detector_manifest_with_a_zero_stride_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::scratch_models(dir.path());
    edit(
        dir.path(),
        "retinaface-mnet025.toml",
        &[("strides = [8, 16, 32]", "strides = [8, 0, 32]")],
    );
    assert_manifest_refused(
        &config,
        "retinaface-mnet025.toml",
        "key `detector.strides`: must be positive",
    );
}

/// Text replacements in a manifest: (from, to).
type Edits = &'static [(&'static str, &'static str)];

#[test]
fn manifest_keys_the_runtime_relies_on_are_checked_at_load() {
    let cases: [(&str, Edits, &str); 6] = [
        (
            "retinaface-mnet025.toml",
            &[("anchor_sizes = [[16, 32]", "anchor_sizes = [[0, 32]")],
            "key `detector.anchor_sizes`",
        ),
        (
            "retinaface-mnet025.toml",
            &[("variance = [0.1, 0.2]", "variance = [0.1, nan]")],
            "key `detector.variance`",
        ),
        (
            "retinaface-mnet025.toml",
            &[("shape = [1, 3, 0, 0]", "shape = [2, 3, 0, 0]")],
            "key `input.shape`",
        ),
        (
            "retinaface-mnet025.toml",
            &[("std = [1.0, 1.0, 1.0]", "std = [1.0, 1.0]")],
            "key `input.color`",
        ),
        (
            "expression.toml",
            &[("shape = [1, 1, 48, 48]", "shape = [1, 1, 0, 48]")],
            "key `input.shape`",
        ),
        (
            "expression.toml",
            &[("color = \"grey\"", "color = \"rgb\"")],
            "key `input.color`",
        ),
    ];
    for (file, edits, key) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = common::scratch_models(dir.path());
        edit(dir.path(), file, edits);
        assert_manifest_refused(&config, file, key);
    }
}

#[test]
fn colour_manifest_on_a_grey_network_is_refused_at_load() {
    // Consistent as a manifest (three channels, means and stds), so
    // check-config passes; the network takes one channel, so loading it
    // fails naming the network, the manifest and its colour.
    let dir = tempfile::tempdir().unwrap();
    let config = common::scratch_models(dir.path());
    edit(
        dir.path(),
        "expression.toml",
        &[
            ("shape = [1, 1, 48, 48]", "shape = [1, 3, 48, 48]"),
            ("color = \"grey\"", "color = \"rgb\""),
            ("mean = [0.5]", "mean = [0.5, 0.5, 0.5]"),
            ("std = [0.5]", "std = [0.5, 0.5, 0.5]"),
        ],
    );
    let check = ferd(&["check-config", s(&config)]);
    assert!(check.status.success(), "{}", stderr(&check));
    let face = root().join("tests/data/faces/one_face.png");
    let o = ferd(&["run", "--config", s(&config), "--source", s(&face)]);
    assert_refused(&o, &["expression-kd.onnx", "expression.toml", "Rgb"]);
}

/// Writes `name`.onnx and `name`.toml into `dir`, the manifest from
/// `manifest` with `FILE` and `SHA256` filled in.
fn write_model(dir: &Path, name: &str, onnx: &[u8], manifest: &str) -> PathBuf {
    use sha2::Digest;
    std::fs::write(dir.join(format!("{name}.onnx")), onnx).unwrap();
    let sha = ferd::vision::model::hex(&sha2::Sha256::digest(onnx));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        manifest
            .replace("FILE", &format!("{name}.onnx"))
            .replace("SHA256", &sha),
    )
    .unwrap();
    path
}

const MODEL_INFO: &str = "[model]\nname = \"test\"\nfile = \"FILE\"\nsha256 = \"SHA256\"\nlicence = \"none\"\nprovenance = \"tests/inputs.rs\"\n";

#[test]
fn grey_detector_gets_one_channel() {
    // A one-channel detector under a grey manifest used to pass every
    // check and then index three means at the first frame (a panic). Once
    // with the input shape declared, once with it open (undeclared).
    for declared in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let manifest = write_model(
            dir.path(),
            "grey-detector",
            &onnx::grey_detector(declared),
            &format!(
                "{MODEL_INFO}task = \"face-detector\"\n[input]\nshape = [1, 1, 0, 0]\nlayout = \"NCHW\"\ncolor = \"grey\"\nscale = 1.0\nmean = [128.0]\nstd = [64.0]\n[output]\nkind = \"retinaface\"\n[detector]\nstrides = [32]\nanchor_sizes = [[16]]\nvariance = [0.1, 0.2]\n"
            ),
        );
        let config = dir.path().join("ferd.toml");
        std::fs::write(
            &config,
            format!(
                "[detector]\nmodel = {:?}\ninput_size = [32, 32]\n[classifier]\nmodel = {:?}\n",
                manifest,
                root().join("models/expression.toml")
            ),
        )
        .unwrap();
        let check = ferd(&["check-config", s(&config)]);
        assert!(check.status.success(), "{}", stderr(&check));
        let face = root().join("tests/data/faces/one_face.png");
        let o = ferd(&["run", "--config", s(&config), "--source", s(&face)]);
        assert!(o.status.success(), "declared {declared}: {}", stderr(&o));
        assert_eq!(summary(&o)["frames"], 1, "{}", stdout(&o));
    }
}

#[test]
fn colour_expression_model_gets_its_channels_in_its_order() {
    // The network's logits are the means of its three input planes, so a
    // pure red face is "angry" (logit 0) when the planes are R, G, B and
    // "fear" (logit 2) when they are B, G, R.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("angry")).unwrap();
    image::RgbImage::from_pixel(48, 48, image::Rgb([255, 0, 0]))
        .save(data.join("angry/red.png"))
        .unwrap();
    for (color, accuracy) in [("rgb", "accuracy: 1.0000"), ("bgr", "accuracy: 0.0000")] {
        let manifest = write_model(
            dir.path(),
            &format!("colour-{color}"),
            &onnx::colour_classifier(),
            &format!(
                "{MODEL_INFO}task = \"expression\"\n[input]\nshape = [1, 3, 48, 48]\nlayout = \"NCHW\"\ncolor = \"{color}\"\nscale = 0.00392156862745098\nmean = [0.0, 0.0, 0.0]\nstd = [1.0, 1.0, 1.0]\n[output]\nkind = \"logits\"\nlabels = [\"angry\", \"disgust\", \"fear\", \"happy\", \"sad\", \"surprise\", \"neutral\"]\n"
            ),
        );
        let o = ferd(&["eval", "--data", s(&data), "--model", s(&manifest)]);
        assert!(o.status.success(), "{color}: {}", stderr(&o));
        let out = stdout(&o);
        assert_eq!(out.lines().last(), Some(accuracy), "{color}: {out}");
    }
}

/// Just enough of the ONNX protobuf encoding to write two tiny test
/// networks, so that no binary fixture or Python toolchain is needed.
mod onnx {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn int(field: u64, v: i64, out: &mut Vec<u8>) {
        varint(field << 3, out);
        varint(v as u64, out);
    }

    fn bytes(field: u64, data: &[u8], out: &mut Vec<u8>) {
        varint((field << 3) | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    /// TensorProto: dims (1), data_type (2: 1 float, 7 int64), name (8),
    /// raw_data (9, little-endian).
    fn tensor(name: &str, dims: &[i64], data_type: i64, raw: Vec<u8>) -> Vec<u8> {
        let mut t = Vec::new();
        for &d in dims {
            int(1, d, &mut t);
        }
        int(2, data_type, &mut t);
        bytes(8, name.as_bytes(), &mut t);
        bytes(9, &raw, &mut t);
        t
    }

    fn floats(name: &str, dims: &[i64], values: &[f32]) -> Vec<u8> {
        tensor(
            name,
            dims,
            1,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    fn int64s(name: &str, values: &[i64]) -> Vec<u8> {
        tensor(
            name,
            &[values.len() as i64],
            7,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    /// A float tensor's ValueInfoProto; `dims` None leaves the shape open,
    /// a dim of -1 is symbolic.
    fn value_info(name: &str, dims: Option<&[i64]>) -> Vec<u8> {
        let mut tensor_type = Vec::new();
        int(1, 1, &mut tensor_type);
        if let Some(dims) = dims {
            let mut shape = Vec::new();
            for (i, &d) in dims.iter().enumerate() {
                let mut dim = Vec::new();
                if d >= 0 {
                    int(1, d, &mut dim);
                } else {
                    bytes(2, format!("d{i}").as_bytes(), &mut dim);
                }
                bytes(1, &dim, &mut shape);
            }
            bytes(2, &shape, &mut tensor_type);
        }
        let mut type_proto = Vec::new();
        bytes(1, &tensor_type, &mut type_proto);
        let mut v = Vec::new();
        bytes(1, name.as_bytes(), &mut v);
        bytes(2, &type_proto, &mut v);
        v
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> Vec<u8> {
        let mut n = Vec::new();
        for i in inputs {
            bytes(1, i.as_bytes(), &mut n);
        }
        for o in outputs {
            bytes(2, o.as_bytes(), &mut n);
        }
        bytes(4, op.as_bytes(), &mut n);
        n
    }

    /// ModelProto (IR 7, opset 13) around one graph.
    fn model(
        nodes: &[Vec<u8>],
        initializers: &[Vec<u8>],
        inputs: &[Vec<u8>],
        outputs: &[Vec<u8>],
    ) -> Vec<u8> {
        let mut g = Vec::new();
        for n in nodes {
            bytes(1, n, &mut g);
        }
        bytes(2, b"test", &mut g);
        for t in initializers {
            bytes(5, t, &mut g);
        }
        for i in inputs {
            bytes(11, i, &mut g);
        }
        for o in outputs {
            bytes(12, o, &mut g);
        }
        let mut opset = Vec::new();
        bytes(1, b"", &mut opset);
        int(2, 13, &mut opset);
        let mut m = Vec::new();
        int(1, 7, &mut m);
        bytes(8, &opset, &mut m);
        bytes(7, &g, &mut m);
        m
    }

    /// Input x [1, 3, 48, 48]; output the logits [1, 7] = the mean of each
    /// input plane, then four zeros.
    pub fn colour_classifier() -> Vec<u8> {
        let mut w = [0f32; 21];
        for c in 0..3 {
            w[c * 7 + c] = 1.0;
        }
        model(
            &[
                node("GlobalAveragePool", &["x"], &["pooled"]),
                node("Flatten", &["pooled"], &["flat"]),
                node("MatMul", &["flat", "w"], &["logits"]),
            ],
            &[floats("w", &[3, 7], &w)],
            &[value_info("x", Some(&[1, 3, 48, 48]))],
            &[value_info("logits", Some(&[1, 7]))],
        )
    }

    /// Input x [1, 1, H, W] (declared with symbolic H and W, or not at
    /// all); outputs RetinaFace's loc [1, A, 4], conf [1, A, 2] and
    /// landmarks [1, A, 10], all zeros (no face), with A = 1: the anchors
    /// of a 32×32 input at stride 32 with one size.
    pub fn grey_detector(declared: bool) -> Vec<u8> {
        let head = |name: &str, k: i64| {
            (
                [
                    node(
                        "MatMul",
                        &["flat", &format!("w_{name}")],
                        &[&format!("m_{name}")],
                    ),
                    node(
                        "Reshape",
                        &[&format!("m_{name}"), &format!("s_{name}")],
                        &[name],
                    ),
                ],
                [
                    floats(&format!("w_{name}"), &[1, k], &vec![0.0; k as usize]),
                    int64s(&format!("s_{name}"), &[1, -1, k]),
                ],
            )
        };
        let mut nodes = vec![
            node("GlobalAveragePool", &["x"], &["pooled"]),
            node("Flatten", &["pooled"], &["flat"]),
        ];
        let mut inits = Vec::new();
        for (name, k) in [("loc", 4), ("conf", 2), ("landmarks", 10)] {
            let (n, i) = head(name, k);
            nodes.extend(n);
            inits.extend(i);
        }
        let shape: &[i64] = &[1, 1, -1, -1];
        model(
            &nodes,
            &inits,
            &[value_info("x", declared.then_some(shape))],
            &[
                value_info("loc", None),
                value_info("conf", None),
                value_info("landmarks", None),
            ],
        )
    }
}
