//! The patched tract-core (vendor/tract-core, vendor/TRACT-PATCH.md) runs a
//! quantized convolution with symmetric weights through a lazy im2col;
//! stock tract materialises the patches (eager `Im2col` + `QSumB`). The
//! shipped int8 model must give bit-identical outputs both ways, on real
//! image content. The eager path is stock tract's, kept reachable in the
//! patched crate by the `TRACT_QUANT_EAGER_IM2COL` knob, which is read when
//! the model is optimised (here in a knob scope on this thread only).

use std::path::Path;

use ferd::vision::model::{LoadedModel, Task};
use ferd::vision::Manifest;
use tract_onnx::tract_core::knobs::KnobScope;

fn manifest() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/expression-kd-int8-nnef.toml")
}

/// Names of the ops in a loaded model's plan.
fn ops(model: &LoadedModel) -> Vec<String> {
    model
        .plan
        .model()
        .nodes()
        .iter()
        .map(|n| n.op().name().to_string())
        .collect()
}

#[test]
fn the_lazy_int8_path_matches_stock_tracts_eager_one_bit_for_bit() {
    Manifest::load(&manifest()).unwrap();
    let lazy = LoadedModel::load(&manifest(), Task::Expression, None).unwrap();
    let eager = KnobScope::new([("TRACT_QUANT_EAGER_IM2COL", "1")])
        .unwrap()
        .enter(|| LoadedModel::load(&manifest(), Task::Expression, None))
        .unwrap();
    let (lazy_ops, eager_ops) = (ops(&lazy), ops(&eager));
    let has = |ops: &[String], name: &str| ops.iter().any(|o| o == name);
    assert!(
        has(&lazy_ops, "LazyIm2col") && !has(&lazy_ops, "Im2col"),
        "{lazy_ops:?}"
    );
    assert!(
        has(&eager_ops, "Im2col") && !has(&eager_ops, "LazyIm2col"),
        "{eager_ops:?}"
    );

    // 48×48 windows of the demo clip's frames (faces, background, edges),
    // normalised as the manifest says.
    let mut clip =
        ferd::source::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.y4m"))
            .unwrap();
    let mut compared = 0;
    for (i, frame) in std::iter::from_fn(|| clip.next_frame())
        .enumerate()
        .step_by(7)
    {
        let frame = frame.unwrap();
        for (x0, y0) in [(40, 40), (64, 70), (150, 56), (0, 0), (200, 140)] {
            let fill = |input: &mut [f32]| {
                for (k, v) in input.iter_mut().enumerate() {
                    let (x, y) = (x0 + k % 48, y0 + k / 48);
                    let p = frame.data[y * frame.width as usize + x] as f32;
                    *v = (p / 255.0 - 0.5) / 0.5;
                }
            };
            let read = |o: &[tract_onnx::prelude::TValue]| {
                Ok(o[0]
                    .to_plain_array_view::<f32>()
                    .unwrap()
                    .iter()
                    .copied()
                    .collect::<Vec<f32>>())
            };
            let a = lazy.run_with(fill, read).unwrap();
            let b = eager.run_with(fill, read).unwrap();
            assert_eq!(a, b, "frame {i} at ({x0}, {y0})");
            compared += 1;
        }
    }
    assert!(compared >= 60, "{compared}");
}
