use crate::internal::*;

/// How a padded region is filled. A `Constant` value carries a single element
/// in the datum type the model builder gave it, f32 for a float graph, and no
/// pass retypes it: a consumer casts it to the datum type of the tensor it pads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PadMode {
    Constant(Arc<Tensor>),
    Reflect,
    Edge,
}

impl Default for PadMode {
    fn default() -> PadMode {
        PadMode::Constant(Arc::new(0.0f32.into()))
    }
}

#[derive(Debug, Clone, new, Default, Hash, PartialEq, Eq)]
pub struct Pad {
    pub pads: Vec<(usize, usize)>,
    pub mode: PadMode,
}

impl Pad {
    fn eval_t<T>(&self, input_tensor: TValue) -> TractResult<TValue>
    where
        T: Copy + Datum,
    {
        use tract_ndarray::*;
        let input = input_tensor.to_plain_array_view::<T>()?;
        let output_shape: Vec<usize> =
            input.shape().iter().zip(self.pads.iter()).map(|(&d, &(a, b))| d + a + b).collect();
        let element = match &self.mode {
            PadMode::Constant(f) => f.cast_to_scalar::<T>()?,
            _ => T::default(),
        };
        if let PadMode::Constant(_) = self.mode
            && !crate::ops::TRACT_FERD_STOCK_EVAL.get()
            && let Some(input) = input.as_slice()
        {
            let mut output = Self::constant_rows(input, input_tensor.shape(), &self.pads, element)?;
            unsafe { output.set_datum_type(input_tensor.datum_type()) }
            return Ok(output.into_tvalue());
        }
        let mut output = ArrayD::<T>::from_elem(output_shape, element);
        let slice_spec: Vec<SliceInfoElem> = self
            .pads
            .iter()
            .map(|&(a, b)| SliceInfoElem::Slice {
                start: a as isize,
                end: if b != 0 { Some(-(b as isize)) } else { None },
                step: 1,
            })
            .collect();
        let slice_info = SliceInfo::<_, IxDyn, IxDyn>::try_from(slice_spec).unwrap();
        output.slice_mut(slice_info.as_ref()).assign(&input);
        if self.mode == PadMode::Reflect || self.mode == PadMode::Edge {
            for (ax, &(bef, aft)) in self.pads.iter().enumerate() {
                let axis = Axis(ax);
                let dim = output.shape()[ax];
                {
                    let (mut pad, data) = output.view_mut().split_at(axis, bef);
                    for i in 0..bef {
                        let mut target = pad.slice_axis_mut(axis, Slice::from(i..i + 1));
                        let source_slice = match self.mode {
                            PadMode::Edge => 0,
                            PadMode::Reflect => bef - i,
                            _ => panic!(),
                        };
                        let source =
                            data.slice_axis(axis, Slice::from(source_slice..source_slice + 1));
                        target.assign(&source);
                    }
                }
                {
                    let (data, mut pad) = output.view_mut().split_at(axis, dim - aft);
                    for i in 0..aft {
                        let mut target = pad.slice_axis_mut(axis, Slice::from(i..i + 1));
                        let source_slice = match self.mode {
                            PadMode::Edge => dim - aft - 1,
                            PadMode::Reflect => dim - aft - 2 - i,
                            _ => panic!(),
                        };
                        let source =
                            data.slice_axis(axis, Slice::from(source_slice..source_slice + 1));
                        target.assign(&source);
                    }
                }
            }
        }
        let mut output = output.into_tensor();
        unsafe { output.set_datum_type(input_tensor.datum_type()) }
        Ok(output.into_tvalue())
    }
}

impl Pad {
    /// ferd patch: constant padding as one fill of the output and one copy per
    /// input row (rows along the last axis), each to an offset kept up to date
    /// as the row counter turns. Stock tract assigns the input through a
    /// strided four-dimensional view, which made the explicit pads in front of
    /// a small model's convolutions cost about a tenth of the convolutions
    /// themselves (stock's code still runs under `TRACT_FERD_STOCK_EVAL`).
    /// `input` is `shape`'s values in row-major order; `pads` has one
    /// `(before, after)` per axis.
    fn constant_rows<T: Copy + Datum>(
        input: &[T],
        shape: &[usize],
        pads: &[(usize, usize)],
        element: T,
    ) -> TractResult<Tensor> {
        let out_shape: TVec<usize> =
            shape.iter().zip(pads).map(|(&d, &(a, b))| d + a + b).collect();
        let rank = shape.len();
        if rank == 0 {
            // Nothing to pad: the one value.
            return Ok(tensor0(input[0]));
        }
        let mut values = vec![element; out_shape.iter().product()];
        if input.is_empty() {
            // An empty axis: all padding (and no row for `chunks_exact`).
            return Ok(tract_ndarray::ArrayD::from_shape_vec(&*out_shape, values)?.into_tensor());
        }
        // Output strides, and where the first input value lands.
        let mut out_strides: TVec<usize> = tvec![1; rank];
        for axis in (0..rank - 1).rev() {
            out_strides[axis] = out_strides[axis + 1] * out_shape[axis + 1];
        }
        let start: usize = pads.iter().zip(&out_strides).map(|(&(a, _), s)| a * s).sum();
        let in_w = shape[rank - 1];
        let mut coords: TVec<usize> = tvec![0; rank - 1];
        let mut at = start;
        for row in input.chunks_exact(in_w) {
            values[at..at + in_w].copy_from_slice(row);
            // Next input row: turn the counter over the outer axes, moving the
            // output offset by each axis's stride (back by its extent on a wrap).
            for axis in (0..rank - 1).rev() {
                coords[axis] += 1;
                at += out_strides[axis];
                if coords[axis] < shape[axis] {
                    break;
                }
                coords[axis] = 0;
                at -= shape[axis] * out_strides[axis];
            }
        }
        Ok(tract_ndarray::ArrayD::from_shape_vec(&*out_shape, values)?.into_tensor())
    }
}

impl Op for Pad {
    fn name(&self) -> StaticName {
        "Pad".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("Mode: {:?}, pads: {:?})", self.mode, self.pads,)])
    }

    op_as_typed_op!();
}

impl EvalOp for Pad {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        Ok(tvec!(dispatch_numbers!(Self::eval_t(input.datum_type())(self, input))?))
    }
}

impl TypedOp for Pad {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut fact = inputs[0].without_value();
        if self.pads.len() != fact.rank() {
            bail!("Inconsistent pad: input of rank {}, pads are: {:?}", fact.rank(), self.pads);
        }
        for (ix, (b, e)) in self.pads.iter().enumerate() {
            fact.shape.set(ix, fact.shape[ix].clone() + *b + *e);
        }
        Ok(tvec!(fact))
    }

    fn input_roi(
        &self,
        model: &TypedModel,
        node: &TypedNode,
    ) -> TractResult<Option<TVec<Option<TDim>>>> {
        let output_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
        rule_if_some!(roi = &output_fact.region_of_interest);
        // For each padded axis, substitute 🎯axis → 🎯axis - before
        let mut input_roi = roi.clone();
        for (axis, &(before, _)) in self.pads.iter().enumerate() {
            if before == 0 {
                continue;
            }
            if let Some(sym) = input_roi
                .symbols()
                .into_iter()
                .find(|s| crate::ops::logic::sym_to_coord_axis(s) == Some(axis))
            {
                let shifted = TDim::Sym(sym.clone()) - TDim::Val(before as i64);
                input_roi = input_roi.substitute(&sym, &shifted).unwrap_or(input_roi);
            }
        }
        Ok(Some(tvec![Some(input_roi)]))
    }

    fn axes_mapping(
        &self,
        inputs: &[&TypedFact],
        outputs: &[&TypedFact],
    ) -> TractResult<AxesMapping> {
        let mut result = AxesMapping::disconnected(inputs, outputs)?;
        for (ix, pads) in self.pads.iter().enumerate() {
            if pads == &(0, 0) {
                result = result.linking((InOut::In(0), ix), (InOut::Out(0), ix))?;
            }
        }
        Ok(result)
    }

    fn change_axes(
        &self,
        model: &TypedModel,
        node: &TypedNode,
        io: InOut,
        change: &AxisOp,
    ) -> TractResult<Option<AxisChangeConsequence>> {
        let mut new_op = self.clone();
        if let (InOut::In(0), AxisOp::Rm(ix)) = (io, change)
            && new_op.pads.remove(*ix) == (0, 0)
        {
            return Ok(Some(AxisChangeConsequence::new(
                model,
                node,
                Some(Box::new(new_op)),
                change,
            )));
        }
        if let (InOut::In(0), AxisOp::Add(ix)) = (io, change) {
            new_op.pads.insert(*ix, (0, 0));
            return Ok(Some(AxisChangeConsequence::new(
                model,
                node,
                Some(Box::new(new_op)),
                change,
            )));
        }
        Ok(None)
    }

    fn declutter(
        &self,
        model: &TypedModel,
        node: &TypedNode,
    ) -> TractResult<Option<TypedModelPatch>> {
        if self.pads.iter().all(|p| p.0 == 0 && p.1 == 0) {
            TypedModelPatch::shunt_one_op(model, node)
        } else {
            Ok(None)
        }
    }
}
