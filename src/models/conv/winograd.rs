//! Winograd F(2x2, 3x3) for 3x3, stride-1, undilated convolutions.
//!
//! Each 2x2 output tile is computed from a 4x4 input tile with 16 multiplies per channel pair
//! instead of 36, so the matrix products (which dominate) shrink 2.25x. Tiles are processed in
//! segments (runs of tiles in raster order, possibly spanning tile rows) small enough that the
//! transformed input `V` and the products `M` stay near L2; the output transform then writes
//! bias + activation straight into the NCHW output, so nothing larger than one segment ever goes
//! through memory twice.

use candle_core::Result;
use gemm::Parallelism;
use rayon::prelude::*;

use super::activation::{bias_act, bias_gated, Activation};
use super::gemm::{matmul, MatRef};
use super::simd::dispatch;
use super::{Geom, SharedOut};

/// Tiles per segment: as many as keep `V` + `M` near 1.5 MiB (L2 plus a little), at least 32
/// so the 16 GEMMs per segment stay wide enough to run at full speed.
fn segment_len(g: &Geom) -> usize {
    let per_tile = 16 * (g.cin + g.cout) * 4;
    (1536 * 1024 / per_tile).clamp(32, 128)
}

/// A segment is a run of `nt` tiles from linear tile index `t0` (raster order over a `tw`-wide
/// tile grid); this splits it at tile-row ends into `(ty, tx, offset in segment, len)` pieces.
fn pieces(t0: usize, nt: usize, tw: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let mut t = t0;
    std::iter::from_fn(move || {
        if t >= t0 + nt {
            return None;
        }
        let (ty, tx) = (t / tw, t % tw);
        let len = (tw - tx).min(t0 + nt - t);
        let piece = (ty, tx, t - t0, len);
        t += len;
        Some(piece)
    })
}

/// `U[e][co][ci] = (G w G^T)[e]` for every filter: `[16, cout, cin]`.
fn transform_weights(g: &Geom, w: &[f32]) -> Vec<f32> {
    let (cout, cin) = (g.cout, g.cin);
    let mut u = vec![0f32; 16 * cout * cin];
    for co in 0..cout {
        for ci in 0..cin {
            let k = &w[(co * cin + ci) * 9..(co * cin + ci) * 9 + 9];
            // G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]; first G k (4x3) ...
            let mut gk = [[0f32; 3]; 4];
            for c in 0..3 {
                let (k0, k1, k2) = (k[c], k[3 + c], k[6 + c]);
                gk[0][c] = k0;
                gk[1][c] = 0.5 * (k0 + k1 + k2);
                gk[2][c] = 0.5 * (k0 - k1 + k2);
                gk[3][c] = k2;
            }
            // ... then (G k) G^T (4x4).
            for (r, row) in gk.iter().enumerate() {
                let t = [
                    row[0],
                    0.5 * (row[0] + row[1] + row[2]),
                    0.5 * (row[0] - row[1] + row[2]),
                    row[2],
                ];
                for (c, v) in t.iter().enumerate() {
                    u[((r * 4 + c) * cout + co) * cin + ci] = *v;
                }
            }
        }
    }
    u
}

/// `dst = a - b` element-wise (written as zips so that it vectorises without bounds checks).
#[inline(always)]
fn sub(dst: &mut [f32], a: &[f32], b: &[f32]) {
    for ((d, x), y) in dst.iter_mut().zip(a).zip(b) {
        *d = x - y;
    }
}

/// `dst = a + b` element-wise.
#[inline(always)]
fn add(dst: &mut [f32], a: &[f32], b: &[f32]) {
    for ((d, x), y) in dst.iter_mut().zip(a).zip(b) {
        *d = x + y;
    }
}

dispatch! {
    /// Input transform `B^T d B` of one channel's tile segment. `rows` are the 4 input rows of
    /// the segment, zero-padded, each at least `2n + 2` wide; `h` is scratch of `24 n + 8`
    /// floats. Writes `v[e * vstride + t]` for tile `t`.
    fn input_transform(rows: [&[f32]; 4], n: usize, h: &mut [f32], v: &mut [f32], vstride: usize) {
        let wid = 2 * n + 2;
        // Split the even and odd columns of every row: tile t then reads e[t], o[t], e[t+1],
        // o[t+1], all unit-stride.
        let (eo, hh) = h.split_at_mut(8 * (n + 1));
        for (r, row) in rows.iter().enumerate() {
            let (e, o) = eo[2 * r * (n + 1)..2 * (r + 1) * (n + 1)].split_at_mut(n + 1);
            for ((pair, e), o) in row[..wid].chunks_exact(2).zip(e).zip(o) {
                *e = pair[0];
                *o = pair[1];
            }
        }
        // Horizontal transform of each row: [d0 - d2, d1 + d2, d2 - d1, d1 - d3].
        for r in 0..4 {
            let (e, o) = eo[2 * r * (n + 1)..2 * (r + 1) * (n + 1)].split_at(n + 1);
            let hr = &mut hh[4 * r * n..4 * (r + 1) * n];
            let (h0, rest) = hr.split_at_mut(n);
            let (h1, rest) = rest.split_at_mut(n);
            let (h2, h3) = rest.split_at_mut(n);
            sub(h0, &e[..n], &e[1..]);
            add(h1, &o[..n], &e[1..]);
            sub(h2, &e[1..], &o[..n]);
            sub(h3, &o[..n], &o[1..]);
        }
        // Vertical transform: rows [h0 - h2, h1 + h2, h2 - h1, h1 - h3] per column c.
        for c in 0..4 {
            let hc = |r: usize| &hh[(4 * r + c) * n..(4 * r + c + 1) * n];
            sub(&mut v[c * vstride..c * vstride + n], hc(0), hc(2));
            add(&mut v[(4 + c) * vstride..(4 + c) * vstride + n], hc(1), hc(2));
            sub(&mut v[(8 + c) * vstride..(8 + c) * vstride + n], hc(2), hc(1));
            sub(&mut v[(12 + c) * vstride..(12 + c) * vstride + n], hc(1), hc(3));
        }
    }
}

dispatch! {
    /// Output transform `A^T m A` of one output channel's segment: `m[e * mstride + t]` ->
    /// two interleaved output rows `y0[2t + j]`, `y1[2t + j]`. `h` is scratch of `8 n` floats.
    fn output_transform(m: &[f32], mstride: usize, n: usize, h: &mut [f32], y0: &mut [f32], y1: &mut [f32]) {
        let me = |e: usize| &m[e * mstride..e * mstride + n];
        let (s, r) = h[..8 * n].split_at_mut(4 * n);
        // Rows: s_j = m0j + m1j + m2j, r_j = m1j - m2j - m3j.
        for j in 0..4 {
            let sj = &mut s[j * n..(j + 1) * n];
            for (((d, a), b), c) in sj.iter_mut().zip(me(j)).zip(me(4 + j)).zip(me(8 + j)) {
                *d = a + b + c;
            }
            let rj = &mut r[j * n..(j + 1) * n];
            for (((d, a), b), c) in rj.iter_mut().zip(me(4 + j)).zip(me(8 + j)).zip(me(12 + j)) {
                *d = a - b - c;
            }
        }
        // Columns, interleaved into the two output rows of each tile.
        for (src, y) in [(&*s, &mut *y0), (&*r, &mut *y1)] {
            let (c0, rest) = src.split_at(n);
            let (c1, rest) = rest.split_at(n);
            let (c2, c3) = rest.split_at(n);
            for ((((pair, a), b), c), d) in y.chunks_exact_mut(2).zip(c0).zip(c1).zip(c2).zip(c3) {
                pair[0] = a + b + c;
                pair[1] = b - c - d;
            }
        }
    }
}

/// Per-worker scratch buffers, reused across segments.
struct Scratch {
    rows: Vec<f32>,
    zeros: Vec<f32>,
    h: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
    y: Vec<f32>,
}

/// Input transform of the segment of `nt` tiles starting at linear tile `t0` of image `xb`,
/// every channel: fills `s.v` as `[16, cin, nt]`.
fn transform_segment(g: &Geom, xb: &[f32], t0: usize, nt: usize, s: &mut Scratch) {
    let (h, wd, pad) = (g.h, g.w, g.pad as isize);
    let tw = g.wo.div_ceil(2);
    for (ty, tx0, off, len) in pieces(t0, nt, tw) {
        let x0 = 2 * tx0 as isize - pad;
        let wid = 2 * len + 2;
        // Columns of the padded piece that exist in the input.
        let c0 = (-x0).clamp(0, wid as isize) as usize;
        let c1 = (wd as isize - x0).clamp(c0 as isize, wid as isize) as usize;
        let Scratch {
            rows,
            h: hbuf,
            v,
            zeros,
            ..
        } = &mut *s;
        for ci in 0..g.cin {
            let plane = &xb[ci * h * wd..(ci + 1) * h * wd];
            // Rows inside the image are read in place; only rows that need zero columns at the
            // image edge are copied into a padded buffer, and rows above or below the image
            // read a shared zero row.
            let mut src_of = [None; 4];
            for (r, src_r) in src_of.iter_mut().enumerate() {
                let iy = 2 * ty as isize - pad + r as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let src = &plane[iy as usize * wd..(iy as usize + 1) * wd];
                if c0 == 0 && c1 == wid {
                    *src_r = Some(&src[x0 as usize..x0 as usize + wid]);
                } else {
                    let dst = &mut rows[r * wid..(r + 1) * wid];
                    dst[..c0].fill(0.0);
                    dst[c1..].fill(0.0);
                    let s0 = (x0 + c0 as isize) as usize;
                    dst[c0..c1].copy_from_slice(&src[s0..s0 + (c1 - c0)]);
                }
            }
            let pick = |r: usize| -> &[f32] {
                let iy = 2 * ty as isize - pad + r as isize;
                match src_of[r] {
                    Some(src) => src,
                    None if iy < 0 || iy >= h as isize => &zeros[..wid],
                    None => &rows[r * wid..(r + 1) * wid],
                }
            };
            let vv = &mut v[ci * nt + off..];
            input_transform(
                [pick(0), pick(1), pick(2), pick(3)],
                len,
                hbuf,
                vv,
                g.cin * nt,
            );
        }
    }
}

impl Scratch {
    fn new(g: &Geom, seg: usize) -> Self {
        Self {
            rows: vec![0.0; 4 * (2 * seg + 2)],
            zeros: vec![0.0; 2 * seg + 2],
            h: vec![0.0; 24 * seg + 12 * seg + 8],
            v: vec![0.0; 16 * g.cin * seg],
            m: vec![0.0; 16 * g.cout * seg],
            y: vec![0.0; 8 * seg],
        }
    }
}

/// Runs the convolution described by `g` (which must be 3x3, stride 1, dilation 1) on `x`,
/// writing `out` (`[n, cout or cout / 2 when gated, ho, wo]`).
pub fn forward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
) -> Result<()> {
    if g.kh != 3 || g.kw != 3 || g.stride != 1 || g.dilation != 1 {
        candle_core::bail!("winograd F(2x2,3x3) needs a 3x3 stride-1 undilated kernel");
    }
    let u = transform_weights(g, w);
    let (th, tw) = (g.ho.div_ceil(2), g.wo.div_ceil(2));
    let seg = segment_len(g);
    let nseg = (th * tw).div_ceil(seg);
    let out_c = if act == Activation::GatedEluSigmoid {
        g.cout / 2
    } else {
        g.cout
    };
    let shared = SharedOut::new(out);
    let tasks: Vec<(usize, usize)> = (0..g.n)
        .flat_map(|b| (0..nseg).map(move |s| (b, s)))
        .collect();
    let (cin, cout, h, wd, ho, wo) = (g.cin, g.cout, g.h, g.w, g.ho, g.wo);
    tasks.par_iter().try_for_each_init(
        || Scratch::new(g, seg),
        |s, &(b, si)| -> Result<()> {
            let t0 = si * seg;
            let nt = seg.min(th * tw - t0);
            let xb = &x[b * cin * h * wd..(b + 1) * cin * h * wd];
            transform_segment(g, xb, t0, nt, s);
            // 16 independent products M_e = U_e V_e.
            for e in 0..16 {
                let ue = MatRef::row_major(&u[e * cout * cin..(e + 1) * cout * cin], cout, cin);
                let ve = MatRef::row_major(&s.v[e * cin * nt..(e + 1) * cin * nt], cin, nt);
                let me = &mut s.m[e * cout * nt..(e + 1) * cout * nt];
                matmul(me, nt, ue, ve, false, Parallelism::None)?;
            }
            // Output transform, bias and activation straight into the output rows.
            let mstride = cout * nt;
            let (ya, yg) = s.y.split_at_mut(4 * seg);
            let (y0, y1) = ya.split_at_mut(2 * seg);
            let (gy0, gy1) = yg.split_at_mut(2 * seg);
            for (ty, tx0, off, len) in pieces(t0, nt, tw) {
                let (oy, ox) = (2 * ty, 2 * tx0);
                let width = (2 * len).min(wo - ox);
                let rows = if oy + 1 < ho { 2 } else { 1 };
                for co in 0..out_c {
                    let m = &s.m[co * nt + off..];
                    output_transform(m, mstride, len, &mut s.h, y0, y1);
                    let bo = bias.map_or(0.0, |bv| bv[co]);
                    if act == Activation::GatedEluSigmoid {
                        let cg = co + out_c;
                        let bg = bias.map_or(0.0, |bv| bv[cg]);
                        let m = &s.m[cg * nt + off..];
                        output_transform(m, mstride, len, &mut s.h, gy0, gy1);
                        for (r, (ra, rg)) in [(&*y0, &*gy0), (&*y1, &*gy1)]
                            .into_iter()
                            .enumerate()
                            .take(rows)
                        {
                            let at = ((b * out_c + co) * ho + oy + r) * wo + ox;
                            // SAFETY: each task owns the output pixels of its own tiles (a
                            // disjoint tile range of image b), in every channel; no two tasks
                            // share such a range.
                            let dst = unsafe { shared.slice(at, width)? };
                            bias_gated(dst, &ra[..width], &rg[..width], bo, bg);
                        }
                    } else {
                        for (r, ra) in [&*y0, &*y1].into_iter().enumerate().take(rows) {
                            let at = ((b * out_c + co) * ho + oy + r) * wo + ox;
                            // SAFETY: as above, the pixels of this task's tiles are its own.
                            let dst = unsafe { shared.slice(at, width)? };
                            bias_act(dst, &ra[..width], bo, act);
                        }
                    }
                }
            }
            Ok(())
        },
    )
}

dispatch! {
    /// Adjoint of the output transform for one output channel's segment: from the two output
    /// gradient rows (`dy0`, `dy1`, `2n` wide, zero past the image) to `dm[e * mstride + t] =
    /// (A dY A^T)[e]`. `h` is scratch of `12 n` floats.
    fn output_transform_adjoint(dy0: &[f32], dy1: &[f32], n: usize, h: &mut [f32], dm: &mut [f32], mstride: usize) {
        // Split even and odd columns: y[r][b][t] = dY of tile t at row r, column b.
        let (y, tt) = h[..12 * n].split_at_mut(4 * n);
        for (r, src) in [dy0, dy1].into_iter().enumerate() {
            let (e, o) = y[2 * r * n..2 * (r + 1) * n].split_at_mut(n);
            for ((pair, e), o) in src.chunks_exact(2).zip(e.iter_mut()).zip(o.iter_mut()) {
                *e = pair[0];
                *o = pair[1];
            }
        }
        // Along rows: t[i][b] = [dY0b, dY0b + dY1b, dY0b - dY1b, -dY1b].
        for b in 0..2 {
            let (y0, y1) = (&y[b * n..(b + 1) * n], &y[(2 + b) * n..(3 + b) * n]);
            let t = |i: usize| (2 * i + b) * n..(2 * i + b + 1) * n;
            tt[t(0)].copy_from_slice(y0);
            add(&mut tt[t(1)], y0, y1);
            sub(&mut tt[t(2)], y0, y1);
            for (d, v) in tt[t(3)].iter_mut().zip(y1) {
                *d = -v;
            }
        }
        // Along columns: dM[i] = [t_i0, t_i0 + t_i1, t_i0 - t_i1, -t_i1].
        for i in 0..4 {
            let (t0, t1) = (&tt[2 * i * n..(2 * i + 1) * n], &tt[(2 * i + 1) * n..(2 * i + 2) * n]);
            let row = |j: usize| (4 * i + j) * mstride..(4 * i + j) * mstride + n;
            dm[row(0)].copy_from_slice(t0);
            add(&mut dm[row(1)], t0, t1);
            sub(&mut dm[row(2)], t0, t1);
            for (d, v) in dm[row(3)].iter_mut().zip(t1) {
                *d = -v;
            }
        }
    }
}

/// `dL/dw` for a layer on the Winograd path, computed in the Winograd domain:
/// `dU_e = sum over tiles of dM_e V_e^T` (16 GEMMs 2.25x smaller than the im2col ones), then
/// `dw = G^T dU G` per filter. `dy` is the gradient of the pre-activation output.
pub fn weight_grad(g: &Geom, x: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
    if g.kh != 3 || g.kw != 3 || g.stride != 1 || g.dilation != 1 {
        candle_core::bail!("winograd F(2x2,3x3) needs a 3x3 stride-1 undilated kernel");
    }
    let (th, tw) = (g.ho.div_ceil(2), g.wo.div_ceil(2));
    let seg = segment_len(g);
    let nseg = (th * tw).div_ceil(seg);
    let (cin, cout, ho, wo) = (g.cin, g.cout, g.ho, g.wo);
    let tasks: Vec<(usize, usize)> = (0..g.n)
        .flat_map(|b| (0..nseg).map(move |s| (b, s)))
        .collect();
    let zero = || {
        (
            Scratch::new(g, seg),
            vec![0f32; 4 * seg],
            vec![0f32; 16 * cout * cin],
        )
    };
    let (_, _, du) = tasks
        .par_iter()
        .try_fold(zero, |(mut s, mut rows, mut acc), &(b, si)| -> Result<_> {
            let t0 = si * seg;
            let nt = seg.min(th * tw - t0);
            let xb = &x[b * cin * g.h * g.w..(b + 1) * cin * g.h * g.w];
            transform_segment(g, xb, t0, nt, &mut s);
            // dM for every output channel from the output-gradient rows of each piece.
            let mstride = cout * nt;
            for (ty, tx0, off, len) in pieces(t0, nt, tw) {
                let (oy, ox) = (2 * ty, 2 * tx0);
                let width = (2 * len).min(wo - ox);
                for co in 0..cout {
                    let (r0, r1) = rows[..4 * len].split_at_mut(2 * len);
                    for (r, dst) in [r0, r1].into_iter().enumerate() {
                        dst.fill(0.0);
                        if oy + r < ho {
                            let at = ((b * cout + co) * ho + oy + r) * wo + ox;
                            dst[..width].copy_from_slice(&dy[at..at + width]);
                        }
                    }
                    let (r0, r1) = rows[..4 * len].split_at(2 * len);
                    let dm = &mut s.m[co * nt + off..];
                    output_transform_adjoint(r0, r1, len, &mut s.h, dm, mstride);
                }
            }
            for e in 0..16 {
                let dme = MatRef::row_major(&s.m[e * cout * nt..(e + 1) * cout * nt], cout, nt);
                let vt = MatRef::row_major(&s.v[e * cin * nt..(e + 1) * cin * nt], cin, nt).t();
                let acc_e = &mut acc[e * cout * cin..(e + 1) * cout * cin];
                matmul(acc_e, cin, dme, vt, true, Parallelism::None)?;
            }
            Ok((s, rows, acc))
        })
        .try_reduce(zero, |(s, r, mut a), (_, _, b)| {
            for (x, y) in a.iter_mut().zip(&b) {
                *x += y;
            }
            Ok((s, r, a))
        })?;
    // dw = G^T dU G for each filter.
    let mut dw = vec![0f32; cout * cin * 9];
    for co in 0..cout {
        for ci in 0..cin {
            let at = |i: usize, j: usize| du[((i * 4 + j) * cout + co) * cin + ci];
            let mut sm = [[0f32; 3]; 4];
            for (i, row) in sm.iter_mut().enumerate() {
                row[0] = at(i, 0) + 0.5 * (at(i, 1) + at(i, 2));
                row[1] = 0.5 * (at(i, 1) - at(i, 2));
                row[2] = 0.5 * (at(i, 1) + at(i, 2)) + at(i, 3);
            }
            let k = &mut dw[(co * cin + ci) * 9..(co * cin + ci + 1) * 9];
            for l in 0..3 {
                k[l] = sm[0][l] + 0.5 * (sm[1][l] + sm[2][l]);
                k[3 + l] = 0.5 * (sm[1][l] - sm[2][l]);
                k[6 + l] = 0.5 * (sm[1][l] + sm[2][l]) + sm[3][l];
            }
        }
    }
    Ok(dw)
}
