//! ndarray: the fused kernels on `NdArrayTensor`'s f32 arrays (other element types take the
//! composed path). Outputs are owned arrays over the kernels' buffers.

use std::marker::PhantomData;

use burn::backend::ndarray::{
    FloatNdArrayElement, IntNdArrayElement, NdArray, NdArrayTensor, QuantElement,
};
use burn::tensor::ops::FloatTensor;
use ndarray::{ArrayD, IxDyn, ShapeBuilder};

use crate::cpu::{host_fused_ops, Host, HostView};
use crate::FusedOps;

impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> Host for NdArray<E, I, Q>
where
    NdArrayTensor: From<ndarray::ArcArray<E, IxDyn>> + From<ndarray::ArcArray<I, IxDyn>>,
{
    fn view(t: &NdArrayTensor) -> Option<HostView<'_>> {
        let NdArrayTensor::F32(storage) = t else {
            return None;
        };
        let view = storage.view();
        if view.strides().iter().any(|&s| s < 0) {
            return None;
        }
        Some(HostView {
            ptr: view.as_ptr(),
            shape: view.shape().to_vec(),
            strides: view.strides().to_vec(),
            _tensor: PhantomData,
        })
    }

    fn make_contiguous(t: NdArrayTensor) -> NdArrayTensor {
        match t {
            NdArrayTensor::F32(storage) => {
                if storage.view().is_standard_layout() {
                    return NdArrayTensor::F32(storage);
                }
                let owned = storage.view().as_standard_layout().into_owned();
                NdArrayTensor::from(owned.into_shared())
            }
            other => other,
        }
    }

    fn unique(t: &mut NdArrayTensor) -> Option<&mut [f32]> {
        let NdArrayTensor::F32(storage) = t else {
            return None;
        };
        // Borrowed storage is never unique, so `ensure_owned` does not copy here.
        if !storage.is_unique() || !storage.view().is_standard_layout() {
            return None;
        }
        storage.ensure_owned().as_slice_mut()
    }

    fn tensor(buf: Vec<f32>, shape: &[usize], strides: Option<&[isize]>) -> NdArrayTensor {
        let array = match strides {
            Some(s) => {
                let s: Vec<usize> = s.iter().map(|&v| v as usize).collect();
                ArrayD::from_shape_vec(IxDyn(shape).strides(IxDyn(&s)), buf)
            }
            None => ArrayD::from_shape_vec(IxDyn(shape), buf),
        }
        .expect("the buffer fits the shape");
        NdArrayTensor::from(array.into_shared())
    }
}

impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> FusedOps for NdArray<E, I, Q>
where
    NdArrayTensor: From<ndarray::ArcArray<E, IxDyn>> + From<ndarray::ArcArray<I, IxDyn>>,
{
    host_fused_ops!();
}

/// Keeps the `FloatTensor` alias in use for the macro's signatures.
type _Float = FloatTensor<NdArray>;
