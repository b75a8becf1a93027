#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The inputs of eight consecutive output points, `stride` elements apart. Stride 2 loads the
/// sixteen elements from `p`, one more than it keeps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn load8(p: *const f32, stride: isize) -> __m256 {
    unsafe {
        match stride {
            1 => _mm256_loadu_ps(p),
            2 => {
                let a = _mm256_loadu_ps(p);
                let b = _mm256_loadu_ps(p.add(8));
                let lo = _mm256_permute2f128_ps(a, b, 0x20);
                let hi = _mm256_permute2f128_ps(a, b, 0x31);
                _mm256_shuffle_ps(lo, hi, 0x88)
            }
            _ => {
                let s = stride as i32;
                let idx = _mm256_setr_epi32(0, s, 2 * s, 3 * s, 4 * s, 5 * s, 6 * s, 7 * s);
                _mm256_i32gather_ps(p, idx, 4)
            }
        }
    }
}

/// Four channels of a convolution along W, as [`crate::routines::ConvW4F32`] describes, eight
/// output points to a vector. Input strides 1, 2 and 3 are vectorised; any other stride, and the
/// last few points of a run, are computed one point at a time. No load reaches past
/// `offsets[t] + (len - 1) * in_stride`.
///
/// # Safety
/// As [`crate::routines::ConvW4F32`], on a machine with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv_w4_f32(
    input: *const f32,
    output: *mut f32,
    taps: &[f32],
    offsets: &[isize],
    bias: &[f32; 4],
    len: usize,
    in_stride: isize,
    oc_stride: isize,
) {
    unsafe {
        // ferd patch: the first points on sixteen lanes where the CPU has AVX-512F.
        let first = if (1..=2).contains(&in_stride) && std::is_x86_feature_detected!("avx512f") {
            conv_w4_avx512(input, output, taps, offsets, bias, len, in_stride, oc_stride)
        } else {
            0
        };
        conv_w4_from(first, input, output, taps, offsets, bias, len, in_stride, oc_stride)
    }
}

/// [`conv_w4_f32`]'s eight-lane loops and scalar tail, from point `i` of the run (a multiple
/// of eight).
///
/// # Safety
/// As [`conv_w4_f32`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn conv_w4_from(
    mut i: usize,
    input: *const f32,
    output: *mut f32,
    taps: &[f32],
    offsets: &[isize],
    bias: &[f32; 4],
    len: usize,
    in_stride: isize,
    oc_stride: isize,
) {
    unsafe {
        let n = offsets.len();
        if (1..=3).contains(&in_stride) {
            let b0 = _mm256_set1_ps(bias[0]);
            let b1 = _mm256_set1_ps(bias[1]);
            let b2 = _mm256_set1_ps(bias[2]);
            let b3 = _mm256_set1_ps(bias[3]);
            // load8 reads one element past its last point at stride 2, which belongs to the
            // next output point, so that point has to be in the run too.
            let block = if in_stride == 2 { 9 } else { 8 };
            while i + 8 + block <= len {
                let (mut a0, mut a1, mut a2, mut a3) = (b0, b1, b2, b3);
                let (mut a4, mut a5, mut a6, mut a7) = (b0, b1, b2, b3);
                for t in 0..n {
                    let p = input.offset(offsets[t] + i as isize * in_stride);
                    let x = load8(p, in_stride);
                    let y = load8(p.offset(8 * in_stride), in_stride);
                    let k0 = _mm256_set1_ps(taps[t]);
                    let k1 = _mm256_set1_ps(taps[n + t]);
                    let k2 = _mm256_set1_ps(taps[2 * n + t]);
                    let k3 = _mm256_set1_ps(taps[3 * n + t]);
                    a0 = _mm256_fmadd_ps(x, k0, a0);
                    a1 = _mm256_fmadd_ps(x, k1, a1);
                    a2 = _mm256_fmadd_ps(x, k2, a2);
                    a3 = _mm256_fmadd_ps(x, k3, a3);
                    a4 = _mm256_fmadd_ps(y, k0, a4);
                    a5 = _mm256_fmadd_ps(y, k1, a5);
                    a6 = _mm256_fmadd_ps(y, k2, a6);
                    a7 = _mm256_fmadd_ps(y, k3, a7);
                }
                _mm256_storeu_ps(output.add(i), a0);
                _mm256_storeu_ps(output.offset(oc_stride).add(i), a1);
                _mm256_storeu_ps(output.offset(2 * oc_stride).add(i), a2);
                _mm256_storeu_ps(output.offset(3 * oc_stride).add(i), a3);
                _mm256_storeu_ps(output.add(i + 8), a4);
                _mm256_storeu_ps(output.offset(oc_stride).add(i + 8), a5);
                _mm256_storeu_ps(output.offset(2 * oc_stride).add(i + 8), a6);
                _mm256_storeu_ps(output.offset(3 * oc_stride).add(i + 8), a7);
                i += 16;
            }
            while i + block <= len {
                let (mut a0, mut a1, mut a2, mut a3) = (b0, b1, b2, b3);
                for t in 0..n {
                    let x = load8(input.offset(offsets[t] + i as isize * in_stride), in_stride);
                    a0 = _mm256_fmadd_ps(x, _mm256_set1_ps(taps[t]), a0);
                    a1 = _mm256_fmadd_ps(x, _mm256_set1_ps(taps[n + t]), a1);
                    a2 = _mm256_fmadd_ps(x, _mm256_set1_ps(taps[2 * n + t]), a2);
                    a3 = _mm256_fmadd_ps(x, _mm256_set1_ps(taps[3 * n + t]), a3);
                }
                _mm256_storeu_ps(output.add(i), a0);
                _mm256_storeu_ps(output.offset(oc_stride).add(i), a1);
                _mm256_storeu_ps(output.offset(2 * oc_stride).add(i), a2);
                _mm256_storeu_ps(output.offset(3 * oc_stride).add(i), a3);
                i += 8;
            }
        }
        scalar(input, output, taps, offsets, bias, i, len, in_stride, oc_stride);
    }
}

/// The inputs of sixteen consecutive output points, `stride` (1 or 2) elements apart. Stride 2
/// loads the thirty-two elements from `p`, one more than it keeps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn load16(p: *const f32, stride: isize) -> __m512 {
    unsafe {
        if stride == 1 {
            _mm512_loadu_ps(p)
        } else {
            let evens =
                _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            _mm512_permutex2var_ps(_mm512_loadu_ps(p), evens, _mm512_loadu_ps(p.add(16)))
        }
    }
}

/// ferd patch: the vectorised part of [`conv_w4_f32`] on sixteen lanes, for input strides 1
/// and 2, where the CPU has AVX-512F: the first points of the run, in blocks of 16, and the
/// index of the first point it left. Each output lane takes the bias and then one fused
/// multiply-add per tap in the order of `offsets`, as the eight-lane loops do, and it stops
/// on a multiple of eight where those would have gone on, so the caller's eight-lane loops and
/// scalar tail finish the run exactly as they would have: the same values bit for bit.
///
/// # Safety
/// As [`crate::routines::ConvW4F32`], with `in_stride` 1 or 2, on a machine with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn conv_w4_avx512(
    input: *const f32,
    output: *mut f32,
    taps: &[f32],
    offsets: &[isize],
    bias: &[f32; 4],
    len: usize,
    in_stride: isize,
    oc_stride: isize,
) -> usize {
    unsafe {
        let n = offsets.len();
        let b = bias.map(|v| _mm512_set1_ps(v));
        // As in the eight-lane loops: a stride-2 load reads one element past its last point,
        // which belongs to the next output point, so that point has to be in the run too.
        let extra = (in_stride == 2) as usize;
        let mut i = 0usize;
        while i + 32 + extra <= len {
            let mut acc = [b[0], b[1], b[2], b[3], b[0], b[1], b[2], b[3]];
            for t in 0..n {
                let p = input.offset(offsets[t] + i as isize * in_stride);
                let x = load16(p, in_stride);
                let y = load16(p.offset(16 * in_stride), in_stride);
                for o in 0..4 {
                    let k = _mm512_set1_ps(*taps.get_unchecked(o * n + t));
                    acc[o] = _mm512_fmadd_ps(x, k, acc[o]);
                    acc[4 + o] = _mm512_fmadd_ps(y, k, acc[4 + o]);
                }
            }
            for o in 0..4 {
                let out = output.offset(o as isize * oc_stride).add(i);
                _mm512_storeu_ps(out, acc[o]);
                _mm512_storeu_ps(out.add(16), acc[4 + o]);
            }
            i += 32;
        }
        while i + 16 + extra <= len {
            let mut acc = b;
            for t in 0..n {
                let x = load16(input.offset(offsets[t] + i as isize * in_stride), in_stride);
                for (o, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(x, _mm512_set1_ps(*taps.get_unchecked(o * n + t)), *acc);
                }
            }
            for (o, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(output.offset(o as isize * oc_stride).add(i), *acc);
            }
            i += 16;
        }
        i
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn scalar(
    input: *const f32,
    output: *mut f32,
    taps: &[f32],
    offsets: &[isize],
    bias: &[f32; 4],
    from: usize,
    len: usize,
    in_stride: isize,
    oc_stride: isize,
) {
    unsafe {
        let n = offsets.len();
        for i in from..len {
            for o in 0..4 {
                let mut sum = bias[o];
                for t in 0..n {
                    sum += taps[o * n + t] * *input.offset(offsets[t] + i as isize * in_stride);
                }
                *output.offset(o as isize * oc_stride).add(i) = sum;
            }
        }
    }
}

bail_stub!(x86_64; pub unsafe fn conv_w4_f32(
    *const f32, *mut f32, &[f32], &[isize], &[f32; 4], usize, isize, isize
));

submit_routine!(x86_64; ConvW4F32, ConvW4, "x86_64_fma_conv_w4_f32", conv_w4_f32,
    isa(X86_64Avx2, X86_64Fma));

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    const SENTINEL: f32 = -1234.5;

    fn check(in_stride: isize, len: usize, channels: usize, kernel: usize) {
        let row = 64 + len * in_stride as usize;
        let offsets: Vec<isize> =
            (0..channels).flat_map(|c| (0..kernel).map(move |k| (c * row + k) as isize)).collect();
        let n = offsets.len();
        let extent = offsets[n - 1] as usize + len.saturating_sub(1) * in_stride as usize + 1;
        let input: Vec<f32> = (0..extent).map(|i| ((i * 7919 % 211) as f32 - 105.) / 50.).collect();
        let taps: Vec<f32> = (0..4 * n).map(|t| ((t * 104729 % 97) as f32 - 48.) / 30.).collect();
        let bias = [0.5, -1.25, 2.0, 0.0];
        let oc_stride = len + 5;
        let mut output = vec![SENTINEL; 4 * oc_stride];
        unsafe {
            conv_w4_f32(
                input.as_ptr(),
                output.as_mut_ptr(),
                &taps,
                &offsets,
                &bias,
                len,
                in_stride,
                oc_stride as isize,
            )
        };
        for o in 0..4 {
            for i in 0..oc_stride {
                let got = output[o * oc_stride + i];
                if i >= len {
                    assert_eq!(got, SENTINEL, "wrote past the run: o={o} i={i}");
                    continue;
                }
                let want = (0..n).fold(bias[o], |sum, t| {
                    sum + taps[o * n + t] * input[(offsets[t] + (i as isize) * in_stride) as usize]
                });
                let tol = 1e-5 * (1. + want.abs());
                assert!(
                    (got - want).abs() <= tol,
                    "stride {in_stride} len {len} o={o} i={i}: got {got}, want {want}"
                );
            }
        }
    }

    /// ferd patch: with the AVX-512 prefix, every output is the eight-lane loops' alone, bit
    /// for bit, at strides 1 and 2 and run lengths around the 16- and 32-point blocks.
    #[test]
    fn the_avx512_prefix_gives_the_eight_lane_values() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("avx512f"))
        {
            return;
        }
        for in_stride in 1..=2isize {
            for len in 0..100usize {
                let row = 64 + len * in_stride as usize;
                let offsets: Vec<isize> =
                    (0..3).flat_map(|c| (0..3).map(move |k| (c * row + k) as isize)).collect();
                let extent = offsets[8] as usize + len * in_stride as usize + 1;
                let input: Vec<f32> =
                    (0..extent).map(|i| ((i * 7919 % 211) as f32 - 105.) / 50.).collect();
                let taps: Vec<f32> = (0..36).map(|t| ((t * 104729 % 97) as f32 - 48.) / 30.).collect();
                let bias = [0.5, -1.25, 2.0, 0.0];
                let run = |prefix: bool| {
                    let mut output = vec![SENTINEL; 4 * len];
                    let (i, o) = (input.as_ptr(), output.as_mut_ptr());
                    let s = len as isize;
                    unsafe {
                        if prefix {
                            conv_w4_f32(i, o, &taps, &offsets, &bias, len, in_stride, s)
                        } else {
                            conv_w4_from(0, i, o, &taps, &offsets, &bias, len, in_stride, s)
                        }
                    }
                    output.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                assert_eq!(run(true), run(false), "stride {in_stride} len {len}");
            }
        }
    }

    #[test]
    fn matches_reference() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        for in_stride in 1..=4 {
            for len in 0..40 {
                check(in_stride, len, 3, 3);
                check(in_stride, len, 1, 2);
            }
        }
    }
}
