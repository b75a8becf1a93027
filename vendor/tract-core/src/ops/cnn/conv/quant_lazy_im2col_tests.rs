//! ferd patch: the quantized convolution with lazily gathered patches
//! (`Conv::wire_as_quant_lazy_im2col`, taken when the kernel zero point is 0) must give
//! exactly the integers of stock tract's eager path (`Im2col` + `QSumB`), which stays
//! reachable with `TRACT_QUANT_EAGER_IM2COL=1`. Each case is checked three ways: the
//! unoptimized model (`Conv::eval`, eager by construction), the optimized model with the
//! eager knob set, and the optimized model with the lazy path.

use crate::internal::*;
use crate::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use crate::ops::nn::DataFormat;
use tract_data::knobs::KnobScope;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn range(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next() % ((hi - lo + 1) as u32)) as i32
    }
}

#[derive(Debug, Clone)]
struct Case {
    /// U8 or I8 input (plain, or quantized when `x_in_type` is set)
    x_dt: DatumType,
    /// carry the zero point and scale in the input's datum type too (as NNEF models do)
    x_in_type: bool,
    /// q_params: U8, I8 or I32 output
    out_dt: DatumType,
    fmt: DataFormat,
    ci: usize,
    co: usize,
    hw: (usize, usize),
    kernel: usize,
    stride: usize,
    same: bool,
    x0: i32,
    /// per output channel kernel scale (and zero point tensor) instead of a scalar
    per_channel: bool,
    /// kernel zero point: anything but 0 must keep the eager path
    k0: i8,
}

fn case(ci: usize, co: usize, kernel: usize, stride: usize, same: bool) -> Case {
    Case {
        x_dt: DatumType::U8,
        x_in_type: false,
        out_dt: DatumType::U8,
        fmt: DataFormat::NCHW,
        ci,
        co,
        hw: (9, 8),
        kernel,
        stride,
        same,
        x0: 117,
        per_channel: false,
        k0: 0,
    }
}

fn build(c: &Case, seed: u64) -> TractResult<(TypedModel, Tensor)> {
    let mut rng = Lcg(seed);
    let (h, w) = c.hw;
    let x_shape: TVec<usize> = c.fmt.from_n_c_hw(1, c.ci, [h, w])?.shape;
    let x_plain_dt = c.x_dt.unquantized();
    let x_type = if c.x_in_type {
        let qp = QParams::ZpScale { zero_point: c.x0, scale: 0.02 };
        if x_plain_dt == DatumType::U8 { DatumType::QU8(qp) } else { DatumType::QI8(qp) }
    } else {
        x_plain_dt
    };
    let (lo, hi) = if x_plain_dt == DatumType::U8 { (0, 255) } else { (-128, 127) };
    let x_values: Vec<i32> = (0..x_shape.iter().product()).map(|_| rng.range(lo, hi)).collect();
    let mut input = tract_ndarray::ArrayD::from_shape_vec(&*x_shape, x_values)?
        .into_tensor()
        .cast_to_dt(x_plain_dt)?
        .into_owned();
    unsafe { input.set_datum_type(x_type) };

    let k_shape = [c.co, c.ci, c.kernel, c.kernel];
    let k_values: Vec<i8> =
        (0..k_shape.iter().product()).map(|_| rng.range(-127, 127) as i8).collect();
    let kernel = tract_ndarray::ArrayD::from_shape_vec(&k_shape[..], k_values)?.into_tensor();
    let bias: Vec<i32> = (0..c.co).map(|_| rng.range(-2000, 2000)).collect();

    let mut model = TypedModel::default();
    let x = model.add_source("x", x_type.fact(&*x_shape))?;
    let kernel = model.add_const("kernel", kernel)?;
    let bias = model.add_const("bias", tensor1(&bias))?;
    // zero points are i32 tensors (Conv::output_facts)
    let x0 = model.add_const("x0", tensor0(c.x0))?;
    let x_scale = model.add_const("x_scale", tensor0(0.02f32))?;
    let (k0, k_scale) = if c.per_channel {
        let scales: Vec<f32> = (0..c.co).map(|i| 0.004 + 0.0005 * i as f32).collect();
        (tensor1(&vec![c.k0 as i32; c.co]), tensor1(&scales))
    } else {
        (tensor0(c.k0 as i32), tensor0(0.005f32))
    };
    let k0 = model.add_const("k0", k0)?;
    let k_scale = model.add_const("k_scale", k_scale)?;
    let y0 = if c.out_dt == DatumType::I8 { tensor0(-3i32) } else { tensor0(128i32) };
    let y0 = model.add_const("y0", y0)?;
    let y_scale = model.add_const("y_scale", tensor0(0.02 * c.kernel as f32))?;
    let padding = if c.same { PaddingSpec::SameUpper } else { PaddingSpec::Valid };
    let op = Conv {
        pool_spec: PoolSpec {
            data_format: c.fmt,
            kernel_shape: tvec!(c.kernel, c.kernel),
            padding,
            dilations: None,
            strides: Some(tvec!(c.stride, c.stride)),
            input_channels: c.ci,
            output_channels: c.co,
        },
        kernel_fmt: KernelFormat::OIHW,
        group: 1,
        q_params: Some(c.out_dt),
    };
    let wire = model
        .wire_node("conv", op, &[x, kernel, bias, x0, x_scale, k0, k_scale, y0, y_scale])?;
    model.select_output_outlets(&wire)?;
    Ok((model, input))
}

fn op_names(model: &TypedModel) -> Vec<String> {
    model.nodes().iter().map(|n| n.op.name().to_string()).collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> TractResult<i64> {
    let (a, b) = (a.cast_to::<i64>()?, b.cast_to::<i64>()?);
    let (a, b) = (a.try_as_plain_ram()?.as_slice::<i64>()?, b.try_as_plain_ram()?.as_slice::<i64>()?);
    Ok(a.iter().zip(b).map(|(x, y)| (x - y).abs()).max().unwrap_or(0))
}

fn check(c: &Case) -> TractResult<()> {
    for seed in 0..3 {
        let (model, input) = build(c, seed)?;
        let run = |m: TypedModel| -> TractResult<Tensor> {
            let out = m.into_runnable()?.run(tvec!(input.clone().into_tvalue()))?;
            Ok(out[0].clone().into_tensor())
        };
        let reference = run(model.clone())?;
        let eager_knob = KnobScope::new([("TRACT_QUANT_EAGER_IM2COL", "1")])?;
        // declutter + codegen (the usual path), and codegen alone (a 1x1 conv reaches the
        // conv codegen only if declutter did not turn it into an einsum first)
        for declutter in [true, false] {
            let optimize = |m: TypedModel| -> TractResult<TypedModel> {
                if declutter {
                    m.into_optimized()
                } else {
                    let mut m = m;
                    m.optimize()?;
                    Ok(m)
                }
            };
            let eager = eager_knob.enter(|| optimize(model.clone()))?;
            let lazy = optimize(model.clone())?;
            let (eager_ops, lazy_ops) = (op_names(&eager), op_names(&lazy));
            let lazy_taken = lazy_ops.iter().any(|n| n == "LazyIm2col");
            assert!(
                !eager_ops.iter().any(|n| n == "LazyIm2col"),
                "{c:?}: eager knob ignored: {eager_ops:?}"
            );
            if c.k0 != 0 {
                assert!(!lazy_taken, "{c:?}: non-zero kernel zero point went lazy: {lazy_ops:?}");
            } else if !declutter || c.kernel > 1 {
                assert!(lazy_taken, "{c:?} declutter:{declutter}: lazy not taken: {lazy_ops:?}");
                assert!(!lazy_ops.iter().any(|n| n == "QSumB"), "{c:?}: {lazy_ops:?}");
                assert!(eager_ops.iter().any(|n| n == "Im2col"), "{c:?}: {eager_ops:?}");
            }
            let eager = run(eager)?;
            let lazy = run(lazy)?;
            assert_eq!(eager.datum_type(), reference.datum_type());
            // The unoptimized model requantizes in float, the optimized one in fixed point
            // inside the matmul: stock tract lets them differ by one unit. Only a sanity check.
            let max_diff = max_abs_diff(&eager, &reference)?;
            assert!(max_diff <= 1, "{c:?} seed {seed}: eager vs reference differ by {max_diff}");
            assert_eq!(lazy, eager, "{c:?} seed {seed} declutter:{declutter}: lazy vs eager");
        }
    }
    Ok(())
}

#[test]
fn conv3x3_same_stride1() -> TractResult<()> {
    for (ci, co) in [(1, 8), (3, 16), (8, 8), (16, 32), (5, 7)] {
        check(&case(ci, co, 3, 1, true))?;
    }
    Ok(())
}

#[test]
fn conv3x3_valid_stride1() -> TractResult<()> {
    for (ci, co) in [(1, 4), (4, 16), (16, 16), (7, 9)] {
        check(&case(ci, co, 3, 1, false))?;
    }
    Ok(())
}

#[test]
fn conv3x3_stride2() -> TractResult<()> {
    for same in [true, false] {
        for (ci, co) in [(1, 8), (8, 16), (6, 10)] {
            check(&case(ci, co, 3, 2, same))?;
        }
    }
    Ok(())
}

#[test]
fn conv1x1() -> TractResult<()> {
    for stride in [1, 2] {
        for same in [true, false] {
            for (ci, co) in [(4, 8), (16, 24), (3, 5)] {
                check(&case(ci, co, 1, stride, same))?;
            }
        }
    }
    Ok(())
}

#[test]
fn conv5x5_and_odd_shapes() -> TractResult<()> {
    check(&Case { hw: (11, 13), ..case(3, 12, 5, 1, true) })?;
    check(&Case { hw: (11, 13), ..case(2, 9, 5, 2, true) })?;
    check(&Case { hw: (4, 4), ..case(8, 8, 3, 1, true) })?;
    Ok(())
}

/// ferd patch: the K=4 gather takes 8 columns at a time as up to three runs
/// of consecutive bytes; rows of 3, 5, 6, 12 and 22 outputs put one, two or
/// three runs (or more: the byte-by-byte fallback) in a chunk, at every
/// offset of a panel, and leave short panels.
#[test]
fn chunks_across_rows_ends() -> TractResult<()> {
    check(&Case { hw: (5, 3), ..case(4, 16, 3, 1, true) })?;
    check(&Case { hw: (7, 7), ..case(5, 16, 3, 1, false) })?;
    check(&Case { hw: (6, 5), ..case(3, 32, 3, 1, true) })?;
    check(&Case { hw: (7, 6), ..case(16, 16, 3, 1, true) })?;
    check(&Case { hw: (9, 12), ..case(8, 48, 3, 1, true) })?;
    check(&Case { hw: (6, 24), ..case(2, 16, 3, 1, false) })?;
    Ok(())
}

#[test]
fn input_types_and_zero_points() -> TractResult<()> {
    for x0 in [0, 1, 128, 255] {
        check(&Case { x0, ..case(4, 8, 3, 1, true) })?;
    }
    for x0 in [-128, -5, 0, 77, 127] {
        check(&Case { x_dt: DatumType::I8, x0, ..case(4, 8, 3, 1, true) })?;
        check(&Case { x_dt: DatumType::I8, x0, ..case(3, 6, 3, 2, true) })?;
    }
    check(&Case { x_in_type: true, ..case(4, 8, 3, 1, true) })?;
    check(&Case { x_dt: DatumType::I8, x_in_type: true, x0: -9, ..case(4, 8, 3, 1, true) })?;
    Ok(())
}

#[test]
fn output_types_layout_per_channel() -> TractResult<()> {
    check(&Case { out_dt: DatumType::I8, ..case(4, 8, 3, 1, true) })?;
    check(&Case { out_dt: DatumType::I32, ..case(4, 8, 3, 1, true) })?;
    check(&Case { fmt: DataFormat::NHWC, ..case(4, 8, 3, 1, true) })?;
    check(&Case { fmt: DataFormat::NHWC, ..case(5, 6, 3, 2, false) })?;
    check(&Case { per_channel: true, ..case(4, 8, 3, 1, true) })?;
    check(&Case { per_channel: true, fmt: DataFormat::NHWC, ..case(4, 8, 3, 1, true) })?;
    Ok(())
}

/// A non-zero kernel zero point needs the patch sums: it must keep the eager path.
#[test]
fn nonzero_kernel_zero_point_stays_eager() -> TractResult<()> {
    check(&Case { k0: 3, ..case(4, 8, 3, 1, true) })?;
    check(&Case { k0: -1, per_channel: true, ..case(4, 8, 3, 1, true) })?;
    Ok(())
}
