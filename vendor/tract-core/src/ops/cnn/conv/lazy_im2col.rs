use crate::internal::*;
use crate::ops::matmul::pack::DynPackedExoticFact;
use std::fmt::{Debug, Display};
use std::ops::Range;
use tract_linalg::WeightType;
use tract_linalg::mmm::{MMMInputFormat, MMMInputValue, PackedMatrixStorage};
use tract_linalg::pack::{PackedFormat, PackedI8K4, PackingWriter};

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct LazyIm2colParams {
    pub packer: PackedFormat,
    /// ferd patch (quantized lazy im2col): when set, panels are written in the K=4-inner
    /// int8 layout of the dot-product kernels (arm64 dotprod, x86 VNNI/AMX) instead of
    /// `packer`'s K-major one. `packer` still gives `r` and the element type. Only the
    /// quantized conv path (`Conv::wire_as_quant_lazy_im2col`) sets it.
    pub i8k4: Option<PackedI8K4>,
    pub n_byte_offsets: Vec<isize>,
    pub k_byte_offsets: Vec<isize>,
}

impl MMMInputFormat for LazyIm2colParams {
    fn r(&self) -> usize {
        self.packer.r
    }

    fn precursor(&self) -> WeightType {
        self.packer.precursor()
    }

    fn prepare_tensor(&self, _t: &Tensor, _k_axis: usize, _mn_axis: usize) -> TractResult<Tensor> {
        bail!("Unexpected call to prepare_tensor on LazyIm2Col")
    }

    fn k_alignment(&self) -> usize {
        1
    }

    fn mem_size(&self, k: TDim, mn: TDim) -> TDim {
        k * mn * self.packer.dt.size_of()
    }

    fn extract_at_mn_f16(
        &self,
        _data: &tract_linalg::mmm::EagerPackedInput,
        _mn: usize,
        _slice: &mut [f16],
    ) -> TractResult<()> {
        unimplemented!()
    }
    fn extract_at_mn_f32(
        &self,
        _data: &tract_linalg::mmm::EagerPackedInput,
        _mn: usize,
        _slice: &mut [f32],
    ) -> TractResult<()> {
        unimplemented!()
    }

    fn prepare_one_view(
        &self,
        _t: &TensorView,
        _k_axis: usize,
        _mn_axis: usize,
    ) -> TractResult<Box<dyn MMMInputValue>> {
        bail!("Unexpected call to prepare_one_view on LazyIm2Col")
    }

    fn prepare_one(
        &self,
        _t: &Tensor,
        _k_axis: usize,
        _mn_axis: usize,
    ) -> TractResult<Box<dyn MMMInputValue>> {
        bail!("Unexpected call to prepare_one on LazyIm2Col")
    }
}

impl Display for LazyIm2colParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LazyIm2Col")
    }
}

impl ExoticFact for LazyIm2colParams {
    fn buffer_sizes(&self) -> TVec<TDim> {
        tvec!(MMMInputFormat::mem_size(
            self,
            self.k_byte_offsets.len().to_dim(),
            self.n_byte_offsets.len().to_dim(),
        ))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct LazyIm2Col {
    pub params: Arc<LazyIm2colParams>,
    /// Number of groups for grouped convolution (1 if ungrouped). The output is then a
    /// `[1, group]`-batched packed tensor; each group reads from a different slice of the
    /// input via a per-group offset of `g * ci_per_group * c_stride * size_of`.
    pub group: usize,
    /// Byte stride between consecutive groups in the input tensor's flat byte buffer.
    /// Equal to `ci_per_group * c_stride * size_of(input)`. Unused (0) when `group == 1`.
    pub group_stride_bytes: isize,
}

impl Op for LazyIm2Col {
    fn name(&self) -> StaticName {
        "LazyIm2col".into()
    }

    op_as_typed_op!();
}

impl EvalOp for LazyIm2Col {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let tensor = args_1!(inputs);
        let dt = tensor.datum_type();
        let mut values: TVec<Box<dyn MMMInputValue>> = TVec::with_capacity(self.group);
        // ferd patch: the knob read once here, not for every panel (a read
        // looks the variable up in the environment).
        let runs = !crate::ops::TRACT_FERD_STOCK_EVAL.get();
        for g in 0..self.group {
            let group_offset_bytes = g as isize * self.group_stride_bytes;
            values.push(Box::new(LazyIm2colInput {
                tensor: tensor.clone(),
                im2col: self.params.clone(),
                group_offset_bytes,
                runs,
            }));
        }
        let output = PackedMatrixStorage::new_batched(&[1, self.group], values).into_tensor(dt);
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for LazyIm2Col {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let exotic_fact = DynPackedExoticFact {
            k: self.params.k_byte_offsets.len().to_dim(),
            mn: self.params.n_byte_offsets.len().to_dim(),
            packers: vec![if let Some(k4) = &self.params.i8k4 {
                Box::new(k4.clone()) as Box<dyn MMMInputFormat>
            } else {
                Box::new(self.params.packer.clone()) as Box<dyn MMMInputFormat>
            }],
        };
        Ok(tvec!(inputs[0].datum_type.fact([1, self.group]).with_exotic_fact(exotic_fact)))
    }

    as_op!();
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct LazyIm2colInput {
    tensor: TValue,
    im2col: Arc<LazyIm2colParams>,
    /// Per-group base byte offset added to every gather. For group g this is
    /// `g * ci_per_group * c_stride * size_of(input)`. Zero for ungrouped convs.
    group_offset_bytes: isize,
    /// ferd patch: whether panels of consecutive columns are copied as runs
    /// (`false` under `TRACT_FERD_STOCK_EVAL`).
    runs: bool,
}

impl Display for LazyIm2colInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl Hash for LazyIm2colInput {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.tensor.as_bytes(), &self.im2col, self.group_offset_bytes).hash(state);
    }
}

unsafe impl Send for LazyIm2colInput {}
unsafe impl Sync for LazyIm2colInput {}

impl LazyIm2colInput {
    /// ferd patch: a panel of `N` columns that fall into at most
    /// [`MAX_RUNS`] runs of consecutive elements (one run for a panel within
    /// an output row of a stride-1 convolution; two for one across a row's
    /// end, as most are when the row's width is not a multiple of the
    /// panel's): per k, each run read as one, in column order, so the same
    /// values in the same order as the gather. `false`, with nothing
    /// written, when the columns form more runs or do not increase
    /// ([`lane_runs`]).
    fn input_runs<T: Datum + Copy, const N: usize>(
        &self,
        writer: &mut impl PackingWriter<T>,
        k_range: Range<isize>,
        n: isize,
    ) -> bool {
        let offsets = &self.im2col.n_byte_offsets[n as usize..n as usize + N];
        let size = std::mem::size_of::<T>() as isize;
        let Some((base, lanes, count)) = lane_runs(offsets, size) else {
            return false;
        };
        // (byte offset of the run's first column, its length)
        let mut runs = [(0isize, 0usize); MAX_RUNS];
        for (run, (&base, &lanes)) in runs.iter_mut().zip(base.iter().zip(&lanes)) {
            *run = (base + lanes.trailing_zeros() as isize * size, lanes.count_ones() as usize);
        }
        let runs = &runs[..count];
        let k_byte_offsets = self.im2col.k_byte_offsets.as_ptr();
        unsafe {
            let ptr = self.tensor.as_ptr_unchecked::<u8>().offset(self.group_offset_bytes);
            for k in k_range.start..k_range.end {
                let row = ptr.offset(*k_byte_offsets.offset(k));
                for &(offset, len) in runs {
                    write_run::<T>(writer, row.offset(offset), len);
                }
            }
        }
        true
    }

    fn input_8n<T: Datum + Copy>(
        &self,
        writer: &mut impl PackingWriter<T>,
        k_range: Range<isize>,
        n: isize,
    ) {
        let k_byte_offsets = self.im2col.k_byte_offsets.as_ptr();
        let n_byte_offsets = self.im2col.n_byte_offsets.as_ptr();
        unsafe {
            let ptr = self.tensor.as_ptr_unchecked::<u8>().offset(self.group_offset_bytes);
            let o1 = *n_byte_offsets.offset(n);
            let o2 = *n_byte_offsets.offset(n + 1);
            let o3 = *n_byte_offsets.offset(n + 2);
            let o4 = *n_byte_offsets.offset(n + 3);
            let o5 = *n_byte_offsets.offset(n + 4);
            let o6 = *n_byte_offsets.offset(n + 5);
            let o7 = *n_byte_offsets.offset(n + 6);
            let o8 = *n_byte_offsets.offset(n + 7);
            for k in k_range.start..k_range.end {
                let ptr = ptr.offset(*k_byte_offsets.offset(k));
                let v1 = *(ptr.offset(o1) as *const T);
                let v2 = *(ptr.offset(o2) as *const T);
                let v3 = *(ptr.offset(o3) as *const T);
                let v4 = *(ptr.offset(o4) as *const T);
                let v5 = *(ptr.offset(o5) as *const T);
                let v6 = *(ptr.offset(o6) as *const T);
                let v7 = *(ptr.offset(o7) as *const T);
                let v8 = *(ptr.offset(o8) as *const T);
                writer.write(v1);
                writer.write(v2);
                writer.write(v3);
                writer.write(v4);
                writer.write(v5);
                writer.write(v6);
                writer.write(v7);
                writer.write(v8);
            }
        }
    }

    fn input_6n<T: Datum + Copy>(
        &self,
        writer: &mut impl PackingWriter<T>,
        k_range: Range<isize>,
        n: isize,
    ) {
        unsafe {
            let ptr = self.tensor.as_ptr_unchecked::<u8>().offset(self.group_offset_bytes);
            let k_byte_offsets = self.im2col.k_byte_offsets.as_ptr();
            let n_byte_offsets = self.im2col.n_byte_offsets.as_ptr();
            let o1 = *n_byte_offsets.offset(n);
            let o2 = *n_byte_offsets.offset(n + 1);
            let o3 = *n_byte_offsets.offset(n + 2);
            let o4 = *n_byte_offsets.offset(n + 3);
            let o5 = *n_byte_offsets.offset(n + 4);
            let o6 = *n_byte_offsets.offset(n + 5);
            for k in k_range.start..k_range.end {
                let ptr = ptr.offset(*k_byte_offsets.offset(k));
                let v1 = *(ptr.offset(o1) as *const T);
                let v2 = *(ptr.offset(o2) as *const T);
                let v3 = *(ptr.offset(o3) as *const T);
                let v4 = *(ptr.offset(o4) as *const T);
                let v5 = *(ptr.offset(o5) as *const T);
                let v6 = *(ptr.offset(o6) as *const T);
                writer.write(v1);
                writer.write(v2);
                writer.write(v3);
                writer.write(v4);
                writer.write(v5);
                writer.write(v6);
            }
        }
    }

    fn input_4n<T: Datum + Copy>(
        &self,
        writer: &mut impl PackingWriter<T>,
        k_range: Range<isize>,
        n: isize,
    ) {
        unsafe {
            let ptr = self.tensor.as_ptr_unchecked::<u8>().offset(self.group_offset_bytes);
            let k_byte_offsets = self.im2col.k_byte_offsets.as_ptr();
            let n_byte_offsets = self.im2col.n_byte_offsets.as_ptr();
            let o1 = *n_byte_offsets.offset(n);
            let o2 = *n_byte_offsets.offset(n + 1);
            let o3 = *n_byte_offsets.offset(n + 2);
            let o4 = *n_byte_offsets.offset(n + 3);
            for k in k_range.start..k_range.end {
                let ptr = ptr.offset(*k_byte_offsets.offset(k));
                let v1 = *(ptr.offset(o1) as *const T);
                let v2 = *(ptr.offset(o2) as *const T);
                let v3 = *(ptr.offset(o3) as *const T);
                let v4 = *(ptr.offset(o4) as *const T);
                writer.write(v1);
                writer.write(v2);
                writer.write(v3);
                writer.write(v4);
            }
        }
    }

    fn input_2n<T: Datum + Copy>(
        &self,
        writer: &mut impl PackingWriter<T>,
        k_range: Range<isize>,
        n: isize,
    ) {
        unsafe {
            let ptr = self.tensor.as_ptr_unchecked::<u8>().offset(self.group_offset_bytes);
            let k_byte_offsets = self.im2col.k_byte_offsets.as_ptr();
            let n_byte_offsets = self.im2col.n_byte_offsets.as_ptr();
            let o1 = *n_byte_offsets.offset(n);
            let o2 = *n_byte_offsets.offset(n + 1);
            for k in k_range.start..k_range.end {
                let ptr = ptr.offset(*k_byte_offsets.offset(k));
                let v1 = *(ptr.offset(o1) as *const T);
                let v2 = *(ptr.offset(o2) as *const T);
                writer.write(v1);
                writer.write(v2);
            }
        }
    }

    fn write<T: Datum + Copy>(
        &self,
        writer: &mut impl PackingWriter<T>,
        k_range: std::ops::Range<isize>,
        mn_range: std::ops::Range<isize>,
    ) {
        let mn_end = mn_range.end.min(self.im2col.n_byte_offsets.len() as isize);
        let n_range = mn_range.start..mn_end;
        // ferd patch: a panel whose columns are runs of consecutive elements
        // of the input (stride 1 along the last axis: most panels of a 3x3
        // convolution) copies each run per k, which the compiler moves as
        // vectors, instead of N gathered loads. The widths are the panels
        // of tract's f32 kernels: 6, 8 and 4 on AVX2 (16x6, 16x8, 24x4), 12
        // and 8 on AVX-512 (16x12, 16x8).
        if self.runs {
            let done = match n_range.len() {
                16 => self.input_runs::<T, 16>(writer, k_range.clone(), n_range.start),
                12 => self.input_runs::<T, 12>(writer, k_range.clone(), n_range.start),
                8 => self.input_runs::<T, 8>(writer, k_range.clone(), n_range.start),
                6 => self.input_runs::<T, 6>(writer, k_range.clone(), n_range.start),
                4 => self.input_runs::<T, 4>(writer, k_range.clone(), n_range.start),
                _ => false,
            };
            if done {
                return;
            }
        }
        match n_range.len() {
            8 => return self.input_8n(writer, k_range, n_range.start),
            6 => return self.input_6n(writer, k_range, n_range.start),
            4 => return self.input_4n(writer, k_range, n_range.start),
            2 => return self.input_2n(writer, k_range, n_range.start),
            _ => (),
        }
        unsafe {
            let ptr = self.tensor.as_ptr_unchecked::<u8>().offset(self.group_offset_bytes);
            let k_byte_offsets = self.im2col.k_byte_offsets.as_ptr();
            let n_byte_offsets = self.im2col.n_byte_offsets.as_ptr();
            for k in k_range.start..k_range.end {
                let ptr = ptr.offset(*k_byte_offsets.offset(k));
                let mut n = n_range.start;
                while n + 8 <= n_range.end {
                    let o1 = *n_byte_offsets.offset(n);
                    let o2 = *n_byte_offsets.offset(n + 1);
                    let o3 = *n_byte_offsets.offset(n + 2);
                    let o4 = *n_byte_offsets.offset(n + 3);
                    let o5 = *n_byte_offsets.offset(n + 4);
                    let o6 = *n_byte_offsets.offset(n + 5);
                    let o7 = *n_byte_offsets.offset(n + 6);
                    let o8 = *n_byte_offsets.offset(n + 7);
                    let v1 = *(ptr.offset(o1) as *const T);
                    let v2 = *(ptr.offset(o2) as *const T);
                    let v3 = *(ptr.offset(o3) as *const T);
                    let v4 = *(ptr.offset(o4) as *const T);
                    let v5 = *(ptr.offset(o5) as *const T);
                    let v6 = *(ptr.offset(o6) as *const T);
                    let v7 = *(ptr.offset(o7) as *const T);
                    let v8 = *(ptr.offset(o8) as *const T);
                    writer.write(v1);
                    writer.write(v2);
                    writer.write(v3);
                    writer.write(v4);
                    writer.write(v5);
                    writer.write(v6);
                    writer.write(v7);
                    writer.write(v8);
                    n += 8;
                }
                while n + 6 <= n_range.end {
                    let o1 = *n_byte_offsets.offset(n);
                    let o2 = *n_byte_offsets.offset(n + 1);
                    let o3 = *n_byte_offsets.offset(n + 2);
                    let o4 = *n_byte_offsets.offset(n + 3);
                    let o5 = *n_byte_offsets.offset(n + 4);
                    let o6 = *n_byte_offsets.offset(n + 5);
                    let v1 = *(ptr.offset(o1) as *const T);
                    let v2 = *(ptr.offset(o2) as *const T);
                    let v3 = *(ptr.offset(o3) as *const T);
                    let v4 = *(ptr.offset(o4) as *const T);
                    let v5 = *(ptr.offset(o5) as *const T);
                    let v6 = *(ptr.offset(o6) as *const T);
                    writer.write(v1);
                    writer.write(v2);
                    writer.write(v3);
                    writer.write(v4);
                    writer.write(v5);
                    writer.write(v6);
                    n += 6;
                }
                while n + 4 <= n_range.end {
                    let o1 = *n_byte_offsets.offset(n);
                    let o2 = *n_byte_offsets.offset(n + 1);
                    let o3 = *n_byte_offsets.offset(n + 2);
                    let o4 = *n_byte_offsets.offset(n + 3);
                    let v1 = *(ptr.offset(o1) as *const T);
                    let v2 = *(ptr.offset(o2) as *const T);
                    let v3 = *(ptr.offset(o3) as *const T);
                    let v4 = *(ptr.offset(o4) as *const T);
                    writer.write(v1);
                    writer.write(v2);
                    writer.write(v3);
                    writer.write(v4);
                    n += 4;
                }
                while n < n_range.end {
                    let o1 = *n_byte_offsets.offset(n);
                    let v1 = *(ptr.offset(o1) as *const T);
                    writer.write(v1);
                    n += 1;
                }
            }
        }
    }
}

/// ferd patch: the most runs [`LazyIm2colInput::input_runs`] copies a
/// panel's columns as; more (rows narrower than a third of the panel) go
/// through the gather.
const MAX_RUNS: usize = 3;

/// ferd patch: `len` consecutive `T`s from `src` written in order; up to 16
/// read as one array of that length (a jump on `len`, the same for every k
/// of a panel, so predicted).
///
/// # Safety
/// `src` is valid for reading `len` `T`s.
#[inline(always)]
unsafe fn write_run<T: Datum + Copy>(writer: &mut impl PackingWriter<T>, src: *const u8, len: usize) {
    #[inline(always)]
    unsafe fn run<T: Copy, const L: usize>(writer: &mut impl PackingWriter<T>, src: *const u8) {
        for v in unsafe { (src as *const [T; L]).read_unaligned() } {
            writer.write(v);
        }
    }
    unsafe {
        match len {
            1 => run::<T, 1>(writer, src),
            2 => run::<T, 2>(writer, src),
            3 => run::<T, 3>(writer, src),
            4 => run::<T, 4>(writer, src),
            5 => run::<T, 5>(writer, src),
            6 => run::<T, 6>(writer, src),
            7 => run::<T, 7>(writer, src),
            8 => run::<T, 8>(writer, src),
            9 => run::<T, 9>(writer, src),
            10 => run::<T, 10>(writer, src),
            11 => run::<T, 11>(writer, src),
            12 => run::<T, 12>(writer, src),
            13 => run::<T, 13>(writer, src),
            14 => run::<T, 14>(writer, src),
            15 => run::<T, 15>(writer, src),
            16 => run::<T, 16>(writer, src),
            _ => {
                for i in 0..len {
                    writer.write((src as *const T).add(i).read_unaligned());
                }
            }
        }
    }
}

impl MMMInputValue for LazyIm2colInput {
    fn scratch_panel_buffer_layout(&self) -> Option<std::alloc::Layout> {
        let k = self.im2col.k_byte_offsets.len();
        if let Some(k4) = &self.im2col.i8k4 {
            let size = k4.single_panel_len(k) * self.tensor.datum_type().size_of();
            return Some(std::alloc::Layout::from_size_align(size, k4.alignment()).unwrap());
        }
        Some(self.im2col.packer.single_panel_layout(k, self.tensor.datum_type().size_of()))
    }

    fn panel_bytes(&self, i: usize, buffer: Option<*mut u8>) -> TractResult<*const u8> {
        Ok(dispatch_copy!(Self::do_panel(self.tensor.datum_type())(self, i, buffer)))
    }

    fn k(&self) -> usize {
        self.im2col.k_byte_offsets.len()
    }

    fn mn(&self) -> usize {
        self.im2col.n_byte_offsets.len()
    }

    fn format(&self) -> &dyn MMMInputFormat {
        &*self.im2col
    }

    fn exotic_fact(&self) -> &dyn ExoticFact {
        &*self.im2col
    }
    fn extract_at_mn_f16(&self, _mn: usize, _slice: &mut [f16]) -> TractResult<()> {
        unimplemented!()
    }
    fn extract_at_mn_f32(&self, _mn: usize, _slice: &mut [f32]) -> TractResult<()> {
        unimplemented!()
    }
}

/// ferd patch: up to 16 columns of `size`-byte values, at byte offsets
/// `o`, as at most [`MAX_RUNS`] runs of consecutive values: per run, the
/// byte offset `base` at which a load of 16 lanes puts each of the run's
/// columns in its own lane (column `n` at `base + n * size`), and the bit
/// mask of those lanes. `None` when the offsets are not strictly
/// increasing or fall into more runs (a stride-2 convolution's, say).
///
/// With strictly increasing offsets the lanes of a run's load that hold
/// its columns, and every lane before or after them up to the first or
/// last column, lie between the first and last column's values:
/// `base_j + n * size >= o[0]` for `n >= 0` and `<= o[len - 1]` for `n <
/// len`, as each column is at least one value past the one before it.
/// The run copy (`input_runs`) takes its runs from here too.
fn lane_runs(o: &[isize], size: isize) -> Option<([isize; MAX_RUNS], [u16; MAX_RUNS], usize)> {
    debug_assert!(o.len() <= 16);
    let (mut base, mut lanes, mut count) = ([0isize; MAX_RUNS], [0u16; MAX_RUNS], 0);
    for n in 0..o.len() {
        if n > 0 && o[n] == o[n - 1] + size {
            lanes[count - 1] |= 1 << n;
        } else if (n > 0 && o[n] <= o[n - 1]) || count == MAX_RUNS {
            return None;
        } else {
            base[count] = o[n] - n as isize * size;
            lanes[count] = 1 << n;
            count += 1;
        }
    }
    Some((base, lanes, count))
}

/// ferd patch: a full panel of `r` (at most 16) 4-byte values whose columns
/// are the runs `base`/`lanes` (from [`lane_runs`]) of every k row, written
/// k-outer (`out[k * r + n]`, as the single-panel writer would): per k one
/// masked 16-lane load per run, merged, and one store. The masked loads
/// read only their runs' columns (masked-off lanes are not accessed); the
/// store is a full 64 bytes while that stays inside the panel (later rows
/// overwrite the spill) and masked to `r` lanes after.
///
/// Safety: the CPU has AVX-512F; `src + k_offset + base_j + n * 4` is
/// readable for every k offset and every lane `n` of `lanes[j]`, j < RUNS;
/// `out` holds `k_offsets.len() * r` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn panel_runs_4_avx512<const RUNS: usize>(
    src: *const u8,
    k_offsets: &[isize],
    base: [isize; MAX_RUNS],
    lanes: [u16; MAX_RUNS],
    out: *mut f32,
    r: usize,
) {
    use std::arch::x86_64::*;
    let total = k_offsets.len() * r;
    let keep = ((1u32 << r) - 1) as u16;
    for (kk, &k_offset) in k_offsets.iter().enumerate() {
        let row = src.wrapping_offset(k_offset);
        let load = |j: usize| row.wrapping_offset(base[j]) as *const f32;
        unsafe {
            let mut v = _mm512_maskz_loadu_ps(lanes[0], load(0));
            for j in 1..RUNS {
                v = _mm512_mask_loadu_ps(v, lanes[j], load(j));
            }
            let dst = out.add(kk * r);
            if kk * r + 16 <= total {
                _mm512_storeu_ps(dst, v);
            } else {
                _mm512_mask_storeu_ps(dst, keep, v);
            }
        }
    }
}

/// ferd patch: [`panel_runs_4_avx512`] for panels of at most 8 columns on
/// AVX2 (tract's f32 kernels there take 6, 8 or 4 columns): per k one
/// masked 8-lane load per run, merged by OR (masked-off lanes read as
/// zero), and one 8-lane store, full while it stays inside the panel (the
/// next row overwrites the spill) and masked to `r` lanes after.
///
/// Safety: the CPU has AVX2; `src + k_offset + base_j + n * 4` is readable
/// for every k offset and every lane `n` of `lanes[j]`, j < RUNS (the
/// masked loads do not touch the other lanes); `out` holds
/// `k_offsets.len() * r` values; `r <= 8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn panel_runs_4_avx2<const RUNS: usize>(
    src: *const u8,
    k_offsets: &[isize],
    base: [isize; MAX_RUNS],
    lanes: [u16; MAX_RUNS],
    out: *mut f32,
    r: usize,
) {
    use std::arch::x86_64::*;
    let lane_mask = |bits: u16| {
        let m: [i32; 8] = std::array::from_fn(|n| if bits >> n & 1 == 1 { -1 } else { 0 });
        unsafe { _mm256_loadu_si256(m.as_ptr() as *const __m256i) }
    };
    let masks: [__m256i; MAX_RUNS] = std::array::from_fn(|j| lane_mask(lanes[j]));
    let keep = lane_mask(((1u32 << r) - 1) as u16);
    let total = k_offsets.len() * r;
    for (kk, &k_offset) in k_offsets.iter().enumerate() {
        let row = src.wrapping_offset(k_offset);
        let load = |j: usize| row.wrapping_offset(base[j]) as *const f32;
        unsafe {
            let mut v = _mm256_maskload_ps(load(0), masks[0]);
            for j in 1..RUNS {
                v = _mm256_or_ps(v, _mm256_maskload_ps(load(j), masks[j]));
            }
            let dst = out.add(kk * r);
            if kk * r + 8 <= total {
                _mm256_storeu_ps(dst, v);
            } else {
                _mm256_maskstore_ps(dst, keep, v);
            }
        }
    }
}

impl LazyIm2colInput {
    /// ferd patch: the whole K=4 blocks of 8 columns of 1-byte values (a
    /// full panel of the AVX2, dot-product and 8-wide VNNI kernels, or one
    /// eighth-column chunk of the 16-wide AVX-512 VNNI and AMX kernels') in
    /// the K=4-inner layout: `out[kb*block_stride + n*4 + t] =
    /// src[k_offsets[4kb+t] + n_offsets[n]]`, 32 bytes per block.
    ///
    /// On x86_64, when the 8 columns fall into at most [`MAX_RUNS`] runs of
    /// consecutive bytes (stride 1: one run within an output row, two or
    /// three across rows' ends), each K is one 8-byte load per run, merged
    /// by the runs' lane masks, and the four K of a block are interleaved in
    /// registers. Elsewhere 8 consecutive bytes are loaded as one, and any
    /// other chunk byte by byte, still stored 32 bytes at a time.
    ///
    /// Safety: every `src + k_offsets[k] + n_offsets[n]` must be readable and
    /// `out + kb*block_stride` must hold 32 bytes for every whole block `kb`
    /// of `k_offsets`.
    unsafe fn k4_blocks_8n(
        src: *const u8,
        k_offsets: &[isize],
        n_offsets: &[isize; 8],
        out: *mut u8,
        block_stride: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if let Some((base, lanes, count)) = lane_runs(n_offsets, 1) {
            // SSE2 (every x86_64). Each lane bit becomes its byte's mask.
            use std::arch::x86_64::*;
            let mask = lanes.map(|l| {
                (0..8).filter(|n| l >> n & 1 == 1).fold(0u64, |m, n| m | 0xff << (8 * n))
            });
            unsafe fn blocks<const RUNS: usize>(
                src: *const u8,
                k_offsets: &[isize],
                base: [isize; MAX_RUNS],
                mask: [u64; MAX_RUNS],
                out: *mut u8,
                block_stride: usize,
            ) {
                unsafe {
                    let mask: [__m128i; MAX_RUNS] =
                        std::array::from_fn(|j| _mm_cvtsi64_si128(mask[j] as i64));
                    // The 8 columns' bytes of one K: a run's load puts its
                    // own columns in their lanes and its mask keeps them.
                    let row = |k: isize| {
                        let load =
                            |j: usize| _mm_loadl_epi64(src.offset(k + base[j]) as *const __m128i);
                        if RUNS == 1 {
                            return load(0);
                        }
                        let mut v = _mm_and_si128(load(0), mask[0]);
                        for j in 1..RUNS {
                            v = _mm_or_si128(v, _mm_and_si128(load(j), mask[j]));
                        }
                        v
                    };
                    for (kb, ks) in k_offsets.chunks_exact(4).enumerate() {
                        let k01 = _mm_unpacklo_epi8(row(ks[0]), row(ks[1]));
                        let k23 = _mm_unpacklo_epi8(row(ks[2]), row(ks[3]));
                        let dst = out.add(kb * block_stride) as *mut __m128i;
                        _mm_storeu_si128(dst, _mm_unpacklo_epi16(k01, k23));
                        _mm_storeu_si128(dst.add(1), _mm_unpackhi_epi16(k01, k23));
                    }
                }
            }
            unsafe {
                match count {
                    1 => blocks::<1>(src, k_offsets, base, mask, out, block_stride),
                    2 => blocks::<2>(src, k_offsets, base, mask, out, block_stride),
                    _ => blocks::<3>(src, k_offsets, base, mask, out, block_stride),
                }
            }
            return;
        }
        let o0 = n_offsets[0];
        let consecutive = n_offsets.iter().enumerate().all(|(n, &o)| o == o0 + n as isize);
        for (kb, ks) in k_offsets.chunks_exact(4).enumerate() {
            let mut block = [0u8; 32];
            if consecutive {
                // The 8 bytes read are the 8 columns' own values.
                let rows: [[u8; 8]; 4] = std::array::from_fn(|t| unsafe {
                    std::ptr::read_unaligned(src.offset(ks[t] + o0) as *const [u8; 8])
                });
                for n in 0..8 {
                    for t in 0..4 {
                        block[n * 4 + t] = rows[t][n];
                    }
                }
            } else {
                for (n, &o) in n_offsets.iter().enumerate() {
                    for t in 0..4 {
                        block[n * 4 + t] = unsafe { *src.offset(ks[t] + o) };
                    }
                }
            }
            unsafe {
                std::ptr::write_unaligned(out.add(kb * block_stride) as *mut [u8; 32], block)
            };
        }
    }

    fn do_panel<T: Datum + Copy>(&self, i: usize, buffer: Option<*mut u8>) -> *const u8 {
        let r = self.im2col.packer.r;
        let mn_start = i * r;
        let mn_end = (mn_start + self.im2col.packer.r).min(self.im2col.n_byte_offsets.len());
        let k = self.im2col.k_byte_offsets.len();
        let mn_range = mn_start as isize..mn_end as isize;
        let k_range = 0..k as isize;
        let packed = buffer.unwrap();
        if let Some(k4) = &self.im2col.i8k4 {
            // ferd patch: K=4-inner int8 layout, out[(k/4)*r*4 + n*4 + k%4] = patch(k, n),
            // gathered straight into place (the generic KOut4Writer pays a branchy cursor
            // update per byte). Cells past k or past the panel's last column are padding:
            // clear them first so the kernel never reads stale bytes of the scratch buffer.
            if !k.is_multiple_of(4) || mn_range.len() != r {
                let bytes = k4.single_panel_len(k) * std::mem::size_of::<T>();
                unsafe { std::ptr::write_bytes(packed, 0, bytes) };
            }
            unsafe {
                let src = self.tensor.as_ptr_unchecked::<u8>().offset(self.group_offset_bytes);
                let out = packed as *mut T;
                let n_offsets = &self.im2col.n_byte_offsets[mn_start..mn_end];
                let k_offsets = &self.im2col.k_byte_offsets;
                // Whole K=4 blocks of every full 8-column chunk of a panel of
                // bytes (the AVX2, VNNI and dot-product kernels' r is 8 or 16)
                // are assembled 32 bytes at a time and stored at once; the
                // rest (K's tail, a short panel's last columns) goes element
                // by element.
                let (whole_k, whole_n) =
                    if std::mem::size_of::<T>() == 1 && r.is_multiple_of(8) {
                        (k / 4 * 4, n_offsets.len() / 8 * 8)
                    } else {
                        (0, 0)
                    };
                for (c, chunk) in n_offsets[..whole_n].chunks_exact(8).enumerate() {
                    let chunk: &[isize; 8] = chunk.try_into().unwrap();
                    let out = packed.add(c * 32);
                    Self::k4_blocks_8n(src, &k_offsets[..whole_k], chunk, out, r * 4);
                }
                for (kk, &k_offset) in k_offsets.iter().enumerate() {
                    let row = src.offset(k_offset);
                    let dst = out.add((kk / 4) * r * 4 + kk % 4);
                    let first = if kk < whole_k { whole_n } else { 0 };
                    for (n, &n_offset) in n_offsets.iter().enumerate().skip(first) {
                        *dst.add(n * 4) = *(row.offset(n_offset) as *const T);
                    }
                }
            }
            return packed;
        }
        // ferd patch: a full panel of 4-byte values whose columns are at most
        // three runs (stride 1: one within an output row, two or three across
        // rows' ends) is copied per k by masked loads, one per run, and one
        // store (16 lanes on AVX-512, 8 on AVX2 for the fma kernels' panels of
        // at most 8), instead of [`Self::input_runs`]'s copy of each run (a
        // jump on its length).
        #[cfg(target_arch = "x86_64")]
        if self.runs
            && std::mem::size_of::<T>() == 4
            && mn_range.len() == r
            && mn_start.is_multiple_of(r)
        {
            let avx512 = r <= 16 && std::is_x86_feature_detected!("avx512f");
            let avx2 = !avx512 && r <= 8 && std::is_x86_feature_detected!("avx2");
            let n_offsets = &self.im2col.n_byte_offsets[mn_start..mn_end];
            if let Some((base, lanes, count)) =
                (avx512 || avx2).then(|| lane_runs(n_offsets, 4)).flatten()
            {
                let k_offsets = &self.im2col.k_byte_offsets;
                let out = packed as *mut f32;
                // Safety: the instruction set checked above, with r within its
                // lanes; each run's lanes are input values of the panel's
                // columns at every k (`lane_runs`), and the buffer holds the
                // single panel of `k * r` values.
                unsafe {
                    let src = self.tensor.as_ptr_unchecked::<u8>().offset(self.group_offset_bytes);
                    match (avx512, count) {
                        (true, 1) => panel_runs_4_avx512::<1>(src, k_offsets, base, lanes, out, r),
                        (true, 2) => panel_runs_4_avx512::<2>(src, k_offsets, base, lanes, out, r),
                        (true, _) => panel_runs_4_avx512::<3>(src, k_offsets, base, lanes, out, r),
                        (false, 1) => panel_runs_4_avx2::<1>(src, k_offsets, base, lanes, out, r),
                        (false, 2) => panel_runs_4_avx2::<2>(src, k_offsets, base, lanes, out, r),
                        (false, _) => panel_runs_4_avx2::<3>(src, k_offsets, base, lanes, out, r),
                    }
                }
                return packed;
            }
        }
        if mn_range.len() == r && mn_start.is_multiple_of(r) {
            let mut writer = self.im2col.packer.write_single_panel_with_k_outer(packed as *mut T);
            self.write(&mut writer, k_range, mn_range);
        } else {
            let mut writer = self.im2col.packer.write_with_k_outer(
                packed as *mut T,
                k_range.len(),
                mn_range.len(),
            );
            self.write(&mut writer, k_range, mn_range);
        }
        packed
    }
}
