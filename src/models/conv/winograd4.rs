//! Winograd F(4x4, 3x3) for the forward pass of wide 3x3, stride-1, undilated layers.
//!
//! Each 4x4 output tile comes from a 6x6 input tile with 36 multiplies per channel pair instead
//! of 144, so the matrix products shrink 4x (against 2.25x for F(2x2, 3x3)), and the transformed
//! input is 2.25 floats per pixel instead of 4, which also cuts memory traffic. The price is a
//! larger transform and a somewhat larger rounding error (still ~1e-6 relative in f32 for our
//! layer sizes, checked by the tests). The structure mirrors [`super::winograd`]: segments of
//! tiles near L2 size, 36 GEMMs per segment, bias and activation fused into the output pass.

use candle_core::Result;
use gemm::Parallelism;
use rayon::prelude::*;

use super::activation::{bias_act, bias_gated, Activation};
use super::gemm::{matmul, MatRef};
use super::simd::dispatch;
use super::{Geom, SharedOut};

/// Tiles per segment: `V` + `M` near 1.5 MiB, and at least 16 tiles so the GEMMs stay wide.
fn segment_len(g: &Geom) -> usize {
    let per_tile = 36 * (g.cin + g.cout) * 4;
    (1536 * 1024 / per_tile).clamp(16, 64)
}

/// `n`-long slices of `buf` at `first`, `first + step`, ... (6 of them, `step >= n`).
#[inline(always)]
fn six_mut(buf: &mut [f32], first: usize, step: usize, n: usize) -> [&mut [f32]; 6] {
    let (_, rest) = buf.split_at_mut(first);
    let (a, rest) = rest.split_at_mut(step);
    let (b, rest) = rest.split_at_mut(step);
    let (c, rest) = rest.split_at_mut(step);
    let (d, rest) = rest.split_at_mut(step);
    let (e, f) = rest.split_at_mut(step);
    [
        &mut a[..n],
        &mut b[..n],
        &mut c[..n],
        &mut d[..n],
        &mut e[..n],
        &mut f[..n],
    ]
}

/// `o = B^T d` for 6-point columns: the input transform along one axis.
#[inline(always)]
fn bt6(d: [&[f32]; 6], o: [&mut [f32]; 6], n: usize) {
    let [d0, d1, d2, d3, d4, d5] = d.map(|s| &s[..n]);
    let [o0, o1, o2, o3, o4, o5] = o;
    let (o0, o1, o2, o3, o4, o5) = (
        &mut o0[..n],
        &mut o1[..n],
        &mut o2[..n],
        &mut o3[..n],
        &mut o4[..n],
        &mut o5[..n],
    );
    for t in 0..n {
        let (a, b, c, e, f, g) = (d0[t], d1[t], d2[t], d3[t], d4[t], d5[t]);
        o0[t] = 4.0 * a - 5.0 * c + f;
        o1[t] = -4.0 * (b + c) + e + f;
        o2[t] = 4.0 * (b - c) - e + f;
        o3[t] = 2.0 * (e - b) - c + f;
        o4[t] = 2.0 * (b - e) - c + f;
        o5[t] = 4.0 * b - 5.0 * e + g;
    }
}

/// `o = A^T m` for 6-point columns: the output transform along one axis (4 results).
#[inline(always)]
fn at6(m: [&[f32]; 6], o: [&mut [f32]; 4], n: usize) {
    let [m0, m1, m2, m3, m4, m5] = m.map(|s| &s[..n]);
    let [o0, o1, o2, o3] = o;
    let (o0, o1, o2, o3) = (&mut o0[..n], &mut o1[..n], &mut o2[..n], &mut o3[..n]);
    for t in 0..n {
        let (a, b, c, d, e, f) = (m0[t], m1[t], m2[t], m3[t], m4[t], m5[t]);
        let (p1, m1_) = (b + c, b - c);
        let (p2, m2_) = (d + e, d - e);
        o0[t] = a + p1 + p2;
        o1[t] = m1_ + 2.0 * m2_;
        o2[t] = p1 + 4.0 * p2;
        o3[t] = m1_ + 8.0 * m2_ + f;
    }
}

/// `U[e][co][ci] = (G w G^T)[e]` for every filter: `[36, cout, cin]`.
fn transform_weights(g: &Geom, w: &[f32]) -> Vec<f32> {
    let (cout, cin) = (g.cout, g.cin);
    let mut u = vec![0f32; 36 * cout * cin];
    // G applied to a 3-vector k.
    let gv = |k0: f32, k1: f32, k2: f32| {
        [
            k0 / 4.0,
            -(k0 + k1 + k2) / 6.0,
            -(k0 - k1 + k2) / 6.0,
            k0 / 24.0 + k1 / 12.0 + k2 / 6.0,
            k0 / 24.0 - k1 / 12.0 + k2 / 6.0,
            k2,
        ]
    };
    for co in 0..cout {
        for ci in 0..cin {
            let k = &w[(co * cin + ci) * 9..(co * cin + ci) * 9 + 9];
            // G k: 6x3, column by column.
            let cols = [
                gv(k[0], k[3], k[6]),
                gv(k[1], k[4], k[7]),
                gv(k[2], k[5], k[8]),
            ];
            for r in 0..6 {
                let row = gv(cols[0][r], cols[1][r], cols[2][r]);
                for (c, v) in row.iter().enumerate() {
                    u[((r * 6 + c) * cout + co) * cin + ci] = *v;
                }
            }
        }
    }
    u
}

dispatch! {
    /// Input transform `B^T d B` of one channel's piece of `n` tiles. `rows` are the 6 input rows,
    /// zero-padded, each at least `4n + 4` wide; `h` is scratch of `60 n + 24` floats. Writes
    /// `v[e * vstride + t]` for tile `t`.
    fn input_transform(rows: [&[f32]; 6], n: usize, h: &mut [f32], v: &mut [f32], vstride: usize) {
        let (ph, hh) = h.split_at_mut(24 * (n + 1));
        for (r, row) in rows.iter().enumerate() {
            // The four column phases: tile t reads phases 0..4 at t and phases 0, 1 at t + 1.
            let p = &mut ph[4 * r * (n + 1)..4 * (r + 1) * (n + 1)];
            let (p0, rest) = p.split_at_mut(n + 1);
            let (p1, rest) = rest.split_at_mut(n + 1);
            let (p2, p3) = rest.split_at_mut(n + 1);
            for ((((q, a), b), c), d) in row[..4 * (n + 1)]
                .chunks_exact(4)
                .zip(p0.iter_mut())
                .zip(p1.iter_mut())
                .zip(p2.iter_mut())
                .zip(p3.iter_mut())
            {
                *a = q[0];
                *b = q[1];
                *c = q[2];
                *d = q[3];
            }
            let p = &ph[4 * r * (n + 1)..4 * (r + 1) * (n + 1)];
            let (p0, rest) = p.split_at(n + 1);
            let (p1, rest) = rest.split_at(n + 1);
            let (p2, p3) = rest.split_at(n + 1);
            bt6([p0, p1, p2, p3, &p0[1..], &p1[1..]], six_mut(hh, 6 * r * n, n, n), n);
        }
        // Vertical: for each column c, rows h[0..6][c] -> v[(6 i + c)].
        for c in 0..6 {
            let hc = |r: usize| &hh[(6 * r + c) * n..(6 * r + c + 1) * n];
            let src = [hc(0), hc(1), hc(2), hc(3), hc(4), hc(5)];
            bt6(src, six_mut(v, c * vstride, 6 * vstride, n), n);
        }
    }
}

dispatch! {
    /// Output transform `A^T m A` of one output channel's piece: `m[e * mstride + t]` -> four
    /// interleaved output rows `y[k * ystride + 4t + l]`. `h` is scratch of `48 n` floats.
    fn output_transform(m: &[f32], mstride: usize, n: usize, h: &mut [f32], y: &mut [f32], ystride: usize) {
        let (s, cols) = h[..48 * n].split_at_mut(24 * n);
        // Along rows: s[k][j] = sum_i A^T[k][i] m[i][j].
        for j in 0..6 {
            let mi = |i: usize| &m[(6 * i + j) * mstride..(6 * i + j) * mstride + n];
            let src = [mi(0), mi(1), mi(2), mi(3), mi(4), mi(5)];
            let (a, rest) = s[j * 4 * n..(j + 1) * 4 * n].split_at_mut(n);
            let (b, rest) = rest.split_at_mut(n);
            let (c, d) = rest.split_at_mut(n);
            at6(src, [a, b, c, d], n);
        }
        // Along columns, for each output row k, then interleave the 4 columns of each tile.
        for k in 0..4 {
            let sj = |j: usize| &s[(j * 4 + k) * n..(j * 4 + k + 1) * n];
            let src = [sj(0), sj(1), sj(2), sj(3), sj(4), sj(5)];
            let (a, rest) = cols[..4 * n].split_at_mut(n);
            let (b, rest) = rest.split_at_mut(n);
            let (c, d) = rest.split_at_mut(n);
            at6(src, [a, b, c, d], n);
            let (a, rest) = cols[..4 * n].split_at(n);
            let (b, rest) = rest.split_at(n);
            let (c, d) = rest.split_at(n);
            let out = &mut y[k * ystride..k * ystride + 4 * n];
            for ((((q, a), b), c), d) in out.chunks_exact_mut(4).zip(a).zip(b).zip(c).zip(d) {
                q[0] = *a;
                q[1] = *b;
                q[2] = *c;
                q[3] = *d;
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

impl Scratch {
    fn new(g: &Geom, seg: usize) -> Self {
        Self {
            rows: vec![0.0; 6 * (4 * seg + 4)],
            zeros: vec![0.0; 4 * seg + 4],
            h: vec![0.0; 60 * seg + 24],
            v: vec![0.0; 36 * g.cin * seg],
            m: vec![0.0; 36 * g.cout * seg],
            y: vec![0.0; 32 * seg],
        }
    }
}

/// A run of tiles split at tile-row ends into `(ty, tx, offset in segment, len)` pieces.
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

/// Input transform of the `nt` tiles from linear tile `t0` of image `xb`: fills `s.v` as
/// `[36, cin, nt]`.
fn transform_segment(g: &Geom, xb: &[f32], t0: usize, nt: usize, s: &mut Scratch) {
    let (h, wd, pad) = (g.h, g.w, g.pad as isize);
    let tw = g.wo.div_ceil(4);
    let Scratch {
        rows,
        zeros,
        h: hbuf,
        v,
        ..
    } = s;
    for (ty, tx0, off, len) in pieces(t0, nt, tw) {
        let x0 = 4 * tx0 as isize - pad;
        let wid = 4 * len + 4;
        let c0 = (-x0).clamp(0, wid as isize) as usize;
        let c1 = (wd as isize - x0).clamp(c0 as isize, wid as isize) as usize;
        for ci in 0..g.cin {
            let plane = &xb[ci * h * wd..(ci + 1) * h * wd];
            // In-image rows are read in place; edge rows are zero-padded copies.
            let mut direct = [None; 6];
            for (r, slot) in direct.iter_mut().enumerate() {
                let iy = 4 * ty as isize - pad + r as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let src = &plane[iy as usize * wd..(iy as usize + 1) * wd];
                if c0 == 0 && c1 == wid {
                    *slot = Some(&src[x0 as usize..x0 as usize + wid]);
                } else {
                    let dst = &mut rows[r * wid..(r + 1) * wid];
                    dst[..c0].fill(0.0);
                    dst[c1..].fill(0.0);
                    let s0 = (x0 + c0 as isize) as usize;
                    dst[c0..c1].copy_from_slice(&src[s0..s0 + (c1 - c0)]);
                }
            }
            let pick = |r: usize| -> &[f32] {
                let iy = 4 * ty as isize - pad + r as isize;
                match direct[r] {
                    Some(src) => src,
                    None if iy < 0 || iy >= h as isize => &zeros[..wid],
                    None => &rows[r * wid..(r + 1) * wid],
                }
            };
            let src = [pick(0), pick(1), pick(2), pick(3), pick(4), pick(5)];
            input_transform(src, len, hbuf, &mut v[ci * nt + off..], g.cin * nt);
        }
    }
}

/// Runs the convolution described by `g` (3x3, stride 1, dilation 1) on `x` with F(4x4, 3x3),
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
        candle_core::bail!("winograd F(4x4,3x3) needs a 3x3 stride-1 undilated kernel");
    }
    let u = transform_weights(g, w);
    let (th, tw) = (g.ho.div_ceil(4), g.wo.div_ceil(4));
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
            for e in 0..36 {
                let ue = MatRef::row_major(&u[e * cout * cin..(e + 1) * cout * cin], cout, cin);
                let ve = MatRef::row_major(&s.v[e * cin * nt..(e + 1) * cin * nt], cin, nt);
                let me = &mut s.m[e * cout * nt..(e + 1) * cout * nt];
                matmul(me, nt, ue, ve, false, Parallelism::None)?;
            }
            let mstride = cout * nt;
            let (ya, yg) = s.y.split_at_mut(16 * seg);
            for (ty, tx0, off, len) in pieces(t0, nt, tw) {
                let (oy, ox) = (4 * ty, 4 * tx0);
                let width = (4 * len).min(wo - ox);
                let rows = (ho - oy).min(4);
                for co in 0..out_c {
                    output_transform(&s.m[co * nt + off..], mstride, len, &mut s.h, ya, 4 * seg);
                    let bo = bias.map_or(0.0, |bv| bv[co]);
                    if act == Activation::GatedEluSigmoid {
                        let cg = co + out_c;
                        let bg = bias.map_or(0.0, |bv| bv[cg]);
                        output_transform(
                            &s.m[cg * nt + off..],
                            mstride,
                            len,
                            &mut s.h,
                            yg,
                            4 * seg,
                        );
                        for r in 0..rows {
                            let at = ((b * out_c + co) * ho + oy + r) * wo + ox;
                            // SAFETY: each task owns the output pixels of its own tiles (a
                            // disjoint tile range of image b) in every channel.
                            let dst = unsafe { shared.slice(at, width)? };
                            let (ra, rg) = (&ya[r * 4 * seg..], &yg[r * 4 * seg..]);
                            bias_gated(dst, &ra[..width], &rg[..width], bo, bg);
                        }
                    } else {
                        for r in 0..rows {
                            let at = ((b * out_c + co) * ho + oy + r) * wo + ox;
                            // SAFETY: as above, the pixels of this task's tiles are its own.
                            let dst = unsafe { shared.slice(at, width)? };
                            bias_act(dst, &ya[r * 4 * seg..r * 4 * seg + width], bo, act);
                        }
                    }
                }
            }
            Ok(())
        },
    )
}
