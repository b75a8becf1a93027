//! The patched tract-core (vendor/tract-core, vendor/TRACT-PATCH.md) runs a
//! quantized convolution with symmetric weights through a lazy im2col;
//! stock tract materialises the patches (eager `Im2col` + `QSumB`). The
//! shipped int8 model must give bit-identical outputs both ways, on real
//! image content. The eager path is stock tract's, kept reachable in the
//! patched crate by the `TRACT_QUANT_EAGER_IM2COL` knob, which is read when
//! the model is optimised (here in a knob scope on this thread only). On
//! x86_64 with AVX2 (no VNNI) the patched tract-linalg also runs int8
//! products on its own K=4-inner kernel; `TRACT_FERD_AVX2_I8_KMAJOR` keeps
//! stock's, so the comparison is against stock tract on both counts.

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

/// Whether this machine's int8 products run on the AVX2 kernels (x86_64
/// with AVX2 and none of the VNNI/AMX instruction sets tract prefers).
fn avx2_int8() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && !is_x86_feature_detected!("avx512vnni")
            && !is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[test]
fn the_lazy_int8_path_matches_stock_tracts_eager_one_bit_for_bit() {
    Manifest::load(&manifest()).unwrap();
    let lazy = LoadedModel::load(&manifest(), Task::Expression, None).unwrap();
    // Stock tract throughout: the eager im2col and, on AVX2, stock's
    // K-major int8 kernel instead of the patch's K=4-inner one.
    let eager = KnobScope::new([
        ("TRACT_QUANT_EAGER_IM2COL", "1"),
        ("TRACT_FERD_AVX2_I8_KMAJOR", "1"),
    ])
    .unwrap()
    .enter(|| LoadedModel::load(&manifest(), Task::Expression, None))
    .unwrap();
    if avx2_int8() {
        let (patched, stock) = (lazy.kernels(), eager.kernels());
        assert!(patched.contains("avx2_mmm_i32_8x8k4"), "{patched}");
        assert!(
            stock.contains("avx2_mmm_i32_8x8") && !stock.contains("avx2_mmm_i32_8x8k4"),
            "{stock}"
        );
    }
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

// ---------------------------------------------------------------------------
// The f32 fast paths (vendor/TRACT-PATCH.md, "two f32 fast paths for the
// face detector": softmax over short rows, nearest Resize as a gather).
// `TRACT_FERD_STOCK_EVAL=1`, read when an op is evaluated, sends both ops
// down stock tract's code instead.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::nn::resize::{CoordTransformer, Interpolator, Nearest, Resize};
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

/// Runs `f` with stock tract's evaluation when `stock`.
fn maybe_stock<R>(stock: bool, f: impl FnOnce() -> R) -> R {
    if stock {
        KnobScope::new([("TRACT_FERD_STOCK_EVAL", "1")])
            .unwrap()
            .enter(f)
    } else {
        f()
    }
}

/// `model`'s optimised plan, optimised as stock tract would when `stock`.
fn optimised(model: &TypedModel, stock: bool) -> std::sync::Arc<TypedRunnableModel> {
    maybe_stock(stock, || {
        model
            .clone()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap()
    })
}

/// Every output of `plan` on `input`, with stock tract's evaluation when
/// `stock`.
fn run_plan(
    plan: &std::sync::Arc<TypedRunnableModel>,
    input: &Tensor,
    stock: bool,
) -> Vec<Vec<f32>> {
    let out = maybe_stock(stock, || plan.run(tvec![input.clone().into_tvalue()])).unwrap();
    out.iter()
        .map(|o| {
            o.to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect()
        })
        .collect()
}

/// A reproducible tensor of `shape` with values in [-scale, scale].
fn noise(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    tract_ndarray::ArrayD::from_shape_vec(shape, values)
        .unwrap()
        .into()
}

#[test]
fn softmax_over_short_rows_matches_the_definition_and_stock_tract() {
    // Row lengths under 8 take the scalar path; 8 and 12 the stock kernels.
    for row in [1usize, 2, 3, 5, 7, 8, 12] {
        let shape = [3usize, 41, row];
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape)).unwrap();
        let y = model
            .wire_node(
                "softmax",
                Softmax {
                    axes: tvec![2],
                    quant_output_dt: None,
                    kind: SoftmaxKind::Softmax,
                },
                &[x],
            )
            .unwrap();
        model.select_output_outlets(&y).unwrap();
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let input = noise(&shape, row as u64, 30.0);
        let fast = run_plan(&plan, &input, false).remove(0);
        let stock = run_plan(&plan, &input, true).remove(0);
        let values = input.to_plain_array_view::<f32>().unwrap();
        let values: Vec<f32> = values.iter().copied().collect();
        for (r, chunk) in values.chunks(row).enumerate() {
            let max = chunk.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
            let sum: f64 = chunk.iter().map(|&v| (v as f64 - max).exp()).sum();
            for (k, &v) in chunk.iter().enumerate() {
                let want = (v as f64 - max).exp() / sum;
                let i = r * row + k;
                assert!(
                    (fast[i] as f64 - want).abs() < 1e-6,
                    "row {row}: {} vs {want}",
                    fast[i]
                );
                assert!(
                    (fast[i] - stock[i]).abs() < 1e-6,
                    "row {row}: {} vs stock {}",
                    fast[i],
                    stock[i]
                );
            }
        }
    }
}

#[test]
fn nearest_resize_gathers_what_stock_tract_computes() {
    let cases: [(&[usize], &[usize], CoordTransformer, Nearest); 5] = [
        // RetinaFace's FPN at 320x240: 10x8 -> 20x15 and 20x15 -> 40x30.
        (
            &[1, 4, 8, 10],
            &[1, 4, 15, 20],
            CoordTransformer::Asymmetric,
            Nearest::Floor,
        ),
        (
            &[1, 4, 15, 20],
            &[1, 4, 30, 40],
            CoordTransformer::Asymmetric,
            Nearest::Floor,
        ),
        (
            &[2, 3, 3, 5],
            &[2, 3, 7, 11],
            CoordTransformer::HalfPixel,
            Nearest::RoundPreferCeil,
        ),
        (
            &[1, 2, 9, 6],
            &[1, 2, 4, 3],
            CoordTransformer::Asymmetric,
            Nearest::Floor,
        ),
        (
            &[1, 1, 5, 7],
            &[1, 1, 5, 13],
            CoordTransformer::AlignCorners,
            Nearest::RoundPreferCeil,
        ),
    ];
    for (i, (from, to, coord, nearest)) in cases.into_iter().enumerate() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(from)).unwrap();
        let sizes: Vec<i64> = to.iter().map(|&d| d as i64).collect();
        let sizes = model.add_const("sizes", tensor1(&sizes)).unwrap();
        let y = model
            .wire_node(
                "resize",
                Resize {
                    coord_transformer: coord.clone(),
                    interpolator: Interpolator::Nearest,
                    nearest,
                    optional_scales_input: None,
                    optional_sizes_input: Some(1),
                },
                &[x, sizes],
            )
            .unwrap();
        model.select_output_outlets(&y).unwrap();
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        assert!(
            plan.model()
                .nodes()
                .iter()
                .any(|n| n.op().name() == "Resize"),
            "case {i}: no Resize left to evaluate"
        );
        let input = noise(from, 100 + i as u64, 10.0);
        let fast = run_plan(&plan, &input, false).remove(0);
        let stock = run_plan(&plan, &input, true).remove(0);
        assert_eq!(
            fast, stock,
            "case {i}: {coord:?} {nearest:?} {from:?} -> {to:?}"
        );
        // Every output value is an input value of the same plane (a gather).
        let values: Vec<f32> = input
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        let (plane_in, plane_out) = (from[2] * from[3], to[2] * to[3]);
        for (p, out) in fast.chunks(plane_out).enumerate() {
            let plane = &values[p * plane_in..][..plane_in];
            assert!(out.iter().all(|v| plane.contains(v)), "case {i}, plane {p}");
        }
    }
}

/// A plain convolution in NCHW (`kernel` OIHW, its input channels those of
/// one of `group` groups; `pad` on each side), the definition to check
/// tract's plans against.
fn conv_reference(
    input: &Tensor,
    kernel: &Tensor,
    bias: &[f32],
    stride: usize,
    pad: [usize; 2],
    group: usize,
) -> Vec<f32> {
    let x = input.to_plain_array_view::<f32>().unwrap();
    let k = kernel.to_plain_array_view::<f32>().unwrap();
    let (h, w) = (x.shape()[2], x.shape()[3]);
    let (co, ci, kh, kw) = (k.shape()[0], k.shape()[1], k.shape()[2], k.shape()[3]);
    let oh = (h + 2 * pad[0] - kh) / stride + 1;
    let ow = (w + 2 * pad[1] - kw) / stride + 1;
    let mut out = Vec::with_capacity(co * oh * ow);
    for o in 0..co {
        for y in 0..oh {
            for xo in 0..ow {
                let mut sum = bias[o] as f64;
                let first = o / (co / group) * ci;
                for c in 0..ci {
                    for dy in 0..kh {
                        for dx in 0..kw {
                            let (iy, ix) = (y * stride + dy, xo * stride + dx);
                            if iy < pad[0] || ix < pad[1] || iy - pad[0] >= h || ix - pad[1] >= w {
                                continue;
                            }
                            let v = x[[0, first + c, iy - pad[0], ix - pad[1]]] as f64;
                            sum += v * k[[o, c, dy, dx]] as f64;
                        }
                    }
                }
                out.push(sum as f32);
            }
        }
    }
    out
}

/// One f32 convolution in NCHW with a random `[co, ci / group, kh, kw]`
/// kernel (from `seed`), a bias and the same padding on both sides of each
/// axis, not optimised: the model, the convolution's output, its kernel
/// and bias.
fn conv_model(
    [ci, co, h, w]: [usize; 4],
    kernel_shape: [usize; 2],
    stride: usize,
    pads: [usize; 2],
    group: usize,
    seed: u64,
) -> (TypedModel, OutletId, Tensor, Vec<f32>) {
    use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::nn::DataFormat;
    let mut model = TypedModel::default();
    let x = model.add_source("x", f32::fact([1, ci, h, w])).unwrap();
    let kernel = noise(
        &[co, ci / group, kernel_shape[0], kernel_shape[1]],
        seed,
        1.0,
    );
    let bias: Vec<f32> = (0..co).map(|o| o as f32 * 0.125 - 0.5).collect();
    let k = model.add_const("kernel", kernel.clone()).unwrap();
    let b = model.add_const("bias", tensor1(&bias)).unwrap();
    let pads: TVec<usize> = pads.into_iter().collect();
    let conv = Conv {
        pool_spec: PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: kernel_shape.into_iter().collect(),
            padding: PaddingSpec::Explicit(pads.clone(), pads),
            dilations: None,
            strides: Some(tvec![stride, stride]),
            input_channels: ci,
            output_channels: co,
        },
        kernel_fmt: KernelFormat::OIHW,
        group,
        q_params: None,
    };
    let y = model.wire_node("conv", conv, &[x, k, b]).unwrap()[0];
    (model, y, kernel, bias)
}

/// The optimised plan of [`conv_model`]'s convolution, with its kernel
/// and bias, and an assertion that the plan holds an op named `op`.
#[allow(clippy::too_many_arguments)]
fn conv_plan(
    shape: [usize; 4],
    kernel_shape: [usize; 2],
    stride: usize,
    pads: [usize; 2],
    group: usize,
    seed: u64,
    op: &str,
) -> (std::sync::Arc<TypedRunnableModel>, Tensor, Vec<f32>) {
    let (mut model, y, kernel, bias) = conv_model(shape, kernel_shape, stride, pads, group, seed);
    model.select_output_outlets(&[y]).unwrap();
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let [ci, _, h, w] = shape;
    assert!(
        plan.model().nodes().iter().any(|n| n.op().name() == op),
        "no {op} in the plan of a {kernel_shape:?} convolution of {ci}x{h}x{w}"
    );
    (plan, kernel, bias)
}

/// Asserts that `got` is `want` within `tolerance` relative (plus as much
/// absolute), naming `case` and the first output that is not.
fn assert_close(got: &[f32], want: &[f32], tolerance: f32, case: &str) {
    assert_eq!(got.len(), want.len(), "{case}");
    for (j, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tolerance * (1.0 + b.abs()),
            "{case}, output {j}: {a} vs {b}"
        );
    }
}

/// Asserts that the patched depthwise walk's outputs `got` are stock's
/// `stock`: equal on x86_64, where tract-linalg's depthwise kernels
/// multiply and add separately as stock's border walk does; elsewhere
/// within float rounding (`tolerance` as in [`assert_close`]), because the
/// aarch64 kernel fuses each multiply-add (`vfmaq_f32`) and the padded
/// copy runs the border points through it, where stock's walk computes
/// them with a separate multiply and add.
fn assert_stock_or_fused(got: &[f32], stock: &[f32], tolerance: f32, case: &str) {
    if cfg!(target_arch = "x86_64") {
        assert_eq!(got, stock, "{case}");
    } else {
        assert_close(got, stock, tolerance, case);
    }
}

/// The lazy im2col's gather of a panel whose columns are consecutive input
/// values (a run copied per k) packs what stock tract's per-column gather
/// packs: the convolution's outputs are equal bit for bit, and equal to the
/// definition within rounding. Shapes: output rows wider than, equal to and
/// narrower than a panel (so that panels straddle rows), strides 1 and 2,
/// 3×3 and 1×3 kernels, with and without padding.
#[test]
fn convolutions_gather_consecutive_columns_as_stock_tract_does() {
    // (input and output channels, input height and width), kernel, stride,
    // padding on each side.
    let cases: [([usize; 4], [usize; 2], usize, usize); 7] = [
        ([16, 32, 30, 40], [3, 3], 1, 1),
        ([8, 16, 15, 20], [3, 3], 1, 1),
        ([8, 4, 8, 10], [3, 3], 1, 1),
        ([5, 7, 9, 7], [3, 3], 1, 0),
        ([4, 6, 12, 13], [1, 3], 1, 0),
        ([6, 8, 17, 23], [3, 3], 2, 1),
        ([3, 9, 6, 3], [3, 3], 1, 1),
    ];
    for (i, &(shape, kernel_shape, stride, pad)) in cases.iter().enumerate() {
        let pads = [pad.min(kernel_shape[0] / 2), pad.min(kernel_shape[1] / 2)];
        let seed = 200 + i as u64;
        // The plans `DirectConv` (tested below) would take from the product.
        let (plan, kernel, bias) = KnobScope::new([("TRACT_FERD_DIRECT_MAX_TAPS", "0")])
            .unwrap()
            .enter(|| conv_plan(shape, kernel_shape, stride, pads, 1, seed, "LazyIm2col"));
        let [ci, _, h, w] = shape;
        for seed in 0..2 {
            let input = noise(&[1, ci, h, w], 300 + 10 * i as u64 + seed, 3.0);
            let fast = run_plan(&plan, &input, false).remove(0);
            let stock = run_plan(&plan, &input, true).remove(0);
            assert_eq!(fast, stock, "case {i}, input {seed}");
            let want = conv_reference(&input, &kernel, &bias, stride, pads, 1);
            assert_close(&fast, &want, 1e-4, &format!("case {i}, input {seed}"));
        }
    }
}

/// Convolutions with few input channels over wide rows (the detector's
/// first layer: 3 to 8 channels, 3×3, stride 2, 320 points a row), which
/// tract runs as a filter along the rows (`DirectSpatialConv`), four
/// output channels at a time, on sixteen lanes where the CPU has AVX-512
/// (tract-linalg's `conv_w4`): equal to the definition within rounding, at
/// strides 1 and 2, rows of run lengths around the 16- and 32-point
/// blocks, and a channel count that is not a multiple of four.
#[test]
fn direct_spatial_convolutions_match_the_definition() {
    // (input and output channels, input height and width), stride
    let cases: [([usize; 4], usize); 5] = [
        ([3, 8, 9, 320], 2),
        ([3, 8, 6, 263], 2),
        ([2, 4, 5, 130], 1),
        ([4, 4, 4, 161], 1),
        ([3, 6, 5, 290], 2),
    ];
    for (i, &(shape, stride)) in cases.iter().enumerate() {
        // The plans `DirectConv` (tested below) leaves to this filter.
        let (plan, kernel, bias) = KnobScope::new([("TRACT_FERD_DIRECT_SMALL_INPUT", "false")])
            .unwrap()
            .enter(|| {
                conv_plan(
                    shape,
                    [3, 3],
                    stride,
                    [1, 1],
                    1,
                    900 + i as u64,
                    "DirectSpatialConv",
                )
            });
        let [ci, _, h, w] = shape;
        let input = noise(&[1, ci, h, w], 950 + i as u64, 3.0);
        let got = run_plan(&plan, &input, false).remove(0);
        let want = conv_reference(&input, &kernel, &bias, stride, [1, 1], 1);
        assert_close(&got, &want, 1e-5, &format!("case {i}"));
    }
}

/// A convolution's ReLU, max(x, 0) after the convolution's group and
/// geometry reshape (the form ONNX's Relu takes in the classifier), runs
/// inside the matrix product in the patched tract: no op of its own, no
/// pass of its own over the output. Stock's plan (optimised under
/// `TRACT_FERD_STOCK_EVAL`) keeps it apart. The outputs are equal bit for
/// bit, the same max of the same sums, and equal to the definition. The
/// same holds with the constant on the left and for a subtraction, which
/// does not commute.
#[test]
fn a_convolutions_relu_runs_inside_its_product() {
    use tract_onnx::tract_core::ops::math::{max, sub};
    type Case = ([usize; 4], bool, bool);
    // (input and output channels, input height and width), subtraction
    // (else max), constant on the left
    let cases: [Case; 5] = [
        ([16, 16, 12, 12], false, false),
        ([8, 12, 7, 9], false, false),
        ([8, 12, 7, 9], false, true),
        ([8, 12, 7, 9], true, false),
        ([8, 12, 7, 9], true, true),
    ];
    for (i, &(shape, subtract, constant_first)) in cases.iter().enumerate() {
        let (mut model, y, kernel, bias) = conv_model(shape, [3, 3], 1, [1, 1], 1, 600 + i as u64);
        let c = if subtract { 0.25f32 } else { 0.0 };
        let constant = model.add_const("c", tensor4(&[[[[c]]]])).unwrap();
        let inputs = if constant_first {
            [constant, y]
        } else {
            [y, constant]
        };
        let op = if subtract { sub() } else { max() };
        let out = model.wire_node("act", op, &inputs).unwrap();
        model.select_output_outlets(&out).unwrap();
        let (fused, stock) = (optimised(&model, false), optimised(&model, true));
        let apart = |plan: &std::sync::Arc<TypedRunnableModel>| {
            plan.model()
                .nodes()
                .iter()
                .any(|n| ["Max", "Sub"].iter().any(|op| n.op().name().contains(op)))
        };
        assert!(!apart(&fused) && apart(&stock), "case {i}");
        let [ci, _, h, w] = shape;
        let input = noise(&[1, ci, h, w], 700 + i as u64, 3.0);
        let got = run_plan(&fused, &input, false).remove(0);
        assert_eq!(got, run_plan(&stock, &input, true).remove(0), "case {i}");
        let want: Vec<f32> = conv_reference(&input, &kernel, &bias, 1, [1, 1], 1)
            .into_iter()
            .map(|v| match (subtract, constant_first) {
                (false, _) => v.max(0.0),
                (true, false) => v - c,
                (true, true) => c - v,
            })
            .collect();
        assert_close(&got, &want, 1e-4, &format!("case {i}"));
        if !subtract {
            // Both sides of the max are exercised.
            assert!(
                got.contains(&0.0) && got.iter().any(|&v| v > 0.0),
                "case {i}"
            );
        }
    }
}

/// Constant padding, which the patched tract-core writes as one fill and
/// one copy per input row, equals the definition and stock tract's strided
/// assignment (`TRACT_FERD_STOCK_EVAL`): ranks 0 to 4, padding on some
/// axes and not others, before only, after only, an empty axis, and the
/// classifier's `[1, C, H, W]` with one on each side of H and W.
#[test]
fn constant_pads_match_the_definition_and_stock_tract() {
    use tract_onnx::tract_core::ops::array::{Pad, PadMode};
    // (input shape, padding before and after each axis)
    type Case = (&'static [usize], &'static [(usize, usize)]);
    let cases: [Case; 8] = [
        (&[], &[]),
        (&[5], &[(2, 3)]),
        (&[3, 4], &[(0, 0), (1, 2)]),
        (&[3, 4], &[(2, 0), (0, 0)]),
        (&[2, 3, 4], &[(1, 0), (0, 2), (3, 1)]),
        (&[1, 16, 12, 12], &[(0, 0), (0, 0), (1, 1), (1, 1)]),
        (&[2, 3, 1, 5], &[(0, 1), (1, 0), (1, 1), (0, 0)]),
        (&[2, 0, 3], &[(1, 1), (1, 0), (0, 2)]),
    ];
    for (i, &(shape, pads)) in cases.iter().enumerate() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape)).unwrap();
        let pad = Pad::new(
            pads.to_vec(),
            PadMode::Constant(std::sync::Arc::new(tensor0(-7.5f32))),
        );
        let y = model.wire_node("pad", pad, &[x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let input = noise(shape, 800 + i as u64, 3.0);
        let got = run_plan(&plan, &input, false).remove(0);
        assert_eq!(got, run_plan(&plan, &input, true).remove(0), "case {i}");
        // The definition: an output value is the input's at its coordinates
        // less the padding before, where those are inside the input.
        let x = input.to_plain_array_view::<f32>().unwrap();
        let out_shape: Vec<usize> = shape
            .iter()
            .zip(pads)
            .map(|(&d, &(a, b))| d + a + b)
            .collect();
        let want: Vec<f32> = tract_ndarray::indices(&*out_shape)
            .into_iter()
            .map(|at| {
                let inside: Option<Vec<usize>> = (0..shape.len())
                    .map(|k| at[k].checked_sub(pads[k].0).filter(|&c| c < shape[k]))
                    .collect();
                inside.map_or(-7.5, |c| x[&*c])
            })
            .collect();
        assert_eq!(got, want, "case {i}");
    }
}

/// The `m:… k:… n:…` of the one matrix product in `plan`.
fn product_shape(plan: &TypedRunnableModel) -> String {
    let infos: Vec<String> = plan
        .model()
        .nodes()
        .iter()
        .filter(|n| n.op().name() == "OptMatMul")
        .flat_map(|n| n.op().info().unwrap())
        .collect();
    let info = infos.join(" ");
    let at = info.find("Mult: ").expect("an OptMatMul with its shape");
    info[at + 6..].split(" with").next().unwrap().to_string()
}

/// Shallow 1×1 convolutions over large planes (the detector's pointwise
/// layers: k 8 to 64, 16 to 128 channels): on x86_64 the patched tract-core
/// keeps the channels as the product's m (stock tract makes the larger
/// side m, the plane); elsewhere, or deeper, or with under 16 channels, it
/// orients them as stock does. Either way the outputs are those of the
/// definition within rounding and of the stock orientation's plan.
#[test]
fn shallow_pointwise_products_keep_the_channels_as_m_on_x86() {
    // (input and output channels, height, width); whether the patched
    // orientation applies (k <= 64 and both sides >= 16).
    let cases: [([usize; 4], bool); 6] = [
        ([8, 16, 120, 160], true),
        ([16, 32, 60, 80], true),
        ([64, 128, 15, 20], true),
        ([65, 32, 30, 40], false),
        ([16, 8, 60, 80], false),
        ([32, 64, 3, 5], false),
    ];
    for (i, &(shape, applies)) in cases.iter().enumerate() {
        let seed = 400 + i as u64;
        // The products this orientation serves when the direct 1×1 path
        // (`DirectConv`, tested below) is off.
        let (plan, kernel, bias) = KnobScope::new([("TRACT_FERD_POINTWISE_MAX_K", "0")])
            .unwrap()
            .enter(|| conv_plan(shape, [1, 1], 1, [0, 0], 1, seed, "OptMatMul"));
        let (stock_plan, ..) = maybe_stock(true, || {
            conv_plan(shape, [1, 1], 1, [0, 0], 1, seed, "OptMatMul")
        });
        let [ci, co, h, w] = shape;
        let channels_as_m = format!("m:{co} k:{ci} n:{}", h * w);
        let plane_as_m = format!("m:{} k:{ci} n:{co}", h * w);
        // Stock's rule: the larger side as m.
        let stock_shape = if h * w > co {
            &plane_as_m
        } else {
            &channels_as_m
        };
        let want_patched = if applies && cfg!(target_arch = "x86_64") {
            &channels_as_m
        } else {
            stock_shape
        };
        assert_eq!(&product_shape(&plan), want_patched, "case {i}");
        assert_eq!(&product_shape(&stock_plan), stock_shape, "case {i}, stock");
        let input = noise(&[1, ci, h, w], 500 + i as u64, 3.0);
        let got = run_plan(&plan, &input, false).remove(0);
        let stock = run_plan(&stock_plan, &input, false).remove(0);
        let want = conv_reference(&input, &kernel, &bias, 1, [0, 0], 1);
        assert_close(&got, &want, 1e-4, &format!("case {i}"));
        assert_close(&got, &stock, 1e-5, &format!("case {i}, against stock"));
    }
}

/// Whether the patched tract-core has a `DirectConv` kernel for this CPU
/// (x86_64 with AVX-512F, or AVX2 and FMA).
fn direct_conv_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            || (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Convolutions that the patched tract-core computes directly on x86_64
/// hosts with AVX-512F or AVX2 + FMA (`DirectConv`): 1×1 ones (f32, a
/// multiple of 8 output channels, at least 16, at most 128 input channels,
/// planes of at least 128 points), K×K ones over at most 4 input channels
/// (strides 1 and 2, a multiple of 8 output channels, output rows of at
/// least 16 points), and stride-1 K×K ones over more input channels (at
/// most 576 taps, at least 16 output channels, a flat run over the padded
/// rows of at least 256 points, three quarters of them output points);
/// with no activation, a following `LeakyRelu` or a ReLU (a maximum with
/// zero), which they take in: the definition within rounding and stock
/// tract's plan, with the AVX-512 kernel and with the AVX2 one
/// (`TRACT_FERD_POINTWISE_AVX2`). Planes and rows that are not a multiple
/// of the kernels' 32 or 16 points are among them, and shapes that stay on
/// the other paths (8 output channels at 1×1, 129 input channels, a 10×10
/// plane, 5 input channels at 3×3 stride 2, 12 output channels, 15-point
/// rows; at stride 1 over deeper inputs a 12×12 plane, 864 taps, 12 and 8
/// output channels, rows mostly padding).
#[test]
fn direct_convolutions_match_the_definition() {
    use tract_onnx::tract_core::ops::math::max;
    use tract_onnx::tract_core::ops::nn::leaky_relu;
    let vector = direct_conv_kernels();
    // (input and output channels, height, width), kernel side, stride,
    // padding on each side, whether `DirectConv` takes it (on a host with
    // the kernels).
    type Case = ([usize; 4], usize, usize, usize, bool);
    let cases: [Case; 28] = [
        ([8, 16, 96, 96], 1, 1, 0, true),
        ([16, 32, 48, 48], 1, 1, 0, true),
        ([32, 64, 24, 24], 1, 1, 0, true),
        ([128, 128, 12, 12], 1, 1, 0, true),
        ([3, 24, 13, 11], 1, 1, 0, true),
        ([64, 16, 9, 15], 1, 1, 0, true),
        ([8, 8, 96, 96], 1, 1, 0, false),
        ([129, 32, 16, 16], 1, 1, 0, false),
        ([64, 64, 10, 10], 1, 1, 0, false),
        ([3, 8, 96, 96], 3, 2, 1, true),
        ([3, 8, 240, 320], 3, 2, 1, true),
        ([3, 16, 33, 47], 3, 1, 1, true),
        ([1, 16, 20, 35], 5, 2, 2, true),
        ([4, 24, 17, 40], 3, 2, 0, true),
        ([5, 8, 32, 32], 3, 2, 1, false),
        ([3, 12, 32, 32], 3, 2, 1, false),
        ([3, 8, 16, 30], 3, 2, 1, false),
        // Stride 1 over deeper inputs: the flat run.
        ([64, 32, 30, 40], 3, 1, 1, true),
        ([16, 16, 24, 24], 3, 1, 1, true),
        ([48, 48, 17, 21], 3, 1, 0, true),
        ([8, 24, 20, 33], 5, 1, 2, true),
        ([5, 16, 20, 20], 1, 1, 1, true),
        ([48, 96, 12, 12], 3, 1, 1, false),
        ([96, 32, 20, 20], 3, 1, 1, false),
        ([16, 12, 30, 40], 3, 1, 1, false),
        ([16, 8, 30, 40], 3, 1, 1, false),
        ([16, 16, 60, 5], 3, 1, 0, false),
        ([32, 16, 30, 40], 3, 2, 1, false),
    ];
    for (i, &(shape, k, stride, pad, direct)) in cases.iter().enumerate() {
        for (act, slope) in [("none", None), ("leaky", Some(0.1f32)), ("relu", Some(0.0))] {
            let case = format!("case {i}, activation {act}");
            let (mut model, y, kernel, bias) =
                conv_model(shape, [k, k], stride, [pad, pad], 1, 800 + i as u64);
            let out = match (act, slope) {
                ("relu", _) => {
                    let zero = model.add_const("zero", tensor4(&[[[[0f32]]]])).unwrap();
                    model.wire_node("relu", max(), &[y, zero]).unwrap()
                }
                (_, Some(alpha)) => model.wire_node("act", leaky_relu(alpha), &[y]).unwrap(),
                _ => tvec![y],
            };
            model.select_output_outlets(&out).unwrap();
            let (plan, stock) = (optimised(&model, false), optimised(&model, true));
            let names: Vec<String> = plan
                .model()
                .nodes()
                .iter()
                .map(|n| n.op().name().to_string())
                .collect();
            let has = |op: &str| names.iter().any(|n| n == op);
            assert_eq!(has("DirectConv"), direct && vector, "{case}: {names:?}");
            if has("DirectConv") {
                // The activation went into the direct op.
                assert!(
                    !names
                        .iter()
                        .any(|n| n.contains("LeakyRelu") || n.contains("Max")),
                    "{case}: {names:?}"
                );
            }
            let [ci, _, h, w] = shape;
            let input = noise(&[1, ci, h, w], 900 + i as u64, 3.0);
            let got = run_plan(&plan, &input, false).remove(0);
            let want: Vec<f32> = conv_reference(&input, &kernel, &bias, stride, [pad, pad], 1)
                .into_iter()
                .map(|v| match slope {
                    Some(a) if v < 0.0 => v * a,
                    _ => v,
                })
                .collect();
            assert_close(&got, &want, 1e-4, &case);
            // Against stock's f32 sums in another order: within their rounding,
            // which grows with the taps (576 in the deepest case).
            let tolerance = if ci * k * k > 128 { 1e-4 } else { 1e-5 };
            assert_close(
                &got,
                &run_plan(&stock, &input, true).remove(0),
                tolerance,
                &case,
            );
            // The eight-lane kernel too, where AVX-512 would be chosen.
            let avx2 = KnobScope::new([("TRACT_FERD_POINTWISE_AVX2", "1")])
                .unwrap()
                .enter(|| optimised(&model, false));
            let infos: Vec<String> = avx2
                .model()
                .nodes()
                .iter()
                .filter(|n| n.op().name() == "DirectConv")
                .flat_map(|n| n.op().info().unwrap())
                .collect();
            assert!(
                infos.iter().all(|i| i.contains("vector: Avx2")),
                "{case}: {infos:?}"
            );
            assert_eq!(infos.len(), usize::from(direct && vector), "{case}");
            let got = run_plan(&avx2, &input, false).remove(0);
            assert_close(&got, &want, 1e-4, &format!("{case}, AVX2"));
        }
    }
}

/// Depthwise convolutions (the detector's and the landmark models' 3×3,
/// and 5×5), stride 1 and stride 2 (which the patched tract-linalg
/// vectorises too), rows of every length around the kernels' vector
/// widths, planes on both sides of the sizes the patched tract-core runs
/// through a padded copy: equal to stock tract's zone walk, and to the
/// definition within rounding.
#[test]
fn depthwise_convolutions_match_the_definition() {
    // (channels, height, width, kernel side, stride, padding)
    let cases = [
        (4, 9, 20, 3, 1, 1),
        (4, 9, 20, 3, 2, 1),
        (3, 7, 33, 3, 2, 1),
        (5, 12, 35, 3, 2, 1),
        (2, 6, 18, 3, 2, 1),
        (8, 30, 41, 3, 2, 1),
        (2, 5, 3, 3, 2, 1),
        (3, 6, 6, 3, 1, 1),
        (4, 12, 12, 5, 1, 2),
        (2, 11, 9, 5, 2, 1),
        (2, 64, 64, 3, 2, 1),
        (2, 66, 66, 3, 2, 1),
        (2, 128, 128, 3, 1, 1),
        (2, 129, 130, 3, 1, 1),
        (3, 8, 8, 3, 1, 0),
    ];
    for (i, &(c, h, w, k, stride, pad)) in cases.iter().enumerate() {
        let seed = 400 + i as u64;
        let (plan, kernel, bias) = conv_plan(
            [c, c, h, w],
            [k, k],
            stride,
            [pad, pad],
            c,
            seed,
            "DepthWiseConv",
        );
        let input = noise(&[1, c, h, w], 500 + i as u64, 3.0);
        let got = run_plan(&plan, &input, false).remove(0);
        let stock = run_plan(&plan, &input, true).remove(0);
        // f32 equality on x86_64: a padded tap adds a zero, so an output
        // stock leaves at −0 may come out +0, an equal value.
        assert_stock_or_fused(&got, &stock, 1e-6, &format!("case {i}"));
        let want = conv_reference(&input, &kernel, &bias, stride, [pad, pad], c);
        assert_close(&got, &want, 1e-5, &format!("case {i}"));
    }
}

/// 2×2 max pools of stride 2, the classifier's halving step, which the
/// patched tract-core runs through a vectorised interior: rows of every
/// length around the eight-lane step, odd sizes, padding before and after.
/// Equal to stock tract's walk and to the definition (the max of the taps
/// inside the input).
#[test]
fn halving_max_pools_match_the_definition_and_stock_tract() {
    // (channels, height, width, padding before, padding after)
    let cases = [
        (3, 8, 8, [0, 0], [0, 0]),
        (2, 33, 17, [0, 0], [0, 0]),
        (4, 24, 40, [0, 0], [0, 0]),
        (2, 9, 47, [0, 0], [1, 1]),
        (3, 10, 34, [1, 1], [1, 1]),
        (2, 7, 50, [1, 0], [0, 1]),
        (16, 48, 48, [0, 0], [0, 0]),
        (1, 2, 2, [0, 0], [0, 0]),
        (1, 3, 3, [1, 1], [0, 0]),
    ];
    for (i, &(c, h, w, before, after)) in cases.iter().enumerate() {
        let plan = halving_pool_plan(DatumType::F32, c, h, w, before, after);
        let input = noise(&[1, c, h, w], 700 + i as u64, 3.0);
        let got = run_plan(&plan, &input, false).remove(0);
        let stock = run_plan(&plan, &input, true).remove(0);
        assert_eq!(got, stock, "case {i}");
        let values = input.to_plain_array_view::<f32>().unwrap();
        let want =
            halving_pool_definition([c, h, w], before, after, |p, iy, ix| values[[0, p, iy, ix]]);
        assert_eq!(got, want, "case {i}");
    }
}

/// A plan of one 2×2 stride-2 NCHW max pool over `[1, c, h, w]` values of
/// `dt`, padded as given.
fn halving_pool_plan(
    dt: DatumType,
    c: usize,
    h: usize,
    w: usize,
    before: [usize; 2],
    after: [usize; 2],
) -> std::sync::Arc<TypedRunnableModel> {
    use tract_onnx::tract_core::ops::cnn::{MaxPool, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::nn::DataFormat;
    let mut model = TypedModel::default();
    let x = model.add_source("x", dt.fact([1, c, h, w])).unwrap();
    let pool = MaxPool {
        pool_spec: PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![2, 2],
            padding: PaddingSpec::Explicit(before[..].into(), after[..].into()),
            dilations: None,
            strides: Some(tvec![2, 2]),
            input_channels: c,
            output_channels: c,
        },
        with_index_outputs: None,
    };
    let y = model.wire_node("pool", pool, &[x]).unwrap();
    model.select_output_outlets(&y).unwrap();
    model.into_optimized().unwrap().into_runnable().unwrap()
}

/// What a 2×2 stride-2 max pool over a `[c, h, w]` input padded as given
/// outputs, by its definition: the largest of each window's taps inside
/// the input (`value(plane, y, x)`), plane after plane, row after row.
fn halving_pool_definition<T: PartialOrd>(
    [c, h, w]: [usize; 3],
    before: [usize; 2],
    after: [usize; 2],
    value: impl Fn(usize, usize, usize) -> T,
) -> Vec<T> {
    let (oh, ow) = (
        (h + before[0] + after[0] - 2) / 2 + 1,
        (w + before[1] + after[1] - 2) / 2 + 1,
    );
    let mut out = Vec::with_capacity(c * oh * ow);
    for p in 0..c {
        for oy in 0..oh {
            for ox in 0..ow {
                let taps = (0..4).filter_map(|t| {
                    let iy = (2 * oy + t / 2).checked_sub(before[0])?;
                    let ix = (2 * ox + t % 2).checked_sub(before[1])?;
                    (iy < h && ix < w).then(|| value(p, iy, ix))
                });
                let largest = taps.reduce(|a, b| if b > a { b } else { a });
                out.push(largest.expect("every window holds a tap"));
            }
        }
    }
    out
}

/// Every 15th frame of the demo clip as the detector's 320×240 input: the
/// luma, scaled and offset per channel as the BGR-minus-mean input would
/// be; with each frame's sequence number.
fn detector_inputs() -> impl Iterator<Item = (u64, Tensor)> {
    let mut clip =
        ferd::source::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.y4m"))
            .unwrap();
    std::iter::from_fn(move || clip.next_frame())
        .step_by(15)
        .map(|frame| {
            let frame = frame.unwrap();
            let (w, h) = (frame.width as usize, frame.height as usize);
            let mut input = vec![0f32; 3 * 240 * 320];
            for (k, v) in input.iter_mut().enumerate() {
                let (c, y, x) = (k / (240 * 320), k / 320 % 240, k % 320);
                let p = frame.data[(y * h / 240) * w + x * w / 320] as f32;
                *v = p - [104.0, 117.0, 123.0][c];
            }
            let input = tract_ndarray::ArrayD::from_shape_vec(vec![1, 3, 240, 320], input)
                .unwrap()
                .into();
            (frame.sequence, input)
        })
}

#[test]
fn the_detector_matches_stock_tract_without_the_fast_paths() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/retinaface-mnet025.toml");
    let model = LoadedModel::load(&manifest, Task::FaceDetector, Some([240, 320])).unwrap();
    let names = ops(&model);
    for op in ["Softmax", "Resize"] {
        assert!(names.iter().any(|o| o == op), "{op} not in {names:?}");
    }
    // Boxes and landmarks only pass the resize (copies): equal. Scores pass
    // the softmax: equal within float rounding of `exp`.
    detector_runs_agree(
        |input| run_plan(&model.plan, input, false),
        |input| run_plan(&model.plan, input, true),
        |a, b| (a - b).abs(),
        1e-6,
    );
}

/// Asserts that two ways of running the detector agree on the demo's
/// frames ([`detector_inputs`]): for every output, the largest
/// `difference(first, second)` over its values is at most `tolerance`.
fn detector_runs_agree(
    first: impl Fn(&Tensor) -> Vec<Vec<f32>>,
    second: impl Fn(&Tensor) -> Vec<Vec<f32>>,
    difference: impl Fn(f32, f32) -> f32,
    tolerance: f32,
) {
    let mut compared = 0;
    for (sequence, input) in detector_inputs() {
        let (a, b) = (first(&input), second(&input));
        assert_eq!(a.len(), 3);
        for (o, (a, b)) in a.iter().zip(&b).enumerate() {
            assert_eq!(a.len(), b.len());
            let worst = a
                .iter()
                .zip(b)
                .map(|(&a, &b)| difference(a, b))
                .fold(0f32, f32::max);
            assert!(
                worst <= tolerance,
                "frame {sequence}: output {o} differs by {worst}"
            );
        }
        compared += 1;
    }
    assert!(compared >= 4, "{compared}");
}

#[test]
fn nearest_resize_of_an_empty_input_is_an_error_not_a_panic() {
    let mut model = TypedModel::default();
    let x = model.add_source("x", f32::fact([1, 1, 0, 4])).unwrap();
    let sizes = model.add_const("sizes", tensor1(&[1i64, 1, 3, 4])).unwrap();
    let y = model
        .wire_node(
            "resize",
            Resize {
                coord_transformer: CoordTransformer::Asymmetric,
                interpolator: Interpolator::Nearest,
                nearest: Nearest::Floor,
                optional_scales_input: None,
                optional_sizes_input: Some(1),
            },
            &[x, sizes],
        )
        .unwrap();
    model.select_output_outlets(&y).unwrap();
    let plan = model.into_runnable().unwrap();
    let input = Tensor::zero::<f32>(&[1, 1, 0, 4]).unwrap();
    let err = plan.run(tvec![input.into_tvalue()]).unwrap_err();
    assert!(format!("{err:?}").contains("empty"), "{err:?}");
}

use tract_onnx::tract_core::ops::binary::BinMiniOp;
use tract_onnx::tract_core::ops::logic::CompGT;

/// `x > y` through the patched flat loop (operands of the output's shape
/// or single values) and through stock tract's broadcasting: the same
/// tensors, and what the definition gives element by element. A
/// per-channel operand takes stock's path in both runs.
#[test]
fn comparisons_in_a_flat_loop_match_stock_tract() {
    let full = noise(&[1, 6, 5, 4], 7, 1.0);
    let other = noise(&[1, 6, 5, 4], 8, 1.0);
    let zero = tensor0(0f32);
    let single = noise(&[1, 1, 1, 1], 9, 0.5);
    let per_channel = noise(&[4], 10, 1.0);
    let values = |t: &Tensor, shape: &[usize]| -> Vec<f32> {
        let v = t.to_plain_array_view::<f32>().unwrap();
        v.broadcast(shape).unwrap().iter().copied().collect()
    };
    let pairs = [
        (&full, &zero),
        (&zero, &full),
        (&full, &other),
        (&single, &full),
        (&full, &per_channel),
    ];
    for (k, (a, b)) in pairs.into_iter().enumerate() {
        let gt = |stock| {
            maybe_stock(stock, || {
                CompGT
                    .eval(
                        a.clone().into_tvalue(),
                        b.clone().into_tvalue(),
                        bool::datum_type(),
                    )
                    .unwrap()
            })
        };
        let (fast, stock) = (gt(false), gt(true));
        assert_eq!(fast, stock, "x > y, case {k}");
        let shape = fast.shape().to_vec();
        let want: Vec<bool> = values(a, &shape)
            .iter()
            .zip(values(b, &shape))
            .map(|(a, b)| *a > b)
            .collect();
        let got: Vec<bool> = fast
            .to_plain_array_view::<bool>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        assert_eq!(got, want, "x > y, case {k}");
        assert!(
            got.contains(&true) && got.contains(&false),
            "case {k} tests one side only"
        );
    }
}

/// The landmark stage's models (PReLU activations: `GT` and `Iff` in
/// tract's plan) give exactly stock tract's outputs with the comparison
/// fast path (and the padded depthwise copy: within rounding on aarch64,
/// see [`assert_stock_or_fused`]).
#[test]
fn the_landmark_models_match_stock_tract_without_the_fast_paths() {
    for (manifest, task) in [
        ("models/face-landmark.toml", Task::FaceLandmarks),
        ("models/iris-landmark.toml", Task::IrisLandmarks),
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(manifest);
        let model = LoadedModel::load(&path, task, None).unwrap();
        let names = ops(&model);
        for op in ["GT", "Iff"] {
            assert!(
                names.iter().any(|o| o == op),
                "{manifest}: {op} not in {names:?}"
            );
        }
        for seed in 0..2 {
            let input = noise(&model.input_shape, seed, 1.0);
            let (fast, stock) = (
                run_plan(&model.plan, &input, false),
                run_plan(&model.plan, &input, true),
            );
            assert_eq!(fast.len(), stock.len(), "{manifest}, input {seed}");
            assert!(!fast.is_empty());
            // Their depthwise layers run through the padded copy.
            for (k, (fast, stock)) in fast.iter().zip(&stock).enumerate() {
                let case = format!("{manifest}, input {seed}, output {k}");
                assert_stock_or_fused(fast, stock, 1e-4, &case);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// f32 products where AVX-512 gains nothing (vendor/TRACT-PATCH.md): on a
// core whose probe finds one 512-bit FMA port the patched tract-linalg
// runs them on the 256-bit FMA kernels; `TRACT_FERD_AVX512_F32` (read when
// a model is optimised) keeps stock tract's AVX-512 kernels.

/// Whether this machine is one where the patch moves f32 products: AVX-512
/// VNNI (which the probe needs) and one 512-bit FMA port found by it.
fn one_port_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512vnni")
            && tract_linalg::x86_64::fma_width::avx512_fma_units() == 1
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[test]
fn f32_products_leave_avx512_only_where_it_gains_nothing_and_agree_with_it() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/retinaface-mnet025.toml");
    let load = || LoadedModel::load(&manifest, Task::FaceDetector, Some([240, 320])).unwrap();
    let ours = load();
    let stock = KnobScope::new([("TRACT_FERD_AVX512_F32", "1")])
        .unwrap()
        .enter(load);
    let (a, b) = (ours.kernels(), stock.kernels());
    assert!(!a.is_empty() && !b.is_empty());
    if one_port_avx512() {
        assert!(
            a.contains("fma_mmm_f32") && !a.contains("avx512_mmm_f32"),
            "{a}"
        );
        assert!(b.contains("avx512_mmm_f32"), "{b}");
    } else {
        assert_eq!(a, b, "the knob changed nothing here");
    }
    // Other kernels sum in another order: the same outputs within float
    // rounding.
    detector_runs_agree(
        |input| run_plan(&ours.plan, input, false),
        |input| run_plan(&stock.plan, input, false),
        |a, b| (a - b).abs() / b.abs().max(1.0),
        1e-4,
    );
}

// The patched tract-linalg's assembly kernels end with `vzeroupper`
// (vendor/TRACT-PATCH.md, "the upper vector state cleared"): without it
// they return with the upper halves of the vector registers in use, and on
// Intel cores every SSE instruction after them (all of Rust's scalar float
// code, the lazy im2col's gather, glibc's `expf`) then runs far slower.

/// `XINUSE` (`XGETBV` with `ECX = 1`): which parts of the extended state
/// are not in their initial state. `None` where the processor cannot say.
#[cfg(target_arch = "x86_64")]
// `__cpuid_count` is unsafe on older toolchains, safe on newer ones.
#[allow(unused_unsafe)]
fn xinuse() -> Option<u64> {
    use std::arch::x86_64::{__cpuid_count, _xgetbv};
    #[target_feature(enable = "xsave")]
    unsafe fn read() -> u64 {
        _xgetbv(1)
    }
    // CPUID.(EAX=0DH, ECX=1):EAX bit 2: XGETBV with ECX = 1 is supported.
    let leaf_ok = unsafe { __cpuid_count(0, 0).eax } >= 0xD;
    if !std::is_x86_feature_detected!("xsave")
        || !leaf_ok
        || unsafe { __cpuid_count(0xD, 1).eax } & 4 == 0
    {
        return None;
    }
    Some(unsafe { read() })
}

/// After every node of every shipped model's plan (their f32 products on
/// the kernels this machine's tract picks, the int8 model's on its integer
/// kernels), the upper halves of the vector registers are back in their
/// initial state: no kernel leaves them in use.
#[cfg(target_arch = "x86_64")]
#[test]
fn kernels_leave_the_upper_vector_state_clean() {
    use tract_onnx::tract_core::plan::{eval, SimpleState};
    // XINUSE bit 2: the upper 128 bits of YMM0-15 (what `vzeroupper`
    // clears; bit 7, ZMM0-15's upper 256 bits, stays set after it on the
    // Intel VM this was written on, so it says nothing).
    const UPPER: u64 = 1 << 2;
    if xinuse().is_none() || !std::is_x86_feature_detected!("avx") {
        eprintln!("skipped: this processor does not report XINUSE, or has no AVX");
        return;
    }
    #[target_feature(enable = "avx")]
    unsafe fn clear_upper() {
        std::arch::x86_64::_mm256_zeroupper()
    }
    // Where `vzeroupper` does not clear the bit (a processor or hypervisor
    // that reports the component in use regardless), it says nothing.
    unsafe { clear_upper() };
    if xinuse().unwrap_or(0) & UPPER != 0 {
        eprintln!("skipped: XINUSE's upper-YMM bit stays set after vzeroupper here");
        return;
    }
    let models = [
        ("models/expression.toml", Task::Expression, None),
        (
            "models/expression-kd-int8-nnef.toml",
            Task::Expression,
            None,
        ),
        (
            "models/retinaface-mnet025.toml",
            Task::FaceDetector,
            Some([240, 320]),
        ),
        ("models/face-landmark.toml", Task::FaceLandmarks, None),
        ("models/iris-landmark.toml", Task::IrisLandmarks, None),
    ];
    for (file, task, size) in models {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let model = LoadedModel::load(&manifest, task, size).unwrap();
        let input = noise(&model.input_shape, 7, 1.0);
        let mut state = SimpleState::new(&model.plan).unwrap();
        let mut dirty = Vec::new();
        // Loading may leave it in use (tract's start-up probes); each node
        // is checked from a clean start.
        unsafe { clear_upper() };
        state
            .run_plan_with_eval(tvec![input.into_tvalue()], |ctx, op_state, node, inputs| {
                let out = eval(ctx, op_state, node, inputs);
                if xinuse().unwrap_or(0) & UPPER != 0 {
                    dirty.push(format!("{} ({})", node.name, node.op().name()));
                }
                out
            })
            .unwrap();
        assert!(
            dirty.is_empty(),
            "{file}: upper vector state left in use after {dirty:?}"
        );
    }
}

/// MXCSR, read with `stmxcsr`.
#[cfg(target_arch = "x86_64")]
fn mxcsr() -> u32 {
    let mut v = 0u32;
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack)) };
    v
}

/// The patched kernels leave MXCSR alone and the tile walk sets their mode
/// (exceptions masked, denormal inputs as zero) around itself
/// (vendor/TRACT-PATCH.md, "MXCSR set once per tile walk"): the products
/// still read denormal inputs as zero, as stock's kernels do, and the
/// thread's own mode, default or not, is what it was after the run.
#[cfg(target_arch = "x86_64")]
#[test]
fn products_run_in_the_kernels_float_mode_and_leave_the_threads_alone() {
    let (plan, _, bias) = KnobScope::new([("TRACT_FERD_DIRECT_MAX_TAPS", "0")])
        .unwrap()
        .enter(|| conv_plan([8, 16, 12, 20], [3, 3], 1, [1, 1], 1, 11, "LazyIm2col"));
    // Every input a denormal: read as zero, each output is its bias.
    let denormal = Tensor::from_shape(&[1, 8, 12, 20], &vec![1.0e-39f32; 8 * 12 * 20]).unwrap();
    let write = |v: u32| unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &v, options(nostack)) };
    let before = mxcsr();
    for mode in [before, before | 1 << 15] {
        // The default mode, then with flush-to-zero (bit 15) added.
        write(mode);
        let out = run_plan(&plan, &denormal, false).remove(0);
        let after = mxcsr();
        write(before);
        assert_eq!(after, mode, "the thread's MXCSR changed by the run");
        for (o, chunk) in out.chunks(12 * 20).enumerate() {
            assert!(
                chunk.iter().all(|&v| v == bias[o]),
                "mode {mode:#x}: channel {o} is not its bias {}: {:?}",
                bias[o],
                &chunk[..4]
            );
        }
    }
}

/// On AMX machines the patched tract-linalg keeps int8 products of depth
/// under 64 (the int8 model's first convolution, k = 9) off the AMX
/// kernels, whose tile is mostly padding there (vendor/TRACT-PATCH.md,
/// "AMX int8 declined below one K step"); deeper ones may use them. On
/// machines without AMX no plan names an AMX kernel at all.
#[test]
fn shallow_int8_products_stay_off_amx() {
    let model = LoadedModel::load(&manifest(), Task::Expression, None).unwrap();
    let kernels = model.kernels();
    let mut shallow = 0;
    for line in kernels.lines() {
        let k: usize = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("k:"))
            .and_then(|k| k.parse().ok())
            .unwrap_or_else(|| panic!("no depth in {line:?}"));
        if k < 64 {
            shallow += 1;
            assert!(!line.contains("amx"), "a shallow product on AMX: {line}");
        }
    }
    // The first convolution (one input channel, 3x3) is such a product.
    assert!(shallow >= 1, "no product of depth under 64 in:\n{kernels}");
}

/// An int8 × int8 → i32 product with no requantisation, optimised as a
/// model is (so that it runs on the kernel tract picks for this CPU: on
/// AVX-512 VNNI `avx512vnni_mmm_i32_16x16`, whose loop the patch changed to
/// bias B instead of A), against plain integer arithmetic. Operands span
/// the whole i8 range, depths leave K=4 tails, and the shapes leave partial
/// tiles on both sides.
#[test]
fn int8_products_are_exact_integer_arithmetic() {
    use tract_onnx::prelude::*;
    use tract_onnx::tract_core::ops::einsum::EinSum;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 24) as u8 as i8
    };
    let mut kernels = String::new();
    for (m, k, n) in [
        (16, 64, 16),
        (37, 9, 50),
        (48, 131, 33),
        (192, 864, 36),
        (5, 4, 70),
    ] {
        let a: Vec<i8> = (0..m * k).map(|_| next()).collect();
        let b: Vec<i8> = (0..k * n).map(|_| next()).collect();
        let mut model = TypedModel::default();
        let src = model.add_source("b", i8::fact([k, n])).unwrap();
        let a_t = tract_ndarray::Array2::from_shape_vec((m, k), a.clone()).unwrap();
        let konst = model.add_const("a", Tensor::from(a_t)).unwrap();
        let out = model
            .wire_node(
                "product",
                EinSum::new("mk,kn->mn".parse().unwrap(), i32::datum_type()),
                &[konst, src],
            )
            .unwrap();
        model.select_output_outlets(&out).unwrap();
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        for node in plan.model().nodes() {
            for line in node.op().info().unwrap_or_default() {
                if line.starts_with("Mult:") {
                    kernels.push_str(&line);
                    kernels.push('\n');
                }
            }
        }
        let b_t = tract_ndarray::Array2::from_shape_vec((k, n), b.clone()).unwrap();
        let got = plan.run(tvec![Tensor::from(b_t).into_tvalue()]).unwrap();
        let got = got[0].to_plain_array_view::<i32>().unwrap();
        for i in 0..m {
            for j in 0..n {
                let want: i32 = (0..k)
                    .map(|p| i32::from(a[i * k + p]) * i32::from(b[p * n + j]))
                    .sum();
                assert_eq!(got[[i, j]], want, "m={m} k={k} n={n} at ({i}, {j})");
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512vnni") {
        assert!(
            kernels.contains("avx512vnni_mmm_i32"),
            "no product on the VNNI kernels:\n{kernels}"
        );
    }
}

/// The int8 classifier's halving pools (2×2, stride 2, on byte-sized
/// integers: u8, i8 and the quantized u8 its convolutions output), on the
/// patched fast path for unpadded pools and the generic walk for padded
/// ones, against the definition and stock tract's evaluation.
#[test]
fn byte_halving_max_pools_match_the_definition_and_stock_tract() {
    use tract_onnx::tract_core::internal::QParams;
    let quantized = DatumType::QU8(QParams::ZpScale {
        zero_point: 0,
        scale: 0.02,
    });
    // (datum type, channels, height, width, padding before, padding after)
    let cases = [
        (DatumType::U8, 16, 48, 48, [0, 0], [0, 0]),
        (DatumType::I8, 3, 9, 47, [0, 0], [0, 0]),
        (quantized, 48, 24, 24, [0, 0], [0, 0]),
        (DatumType::I8, 2, 33, 17, [0, 0], [0, 0]),
        (DatumType::U8, 1, 2, 2, [0, 0], [0, 0]),
        (DatumType::I8, 2, 10, 34, [1, 1], [1, 1]),
    ];
    for (i, &(dt, c, h, w, before, after)) in cases.iter().enumerate() {
        let plan = halving_pool_plan(dt, c, h, w, before, after);
        // Bytes over the whole range, as i32 in the type's own order.
        let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ i as u64;
        let bytes: Vec<u8> = (0..c * h * w)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect();
        let signed = dt.unquantized() == DatumType::I8;
        let value = |b: u8| {
            if signed {
                i32::from(b as i8)
            } else {
                i32::from(b)
            }
        };
        let mut input = Tensor::from_shape(&[1, c, h, w], &bytes).unwrap();
        unsafe { input.set_datum_type(dt) };
        let run = |stock: bool| -> Vec<i32> {
            let out = maybe_stock(stock, || plan.run(tvec![input.clone().into_tvalue()])).unwrap();
            assert_eq!(out[0].datum_type(), dt, "case {i}");
            let mut out = out[0].clone().into_tensor();
            unsafe { out.set_datum_type(DatumType::U8) };
            let out = out.to_plain_array_view::<u8>().unwrap();
            out.iter().map(|&b| value(b)).collect()
        };
        let (got, stock) = (run(false), run(true));
        assert_eq!(got, stock, "case {i}");
        let want = halving_pool_definition([c, h, w], before, after, |p, iy, ix| {
            value(bytes[(p * h + iy) * w + ix])
        });
        assert_eq!(got, want, "case {i}");
    }
}
