//! flex: the fused kernels on `FlexTensor`'s shared byte storage. Outputs are pooled buffers whose
//! `Bytes` give them back to the pool when flex drops them.

use std::marker::PhantomData;

use burn::backend::flex::{Flex, FlexTensor, Layout};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape};

use crate::cpu::{host_fused_ops, pool, Host, HostView};
use crate::FusedOps;

impl Host for Flex {
    fn view(t: &FlexTensor) -> Option<HostView<'_>> {
        if t.dtype() != DType::F32 {
            return None;
        }
        let layout = t.layout();
        if layout.strides().iter().any(|&s| s < 0) {
            return None;
        }
        let data: &[f32] = t.storage();
        Some(HostView {
            // SAFETY: the layout's offset is inside the storage.
            ptr: unsafe { data.as_ptr().add(layout.start_offset()) },
            shape: layout.shape().to_vec(),
            strides: layout.strides().to_vec(),
            _tensor: PhantomData,
        })
    }

    fn make_contiguous(t: FlexTensor) -> FlexTensor {
        t.to_contiguous()
    }

    fn unique(t: &mut FlexTensor) -> Option<&mut [f32]> {
        let (start, end) = t.layout().contiguous_offsets()?;
        if t.dtype() != DType::F32 {
            return None;
        }
        t.try_storage_mut::<f32>().map(|s| &mut s[start..end])
    }

    fn tensor(buf: Vec<f32>, shape: &[usize], strides: Option<&[isize]>) -> FlexTensor {
        let shape = Shape::from(shape.to_vec());
        let layout = match strides {
            Some(s) => Layout::new(shape, s.to_vec(), 0),
            None => Layout::contiguous(shape),
        };
        FlexTensor::new(pool::into_bytes(buf), layout, DType::F32)
    }
}

impl FusedOps for Flex {
    host_fused_ops!();
}

/// Keeps the `FloatTensor` alias in use for the macro's signatures.
type _Float = FloatTensor<Flex>;
