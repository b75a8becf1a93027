//! ferd patch: group-1 f32 convolutions over NCHW planes computed directly, eight output
//! channels at a time against runs of contiguous input points, instead of as a matrix
//! product: 1×1 convolutions, and convolutions of a few input channels (a network's first
//! layer over RGB).
//!
//! In NCHW a 1×1 convolution is `out[o][p] = bias[o] + Σ_i w[o][i] · in[i][p]`, and each
//! input channel's plane is already a contiguous row of points. tract runs it as a product
//! whose plane side is packed into panels at every run (`OptMatMulPack`), and whose tiles
//! (16 channels by 12 points on AVX-512) do only k = 8 to 64 steps between a store that
//! scatters each point's channels across rows. For the face detector's first pointwise
//! layers that came to 5–15 GMAC/s. Here the plane is read where it lies, sixteen points to
//! a vector, and each output row is written as whole vectors: no packing and no transpose.
//!
//! A K×K convolution over three input channels (the detector's first layer: 3×3, stride 2)
//! has only 27 taps per output point. tract gathers them into im2col panels (or, over rows
//! of 128 points or more, filters four channels at a time with eight-lane shuffles). Here
//! the padded input is copied once, each row split by the stride's phase (even and odd
//! columns), so that every tap of a run of output points is a contiguous load too, and the
//! same eight-channel block computes it.
//!
//! A stride-1 K×K convolution over deeper inputs (the detector's SSH and FPN 3×3 layers over
//! 64 channels, k = 576) ran as a product at about 60% of the kernel's peak, the rest going
//! to the im2col panels it copies at every run. Here the padded input is copied once and
//! read as one flat row per channel: output point `(y, x)` at `y · wp + x` reads each tap at
//! a fixed offset from it, so a single run covers every output row, and the few points that
//! wrap into the padding's columns are computed and dropped ([`run_flat`]).
//!
//! Built by `Conv::codegen` on x86_64 hosts with AVX-512F, or AVX2 and FMA, for the shapes
//! `Conv::direct_conv` takes (see [`pointwise_eligible`], [`small_input_eligible`] and
//! [`flat_eligible`]); everything else keeps stock's path. A following `LeakyRelu` or ReLU
//! is fused into the store ([`TypedOp::fuse`]). Measured in `vendor/TRACT-PATCH.md`.

use std::cell::RefCell;

use crate::internal::*;
use crate::ops::nn::LeakyRelu;

/// Output channels per block: the kernels keep eight channels' accumulators in registers.
const CHANNELS_PER_BLOCK: usize = 8;

/// Output points per block on AVX-512 (two vectors); the AVX2 kernel does sixteen.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const POINTS_PER_BLOCK: usize = 32;

/// The most taps (input channels × kernel points) a direct convolution has: the kernels
/// keep one pointer per tap on the stack (9 KiB at most).
pub const MAX_TAPS: usize = 1152;

/// The most taps a first-layer (few input channels) direct convolution has.
const MAX_SMALL_INPUT_TAPS: usize = 128;

/// The fewest points per plane for a direct 1×1 convolution: over smaller planes the last,
/// masked run of 32 points wastes much of its lanes, and the product's tiles (whose plane
/// side is 12 points) were as fast or faster (the face detector's 128→256 layer over 80
/// points: 0.086 against 0.089 ms; over 36 points 0.058 against 0.044 ms).
const MIN_PLANE: usize = 128;

/// The fewest points of a flat run ([`run_flat`]): the classifier's 48→96 3×3 layer over
/// 12×12 points (a run of 166) took 0.094–0.099 ms direct against 0.089 as a product; the
/// detector's 20×15 and 24×24 planes (runs of 328 and 622) gain.
const MIN_FLAT_RUN: usize = 256;

/// The most input channels of a direct K×K convolution (other than 1×1): the first layer of
/// a network over RGB or grey; deeper inputs have taps enough for the product to run well.
pub const MAX_SMALL_INPUT_CHANNELS: usize = 4;

/// The fewest points per output row of a direct K×K convolution: each run covers up to 32
/// points of one row.
const MIN_SMALL_INPUT_ROW: usize = 16;

crate::declare_knob!(
    scopable TRACT_FERD_POINTWISE_MAX_K,
    usize,
    128,
    "ferd patch: the most input channels a group-1 f32 1x1 NCHW convolution may have to be computed directly (DirectConv) instead of as a matrix product on x86_64; 0 turns the direct 1x1 path off."
);

crate::declare_knob!(
    scopable TRACT_FERD_DIRECT_SMALL_INPUT,
    bool,
    true,
    "ferd patch: compute group-1 f32 NCHW convolutions of at most 4 input channels (a first layer over RGB) directly (DirectConv) on x86_64; false keeps the stock paths."
);

crate::declare_knob!(
    scopable TRACT_FERD_DIRECT_MAX_TAPS,
    usize,
    576,
    "ferd patch: the most taps (input channels x kernel points) a group-1 f32 stride-1 KxK NCHW convolution over more than 4 input channels may have to be computed directly (DirectConv) on x86_64; 0 keeps the stock paths."
);

crate::declare_knob!(
    scopable TRACT_FERD_POINTWISE_AVX2,
    bool,
    false,
    "ferd patch: plan DirectConv with its AVX2 + FMA kernel even where AVX-512F is available (tests of that kernel, comparisons)."
);

/// Whether a 1×1 convolution with `ci` input and `co` output channels over a plane of
/// `plane` points is computed by [`DirectConv`] on this host: f32, a whole number of
/// channel blocks (at least two), at most `TRACT_FERD_POINTWISE_MAX_K` input channels, at
/// least [`MIN_PLANE`] points, and a vector kernel ([`VectorKernel::detect`]). Never under
/// `TRACT_FERD_STOCK_EVAL` (stock's plan for comparisons).
///
/// The detector's heads (4, 8 and 20 output channels) are left to the product: their
/// transposed reshape into anchor rows is fused into its store.
pub fn pointwise_eligible(dt: DatumType, ci: usize, co: usize, plane: usize) -> bool {
    dt == f32::datum_type()
        && co >= 2 * CHANNELS_PER_BLOCK
        && co.is_multiple_of(CHANNELS_PER_BLOCK)
        && ci >= 1
        && ci <= TRACT_FERD_POINTWISE_MAX_K.get()
        && plane >= MIN_PLANE
        && !crate::ops::TRACT_FERD_STOCK_EVAL.get()
        && VectorKernel::detect().is_some()
}

/// Whether a K×K convolution of `geo`'s shape (not 1×1) is computed by [`DirectConv`] on
/// this host: f32, at most [`MAX_SMALL_INPUT_CHANNELS`] input channels and [`MAX_SMALL_INPUT_TAPS`]
/// taps, strides 1 or 2, a whole number of output channel blocks, output rows of at least
/// [`MIN_SMALL_INPUT_ROW`] points, `TRACT_FERD_DIRECT_SMALL_INPUT` on, and a vector kernel.
pub fn small_input_eligible(dt: DatumType, geo: &DirectGeometry) -> bool {
    dt == f32::datum_type()
        && (1..=MAX_SMALL_INPUT_CHANNELS).contains(&geo.ci)
        && geo.taps() <= MAX_SMALL_INPUT_TAPS
        && geo.strides.iter().all(|s| (1..=2).contains(s))
        && geo.co.is_multiple_of(CHANNELS_PER_BLOCK)
        && geo.co >= CHANNELS_PER_BLOCK
        && geo.output_hw[1] >= MIN_SMALL_INPUT_ROW
        && TRACT_FERD_DIRECT_SMALL_INPUT.get()
        && !crate::ops::TRACT_FERD_STOCK_EVAL.get()
        && VectorKernel::detect().is_some()
}

/// Whether a stride-1 K×K convolution of `geo`'s shape over more than
/// [`MAX_SMALL_INPUT_CHANNELS`] input channels is computed by [`DirectConv`] on this host, over
/// its padded plane read as one flat row ([`run_flat`]): f32, at most
/// `TRACT_FERD_DIRECT_MAX_TAPS` taps, at least two output channel blocks, a flat run of at
/// least [`MIN_FLAT_RUN`] points of which at least three quarters are output points (the rest
/// are the padded rows' tails, computed and dropped), and a vector kernel.
pub fn flat_eligible(dt: DatumType, geo: &DirectGeometry) -> bool {
    if !geo.is_flat() {
        return false;
    }
    let (_, wp, _) = geo.padded();
    let [oh, ow] = geo.output_hw;
    dt == f32::datum_type()
        && geo.taps() <= TRACT_FERD_DIRECT_MAX_TAPS.get().min(MAX_TAPS)
        && geo.co >= 2 * CHANNELS_PER_BLOCK
        && geo.co.is_multiple_of(CHANNELS_PER_BLOCK)
        && oh >= 1
        && ow >= 1
        && geo.flat_len() >= MIN_FLAT_RUN
        && 4 * ow >= 3 * wp
        && !crate::ops::TRACT_FERD_STOCK_EVAL.get()
        && VectorKernel::detect().is_some()
}

/// The vector kernel a [`DirectConv`] runs, chosen when the model is optimised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub enum VectorKernel {
    /// Sixteen lanes (AVX-512F).
    Avx512,
    /// Eight lanes (AVX2 + FMA).
    Avx2,
}

impl VectorKernel {
    /// The widest kernel this CPU runs (AVX2 under `TRACT_FERD_POINTWISE_AVX2`), if any.
    pub fn detect() -> Option<VectorKernel> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && !TRACT_FERD_POINTWISE_AVX2.get() {
                return Some(VectorKernel::Avx512);
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Some(VectorKernel::Avx2);
            }
        }
        None
    }

    /// Whether this CPU runs the kernel.
    fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                VectorKernel::Avx512 => std::is_x86_feature_detected!("avx512f"),
                VectorKernel::Avx2 => {
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

/// The shape of one image's direct convolution: channels, planes, kernel, strides and
/// padding (in input points, before and after each axis).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirectGeometry {
    /// Input channels.
    pub ci: usize,
    /// Output channels, a multiple of eight.
    pub co: usize,
    /// Input height and width.
    pub input_hw: [usize; 2],
    /// Kernel height and width.
    pub kernel_hw: [usize; 2],
    /// Strides along H and W.
    pub strides: [usize; 2],
    /// Zero padding before H and W.
    pub pad_before: [usize; 2],
    /// Zero padding after H and W.
    pub pad_after: [usize; 2],
    /// Output height and width.
    pub output_hw: [usize; 2],
}

impl DirectGeometry {
    /// A 1×1, stride-1, unpadded convolution: its taps are the input planes themselves.
    pub(super) fn is_pointwise(&self) -> bool {
        self.kernel_hw == [1, 1]
            && self.strides == [1, 1]
            && self.pad_before == [0, 0]
            && self.pad_after == [0, 0]
    }

    fn taps(&self) -> usize {
        self.ci * self.kernel_hw[0] * self.kernel_hw[1]
    }

    /// Whether [`run_flat`] computes it (stride 1 over more than a first layer's channels).
    fn is_flat(&self) -> bool {
        self.strides == [1, 1] && self.ci > MAX_SMALL_INPUT_CHANNELS && !self.is_pointwise()
    }

    /// The points of a stride-1 convolution's output read as one run over the padded
    /// plane's rows: every padded row but the last holds `ow` output points and
    /// `wp - ow` dropped ones.
    fn flat_len(&self) -> usize {
        let (_, wp, _) = self.padded();
        let [oh, ow] = self.output_hw;
        oh.saturating_sub(1) * wp + ow
    }

    /// The padded input's height, width, and each phase row's length (the padded row
    /// split by the W stride: phase `f` holds columns `f, f + s, …`).
    fn padded(&self) -> (usize, usize, usize) {
        let hp = self.input_hw[0] + self.pad_before[0] + self.pad_after[0];
        let wp = self.input_hw[1] + self.pad_before[1] + self.pad_after[1];
        (hp, wp, wp.div_ceil(self.strides[1]))
    }
}

/// A group-1 f32 convolution over NCHW (or CHW) input computed directly: inputs are the
/// data, the kernel as `[1, co, ci·kh·kw]` and the bias as `[co]`; `alpha` is a fused
/// `LeakyRelu`'s (`None`: no activation).
#[derive(Debug, Clone, PartialEq)]
pub struct DirectConv {
    /// Images in the batch (1 without an N axis).
    pub n: usize,
    /// One image's convolution.
    pub geo: DirectGeometry,
    /// The output's shape.
    pub output_shape: TVec<usize>,
    /// The slope of a fused `LeakyRelu` below 0.
    pub alpha: Option<f32>,
    /// The vector kernel, [`VectorKernel::detect`]'s when the model was optimised.
    pub kernel: VectorKernel,
}

/// `alpha` comes from a `LeakyRelu`'s slope and is never NaN, so equality is an equivalence.
impl Eq for DirectConv {}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        "DirectConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geo;
        Ok(vec![format!(
            "ci: {} co: {} input: {:?} kernel: {:?} strides: {:?} pads: {:?} {:?} n: {} leaky_relu: {:?} vector: {:?}",
            g.ci,
            g.co,
            g.input_hw,
            g.kernel_hw,
            g.strides,
            g.pad_before,
            g.pad_after,
            self.n,
            self.alpha,
            self.kernel
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

thread_local! {
    /// The padded, phase-split copy of a K×K convolution's input, kept per thread so that
    /// a plan run allocates it once.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, kernel, bias) = args_3!(inputs);
        let g = &self.geo;
        let x = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let w = kernel.try_as_plain_ram()?.as_slice::<f32>()?;
        let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?;
        let (plane_in, plane_out) =
            (g.input_hw[0] * g.input_hw[1], g.output_hw[0] * g.output_hw[1]);
        ensure!(
            x.len() == self.n * g.ci * plane_in
                && w.len() == g.co * g.taps()
                && bias.len() == g.co
                && g.co.is_multiple_of(CHANNELS_PER_BLOCK)
                && g.taps() <= MAX_TAPS,
            "DirectConv: inputs of {} data, {} weights and {} biases for {:?}, n {}",
            x.len(),
            w.len(),
            bias.len(),
            g,
            self.n
        );
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        let mut view = output.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        let alpha = self.alpha.unwrap_or(1.0);
        // A plan runs where it was optimised; the check keeps a foreign one from faulting.
        let kernel = Some(self.kernel).filter(|k| k.available());
        for (x, out) in x.chunks_exact(g.ci * plane_in).zip(out.chunks_exact_mut(g.co * plane_out))
        {
            if g.is_pointwise() {
                run_pointwise(kernel, g, x, w, bias, out, alpha);
            } else if g.is_flat() {
                SCRATCH.with_borrow_mut(|scratch| {
                    run_flat(kernel, g, x, w, bias, out, alpha, scratch)
                });
            } else {
                SCRATCH.with_borrow_mut(|scratch| {
                    run_padded(kernel, g, x, w, bias, out, alpha, scratch)
                });
            }
        }
        drop(view);
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for DirectConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 3);
        Ok(tvec!(f32::fact(&self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let g = &self.geo;
        let macs = self.n * g.co * g.taps() * g.output_hw[0] * g.output_hw[1];
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs.to_dim())))
    }

    /// Takes in the `LeakyRelu` that follows, or the ReLU (codegen's maximum with a uniform
    /// zero, a slope of 0 below zero), when it is this node's only successor.
    fn fuse(&self, model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
        rule_if!(self.alpha.is_none());
        rule_if!(node.outputs.len() == 1);
        rule_if!(node.outputs[0].successors.len() == 1);
        rule_if!(!model.output_outlets()?.contains(&node.id.into()));
        let succ = model.node(node.outputs[0].successors[0].node);
        let alpha = if let Some(by_scalar) = succ.op_as::<crate::ops::binary::OptBinByScalar>() {
            rule_if!(by_scalar.binop.is::<crate::ops::math::Max>());
            // By-scalar ops broadcast their second input only.
            rule_if!(succ.inputs[0] == node.id.into());
            rule_if_some!(zero = model.outlet_fact(succ.inputs[1])?.konst.clone());
            rule_if!(zero.datum_type() == f32::datum_type());
            rule_if!(zero.try_as_plain_ram()?.as_slice::<f32>()?.iter().all(|v| *v == 0.0));
            0.0
        } else {
            rule_if_some!(ew = succ.op_as::<crate::ops::element_wise::ElementWiseOp>());
            rule_if_some!(leaky = ew.0.downcast_ref::<LeakyRelu>());
            leaky.alpha
        };
        let op = DirectConv { alpha: Some(alpha), ..self.clone() };
        Ok(Some(TypedModelPatch::fuse_with_next(model, node, op)?))
    }

    as_op!();
}

/// One image of a 1×1 convolution: the taps are the input planes.
fn run_pointwise(
    kernel: Option<VectorKernel>,
    g: &DirectGeometry,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    alpha: f32,
) {
    let plane = g.input_hw[0] * g.input_hw[1];
    let mut taps = [std::ptr::null::<f32>(); MAX_TAPS];
    for (i, tap) in taps[..g.ci].iter_mut().enumerate() {
        *tap = x[i * plane..].as_ptr();
    }
    let mut row = RowJob { taps: &taps[..g.ci], w, bias, out, out_at: 0, plane_out: plane, alpha };
    row.run(kernel, plane);
}

/// One image of a K×K convolution: the input copied into `scratch` with its padding, each
/// padded row split into the W stride's phases, then each output row's taps pointed into
/// it.
#[allow(clippy::too_many_arguments)]
fn run_padded(
    kernel: Option<VectorKernel>,
    g: &DirectGeometry,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    alpha: f32,
    scratch: &mut Vec<f32>,
) {
    let (hp, _wp, phase_len) = g.padded();
    let [h, wi] = g.input_hw;
    let [sy, sx] = g.strides;
    let [kh, kw] = g.kernel_hw;
    let [oh, ow] = g.output_hw;
    // Row (c, r) of the padded input, phase f, at `((c * hp + r) * sx + f) * phase_len`.
    let len = g.ci * hp * sx * phase_len;
    // The strides `small_input_eligible` takes: 1, the padded plane; 2, even and odd columns.
    if sx == 1 {
        scratch.resize(len, 0.0);
        copy_padded(g, x, scratch);
    } else {
        scratch.clear();
        scratch.resize(len, 0.0);
        for c in 0..g.ci {
            for y in 0..h {
                let src = &x[(c * h + y) * wi..][..wi];
                let r = y + g.pad_before[0];
                let dst = &mut scratch[(c * hp + r) * sx * phase_len..][..sx * phase_len];
                split_row_2(src, g.pad_before[1], phase_len, dst);
            }
        }
    }
    let mut taps = [std::ptr::null::<f32>(); MAX_TAPS];
    for oy in 0..oh {
        let mut t = 0;
        for c in 0..g.ci {
            for ky in 0..kh {
                let r = oy * sy + ky;
                for kx in 0..kw {
                    // Output point ox reads padded column ox * sx + kx: phase kx % sx,
                    // index ox + kx / sx of that phase's row.
                    let at = ((c * hp + r) * sx + kx % sx) * phase_len + kx / sx;
                    taps[t] = scratch[at..].as_ptr();
                    t += 1;
                }
            }
        }
        let mut row = RowJob {
            taps: &taps[..t],
            w,
            bias,
            out: &mut *out,
            out_at: oy * ow,
            plane_out: oh * ow,
            alpha,
        };
        row.run(kernel, ow);
    }
}

/// One image of a stride-1 K×K convolution over the padded plane read as one flat row: the
/// input copied into `scratch` with its padding (`hp` rows of `wp` points per channel), so
/// that output point `(oy, ox)` at flat index `oy · wp + ox` reads tap `(c, ky, kx)` at
/// `c · hp · wp + ky · wp + kx` plus that index. One run of [`DirectGeometry::flat_len`]
/// points then covers the whole output, with no short runs at row ends; the points at
/// `ox ≥ ow` (the taps wrapping into the next row) are computed into the flat output after
/// the padded input in `scratch` and dropped when its rows are copied out.
#[allow(clippy::too_many_arguments)]
fn run_flat(
    kernel: Option<VectorKernel>,
    g: &DirectGeometry,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    alpha: f32,
    scratch: &mut Vec<f32>,
) {
    let (hp, wp, _) = g.padded();
    let [kh, kw] = g.kernel_hw;
    let [oh, ow] = g.output_hw;
    let flat = g.flat_len();
    let plane_p = hp * wp;
    // The padded input, then the flat output.
    scratch.resize(g.ci * plane_p + g.co * flat, 0.0);
    let (padded, flat_out) = scratch.split_at_mut(g.ci * plane_p);
    copy_padded(g, x, padded);
    let mut taps = [std::ptr::null::<f32>(); MAX_TAPS];
    let mut t = 0;
    for c in 0..g.ci {
        for ky in 0..kh {
            for kx in 0..kw {
                // The last tap's last point is the plane's last: (kh - 1 + oh - 1) · wp +
                // kw - 1 + ow - 1 = (hp - 1) · wp + wp - 1, as ow = wp - kw + 1.
                taps[t] = padded[c * plane_p + ky * wp + kx..].as_ptr();
                t += 1;
            }
        }
    }
    let mut row =
        RowJob { taps: &taps[..t], w, bias, out: flat_out, out_at: 0, plane_out: flat, alpha };
    row.run(kernel, flat);
    let plane_out = oh * ow;
    for (o, dst) in out.chunks_exact_mut(plane_out).enumerate() {
        let src = &flat_out[o * flat..][..flat];
        for (oy, d) in dst.chunks_exact_mut(ow).enumerate() {
            d.copy_from_slice(&src[oy * wp..][..ow]);
        }
    }
}

/// Copies one image's input (`ci` planes) into `padded` at stride 1: per channel, `hp` rows
/// of `wp` points, the padding written as zeros. Every value of `padded` is written, so a
/// buffer left by a run of another shape needs no clearing first.
fn copy_padded(g: &DirectGeometry, x: &[f32], padded: &mut [f32]) {
    let (hp, wp, _) = g.padded();
    let [h, wi] = g.input_hw;
    let [top, left] = g.pad_before;
    for (c, dst) in padded.chunks_exact_mut(hp * wp).enumerate() {
        let (head, rest) = dst.split_at_mut(top * wp);
        head.fill(0.0);
        let (body, tail) = rest.split_at_mut(h * wp);
        tail.fill(0.0);
        for (src, row) in x[c * h * wi..][..h * wi].chunks_exact(wi).zip(body.chunks_exact_mut(wp))
        {
            row[..left].fill(0.0);
            row[left..left + wi].copy_from_slice(src);
            row[left + wi..].fill(0.0);
        }
    }
}

/// Copies one input row into its padded row's two phases (`dst`: even padded columns, then
/// odd ones at `phase_len`), the row starting at padded column `left`.
fn split_row_2(src: &[f32], left: usize, phase_len: usize, dst: &mut [f32]) {
    let (even, odd) = dst.split_at_mut(phase_len);
    // An odd start puts the first value alone at the head of the odd phase; the rest come
    // in (even, odd) pairs from the same index on.
    let (src, at) = match src.split_first() {
        Some((&v, rest)) if left % 2 == 1 => {
            odd[left / 2] = v;
            (rest, left / 2 + 1)
        }
        _ => (src, left / 2),
    };
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected.
        unsafe { pairs_avx2(src, &mut even[at..], &mut odd[at..]) };
        return;
    }
    pairs(src, &mut even[at..], &mut odd[at..]);
}

/// `src`'s pairs into `even` and `odd`, and a last lone value into `even`; the loop LLVM
/// turns into vector shuffles where it may use them ([`pairs_avx2`]).
#[inline(always)]
fn pairs(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let mut chunks = src.chunks_exact(2);
    for ((pair, e), o) in (&mut chunks).zip(even.iter_mut()).zip(odd.iter_mut()) {
        *e = pair[0];
        *o = pair[1];
    }
    if let [v] = chunks.remainder() {
        even[src.len() / 2] = *v;
    }
}

/// [`pairs`] compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pairs_avx2(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    pairs(src, even, odd)
}

/// A run of output points of every output channel: `out[o][out_at + p] = act(bias[o] +
/// Σ_t w[o][t] · taps[t][p])` for `p` below the run's length, where `act(v)` is `v` for
/// `v ≥ 0` and `alpha · v` below (`alpha` 1: none).
struct RowJob<'a> {
    /// Where each tap's values for the run start; each is valid for the run's length.
    taps: &'a [*const f32],
    /// `co` rows of `taps.len()` weights.
    w: &'a [f32],
    /// `co` biases.
    bias: &'a [f32],
    /// `co` output planes.
    out: &'a mut [f32],
    /// The run's first point in each output plane.
    out_at: usize,
    /// Points per output plane.
    plane_out: usize,
    alpha: f32,
}

impl RowJob<'_> {
    /// Computes the run of `len` points, with the vector kernel where there is one.
    fn run(&mut self, kernel: Option<VectorKernel>, len: usize) {
        let nt = self.taps.len();
        assert!(
            self.bias.len().is_multiple_of(CHANNELS_PER_BLOCK)
                && self.w.len() == self.bias.len() * nt
                && self.out.len() == self.bias.len() * self.plane_out
                && self.out_at + len <= self.plane_out
        );
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Some(VectorKernel::Avx512) => {
                for c0 in (0..self.bias.len()).step_by(CHANNELS_PER_BLOCK) {
                    for p in (0..len).step_by(POINTS_PER_BLOCK) {
                        // SAFETY: AVX-512F was detected; the sizes are asserted above, and
                        // each tap is valid for `len` points.
                        unsafe { self.block_avx512(c0, p, (len - p).min(POINTS_PER_BLOCK)) }
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            Some(VectorKernel::Avx2) => {
                for c0 in (0..self.bias.len()).step_by(4) {
                    for p in (0..len).step_by(16) {
                        // SAFETY: AVX2 and FMA were detected; as above.
                        unsafe { self.block_avx2(c0, p, (len - p).min(16)) }
                    }
                }
            }
            _ => self.scalar(len),
        }
    }

    /// The definition, a point at a time: the path where no vector kernel runs.
    fn scalar(&mut self, len: usize) {
        let nt = self.taps.len();
        for (o, &b) in self.bias.iter().enumerate() {
            let w = &self.w[o * nt..][..nt];
            for p in 0..len {
                let mut acc = b;
                for (t, &wt) in w.iter().enumerate() {
                    // SAFETY: each tap is valid for the run's `len` points.
                    acc = wt.mul_add(unsafe { *self.taps[t].add(p) }, acc);
                }
                self.out[o * self.plane_out + self.out_at + p] =
                    if acc < 0.0 { acc * self.alpha } else { acc };
            }
        }
    }

    /// Output channels `c0..c0 + 8`, points `p..p + n` (`n` at most 32): sixteen
    /// accumulators; each tap's two vectors are loaded once and multiplied by the eight
    /// channels' broadcast weights.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `c0 + 8` channels exist and each tap is valid for `p + n`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn block_avx512(&mut self, c0: usize, p: usize, n: usize) {
        use std::arch::x86_64::*;
        unsafe {
            let nt = self.taps.len();
            let lanes = |n: usize| if n >= 16 { 0xffff } else { ((1u32 << n) - 1) as u16 };
            let (m0, m1) = (lanes(n), lanes(n.saturating_sub(16)));
            let zero = _mm512_setzero_ps();
            let mut acc = [[zero; 2]; 8];
            for (j, a) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*self.bias.get_unchecked(c0 + j));
                *a = [b, b];
            }
            let wp = self.w.as_ptr().add(c0 * nt);
            for (t, &tap) in self.taps.iter().enumerate() {
                let x0 = _mm512_maskz_loadu_ps(m0, tap.add(p));
                let x1 = _mm512_maskz_loadu_ps(m1, tap.add(p + 16));
                for (j, a) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*wp.add(j * nt + t));
                    a[0] = _mm512_fmadd_ps(wv, x0, a[0]);
                    a[1] = _mm512_fmadd_ps(wv, x1, a[1]);
                }
            }
            let va = _mm512_set1_ps(self.alpha);
            let act = |v: __m512| {
                let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, zero);
                _mm512_mask_mul_ps(v, neg, v, va)
            };
            let op = self.out.as_mut_ptr().add(self.out_at + p);
            for (j, a) in acc.iter().enumerate() {
                let dst = op.add((c0 + j) * self.plane_out);
                _mm512_mask_storeu_ps(dst, m0, act(a[0]));
                _mm512_mask_storeu_ps(dst.add(16), m1, act(a[1]));
            }
        }
    }

    /// Output channels `c0..c0 + 4`, points `p..p + n` (`n` at most 16): eight accumulators
    /// (as many as sixteen registers hold beside the operands), masked loads and stores.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `c0 + 4` channels exist and each tap is valid for `p + n`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2(&mut self, c0: usize, p: usize, n: usize) {
        use std::arch::x86_64::*;
        unsafe {
            let nt = self.taps.len();
            let lanes = |n: usize| {
                let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), idx)
            };
            let (m0, m1) = (lanes(n), lanes(n.saturating_sub(8)));
            let zero = _mm256_setzero_ps();
            let mut acc = [[zero; 2]; 4];
            for (j, a) in acc.iter_mut().enumerate() {
                let b = _mm256_set1_ps(*self.bias.get_unchecked(c0 + j));
                *a = [b, b];
            }
            let wp = self.w.as_ptr().add(c0 * nt);
            for (t, &tap) in self.taps.iter().enumerate() {
                let x0 = _mm256_maskload_ps(tap.add(p), m0);
                let x1 = _mm256_maskload_ps(tap.add(p + 8), m1);
                for (j, a) in acc.iter_mut().enumerate() {
                    let wv = _mm256_set1_ps(*wp.add(j * nt + t));
                    a[0] = _mm256_fmadd_ps(wv, x0, a[0]);
                    a[1] = _mm256_fmadd_ps(wv, x1, a[1]);
                }
            }
            let va = _mm256_set1_ps(self.alpha);
            let act = |v: __m256| {
                let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(v, zero);
                _mm256_blendv_ps(v, _mm256_mul_ps(v, va), neg)
            };
            let op = self.out.as_mut_ptr().add(self.out_at + p);
            for (j, a) in acc.iter().enumerate() {
                let dst = op.add((c0 + j) * self.plane_out);
                _mm256_maskstore_ps(dst, m0, act(a[0]));
                _mm256_maskstore_ps(dst.add(8), m1, act(a[1]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition over the unpadded input.
    fn reference(g: &DirectGeometry, x: &[f32], w: &[f32], bias: &[f32], alpha: f32) -> Vec<f32> {
        let [h, wi] = g.input_hw;
        let [oh, ow] = g.output_hw;
        let [kh, kw] = g.kernel_hw;
        let mut out = vec![0f32; g.co * oh * ow];
        for o in 0..g.co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias[o] as f64;
                    for c in 0..g.ci {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * g.strides[0] + ky) as isize - g.pad_before[0] as isize;
                                let ix = (ox * g.strides[1] + kx) as isize - g.pad_before[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wi as isize {
                                    continue;
                                }
                                let v = x[(c * h + iy as usize) * wi + ix as usize] as f64;
                                acc += v * w[((o * g.ci + c) * kh + ky) * kw + kx] as f64;
                            }
                        }
                    }
                    let acc = acc as f32;
                    out[(o * oh + oy) * ow + ox] = if acc < 0.0 { acc * alpha } else { acc };
                }
            }
        }
        out
    }

    fn case(ci: usize, co: usize, hw: [usize; 2], k: usize, s: usize, pad: usize, alpha: f32) {
        let out = |n: usize| (n + 2 * pad - k) / s + 1;
        let g = DirectGeometry {
            ci,
            co,
            input_hw: hw,
            kernel_hw: [k, k],
            strides: [s, s],
            pad_before: [pad, pad],
            pad_after: [pad, pad],
            output_hw: [out(hw[0]), out(hw[1])],
        };
        let x: Vec<f32> =
            (0..ci * hw[0] * hw[1]).map(|i| ((i * 7919) % 23) as f32 * 0.25 - 2.5).collect();
        let w: Vec<f32> =
            (0..co * g.taps()).map(|i| ((i * 104729) % 17) as f32 * 0.125 - 1.0).collect();
        let bias: Vec<f32> = (0..co).map(|o| o as f32 * 0.5 - 3.0).collect();
        let want = reference(&g, &x, &w, &bias, alpha);
        let kernels = [None, Some(VectorKernel::Avx512), Some(VectorKernel::Avx2)];
        for kernel in kernels.into_iter().filter(|k| k.is_none_or(|k| k.available())) {
            let mut got = vec![f32::NAN; want.len()];
            // A scratch left dirty by a run of another shape: nothing may be read unwritten.
            let mut scratch = vec![f32::NAN; 4099];
            if g.is_pointwise() {
                run_pointwise(kernel, &g, &x, &w, &bias, &mut got, alpha);
            } else if g.is_flat() {
                run_flat(kernel, &g, &x, &w, &bias, &mut got, alpha, &mut scratch);
            } else {
                run_padded(kernel, &g, &x, &w, &bias, &mut got, alpha, &mut scratch);
            }
            for (ix, (a, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "{kernel:?} {g:?}: [{ix}] {a} against {e}"
                );
            }
        }
    }

    #[test]
    fn kernels_match_the_definition() {
        for side in [1, 7, 15, 16, 17, 31, 32, 33, 47, 100] {
            for (ci, co) in [(1, 8), (3, 16), (8, 16), (16, 32), (33, 24), (64, 64)] {
                case(ci, co, [3, side], 1, 1, 0, 0.1);
                case(ci, co, [2, side], 1, 1, 0, 1.0);
            }
            for (ci, co) in [(1, 8), (3, 8), (3, 16), (4, 24)] {
                for (k, s, pad) in [(3, 2, 1), (3, 1, 1), (3, 2, 0), (5, 2, 2), (2, 2, 0), (3, 1, 0)] {
                    if side + 2 * pad >= k {
                        case(ci, co, [side.min(9) + 2, side], k, s, pad, 0.1);
                    }
                }
            }
            // Stride 1 over deeper inputs: the flat path (1×1 with padding included).
            for (ci, co) in [(5, 16), (16, 24), (64, 32)] {
                for (k, pad) in [(3, 1), (3, 0), (5, 2), (1, 1), (2, 1)] {
                    if ci * k * k <= MAX_TAPS && side + 2 * pad >= k {
                        case(ci, co, [side.min(7) + 2, side], k, 1, pad, 0.1);
                    }
                }
            }
        }
    }
}
