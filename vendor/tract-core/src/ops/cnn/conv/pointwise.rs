//! ferd patch: a group-1 f32 1×1 convolution over an NCHW plane computed directly, eight
//! output channels at a time against a run of contiguous points of every input channel,
//! instead of as a matrix product.
//!
//! In NCHW a 1×1 convolution is `out[o][p] = bias[o] + Σ_i w[o][i] · in[i][p]`, and each
//! input channel's plane is already a contiguous row of points. tract runs it as a product
//! whose plane side is packed into panels at every run (`OptMatMulPack`), and whose tiles
//! (16 channels by 12 points on AVX-512) do only k = 8 to 64 steps between a store that
//! scatters each point's channels across rows. For the face detector's first pointwise
//! layers that came to 5–15 GMAC/s. Here the plane is read where it lies, sixteen points to
//! a vector, and each output row is written as whole vectors: no packing and no transpose.
//! Measured in `vendor/TRACT-PATCH.md`.
//!
//! Built by `Conv::codegen` on x86_64 hosts with AVX-512F, or AVX2 and FMA, for the shapes
//! [`eligible`] takes; everything else keeps stock's path. A following `LeakyRelu` is fused
//! into the store ([`TypedOp::fuse`]).

use crate::internal::*;
use crate::ops::nn::LeakyRelu;

/// Output channels per block: the kernels keep eight channels' accumulators in registers.
const CHANNELS_PER_BLOCK: usize = 8;

/// The fewest points per plane for the direct path: over smaller planes the last, masked
/// run of 32 points wastes much of its lanes, and the product's tiles (whose plane side is 12
/// points) were as fast or faster (the face detector's 128→256 layer over 80 points: 0.086
/// against 0.089 ms; over 36 points 0.058 against 0.044 ms).
const MIN_PLANE: usize = 128;

/// Whether a 1×1 convolution with `ci` input and `co` output channels over a plane of
/// `plane` points is computed by [`DirectPointwise`] on this host: f32, a whole number of
/// channel blocks (at least two), at most `TRACT_FERD_POINTWISE_MAX_K` input channels, at
/// least [`MIN_PLANE`] points, and an x86_64 CPU with AVX-512F or AVX2 + FMA. Never under `TRACT_FERD_STOCK_EVAL` (stock's
/// plan for comparisons).
///
/// The detector's heads (4, 8 and 20 output channels) are left to the product: their
/// transposed reshape into anchor rows is fused into its store.
pub fn eligible(dt: DatumType, ci: usize, co: usize, plane: usize) -> bool {
    dt == f32::datum_type()
        && co >= 2 * CHANNELS_PER_BLOCK
        && co.is_multiple_of(CHANNELS_PER_BLOCK)
        && ci >= 1
        && ci <= TRACT_FERD_POINTWISE_MAX_K.get()
        && plane >= MIN_PLANE
        && !crate::ops::TRACT_FERD_STOCK_EVAL.get()
        && PointwiseKernel::detect().is_some()
}

crate::declare_knob!(
    scopable TRACT_FERD_POINTWISE_AVX2,
    bool,
    false,
    "ferd patch: plan DirectPointwise with its AVX2 + FMA kernel even where AVX-512F is available (tests of that kernel, comparisons)."
);

crate::declare_knob!(
    scopable TRACT_FERD_POINTWISE_MAX_K,
    usize,
    128,
    "ferd patch: the most input channels a group-1 f32 1x1 NCHW convolution may have to be computed directly (DirectPointwise) instead of as a matrix product on x86_64; 0 turns the direct path off."
);

/// The vector kernel a [`DirectPointwise`] runs, chosen when the model is optimised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PointwiseKernel {
    /// Sixteen lanes (AVX-512F).
    Avx512,
    /// Eight lanes (AVX2 + FMA).
    Avx2,
}

impl PointwiseKernel {
    /// The widest kernel this CPU runs (AVX2 under `TRACT_FERD_POINTWISE_AVX2`), if any.
    pub fn detect() -> Option<PointwiseKernel> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && !TRACT_FERD_POINTWISE_AVX2.get() {
                return Some(PointwiseKernel::Avx512);
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Some(PointwiseKernel::Avx2);
            }
        }
        None
    }

    /// Whether this CPU runs the kernel.
    fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                PointwiseKernel::Avx512 => std::is_x86_feature_detected!("avx512f"),
                PointwiseKernel::Avx2 => {
                    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// A 1×1, stride-1, group-1 f32 convolution over NCHW (or CHW) input: inputs are the data,
/// the kernel as `[1, co, ci]` and the bias as `[co]`; `alpha` is a fused `LeakyRelu`'s
/// (`None`: no activation).
#[derive(Debug, Clone, PartialEq)]
pub struct DirectPointwise {
    /// Images in the batch (1 without an N axis).
    pub n: usize,
    /// Input channels.
    pub ci: usize,
    /// Output channels, a multiple of eight.
    pub co: usize,
    /// Points per channel plane (H × W).
    pub plane: usize,
    /// The output's shape.
    pub output_shape: TVec<usize>,
    /// The slope of a fused `LeakyRelu` below 0.
    pub alpha: Option<f32>,
    /// The vector kernel, [`PointwiseKernel::detect`]'s when the model was optimised.
    pub kernel: PointwiseKernel,
}

impl Op for DirectPointwise {
    fn name(&self) -> StaticName {
        "DirectPointwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "ci: {} co: {} plane: {} n: {} leaky_relu: {:?} kernel: {:?}",
            self.ci, self.co, self.plane, self.n, self.alpha, self.kernel
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for DirectPointwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, kernel, bias) = args_3!(inputs);
        let (ci, co, plane) = (self.ci, self.co, self.plane);
        let x = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let w = kernel.try_as_plain_ram()?.as_slice::<f32>()?;
        let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?;
        ensure!(
            x.len() == self.n * ci * plane && w.len() == co * ci && bias.len() == co,
            "DirectPointwise: inputs of {} data, {} weights and {} biases for n {} ci {ci} co {co} plane {plane}",
            x.len(),
            w.len(),
            bias.len(),
            self.n
        );
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        let mut view = output.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        let alpha = self.alpha.unwrap_or(1.0);
        // A plan runs where it was optimised; the check keeps a foreign one from faulting.
        let kernel = Some(self.kernel).filter(|k| k.available());
        for (x, out) in x.chunks_exact(ci * plane).zip(out.chunks_exact_mut(co * plane)) {
            run(kernel, x, w, bias, out, ci, plane, alpha);
        }
        drop(view);
        Ok(tvec!(output.into_tvalue()))
    }
}

/// `alpha` comes from a `LeakyRelu`'s slope and is never NaN, so equality is an equivalence.
impl Eq for DirectPointwise {}

impl TypedOp for DirectPointwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 3);
        Ok(tvec!(f32::fact(&self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((Cost::FMA(f32::datum_type()), (self.n * self.ci * self.co * self.plane).to_dim())))
    }

    /// Takes in the `LeakyRelu` that follows, when it is this node's only successor.
    fn fuse(&self, model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
        rule_if!(self.alpha.is_none());
        rule_if!(node.outputs.len() == 1);
        rule_if!(node.outputs[0].successors.len() == 1);
        rule_if!(!model.output_outlets()?.contains(&node.id.into()));
        let succ = model.node(node.outputs[0].successors[0].node);
        rule_if_some!(ew = succ.op_as::<crate::ops::element_wise::ElementWiseOp>());
        rule_if_some!(leaky = ew.0.downcast_ref::<LeakyRelu>());
        let op = DirectPointwise { alpha: Some(leaky.alpha), ..self.clone() };
        Ok(Some(TypedModelPatch::fuse_with_next(model, node, op)?))
    }

    as_op!();
}

/// One image: `out[o][p] = act(bias[o] + Σ_i w[o][i] · x[i][p])`, where `act(v)` is `v`
/// for `v ≥ 0` and `alpha · v` below (`alpha` 1: none). `x` holds `ci` planes of `plane`
/// points, `out` `co` of them, `w` `co` rows of `ci`; `co` is a multiple of eight.
#[allow(clippy::too_many_arguments)]
fn run(
    kernel: Option<PointwiseKernel>,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    ci: usize,
    plane: usize,
    alpha: f32,
) {
    let co = bias.len();
    assert!(
        co.is_multiple_of(CHANNELS_PER_BLOCK)
            && x.len() == ci * plane
            && w.len() == co * ci
            && out.len() == co * plane
    );
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Some(PointwiseKernel::Avx512) => unsafe { x86::run_avx512(x, w, bias, out, ci, plane, alpha) },
        #[cfg(target_arch = "x86_64")]
        Some(PointwiseKernel::Avx2) => unsafe { x86::run_avx2(x, w, bias, out, ci, plane, alpha) },
        _ => run_scalar(x, w, bias, out, ci, plane, alpha),
    }
}

/// [`run`] one point at a time: the definition, and the path where no vector kernel runs.
fn run_scalar(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    ci: usize,
    plane: usize,
    alpha: f32,
) {
    for (o, (row, &b)) in out.chunks_exact_mut(plane).zip(bias).enumerate() {
        let w = &w[o * ci..][..ci];
        for (p, v) in row.iter_mut().enumerate() {
            let mut acc = b;
            for (i, &wi) in w.iter().enumerate() {
                acc = wi.mul_add(x[i * plane + p], acc);
            }
            *v = if acc < 0.0 { acc * alpha } else { acc };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::run`] on AVX-512F: for each block of eight output channels, 32 points at a
    /// time (the last run masked), sixteen accumulators; each input channel's two vectors
    /// are loaded once per block and multiplied by the eight channels' broadcast weights.
    ///
    /// # Safety
    /// The CPU has AVX-512F; the slices have the sizes [`super::run`] asserts.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run_avx512(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        out: &mut [f32],
        ci: usize,
        plane: usize,
        alpha: f32,
    ) {
        unsafe {
            let va = _mm512_set1_ps(alpha);
            let zero = _mm512_setzero_ps();
            let act = |v: __m512| {
                let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, zero);
                _mm512_mask_mul_ps(v, neg, v, va)
            };
            let xp = x.as_ptr();
            let op = out.as_mut_ptr();
            for c0 in (0..bias.len()).step_by(8) {
                let wp = w.as_ptr().add(c0 * ci);
                let mut p = 0;
                while p < plane {
                    let rem = plane - p;
                    let m0: u16 = if rem >= 16 { 0xffff } else { ((1u32 << rem) - 1) as u16 };
                    let m1: u16 = if rem >= 32 {
                        0xffff
                    } else if rem > 16 {
                        ((1u32 << (rem - 16)) - 1) as u16
                    } else {
                        0
                    };
                    let mut acc = [[zero; 2]; 8];
                    for (j, a) in acc.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(*bias.get_unchecked(c0 + j));
                        *a = [b, b];
                    }
                    for i in 0..ci {
                        let row = xp.add(i * plane + p);
                        let x0 = _mm512_maskz_loadu_ps(m0, row);
                        let x1 = _mm512_maskz_loadu_ps(m1, row.add(16));
                        for (j, a) in acc.iter_mut().enumerate() {
                            let wv = _mm512_set1_ps(*wp.add(j * ci + i));
                            a[0] = _mm512_fmadd_ps(wv, x0, a[0]);
                            a[1] = _mm512_fmadd_ps(wv, x1, a[1]);
                        }
                    }
                    for (j, a) in acc.iter().enumerate() {
                        let dst = op.add((c0 + j) * plane + p);
                        _mm512_mask_storeu_ps(dst, m0, act(a[0]));
                        _mm512_mask_storeu_ps(dst.add(16), m1, act(a[1]));
                    }
                    p += 32;
                }
            }
        }
    }

    /// [`super::run`] on AVX2 + FMA: four output channels against sixteen points at a time
    /// (eight accumulators, as many as sixteen registers hold beside the operands); the
    /// points past the last whole run of sixteen go through the scalar loop.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the slices have the sizes [`super::run`] asserts.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_avx2(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        out: &mut [f32],
        ci: usize,
        plane: usize,
        alpha: f32,
    ) {
        unsafe {
            let va = _mm256_set1_ps(alpha);
            let zero = _mm256_setzero_ps();
            let act = |v: __m256| {
                let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(v, zero);
                _mm256_blendv_ps(v, _mm256_mul_ps(v, va), neg)
            };
            let xp = x.as_ptr();
            let op = out.as_mut_ptr();
            let whole = plane - plane % 16;
            for c0 in (0..bias.len()).step_by(4) {
                let wp = w.as_ptr().add(c0 * ci);
                for p in (0..whole).step_by(16) {
                    let mut acc = [[zero; 2]; 4];
                    for (j, a) in acc.iter_mut().enumerate() {
                        let b = _mm256_set1_ps(*bias.get_unchecked(c0 + j));
                        *a = [b, b];
                    }
                    for i in 0..ci {
                        let row = xp.add(i * plane + p);
                        let x0 = _mm256_loadu_ps(row);
                        let x1 = _mm256_loadu_ps(row.add(8));
                        for (j, a) in acc.iter_mut().enumerate() {
                            let wv = _mm256_set1_ps(*wp.add(j * ci + i));
                            a[0] = _mm256_fmadd_ps(wv, x0, a[0]);
                            a[1] = _mm256_fmadd_ps(wv, x1, a[1]);
                        }
                    }
                    for (j, a) in acc.iter().enumerate() {
                        let dst = op.add((c0 + j) * plane + p);
                        _mm256_storeu_ps(dst, act(a[0]));
                        _mm256_storeu_ps(dst.add(8), act(a[1]));
                    }
                }
                for j in c0..c0 + 4 {
                    for p in whole..plane {
                        let mut acc = *bias.get_unchecked(j);
                        for i in 0..ci {
                            acc = (*wp.add((j - c0) * ci + i)).mul_add(*xp.add(i * plane + p), acc);
                        }
                        *op.add(j * plane + p) = if acc < 0.0 { acc * alpha } else { acc };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(ci: usize, co: usize, plane: usize, alpha: f32) {
        let x: Vec<f32> = (0..ci * plane).map(|i| ((i * 7919) % 23) as f32 * 0.25 - 2.5).collect();
        let w: Vec<f32> = (0..co * ci).map(|i| ((i * 104729) % 17) as f32 * 0.125 - 1.0).collect();
        let bias: Vec<f32> = (0..co).map(|o| o as f32 * 0.5 - 3.0).collect();
        let mut want = vec![0f32; co * plane];
        run_scalar(&x, &w, &bias, &mut want, ci, plane, alpha);
        // Every kernel this CPU has, against the definition.
        let kernels = [PointwiseKernel::Avx512, PointwiseKernel::Avx2];
        for k in kernels.into_iter().filter(|k| k.available()) {
            let mut got = vec![f32::NAN; co * plane];
            run(Some(k), &x, &w, &bias, &mut got, ci, plane, alpha);
            for (ix, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "{k:?} ci {ci} co {co} plane {plane}: [{ix}] {g} against {e}"
                );
            }
        }
    }

    #[test]
    fn kernels_match_the_definition() {
        for plane in [1, 7, 15, 16, 17, 31, 32, 33, 47, 100, 144, 300] {
            for (ci, co) in [(1, 8), (3, 16), (8, 16), (16, 32), (33, 24), (64, 64)] {
                case(ci, co, plane, 0.1);
                case(ci, co, plane, 1.0);
            }
        }
    }
}
