//! im2col packing for the general convolution path (any kernel size, stride, dilation, padding).
//!
//! Columns are built for one block of output pixels at a time, so the packed matrix
//! (`cin * kh * kw` rows by `block` columns) stays in L2 instead of materialising the full
//! im2col matrix (150 MiB for a 64-channel 3x3 layer at 256x256, which candle allocates).

use candle_core::Result;
use gemm::Parallelism;
use rayon::prelude::*;

use super::activation::{bias_act, bias_gated, Activation};
use super::gemm::{matmul, MatRef};
use super::{Geom, SharedOut};

/// Output pixels per block: enough columns for the GEMM to run at full speed while the packed
/// block (`k * block` floats) stays around 512 KiB.
pub fn block_len(g: &Geom) -> usize {
    let k = g.cin * g.kh * g.kw;
    let p = g.ho * g.wo;
    (128 * 1024 / k.max(1)).clamp(64, 2048).min(p.max(1))
}

/// For kernel offset `off` (already multiplied by dilation, minus padding), the output columns
/// `ox` whose input column `ox * stride + off` lies inside `0..len`, clipped to `lo..hi`.
fn valid_range(lo: usize, hi: usize, off: isize, stride: usize, len: usize) -> (usize, usize) {
    let s = stride as isize;
    // First ox with ox * s + off >= 0.
    let first = if off >= 0 { 0 } else { (-off + s - 1) / s };
    // Last ox with ox * s + off <= len - 1, exclusive bound.
    let last = if (len as isize - 1 - off) < 0 {
        0
    } else {
        (len as isize - 1 - off) / s + 1
    };
    let a = first.clamp(lo as isize, hi as isize);
    let b = last.clamp(a, hi as isize);
    (a as usize, b as usize)
}

/// Fills `col` (`[cin * kh * kw, p1 - p0]`, row-major) with the input patches of output pixels
/// `p0..p1` of one image `x` (`[cin, h, w]`).
pub fn pack(g: &Geom, x: &[f32], p0: usize, p1: usize, col: &mut [f32]) {
    let np = p1 - p0;
    let (h, w, s) = (g.h, g.w, g.stride);
    let mut row = 0;
    for ci in 0..g.cin {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let dst = &mut col[row * np..(row + 1) * np];
                row += 1;
                let offy = (ky * g.dilation) as isize - g.pad as isize;
                let offx = (kx * g.dilation) as isize - g.pad as isize;
                let mut p = p0;
                while p < p1 {
                    let oy = p / g.wo;
                    let ox0 = p % g.wo;
                    let ox1 = g.wo.min(ox0 + (p1 - p));
                    let seg = &mut dst[p - p0..p - p0 + (ox1 - ox0)];
                    let iy = (oy * s) as isize + offy;
                    if iy < 0 || iy >= h as isize {
                        seg.fill(0.0);
                    } else {
                        let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                        let (a, b) = valid_range(ox0, ox1, offx, s, w);
                        seg[..a - ox0].fill(0.0);
                        seg[b - ox0..].fill(0.0);
                        if b == a {
                            p += ox1 - ox0;
                            continue;
                        }
                        let start = (a * s) as isize + offx;
                        let inner = &mut seg[a - ox0..b - ox0];
                        if s == 1 {
                            let st = start as usize;
                            inner.copy_from_slice(&src[st..st + inner.len()]);
                        } else {
                            for (i, d) in inner.iter_mut().enumerate() {
                                *d = src[start as usize + i * s];
                            }
                        }
                    }
                    p += ox1 - ox0;
                }
            }
        }
    }
}

/// The adjoint of [`pack`]: adds `col` (`[cin * kh * kw, p1 - p0]`) back into the input
/// gradient `dx` (`[cin, h, w]`) of one image.
pub fn unpack_add(g: &Geom, col: &[f32], p0: usize, p1: usize, dx: &mut [f32]) {
    let np = p1 - p0;
    let (h, w, s) = (g.h, g.w, g.stride);
    let mut row = 0;
    for ci in 0..g.cin {
        let plane = &mut dx[ci * h * w..(ci + 1) * h * w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let src = &col[row * np..(row + 1) * np];
                row += 1;
                let offy = (ky * g.dilation) as isize - g.pad as isize;
                let offx = (kx * g.dilation) as isize - g.pad as isize;
                let mut p = p0;
                while p < p1 {
                    let oy = p / g.wo;
                    let ox0 = p % g.wo;
                    let ox1 = g.wo.min(ox0 + (p1 - p));
                    let iy = (oy * s) as isize + offy;
                    if iy >= 0 && iy < h as isize {
                        let dst = &mut plane[iy as usize * w..(iy as usize + 1) * w];
                        let (a, b) = valid_range(ox0, ox1, offx, s, w);
                        if b == a {
                            p += ox1 - ox0;
                            continue;
                        }
                        let start = (a * s) as isize + offx;
                        let seg = &src[p - p0 + (a - ox0)..p - p0 + (b - ox0)];
                        if s == 1 {
                            let st = start as usize;
                            for (d, v) in dst[st..st + seg.len()].iter_mut().zip(seg) {
                                *d += v;
                            }
                        } else {
                            for (i, v) in seg.iter().enumerate() {
                                dst[start as usize + i * s] += v;
                            }
                        }
                    }
                    p += ox1 - ox0;
                }
            }
        }
    }
}

/// Per-worker scratch for the forward pass.
struct Scratch {
    col: Vec<f32>,
    acc: Vec<f32>,
}

/// Convolution by blocked im2col + GEMM: for each block of output pixels of each image, pack
/// the patches, multiply by the `[cout, cin * kh * kw]` weight matrix, then add bias and apply the
/// activation while writing the block into the NCHW output.
pub fn forward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
) -> Result<()> {
    let k = g.cin * g.kh * g.kw;
    let p = g.ho * g.wo;
    let blk = block_len(g);
    let nblk = p.div_ceil(blk);
    let out_c = if act == Activation::GatedEluSigmoid {
        g.cout / 2
    } else {
        g.cout
    };
    let shared = SharedOut::new(out);
    let wm = MatRef::row_major(w, g.cout, k);
    let tasks: Vec<(usize, usize)> = (0..g.n)
        .flat_map(|b| (0..nblk).map(move |i| (b, i)))
        .collect();
    tasks.par_iter().try_for_each_init(
        || Scratch {
            col: vec![0.0; k * blk],
            acc: vec![0.0; g.cout * blk],
        },
        |s, &(b, i)| -> Result<()> {
            let p0 = i * blk;
            let p1 = (p0 + blk).min(p);
            let np = p1 - p0;
            let xb = &x[b * g.cin * g.h * g.w..(b + 1) * g.cin * g.h * g.w];
            pack(g, xb, p0, p1, &mut s.col[..k * np]);
            let cm = MatRef::row_major(&s.col[..k * np], k, np);
            matmul(
                &mut s.acc[..g.cout * np],
                np,
                wm,
                cm,
                false,
                Parallelism::None,
            )?;
            for co in 0..out_c {
                let off = (b * out_c + co) * p + p0;
                // SAFETY: task (b, i) alone writes pixels p0..p1 of image b's channels.
                let dst = unsafe { shared.slice(off, np)? };
                let a = &s.acc[co * np..(co + 1) * np];
                let bo = bias.map_or(0.0, |bv| bv[co]);
                if act == Activation::GatedEluSigmoid {
                    let cg = co + out_c;
                    let gate = &s.acc[cg * np..(cg + 1) * np];
                    bias_gated(dst, a, gate, bo, bias.map_or(0.0, |bv| bv[cg]));
                } else {
                    bias_act(dst, a, bo, act);
                }
            }
            Ok(())
        },
    )
}
