//! Nearest-neighbour 2x upsampling for the decoders, with a fast backward pass.
//!
//! candle's `upsample_nearest2d` backward runs a grouped convolution with one group per channel,
//! which candle executes as one small convolution per channel; at 128 channels that made the
//! upsampling gradient cost more than the decoder's convolutions. Here the backward is a 2x2
//! sum-pool over each plane, run in parallel over planes.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// The `[n, c, h, w] -> [n, c, 2h, 2w]` nearest-neighbour upsampling as a candle op.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpsampleNearest2x;

impl CustomOp1 for UpsampleNearest2x {
    fn name(&self) -> &'static str {
        "upsample-nearest-2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let mut out = vec![0f32; n * c * 4 * h * w];
        if h * w > 0 {
            out.par_chunks_mut(4 * h * w)
                .zip(x.par_chunks(h * w))
                .for_each(|(dst, src)| {
                    for (y, row) in src.chunks_exact(w).enumerate() {
                        let (d0, d1) = dst[4 * y * w..4 * (y + 1) * w].split_at_mut(2 * w);
                        for (pair, v) in d0.chunks_exact_mut(2).zip(row) {
                            pair[0] = *v;
                            pair[1] = *v;
                        }
                        d1.copy_from_slice(d0);
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, 2 * h, 2 * w))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (n, c, h, w) = arg.dims4()?;
        let mut dx = vec![0f32; n * c * h * w];
        super::with_data(grad_res, |g| {
            if h * w > 0 {
                dx.par_chunks_mut(h * w)
                    .zip(g.par_chunks(4 * h * w))
                    .for_each(|(dst, src)| {
                        for (y, row) in dst.chunks_exact_mut(w).enumerate() {
                            let (s0, s1) = src[4 * y * w..4 * (y + 1) * w].split_at(2 * w);
                            for ((d, a), b) in row
                                .iter_mut()
                                .zip(s0.chunks_exact(2))
                                .zip(s1.chunks_exact(2))
                            {
                                *d = a[0] + a[1] + b[0] + b[1];
                            }
                        }
                    });
            }
            Ok(())
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// Nearest-neighbour 2x upsampling of an `[n, c, h, w]` tensor, differentiable. Other devices
/// and dtypes than `f32` on the CPU use candle's `upsample_nearest2d`.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        let (_, _, h, w) = x.dims4()?;
        return x.upsample_nearest2d(2 * h, 2 * w);
    }
    x.contiguous()?.apply_op1(UpsampleNearest2x)
}
