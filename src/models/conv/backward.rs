//! Gradients of the convolution with respect to its input, weight and bias.
//!
//! The input gradient of a 3x3 stride-1 layer is itself a 3x3 stride-1 convolution of the output
//! gradient (with the filters flipped and in/out channels swapped), so it reuses the forward
//! kernels (F(4x4) or F(2x2) Winograd, whichever that convolution's shape picks). Every other case
//! goes through a GEMM with the transposed weights followed by col2im. The weight gradient of a
//! 3x3 stride-1 layer is computed in the F(2x2, 3x3) domain ([`winograd::weight_grad`]); other
//! layers use a GEMM of the output gradient with the packed input patches, block by block,
//! accumulated per worker and summed at the end.

use candle_core::Result;
use gemm::Parallelism;
use rayon::prelude::*;

use super::activation::Activation;
use super::gemm::{matmul, MatRef};
use super::{im2col, winograd, Geom, Method};

/// Sum of `dy` (`[n, cout, ho, wo]`) over everything but the channel.
pub fn bias_grad(g: &Geom, dy: &[f32]) -> Vec<f32> {
    let p = g.ho * g.wo;
    (0..g.cout)
        .into_par_iter()
        .map(|co| {
            (0..g.n)
                .map(|b| {
                    let s = &dy[(b * g.cout + co) * p..(b * g.cout + co + 1) * p];
                    // Sum in f64 so large planes do not lose low bits.
                    s.iter().map(|v| f64::from(*v)).sum::<f64>()
                })
                .sum::<f64>() as f32
        })
        .collect()
}

/// `dL/dx` (`[n, cin, h, w]`) from `dy`, the gradient of the pre-activation output.
pub fn input_grad(g: &Geom, w: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
    let mut dx = vec![0f32; g.n * g.cin * g.h * g.w];
    if Method::choose(g).is_winograd() {
        // dx = conv(dy, flip(w)^T) with padding 2 - pad: a 3x3 stride-1 convolution again.
        let mut wf = vec![0f32; w.len()];
        for co in 0..g.cout {
            for ci in 0..g.cin {
                for t in 0..9 {
                    wf[(ci * g.cout + co) * 9 + (8 - t)] = w[(co * g.cin + ci) * 9 + t];
                }
            }
        }
        let gt = Geom {
            n: g.n,
            cin: g.cout,
            h: g.ho,
            w: g.wo,
            cout: g.cin,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 2 - g.pad,
            dilation: 1,
            ho: g.h,
            wo: g.w,
        };
        super::forward_any(&gt, dy, &wf, None, Activation::Identity, &mut dx)?;
        return Ok(dx);
    }
    let k = g.cin * g.kh * g.kw;
    let p = g.ho * g.wo;
    let blk = im2col::block_len(g);
    let wt = MatRef::row_major(w, g.cout, k).t();
    // Images are independent, so they run in parallel; with fewer images than workers the GEMM
    // itself is split instead.
    let par = if g.n < rayon::current_num_threads() {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    dx.par_chunks_mut(g.cin * g.h * g.w)
        .enumerate()
        .try_for_each_init(
            || vec![0f32; k * blk],
            |col, (b, dxb)| -> Result<()> {
                let dyb = &dy[b * g.cout * p..(b + 1) * g.cout * p];
                let mut p0 = 0;
                while p0 < p {
                    let np = blk.min(p - p0);
                    let dym = MatRef {
                        data: &dyb[p0..],
                        rows: g.cout,
                        cols: np,
                        row_stride: p,
                        col_stride: 1,
                    };
                    matmul(&mut col[..k * np], np, wt, dym, false, par)?;
                    im2col::unpack_add(g, &col[..k * np], p0, p0 + np, dxb);
                    p0 += np;
                }
                Ok(())
            },
        )?;
    Ok(dx)
}

/// `dL/dw` (`[cout, cin, kh, kw]`) from the input `x` and `dy`.
pub fn weight_grad(g: &Geom, x: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
    if Method::choose(g).is_winograd() {
        return winograd::weight_grad(g, x, dy);
    }
    let k = g.cin * g.kh * g.kw;
    let p = g.ho * g.wo;
    let blk = im2col::block_len(g);
    let nblk = p.div_ceil(blk);
    let tasks: Vec<(usize, usize)> = (0..g.n)
        .flat_map(|b| (0..nblk).map(move |i| (b, i)))
        .collect();
    let zero = || (vec![0f32; k * blk], vec![0f32; g.cout * k]);
    let (_, dw) = tasks
        .par_iter()
        .try_fold(
            zero,
            |(mut col, mut acc), &(b, i)| -> Result<(Vec<f32>, Vec<f32>)> {
                let p0 = i * blk;
                let np = blk.min(p - p0);
                let xb = &x[b * g.cin * g.h * g.w..(b + 1) * g.cin * g.h * g.w];
                im2col::pack(g, xb, p0, p0 + np, &mut col[..k * np]);
                let dyb = &dy[b * g.cout * p + p0..(b + 1) * g.cout * p];
                let dym = MatRef {
                    data: dyb,
                    rows: g.cout,
                    cols: np,
                    row_stride: p,
                    col_stride: 1,
                };
                let colt = MatRef::row_major(&col[..k * np], k, np).t();
                matmul(&mut acc, k, dym, colt, true, Parallelism::None)?;
                Ok((col, acc))
            },
        )
        .try_reduce(zero, |(c, mut a), (_, b)| {
            for (x, y) in a.iter_mut().zip(&b) {
                *x += y;
            }
            Ok((c, a))
        })?;
    Ok(dw)
}
