/// Depthwise convolution along an axis the output is contiguous on: `len` output points, each
/// the bias plus every `taps[t] * input[offsets[t] + i * in_stride]`.
///
/// Same contract as the aarch64 and wasm kernels. The arithmetic is the scalar walk's, in the
/// same order: the bias, then one multiply and one add per tap. It uses no FMA, so every output
/// is bit-identical to the scalar path and a plan gives the same results with or without this
/// kernel. `in_stride == 1` is vectorised at any tap count, and so (ferd patch) is
/// `in_stride == 2`, the stride-2 layers of a MobileNet; any other stride stays scalar.
///
/// # Safety
/// `input.offset(offsets[t] + i * in_stride)` must be readable for every tap and every `i` below
/// `len`, and `len` output points writable from `output`. The CPU must support AVX.
#[cfg(target_arch = "x86_64")]
pub unsafe fn depthwise_w_f32(
    input: *const f32,
    output: *mut f32,
    taps: &[f32],
    offsets: &[isize],
    bias: f32,
    len: usize,
    in_stride: isize,
) {
    unsafe {
        match in_stride {
            // ferd patch: sixteen lanes where the CPU has them.
            1 if std::is_x86_feature_detected!("avx512f") => {
                contiguous_avx512(input, output, taps, offsets, bias, len)
            }
            1 => contiguous(input, output, taps, offsets, bias, len),
            2 => stride2(input, output, taps, offsets, bias, len),
            _ => scalar(input, output, taps, offsets, bias, 0, len, in_stride),
        }
    }
}

/// The `in_stride == 1` case, with the tap count taken at runtime.
///
/// Taps are the outer loop and 32 output points the inner one: four 8-lane accumulators give
/// the adder independent chains, and each tap's broadcast is paid once per 32 points. Real 3x3,
/// 7x7 or 9x9 kernels reach here with 9, 49 or 81 taps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn contiguous(
    input: *const f32,
    output: *mut f32,
    taps: &[f32],
    offsets: &[isize],
    bias: f32,
    len: usize,
) {
    use std::arch::x86_64::*;
    unsafe {
        let biasv = _mm256_set1_ps(bias);
        let mut i = 0usize;
        while i + 32 <= len {
            let mut a0 = biasv;
            let mut a1 = biasv;
            let mut a2 = biasv;
            let mut a3 = biasv;
            for (tap, offset) in taps.iter().zip(offsets) {
                let k = _mm256_set1_ps(*tap);
                let p = input.offset(*offset).add(i);
                a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_loadu_ps(p), k));
                a1 = _mm256_add_ps(a1, _mm256_mul_ps(_mm256_loadu_ps(p.add(8)), k));
                a2 = _mm256_add_ps(a2, _mm256_mul_ps(_mm256_loadu_ps(p.add(16)), k));
                a3 = _mm256_add_ps(a3, _mm256_mul_ps(_mm256_loadu_ps(p.add(24)), k));
            }
            _mm256_storeu_ps(output.add(i), a0);
            _mm256_storeu_ps(output.add(i + 8), a1);
            _mm256_storeu_ps(output.add(i + 16), a2);
            _mm256_storeu_ps(output.add(i + 24), a3);
            i += 32;
        }
        while i + 8 <= len {
            let mut acc = biasv;
            for (tap, offset) in taps.iter().zip(offsets) {
                let x = _mm256_loadu_ps(input.offset(*offset).add(i));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(x, _mm256_set1_ps(*tap)));
            }
            _mm256_storeu_ps(output.add(i), acc);
            i += 8;
        }
        scalar(input, output, taps, offsets, bias, i, len, 1);
    }
}

/// ferd patch: [`contiguous`] on AVX-512: four 16-lane accumulators, 64 output points a pass,
/// the same multiply and add per tap in the same order (so the same values bit for bit); the
/// last points, under 64, go through [`contiguous`] from where this stopped (the offsets are
/// relative to `input`, so shifting `input` and `output` together continues the walk). A
/// 16-lane pass with one accumulator was slower there than AVX's 32 points in four
/// (measured on the iris model's short rows).
///
/// # Safety
/// As [`depthwise_w_f32`]'s, with AVX-512F for AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn contiguous_avx512(
    input: *const f32,
    output: *mut f32,
    taps: &[f32],
    offsets: &[isize],
    bias: f32,
    len: usize,
) {
    use std::arch::x86_64::*;
    unsafe {
        let biasv = _mm512_set1_ps(bias);
        let mut i = 0usize;
        while i + 64 <= len {
            let mut acc = [biasv; 4];
            for (tap, offset) in taps.iter().zip(offsets) {
                let k = _mm512_set1_ps(*tap);
                let p = input.offset(*offset).add(i);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_add_ps(*a, _mm512_mul_ps(_mm512_loadu_ps(p.add(16 * j)), k));
                }
            }
            for (j, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(output.add(i + 16 * j), *a);
            }
            i += 64;
        }
        contiguous(input.wrapping_add(i), output.add(i), taps, offsets, bias, len - i);
    }
}

/// ferd patch: the `in_stride == 2` case, the arithmetic of [`contiguous`] on the even input
/// elements. Eight outputs take the sixteen inputs from the first one on, de-interleaved with
/// AVX's lane permutes and shuffles. The vector loops stop early enough that no load reaches
/// past `offsets[t] + (len - 1) * 2`, the last element the scalar walk reads, so a run ending on
/// the tensor's last element is safe.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn stride2(
    input: *const f32,
    output: *mut f32,
    taps: &[f32],
    offsets: &[isize],
    bias: f32,
    len: usize,
) {
    use std::arch::x86_64::*;
    /// The even elements of the sixteen from `p`.
    #[inline(always)]
    unsafe fn evens(p: *const f32) -> __m256 {
        unsafe {
            let (a, b) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
            // [a0..a3, b0..b3] and [a4..a7, b4..b7], then their even lanes in order.
            let lo = _mm256_permute2f128_ps::<0x20>(a, b);
            let hi = _mm256_permute2f128_ps::<0x31>(a, b);
            _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi)
        }
    }
    unsafe {
        let biasv = _mm256_set1_ps(bias);
        let mut i = 0usize;
        // Outputs i..i + 16 read inputs up to 2 * i + 31, which must not pass 2 * (len - 1).
        while i + 17 <= len {
            let mut a0 = biasv;
            let mut a1 = biasv;
            for (tap, offset) in taps.iter().zip(offsets) {
                let k = _mm256_set1_ps(*tap);
                let p = input.offset(*offset).add(2 * i);
                a0 = _mm256_add_ps(a0, _mm256_mul_ps(evens(p), k));
                a1 = _mm256_add_ps(a1, _mm256_mul_ps(evens(p.add(16)), k));
            }
            _mm256_storeu_ps(output.add(i), a0);
            _mm256_storeu_ps(output.add(i + 8), a1);
            i += 16;
        }
        while i + 9 <= len {
            let mut acc = biasv;
            for (tap, offset) in taps.iter().zip(offsets) {
                let x = evens(input.offset(*offset).add(2 * i));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(x, _mm256_set1_ps(*tap)));
            }
            _mm256_storeu_ps(output.add(i), acc);
            i += 8;
        }
        scalar(input, output, taps, offsets, bias, i, len, 2);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn scalar(
    input: *const f32,
    output: *mut f32,
    taps: &[f32],
    offsets: &[isize],
    bias: f32,
    from: usize,
    len: usize,
    in_stride: isize,
) {
    unsafe {
        for i in from..len {
            let mut sum = bias;
            for (tap, offset) in taps.iter().zip(offsets) {
                sum += tap * *input.offset(*offset + i as isize * in_stride);
            }
            *output.add(i) = sum;
        }
    }
}

bail_stub!(x86_64; pub unsafe fn depthwise_w_f32(
    *const f32, *mut f32, &[f32], &[isize], f32, usize, isize
));

submit_routine!(x86_64; DepthwiseWF32, DepthwiseW, "x86_64_avx_depthwise_w_f32", depthwise_w_f32,
    isa(X86_64Avx));

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn reference(
        input: &[f32],
        taps: &[f32],
        offsets: &[isize],
        bias: f32,
        len: usize,
        in_stride: isize,
        center: usize,
    ) -> Vec<f32> {
        (0..len)
            .map(|i| {
                taps.iter().zip(offsets).fold(bias, |sum, (tap, offset)| {
                    sum + tap * input[(center as isize + offset + i as isize * in_stride) as usize]
                })
            })
            .collect()
    }

    fn compare(taps: usize, len: usize, in_stride: isize) {
        if !std::is_x86_feature_detected!("avx") {
            return;
        }
        let k: Vec<f32> = (0..taps).map(|t| (t as f32 * 0.7).sin()).collect();
        let offsets: Vec<isize> = (0..taps as isize).map(|t| t - taps as isize / 2).collect();
        let center = taps;
        let input: Vec<f32> = (0..center * 2 + len * in_stride as usize + 1)
            .map(|i| (i as f32 * 0.37).cos())
            .collect();
        let expected = reference(&input, &k, &offsets, 0.25, len, in_stride, center);
        let mut output = vec![0f32; len];
        unsafe {
            depthwise_w_f32(
                input.as_ptr().add(center),
                output.as_mut_ptr(),
                &k,
                &offsets,
                0.25,
                len,
                in_stride,
            )
        };
        // Same operations in the same order: the results must match bit for bit.
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&output), bits(&expected), "taps {taps} len {len} stride {in_stride}");
    }

    #[test]
    fn matches_scalar_bit_for_bit() {
        for taps in [1, 2, 3, 4, 5, 9, 25, 49, 81] {
            for len in [0, 1, 7, 8, 9, 31, 32, 33, 64, 100, 224] {
                compare(taps, len, 1);
                compare(taps, len, 2);
            }
        }
    }
}

/// ferd patch: the vector strides give the scalar walk's values bit for bit.
#[cfg(all(test, target_arch = "x86_64"))]
mod ferd_tests {
    use super::*;

    #[test]
    fn vector_strides_match_the_scalar_walk_bit_for_bit() {
        if !is_x86_feature_detected!("avx") {
            return;
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        for stride in [1isize, 2, 3] {
            for taps_len in [1usize, 3, 9] {
                for len in [1usize, 7, 8, 9, 10, 16, 17, 18, 33, 40, 80] {
                    let taps: Vec<f32> = (0..taps_len).map(|_| next()).collect();
                    // Taps over three rows of a plane `row` wide, as a 3x3 kernel's are.
                    let row = len as isize * stride + 2;
                    let offsets: Vec<isize> =
                        (0..taps_len as isize).map(|t| (t / 3) * row + t % 3).collect();
                    // Exactly the elements the scalar walk may read, so that a read past
                    // them would be out of bounds (and caught by a sanitizer or Miri).
                    let needed = offsets.iter().max().unwrap() + (len as isize - 1) * stride + 1;
                    let input: Vec<f32> = (0..needed).map(|_| next()).collect();
                    let (mut fast, mut slow) = (vec![0f32; len], vec![0f32; len]);
                    unsafe {
                        depthwise_w_f32(
                            input.as_ptr(),
                            fast.as_mut_ptr(),
                            &taps,
                            &offsets,
                            0.25,
                            len,
                            stride,
                        );
                        scalar(input.as_ptr(), slow.as_mut_ptr(), &taps, &offsets, 0.25, 0, len, stride);
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&fast), bits(&slow), "stride {stride}, {taps_len} taps, len {len}");
                }
            }
        }
    }
}
