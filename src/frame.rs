//! Frames and the pixel operations the vision stages need.
//!
//! A [`Frame`] owns its pixels in one of two layouts, grey or packed RGB,
//! whichever its source produced; conversions happen while sampling, so a
//! grey camera never pays for an RGB copy and the other way round.

use std::time::Duration;

/// Pixel layout of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// One byte per pixel.
    Grey,
    /// Three bytes per pixel, R G B.
    Rgb,
    /// Planar YUV 4:2:0 (I420): a full-size Y plane, then U and V planes of
    /// half width and height (rounded up). BT.601 limited range.
    I420,
}

impl PixelFormat {
    /// Bytes a `width` × `height` buffer of this format takes; `None` when
    /// that does not fit in `usize` (sides from a file header or a driver
    /// can be anything up to `u32::MAX`, and the Pi's 32-bit userland has a
    /// 4 GiB `usize`).
    pub fn buffer_len(self, width: u32, height: u32) -> Option<usize> {
        let w = usize::try_from(width).ok()?;
        let h = usize::try_from(height).ok()?;
        let pixels = w.checked_mul(h)?;
        match self {
            PixelFormat::Grey => Some(pixels),
            PixelFormat::Rgb => pixels.checked_mul(3),
            PixelFormat::I420 => {
                let chroma = w.div_ceil(2).checked_mul(h.div_ceil(2))?;
                pixels.checked_add(chroma.checked_mul(2)?)
            }
        }
    }
}

/// One picture from a source.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Layout of `data`.
    pub format: PixelFormat,
    /// Row-major pixels without padding.
    pub data: Vec<u8>,
    /// Time of the frame since the start of the stream; drives rules.
    pub timestamp: Duration,
    /// Position in the stream, from 0.
    pub sequence: u64,
    /// Where the frame came from (file path, or clip path and frame index).
    pub origin: String,
}

impl Frame {
    /// Builds a frame, checking that `data` has the right length.
    ///
    /// # Panics
    /// If [`Frame::try_new`] would refuse it; for buffers the program built
    /// itself (tests, drawings). Anything read from a file or a device goes
    /// through [`Frame::try_new`].
    pub fn new(width: u32, height: u32, format: PixelFormat, data: Vec<u8>) -> Frame {
        match Frame::try_new(width, height, format, data) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        }
    }

    /// Builds a frame, or says why `data` cannot be a `width` × `height`
    /// frame of `format`: a zero side, a size that overflows, or a buffer
    /// of the wrong length. Sources use this so that a bad header or driver
    /// buffer is an error for that item, never a panic.
    pub fn try_new(
        width: u32,
        height: u32,
        format: PixelFormat,
        data: Vec<u8>,
    ) -> Result<Frame, String> {
        if width == 0 || height == 0 {
            return Err(format!("frame with a zero side ({width}×{height})"));
        }
        let expected = format.buffer_len(width, height).ok_or_else(|| {
            format!("a {width}×{height} {format:?} frame is too large to address")
        })?;
        if data.len() != expected {
            return Err(format!(
                "frame buffer of {} bytes does not match {width}×{height} {format:?} ({expected} bytes)",
                data.len()
            ));
        }
        Ok(Frame {
            width,
            height,
            format,
            data,
            timestamp: Duration::ZERO,
            sequence: 0,
            origin: String::new(),
        })
    }

    /// Luma (BT.601) of pixel `(x, y)`; coordinates must be inside (the
    /// bilinear samplers clamp them there), or this panics.
    #[inline]
    pub fn luma(&self, x: u32, y: u32) -> f32 {
        let i = y as usize * self.width as usize + x as usize;
        match self.format {
            PixelFormat::Grey => self.data[i] as f32,
            PixelFormat::Rgb => {
                let p = &self.data[i * 3..i * 3 + 3];
                0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32
            }
            PixelFormat::I420 => limited_to_full(self.data[i]),
        }
    }

    /// R, G, B of pixel `(x, y)`; coordinates must be inside (the bilinear
    /// samplers clamp them there), or this panics.
    #[inline]
    pub fn rgb(&self, x: u32, y: u32) -> [f32; 3] {
        let i = y as usize * self.width as usize + x as usize;
        match self.format {
            PixelFormat::Grey => {
                let v = self.data[i] as f32;
                [v, v, v]
            }
            PixelFormat::Rgb => {
                let p = &self.data[i * 3..i * 3 + 3];
                [p[0] as f32, p[1] as f32, p[2] as f32]
            }
            PixelFormat::I420 => self.i420_rgb(self.chroma_planes(), x, y),
        }
    }

    /// An I420 frame's U and V planes and their width (`try_new` checked
    /// the length: width × height luma, then a half-size plane each).
    fn chroma_planes(&self) -> (&[u8], &[u8], usize) {
        let (w, h) = (self.width as usize, self.height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let (u, v) = self.data[w * h..].split_at(cw * ch);
        (u, v, cw)
    }

    /// R, G, B of pixel `(x, y)` of an I420 frame whose chroma planes are
    /// `chroma` ([`Frame::chroma_planes`]).
    #[inline]
    fn i420_rgb(&self, chroma: (&[u8], &[u8], usize), x: u32, y: u32) -> [f32; 3] {
        let (u, v, cw) = chroma;
        let c = (y as usize / 2) * cw + x as usize / 2;
        let luma = self.data[y as usize * self.width as usize + x as usize];
        let [r, g, b] = yuv_to_rgb(luma, u[c], v[c]);
        [r as f32, g as f32, b as f32]
    }

    /// Bilinear luma at a real-valued position, clamped to the border.
    pub fn luma_bilinear(&self, x: f32, y: f32) -> f32 {
        let [l] = self.bilinear(x, y, |x, y| [self.luma(x, y)]);
        l
    }

    /// Bilinear RGB at a real-valued position, clamped to the border.
    pub fn rgb_bilinear(&self, x: f32, y: f32) -> [f32; 3] {
        self.bilinear(x, y, |x, y| self.rgb(x, y))
    }

    /// The bilinear blend at `(x, y)`, clamped to the border, of `pixel`'s
    /// values at the four pixels around it.
    #[inline]
    fn bilinear<const N: usize>(
        &self,
        x: f32,
        y: f32,
        pixel: impl Fn(u32, u32) -> [f32; N],
    ) -> [f32; N] {
        let (tx, ty) = (Tap::new(x, self.width), Tap::new(y, self.height));
        let (a, b) = (pixel(tx.lo, ty.lo), pixel(tx.hi, ty.lo));
        let (c, d) = (pixel(tx.lo, ty.hi), pixel(tx.hi, ty.hi));
        Frame::blend(a, b, c, d, tx.f, ty.f)
    }

    /// The bilinear blend of the values at the four pixels around a point
    /// (`a` top left, `b` top right, `c` bottom left, `d` bottom right),
    /// `fx` and `fy` of the way from the top left one.
    #[inline]
    fn blend<const N: usize>(
        a: [f32; N],
        b: [f32; N],
        c: [f32; N],
        d: [f32; N],
        fx: f32,
        fy: f32,
    ) -> [f32; N] {
        std::array::from_fn(|k| {
            let top = a[k] * (1.0 - fx) + b[k] * fx;
            let bottom = c[k] * (1.0 - fx) + d[k] * fx;
            top * (1.0 - fy) + bottom * fy
        })
    }
}

/// Where a bilinear sample falls along one axis: the two pixels around the
/// position, clamped to the axis, and the weight of the second.
#[derive(Debug, Clone, Copy)]
struct Tap {
    lo: u32,
    hi: u32,
    f: f32,
}

impl Tap {
    /// The tap at `at` on an axis of `len` pixels (≥ 1, as `try_new`
    /// checks, so `len - 1` does not wrap).
    #[inline]
    fn new(at: f32, len: u32) -> Tap {
        // A NaN position survives `clamp` but `as u32` turns it into 0,
        // inside.
        let at = at.clamp(0.0, (len - 1) as f32);
        // Not negative after the clamp, so truncation is the floor; unlike
        // `f32::floor` it needs no libm call on x86_64's baseline (no
        // SSE4.1 `roundss`), and the crops take thousands of samples.
        let lo = at as u32;
        Tap {
            lo,
            hi: (lo + 1).min(len - 1),
            f: at - lo as f32,
        }
    }
}

/// [`Tap::new`] on eight lanes, none NaN: the low pixels, the high ones
/// and the weights of the high ones.
///
/// # Safety
/// The CPU must support AVX2; `len` is at least 1 and at most 2^24.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tap8_avx2(
    at: std::arch::x86_64::__m256,
    len: u32,
) -> (
    std::arch::x86_64::__m256i,
    std::arch::x86_64::__m256i,
    std::arch::x86_64::__m256,
) {
    use std::arch::x86_64::*;
    // `f32::clamp`'s two comparisons, so −0 stays −0 as there.
    let (zero, last) = (_mm256_setzero_ps(), _mm256_set1_ps((len - 1) as f32));
    let at = _mm256_blendv_ps(at, zero, _mm256_cmp_ps::<_CMP_LT_OQ>(at, zero));
    let at = _mm256_blendv_ps(at, last, _mm256_cmp_ps::<_CMP_GT_OQ>(at, last));
    let lo = _mm256_cvttps_epi32(at);
    let hi = _mm256_min_epi32(
        _mm256_add_epi32(lo, _mm256_set1_epi32(1)),
        _mm256_set1_epi32((len - 1) as i32),
    );
    (lo, hi, _mm256_sub_ps(at, _mm256_cvtepi32_ps(lo)))
}

/// [`Frame::blend`] on eight lanes, operation for operation (no fused
/// multiply-add), so the same values bit for bit: `[a, b, c, d]` the
/// top-left, top-right, bottom-left and bottom-right values, `fx` and `fy`
/// the weights of the right and bottom ones.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn blend8_avx2(
    [a, b, c, d]: [std::arch::x86_64::__m256; 4],
    fx: std::arch::x86_64::__m256,
    fy: std::arch::x86_64::__m256,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let one = _mm256_set1_ps(1.0);
    let (gx, gy) = (_mm256_sub_ps(one, fx), _mm256_sub_ps(one, fy));
    let top = _mm256_add_ps(_mm256_mul_ps(a, gx), _mm256_mul_ps(b, fx));
    let bottom = _mm256_add_ps(_mm256_mul_ps(c, gx), _mm256_mul_ps(d, fx));
    _mm256_add_ps(_mm256_mul_ps(top, gy), _mm256_mul_ps(bottom, fy))
}

/// An I420 frame's limited-range Y as full-range grey, so that a grey
/// picture looks the same whichever format carried it.
#[inline]
fn limited_to_full(y: u8) -> f32 {
    ((y as f32 - 16.0) * LIMITED_GAIN).clamp(0.0, 255.0)
}

/// Full-range steps per limited-range step of luma (219 steps from 16 to
/// 235 spread over 255).
const LIMITED_GAIN: f32 = 255.0 / 219.0;

/// [`Frame::luma_bilinear`] and [`Frame::rgb_bilinear`] for callers that
/// take thousands of samples of one frame (the models' inputs): the same
/// values bit for bit, with what does not change from sample to sample
/// worked out once: the luma of each byte value of a grey or I420 frame
/// (a 1 KiB table, on the stack) and an I420 frame's chroma planes.
pub struct Sampler<'a> {
    frame: &'a Frame,
    /// Luma of each byte value; `None` for RGB frames, whose luma takes
    /// three bytes.
    table: Option<[f32; 256]>,
    /// An I420 frame's U and V planes and their width; empty otherwise.
    chroma: (&'a [u8], &'a [u8], usize),
}

impl<'a> Sampler<'a> {
    /// A sampler of `frame`.
    pub fn new(frame: &'a Frame) -> Sampler<'a> {
        let table = match frame.format {
            PixelFormat::Grey => Some(std::array::from_fn(|v| v as f32)),
            PixelFormat::I420 => Some(std::array::from_fn(|v| limited_to_full(v as u8))),
            PixelFormat::Rgb => None,
        };
        let chroma = match frame.format {
            PixelFormat::I420 => frame.chroma_planes(),
            PixelFormat::Grey | PixelFormat::Rgb => (&[][..], &[][..], 0),
        };
        Sampler {
            frame,
            table,
            chroma,
        }
    }

    /// Bilinear luma at a real-valued position, clamped to the border:
    /// `frame.luma_bilinear(x, y)`.
    #[inline]
    pub fn luma(&self, x: f32, y: f32) -> f32 {
        let Some(table) = &self.table else {
            return self.frame.luma_bilinear(x, y);
        };
        let w = self.frame.width as usize;
        let [l] = self.frame.bilinear(x, y, |x, y| {
            [table[self.frame.data[y as usize * w + x as usize] as usize]]
        });
        l
    }

    /// Bilinear RGB at a real-valued position, clamped to the border:
    /// `frame.rgb_bilinear(x, y)`.
    #[inline]
    pub fn rgb(&self, x: f32, y: f32) -> [f32; 3] {
        if self.frame.format != PixelFormat::I420 {
            return self.frame.rgb_bilinear(x, y);
        }
        self.frame
            .bilinear(x, y, |x, y| self.frame.i420_rgb(self.chroma, x, y))
    }

    /// Whether [`Sampler::luma8_avx2`] may read this frame: grey or I420
    /// (whose luma is a byte), sides within f32's exact integers and a
    /// buffer that `i32` indices reach, as the gathers and the scalar
    /// taps' conversions need.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn gathers_luma(&self) -> bool {
        let f = self.frame;
        matches!(f.format, PixelFormat::Grey | PixelFormat::I420)
            && f.width <= 1 << 24
            && f.height <= 1 << 24
            && (4..=i32::MAX as usize).contains(&f.data.len())
    }

    /// [`Sampler::luma`] at eight positions (`x`, `y` lane by lane), the
    /// same values bit for bit: the same clamps, taps and blend, lane for
    /// lane, with no fused multiply-add. Two reads a sample instead of
    /// four: each reads the four bytes from a tap's left pixel, of which
    /// the first two are the pair. The reads are plain loads from the
    /// stored indices, not gather instructions: in `ferd bench` on the
    /// AMD EPYC (Zen 5) VM the crop took 0.13 ms a face with gathers and
    /// 0.08 ms with loads. Where the right pixel is clamped onto
    /// the left one (the last column) its weight is exactly 0 and the
    /// byte read in its place, finite, adds exactly 0 as the scalar
    /// blend's copy of the left one does. Lanes are sampled one by one
    /// when one has a NaN position (which the clamps keep) or a read would
    /// pass the buffer's end (a grey frame's last three pixels).
    ///
    /// # Safety
    /// The CPU must support AVX2 and [`Sampler::gathers_luma`] must hold.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(crate) unsafe fn luma8_avx2(
        &self,
        x: std::arch::x86_64::__m256,
        y: std::arch::x86_64::__m256,
    ) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let one_by_one = || {
            let (mut xs, mut ys, mut out) = ([0f32; 8], [0f32; 8], [0f32; 8]);
            _mm256_storeu_ps(xs.as_mut_ptr(), x);
            _mm256_storeu_ps(ys.as_mut_ptr(), y);
            for ((o, &x), &y) in out.iter_mut().zip(&xs).zip(&ys) {
                *o = self.luma(x, y);
            }
            _mm256_loadu_ps(out.as_ptr())
        };
        let nan = _mm256_or_ps(
            _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x),
            _mm256_cmp_ps::<_CMP_UNORD_Q>(y, y),
        );
        if _mm256_movemask_ps(nan) != 0 {
            return one_by_one();
        }
        let f = self.frame;
        let (x_lo, _, fx) = tap8_avx2(x, f.width);
        let (y_lo, y_hi, fy) = tap8_avx2(y, f.height);
        let width = _mm256_set1_epi32(f.width as i32);
        let top = _mm256_add_epi32(_mm256_mullo_epi32(y_lo, width), x_lo);
        let bottom = _mm256_add_epi32(_mm256_mullo_epi32(y_hi, width), x_lo);
        // Every index is a pixel's (the taps are clamped to the sides, so
        // no product wraps), the bottom one the larger; each read takes
        // four bytes from it.
        let last_read = _mm256_set1_epi32(f.data.len() as i32 - 4);
        if _mm256_movemask_epi8(_mm256_cmpgt_epi32(bottom, last_read)) != 0 {
            return one_by_one();
        }
        // Sixteen plain loads through a store of the indices (see above).
        let (mut at, mut words) = ([[0u32; 8]; 2], [[0u32; 8]; 2]);
        _mm256_storeu_si256(at[0].as_mut_ptr() as *mut __m256i, top);
        _mm256_storeu_si256(at[1].as_mut_ptr() as *mut __m256i, bottom);
        let base = f.data.as_ptr();
        for (at, words) in at.iter().zip(&mut words) {
            for (&i, word) in at.iter().zip(words) {
                // Safety: every index is at most `data.len() - 4` (checked above).
                *word = (base.add(i as usize) as *const u32).read_unaligned();
            }
        }
        let top = _mm256_loadu_si256(words[0].as_ptr() as *const __m256i);
        let bottom = _mm256_loadu_si256(words[1].as_ptr() as *const __m256i);
        let limited = f.format == PixelFormat::I420;
        let byte = |v: __m256i| {
            let v = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0xff)));
            if limited {
                // `limited_to_full`: no NaN here, and (v − 16) × gain is
                // never −0, so max and min are its clamp.
                let v = _mm256_mul_ps(
                    _mm256_sub_ps(v, _mm256_set1_ps(16.0)),
                    _mm256_set1_ps(LIMITED_GAIN),
                );
                _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(255.0))
            } else {
                v
            }
        };
        let (a, b) = (byte(top), byte(_mm256_srli_epi32::<8>(top)));
        let (c, d) = (byte(bottom), byte(_mm256_srli_epi32::<8>(bottom)));
        blend8_avx2([a, b, c, d], fx, fy)
    }

    /// A row of the commonest grid, the frame halved: output pixel `i` is
    /// [`Sampler::rgb`] at (2(`i0` + `i`) + 0.5, 2`j` + 0.5), bit for bit,
    /// written to `out` (the R, G and B values, as many as fit in the
    /// frame's width from `i0`, all three the same length). For an I420
    /// frame with even sides only (`false`, nothing written, otherwise, or
    /// when the row or columns fall outside): each output is then the mean
    /// of a 2×2 block that shares one chroma sample, and the walk is
    /// straight enough for the compiler to vectorise (in float, exactly
    /// [`yuv_to_rgb`]'s integer arithmetic; on eight lanes where the CPU
    /// has AVX2): 3 to 7 times faster than [`Sampler::rgb_grid`].
    pub fn rgb_half_row(&self, j: usize, i0: usize, out: [&mut [f32]; 3]) -> bool {
        let f = self.frame;
        let (w, h) = (f.width as usize, f.height as usize);
        let (half, n) = (w / 2, out[0].len());
        if f.format != PixelFormat::I420
            || w % 2 != 0
            || h % 2 != 0
            || j >= h / 2
            || out.iter().any(|o| o.len() != n)
            || i0.checked_add(n).is_none_or(|end| end > half)
        {
            return false;
        }
        // Even sides: the chroma planes are `half` wide.
        let (u, v, _) = self.chroma;
        let (u, v) = (&u[j * half + i0..][..n], &v[j * half + i0..][..n]);
        let top = &f.data[2 * j * w + 2 * i0..][..2 * n];
        let bottom = &f.data[(2 * j + 1) * w + 2 * i0..][..2 * n];
        let rows = HalfRows { top, bottom, u, v };
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
        {
            // Safety: the CPU has AVX-512 F and BW, checked just above.
            unsafe { rows.halve_avx512(out) };
            return true;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // Safety: the CPU has AVX2, checked just above.
            unsafe { rows.halve_avx2(out) };
            return true;
        }
        rows.halve(out);
        true
    }

    /// [`Sampler::rgb`] at every point of an axis-aligned grid: `put(i, j,
    /// rgb)` for each column `i` of `cols` and row `j` of `rows`, row by
    /// row, sampled at (`x_of(i)`, `y_of(j)`). The same values bit for bit;
    /// what a row's samples share (its two source rows and their chroma
    /// rows) is found once per row, and for an I420 frame each chroma
    /// sample's part of the conversion once per pixel pair or square that
    /// shares it, which is most of a letterbox's cost.
    pub fn rgb_grid(
        &self,
        cols: std::ops::Range<usize>,
        rows: std::ops::Range<usize>,
        x_of: impl Fn(usize) -> f32,
        y_of: impl Fn(usize) -> f32,
        mut put: impl FnMut(usize, usize, [f32; 3]),
    ) {
        let frame = self.frame;
        if frame.format != PixelFormat::I420 {
            for j in rows {
                let y = y_of(j);
                for i in cols.clone() {
                    put(i, j, frame.rgb_bilinear(x_of(i), y));
                }
            }
            return;
        }
        let (w, h) = (frame.width as usize, frame.height as usize);
        let (u, v, cw) = self.chroma;
        let luma_row = |y: u32| &frame.data[y as usize * w..][..w];
        let chroma_row = |y: u32| {
            let at = y as usize / 2 * cw;
            (&u[at..][..cw], &v[at..][..cw])
        };
        #[cfg(target_arch = "x86_64")]
        let lanes = self.gathers_luma() && std::arch::is_x86_feature_detected!("avx2");
        for j in rows {
            let ty = Tap::new(y_of(j), h as u32);
            let (luma0, luma1) = (luma_row(ty.lo), luma_row(ty.hi));
            let (u0, v0) = chroma_row(ty.lo);
            let (u1, v1) = chroma_row(ty.hi);
            let same_chroma_row = ty.lo / 2 == ty.hi / 2;
            // The sample at column i, one by one.
            let one = |i: usize| {
                let tx = Tap::new(x_of(i), w as u32);
                let (x0, x1) = (tx.lo as usize, tx.hi as usize);
                let (c0, c1) = (x0 / 2, x1 / 2);
                let top0 = chroma_terms(u0[c0], v0[c0]);
                let top1 = if c1 == c0 {
                    top0
                } else {
                    chroma_terms(u0[c1], v0[c1])
                };
                let (bottom0, bottom1) = if same_chroma_row {
                    (top0, top1)
                } else {
                    (chroma_terms(u1[c0], v1[c0]), chroma_terms(u1[c1], v1[c1]))
                };
                let px = |luma: u8, terms| yuv_terms_to_rgb(luma, terms).map(|c| c as f32);
                let (a, b) = (px(luma0[x0], top0), px(luma0[x1], top1));
                let (c, d) = (px(luma1[x0], bottom0), px(luma1[x1], bottom1));
                Frame::blend(a, b, c, d, tx.f, ty.f)
            };
            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
            let mut i = cols.start;
            #[cfg(target_arch = "x86_64")]
            if lanes {
                let rows = RgbRows {
                    luma: [luma0, luma1],
                    u: [u0, u1],
                    v: [v0, v1],
                };
                while i + 8 <= cols.end {
                    let xs: [f32; 8] = std::array::from_fn(|l| x_of(i + l));
                    // Safety: the CPU has AVX2 and the frame is one whose luma gathers
                    // (`lanes`).
                    match unsafe { rows.rgb8_avx2(xs, ty.f, w, cw) } {
                        Some(rgb) => {
                            for (l, ((r, g), b)) in
                                rgb[0].iter().zip(&rgb[1]).zip(&rgb[2]).enumerate()
                            {
                                put(i + l, j, [*r, *g, *b]);
                            }
                        }
                        None => (i..i + 8).for_each(|i| put(i, j, one(i))),
                    }
                    i += 8;
                }
            }
            (i..cols.end).for_each(|i| put(i, j, one(i)));
        }
    }
}

/// The rows of an I420 frame that one row of [`Sampler::rgb_grid`] blends: the two luma
/// rows and their chroma rows (U and V), top then bottom.
#[cfg(target_arch = "x86_64")]
struct RgbRows<'a> {
    luma: [&'a [u8]; 2],
    u: [&'a [u8]; 2],
    v: [&'a [u8]; 2],
}

#[cfg(target_arch = "x86_64")]
impl RgbRows<'_> {
    /// [`Sampler::rgb_grid`]'s samples at the eight positions `xs` of a row whose vertical
    /// weight is `fy`, as R, G and B on eight lanes each: the same values bit for bit (the
    /// same taps, [`chroma_terms`] and [`yuv_terms_to_rgb`] in 32-bit lanes, and
    /// [`Frame::blend`] operation for operation, with no fused multiply-add). A row's pair
    /// of taps is read by one gather of the four bytes from the left one, so `None` (nothing
    /// sampled, for the caller to sample one by one) when a read would pass the end of its
    /// row (the last three luma columns, the last three chroma ones) or a position is NaN.
    /// `w` is the frame's width, `cw` its chroma rows' width.
    ///
    /// # Safety
    /// The CPU must support AVX2; the rows are the frame's, whose width is at most 2^24.
    #[target_feature(enable = "avx2")]
    unsafe fn rgb8_avx2(
        &self,
        xs: [f32; 8],
        fy: f32,
        w: usize,
        cw: usize,
    ) -> Option<[[f32; 8]; 3]> {
        use std::arch::x86_64::*;
        let x = _mm256_loadu_ps(xs.as_ptr());
        if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x)) != 0 || fy.is_nan() {
            return None;
        }
        let (x0, x1, fx) = tap8_avx2(x, w as u32);
        let (c0, c1) = (_mm256_srli_epi32::<1>(x0), _mm256_srli_epi32::<1>(x1));
        // x1 ≥ x0 and c1 ≥ c0 lane by lane: the rightmost reads. (A row narrower than four
        // bytes fails this for every lane.)
        let past = |at: __m256i, len: usize| {
            _mm256_movemask_epi8(_mm256_cmpgt_epi32(at, _mm256_set1_epi32(len as i32 - 4))) != 0
        };
        if past(x1, w) || past(c1, cw) {
            return None;
        }
        // Past that test every right tap is its left one's neighbour (x1 = x0 + 1, the
        // clamp never reached), and its chroma sample the left one's or the next (c1 - c0
        // is 0 or 1): one gather of the four bytes from the left tap gives both, bytes 0
        // and 1 of luma, byte 0 and byte c1 - c0 of chroma.
        let gather =
            |row: &[u8], at: __m256i| _mm256_i32gather_epi32::<1>(row.as_ptr() as *const i32, at);
        let ff = _mm256_set1_epi32(0xff);
        let chroma_shift = _mm256_slli_epi32::<3>(_mm256_sub_epi32(c1, c0));
        let left = |g: __m256i| _mm256_and_si256(g, ff);
        let right = |g: __m256i| _mm256_and_si256(_mm256_srli_epi32::<8>(g), ff);
        let right_chroma = |g: __m256i| _mm256_and_si256(_mm256_srlv_epi32(g, chroma_shift), ff);
        // `chroma_terms`.
        let terms = |u: __m256i, v: __m256i| {
            let d = _mm256_sub_epi32(u, _mm256_set1_epi32(128));
            let e = _mm256_sub_epi32(v, _mm256_set1_epi32(128));
            [
                _mm256_mullo_epi32(e, _mm256_set1_epi32(409)),
                _mm256_add_epi32(
                    _mm256_mullo_epi32(d, _mm256_set1_epi32(-100)),
                    _mm256_mullo_epi32(e, _mm256_set1_epi32(-208)),
                ),
                _mm256_mullo_epi32(d, _mm256_set1_epi32(516)),
            ]
        };
        let (u0, v0) = (gather(self.u[0], c0), gather(self.v[0], c0));
        let (u1, v1) = (gather(self.u[1], c0), gather(self.v[1], c0));
        let (top0, top1) = (
            terms(left(u0), left(v0)),
            terms(right_chroma(u0), right_chroma(v0)),
        );
        let (bottom0, bottom1) = (
            terms(left(u1), left(v1)),
            terms(right_chroma(u1), right_chroma(v1)),
        );
        // `yuv_terms_to_rgb`'s luma part, then a channel, as floats.
        let luma = |y: __m256i| {
            let y = _mm256_sub_epi32(y, _mm256_set1_epi32(16));
            _mm256_mullo_epi32(
                _mm256_max_epi32(y, _mm256_setzero_si256()),
                _mm256_set1_epi32(298),
            )
        };
        let (l0, l1) = (gather(self.luma[0], x0), gather(self.luma[1], x0));
        let (ya, yb, yc, yd) = (
            luma(left(l0)),
            luma(right(l0)),
            luma(left(l1)),
            luma(right(l1)),
        );
        let channel = |c: __m256i, t: __m256i| {
            let v = _mm256_srai_epi32::<8>(_mm256_add_epi32(
                _mm256_add_epi32(c, t),
                _mm256_set1_epi32(128),
            ));
            let v = _mm256_min_epi32(
                _mm256_max_epi32(v, _mm256_setzero_si256()),
                _mm256_set1_epi32(255),
            );
            _mm256_cvtepi32_ps(v)
        };
        let fy = _mm256_set1_ps(fy);
        let mut out = [[0f32; 8]; 3];
        for (k, out) in out.iter_mut().enumerate() {
            let (a, b) = (channel(ya, top0[k]), channel(yb, top1[k]));
            let (c, d) = (channel(yc, bottom0[k]), channel(yd, bottom1[k]));
            _mm256_storeu_ps(out.as_mut_ptr(), blend8_avx2([a, b, c, d], fx, fy));
        }
        Some(out)
    }
}

/// The source rows of one row of [`Sampler::rgb_half_row`]: two rows of
/// luma and their chroma, as long as the output row (chroma) and twice
/// that (luma).
struct HalfRows<'a> {
    top: &'a [u8],
    bottom: &'a [u8],
    u: &'a [u8],
    v: &'a [u8],
}

impl HalfRows<'_> {
    /// The row's R, G and B into `out`, each as long as `u`.
    #[inline(always)]
    fn halve(&self, [r, g, b]: [&mut [f32]; 3]) {
        let n = self.u.len();
        let (top, bottom, u, v) = (
            &self.top[..2 * n],
            &self.bottom[..2 * n],
            self.u,
            &self.v[..n],
        );
        let (r, g, b) = (&mut r[..n], &mut g[..n], &mut b[..n]);
        for i in 0..n {
            let t = chroma_terms(u[i], v[i]).map(|t| t as f32);
            let px = |luma: u8| yuv_terms_to_rgb_f32(luma, t);
            let rgb = Frame::blend(
                px(top[2 * i]),
                px(top[2 * i + 1]),
                px(bottom[2 * i]),
                px(bottom[2 * i + 1]),
                0.5,
                0.5,
            );
            (r[i], g[i], b[i]) = (rgb[0], rgb[1], rgb[2]);
        }
    }

    /// [`HalfRows::halve`] compiled for AVX2: the same operations on
    /// eight lanes instead of SSE2's four (no FMA is formed, so the values
    /// are the same bit for bit).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn halve_avx2(&self, out: [&mut [f32]; 3]) {
        self.halve(out)
    }

    /// [`HalfRows::halve`] compiled for AVX-512 (F and BW, for the byte
    /// lanes): sixteen lanes, the same values bit for bit as
    /// [`HalfRows::halve_avx2`] says.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BW.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn halve_avx512(&self, out: [&mut [f32]; 3]) {
        self.halve(out)
    }
}

/// Converts one YUV (BT.601, limited range) sample to RGB.
#[inline]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    yuv_terms_to_rgb(y, chroma_terms(u, v))
}

/// The chroma's part of [`yuv_to_rgb`]'s R, G and B sums, which the two to
/// four pixels sharing an I420 chroma sample share.
#[inline]
fn chroma_terms(u: u8, v: u8) -> [i32; 3] {
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    [409 * e, -100 * d - 208 * e, 516 * d]
}

/// [`yuv_terms_to_rgb`] in float, as floats: the same values, with only
/// additions, multiplications and comparisons, which vectorise on every
/// x86_64 (SSE2) and aarch64 (a float-to-integer conversion, saturating in
/// Rust, kept the loop scalar). Every sum is an integer well inside f32's
/// exact range, so `>> 8` of a sum clamped at 0 is the floor of its
/// 256th, a multiple of 1/256 below 2^10; that floor is taken by rounding
/// to the nearest integer (adding and taking away 1.5 × 2^23, where f32's
/// step is 1) after taking away 0.5 − 1/512, which no tie can reach.
#[inline]
fn yuv_terms_to_rgb_f32(y: u8, terms: [f32; 3]) -> [f32; 3] {
    const ROUND: f32 = 12_582_912.0; // 1.5 × 2^23
    let c = (y as f32 - 16.0).max(0.0) * 298.0;
    terms.map(|t| {
        let quotient = (c + t + 128.0).max(0.0) * (1.0 / 256.0);
        let floor = ((quotient - (0.5 - 1.0 / 512.0)) + ROUND) - ROUND;
        floor.min(255.0)
    })
}

/// [`yuv_to_rgb`] from the luma and the chroma's [`chroma_terms`].
#[inline]
fn yuv_terms_to_rgb(y: u8, terms: [i32; 3]) -> [u8; 3] {
    let c = (y as i32 - 16).max(0) * 298;
    terms.map(|t| ((c + t + 128) >> 8).clamp(0, 255) as u8)
}

/// Converts RGB to YUV (BT.601, limited range).
#[inline]
pub fn rgb_to_yuv(r: u8, g: u8, b: u8) -> [u8; 3] {
    let (r, g, b) = (r as i32, g as i32, b as i32);
    let y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16;
    let u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128;
    let v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128;
    [
        y.clamp(0, 255) as u8,
        u.clamp(0, 255) as u8,
        v.clamp(0, 255) as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_interpolates_between_pixels() {
        let f = Frame::new(2, 1, PixelFormat::Grey, vec![0, 100]);
        assert_eq!(f.luma_bilinear(0.5, 0.0), 50.0);
        assert_eq!(f.luma_bilinear(-3.0, 0.0), 0.0);
        assert_eq!(f.luma_bilinear(9.0, 9.0), 100.0);
    }

    /// A 7×5 frame of `format` with varied bytes.
    fn varied(format: PixelFormat) -> Frame {
        let len = format.buffer_len(7, 5).unwrap();
        let data = (0..len).map(|i| (i * 97 % 251) as u8).collect();
        Frame::new(7, 5, format, data)
    }

    /// Positions over the frame and past its borders, off the pixel grid.
    fn positions() -> impl Iterator<Item = (f32, f32)> {
        (0..40).flat_map(|i| (0..30).map(move |j| (i as f32 * 0.29 - 2.1, j as f32 * 0.31 - 2.3)))
    }

    #[test]
    fn bilinear_is_the_textbook_formula_with_floor() {
        for format in [PixelFormat::Grey, PixelFormat::I420, PixelFormat::Rgb] {
            let f = varied(format);
            for (x, y) in positions() {
                let x = x.clamp(0.0, 6.0);
                let y = y.clamp(0.0, 4.0);
                let (x0, y0) = (x.floor(), y.floor());
                let (x1, y1) = ((x0 + 1.0).min(6.0), (y0 + 1.0).min(4.0));
                let l = |x: f32, y: f32| f.luma(x as u32, y as u32);
                let (fx, fy) = (x - x0, y - y0);
                let top = l(x0, y0) * (1.0 - fx) + l(x1, y0) * fx;
                let bottom = l(x0, y1) * (1.0 - fx) + l(x1, y1) * fx;
                let want = top * (1.0 - fy) + bottom * fy;
                assert_eq!(f.luma_bilinear(x, y), want, "{format:?} at ({x}, {y})");
            }
        }
    }

    #[test]
    fn the_sampler_gives_the_frames_bilinear_values_bit_for_bit() {
        for format in [PixelFormat::Grey, PixelFormat::I420, PixelFormat::Rgb] {
            let f = varied(format);
            let sampler = Sampler::new(&f);
            for (x, y) in positions() {
                assert_eq!(
                    sampler.luma(x, y).to_bits(),
                    f.luma_bilinear(x, y).to_bits(),
                    "{format:?} luma at ({x}, {y})"
                );
                assert_eq!(
                    sampler.rgb(x, y).map(f32::to_bits),
                    f.rgb_bilinear(x, y).map(f32::to_bits),
                    "{format:?} rgb at ({x}, {y})"
                );
            }
            // The grid: the points of `positions`, as 40 columns × 30 rows.
            let mut grid = Vec::new();
            sampler.rgb_grid(
                0..40,
                0..30,
                |i| i as f32 * 0.29 - 2.1,
                |j| j as f32 * 0.31 - 2.3,
                |i, j, rgb| grid.push((i, j, rgb)),
            );
            assert_eq!(grid.len(), 40 * 30);
            for (i, j, rgb) in grid {
                let (x, y) = (i as f32 * 0.29 - 2.1, j as f32 * 0.31 - 2.3);
                assert_eq!(
                    rgb.map(f32::to_bits),
                    f.rgb_bilinear(x, y).map(f32::to_bits),
                    "{format:?} grid rgb at ({x}, {y})"
                );
            }
            assert!(
                sampler.luma(f32::NAN, 1.0).is_nan() && f.luma_bilinear(f32::NAN, 1.0).is_nan()
            );
            assert!(sampler.rgb(1.0, f32::NAN)[0].is_nan());
        }
    }

    /// The grid's eight-lane walk (AVX2, where the CPU has it) gives the
    /// one-by-one samples bit for bit: an I420 frame wide enough for it (odd
    /// sides, so that a chroma row's last sample serves one column), grids
    /// that shrink and that enlarge, over every edge, with NaN positions in
    /// some lanes and in a row.
    #[test]
    fn grid_samples_on_eight_lanes_are_the_bilinear_ones_bit_for_bit() {
        let (w, h) = (61, 37);
        let len = PixelFormat::I420.buffer_len(w, h).unwrap();
        let data = (0..len).map(|i| (i * 97 % 251) as u8).collect();
        let f = Frame::new(w, h, PixelFormat::I420, data);
        let sampler = Sampler::new(&f);
        for (sx, sy, x0, y0) in [
            (2.3, 1.7, -3.1, -2.2),
            (0.29, 0.31, -2.1, -2.3),
            (1.0, 1.0, 0.5, 0.5),
            (0.77, 2.9, 40.3, 20.1),
        ] {
            let x_of = |i: usize| {
                if i % 13 == 5 {
                    f32::NAN
                } else {
                    x0 + i as f32 * sx
                }
            };
            let y_of = |j: usize| if j == 7 { f32::NAN } else { y0 + j as f32 * sy };
            let mut grid = Vec::new();
            sampler.rgb_grid(0..35, 0..20, x_of, y_of, |i, j, rgb| grid.push((i, j, rgb)));
            assert_eq!(grid.len(), 35 * 20);
            for (i, j, rgb) in grid {
                let (x, y) = (x_of(i), y_of(j));
                let want = f.rgb_bilinear(x, y);
                if x.is_nan() || y.is_nan() {
                    assert!(rgb.iter().chain(&want).all(|v| v.is_nan()), "({x}, {y})");
                } else {
                    assert_eq!(rgb.map(f32::to_bits), want.map(f32::to_bits), "({x}, {y})");
                }
            }
        }
    }

    #[test]
    fn the_float_conversion_is_the_integer_one_for_every_yuv() {
        for y in 0..=255u8 {
            for u in 0..=255u8 {
                for v in 0..=255u8 {
                    let terms = chroma_terms(u, v);
                    let want = yuv_terms_to_rgb(y, terms).map(|c| c as f32);
                    let got = yuv_terms_to_rgb_f32(y, terms.map(|t| t as f32));
                    assert_eq!(got, want, "y {y}, u {u}, v {v}");
                }
            }
        }
    }

    #[test]
    fn the_halved_rows_are_the_grids_bit_for_bit() {
        // 10×6 I420 with varied bytes; and sides the fast path refuses.
        let len = PixelFormat::I420.buffer_len(10, 6).unwrap();
        let f = Frame::new(
            10,
            6,
            PixelFormat::I420,
            (0..len).map(|i| (i * 89 % 253) as u8).collect(),
        );
        let sampler = Sampler::new(&f);
        for (j, i0, n) in [
            (0, 0, 5),
            (1, 0, 5),
            (2, 0, 5),
            (1, 2, 3),
            (2, 4, 1),
            (0, 1, 2),
        ] {
            let mut rows = [[0f32; 5]; 3];
            let [r, g, b] = &mut rows;
            assert!(sampler.rgb_half_row(j, i0, [&mut r[..n], &mut g[..n], &mut b[..n]]));
            let [r, g, b] = rows;
            for (i, got) in r.into_iter().zip(g).zip(b).take(n).enumerate() {
                let x = 2.0 * (i0 + i) as f32 + 0.5;
                let want = sampler.rgb(x, 2.0 * j as f32 + 0.5);
                let ((r, g), b) = got;
                let got = [r, g, b];
                assert_eq!(got.map(f32::to_bits), want.map(f32::to_bits), "({i}, {j})");
            }
        }
        let mut rows = [[0f32; 5]; 3];
        let [r, g, b] = &mut rows;
        assert!(!sampler.rgb_half_row(3, 0, [r, g, b]), "row past the end");
        let [r, g, b] = &mut rows;
        assert!(
            !sampler.rgb_half_row(0, 1, [r, g, b]),
            "columns past the end"
        );
        let [r, g, b] = &mut rows;
        assert!(
            !sampler.rgb_half_row(0, usize::MAX, [r, g, b]),
            "columns past the end"
        );
        let [r, g, b] = &mut rows;
        assert!(
            !sampler.rgb_half_row(0, 0, [&mut r[..4], g, b]),
            "rows of unequal lengths"
        );
        let odd = varied(PixelFormat::I420);
        let [r, g, b] = &mut rows;
        assert!(!Sampler::new(&odd).rgb_half_row(0, 0, [&mut r[..3], &mut g[..3], &mut b[..3]]));
        let rgb = varied(PixelFormat::Rgb);
        let [r, g, b] = &mut rows;
        assert!(!Sampler::new(&rgb).rgb_half_row(0, 0, [&mut r[..3], &mut g[..3], &mut b[..3]]));
    }

    #[test]
    fn sizes_that_overflow_or_mismatch_are_errors_not_panics() {
        assert_eq!(PixelFormat::I420.buffer_len(3, 3), Some(9 + 2 * 4));
        assert_eq!(PixelFormat::Rgb.buffer_len(u32::MAX, u32::MAX), None);
        let err = Frame::try_new(2, 2, PixelFormat::Grey, vec![0; 3]).unwrap_err();
        assert!(err.contains("3 bytes") && err.contains("2×2"), "{err}");
        assert!(Frame::try_new(0, 2, PixelFormat::Grey, vec![])
            .unwrap_err()
            .contains("zero side"));
        assert!(Frame::try_new(u32::MAX, u32::MAX, PixelFormat::Rgb, vec![]).is_err());
    }

    #[test]
    fn one_pixel_wide_i420_samples_safely() {
        // 1×3 I420: 3 luma, then one U and one V per two lines (2 each).
        let f = Frame::new(
            1,
            3,
            PixelFormat::I420,
            vec![16, 126, 235, 128, 128, 128, 128],
        );
        for y in 0..3 {
            let [r, g, b] = f.rgb(0, y);
            assert!(r == g && g == b, "{r} {g} {b}");
        }
        assert_eq!(f.rgb_bilinear(5.0, 9.0), f.rgb(0, 2));
        // A NaN position (from a wild detection) samples inside, no panic.
        let _ = f.luma_bilinear(f32::NAN, f32::NAN);
    }

    #[test]
    fn one_pixel_frame_samples_safely() {
        let f = Frame::new(1, 1, PixelFormat::Rgb, vec![10, 20, 30]);
        assert_eq!(f.rgb_bilinear(0.7, 0.2), [10.0, 20.0, 30.0]);
    }

    #[test]
    fn i420_grey_matches_rgb_grey() {
        // 2x2 mid grey: Y = 126 (limited range), neutral chroma.
        let f = Frame::new(2, 2, PixelFormat::I420, vec![126, 126, 126, 126, 128, 128]);
        let [r, g, b] = f.rgb(1, 1);
        assert!((r - 128.0).abs() <= 1.0 && r == g && g == b, "{r} {g} {b}");
        assert!((f.luma(0, 0) - 128.0).abs() <= 1.0);
    }

    #[test]
    fn yuv_round_trip_is_close() {
        for &(r, g, b) in &[
            (0u8, 0u8, 0u8),
            (255, 255, 255),
            (200, 30, 90),
            (12, 240, 100),
        ] {
            let [y, u, v] = rgb_to_yuv(r, g, b);
            let [r2, g2, b2] = yuv_to_rgb(y, u, v);
            for (a, b) in [(r, r2), (g, g2), (b, b2)] {
                assert!(
                    (a as i32 - b as i32).abs() <= 3,
                    "{r},{g},{b} -> {r2},{g2},{b2}"
                );
            }
        }
    }
}
