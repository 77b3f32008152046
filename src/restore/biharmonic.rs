//! Biharmonic ("smoothest surface") inpainting.
//!
//! Every hole is filled with the surface that is as flat as possible in the sense of the thin
//! plate: the discrete solution of `Δ²u = 0` over the hole pixels, with the known pixels around
//! the hole as boundary condition (they fix both the value and, through the second ring, the
//! slope at the rim). It is the classical choice for scratches, dust and small blemishes:
//! smooth, free of the streaks of marching methods, and continuous in gradient at the rim.
//!
//! # Discretisation
//!
//! Let `L` be the 5-point graph Laplacian of the crop: `(Lu)(q) = Σ (u(n) − u(q))` over the
//! 4-neighbours `n` of `q` that lie inside the crop. The fill minimises the discrete bending
//! energy `E(u) = Σ_q (Lu)(q)²` over the hole values, which gives the normal equations
//! `Pᵀ Lᵀ L P x = −Pᵀ Lᵀ L u_known` (`P` injects hole values into the image). Away from the
//! crop border the row of `LᵀL` at a hole pixel is exactly the 13-point biharmonic stencil
//! (20 at the centre, −8 at the 4 axial neighbours, 2 at the diagonals, 1 two steps out), with
//! known pixels moved to the right-hand side.
//!
//! At the crop border, missing neighbours are simply left out of `L` (a reflecting, Neumann
//! boundary: the surface is assumed to have zero slope across the border). We chose this
//! over mirrored 13-point stencils because it keeps the system matrix symmetric positive
//! definite everywhere (it is a Gram matrix `(LP)ᵀ(LP)`, and `LP` has full column rank as soon
//! as one pixel is known), so conjugate gradients and Cholesky apply unchanged. A surface that
//! is constant across the border (for example a ramp running along it) is reproduced exactly.
//!
//! # Regions
//!
//! The equation of a hole pixel touches only pixels within its 13-point stencil (offsets with
//! `|dx| + |dy| ≤ 2`). Holes are therefore grouped into connected components under that
//! adjacency (8-connectivity plus one-pixel gaps along the axes), and each component is solved
//! on its own bounding box grown by two pixels. Per-component solves are then *exactly* the
//! global solve, but cost only as much as the component: a thin scratch or a dust speck is a
//! tiny system. Components are solved in parallel.
//!
//! # Solver
//!
//! The system is symmetric positive definite and the same for every channel, so all channels
//! are solved together (one matrix, up to four right-hand sides, in `f64`):
//!
//! * small components (a few hundred pixels: dust, short scratches) are solved directly with a
//!   dense Cholesky factorisation;
//! * larger ones with conjugate gradients preconditioned by a geometric multigrid V-cycle. The
//!   coarse grids halve the component's box (a coarse pixel is a hole if all four of its fine
//!   pixels are), re-discretise the same operator, and are linked by bilinear interpolation and
//!   its transpose; symmetric Gauss–Seidel smooths and the coarsest grid is solved by Cholesky.
//!   The condition number of the biharmonic operator grows with the fourth power of the hole
//!   width, which makes plain or Jacobi-preconditioned CG need thousands of iterations on large
//!   holes; with the V-cycle the iteration count stays small and roughly independent of size.
//!
//! CG stops when every channel's residual falls below `tolerance` times the norm of its
//! right-hand side. At the default (1e-6) the result is within about 1e-4 of an exact solve;
//! a 50%-coverage irregular mask on a 481x321 photo (one 78 000-pixel region) takes about
//! 30 iterations.
//!
//! Finally each filled sample is clamped to the range of the known pixels its region's
//! stencils touch: the thin plate overshoots next to strong edges, and the clamp removes that
//! ringing without touching smooth fills (and keeps samples in `[0, 1]`).

use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::{check_inputs, checkpoint, ParamSpec, Params, Reporter, RestoreError, Restorer};
use crate::imaging::{ImageF32, Mask, Rect};

/// Biharmonic (thin-plate, smoothest-surface) inpainting; see the module documentation.
pub struct Biharmonic;

/// Marks a pixel that is not an unknown of the system.
const NONE: u32 = u32::MAX;

/// Components with at most this many unknowns are solved by dense Cholesky (and the multigrid
/// hierarchy stops coarsening once a grid is this small). 400 unknowns factor in a few ms.
const DENSE_MAX: usize = 400;

/// Gauss–Seidel sweeps before and after each coarse-grid correction.
const SMOOTH_SWEEPS: usize = 2;

/// How often (in CG iterations) a long solve checks for cancellation.
const CHECK_EVERY: usize = 8;

/// The 12 non-centre offsets of the 13-point biharmonic stencil, i.e. `|dx| + |dy| ≤ 2`.
const STENCIL: [(i32, i32); 12] = [
    (-1, 0),
    (1, 0),
    (0, -1),
    (0, 1),
    (-1, -1),
    (1, -1),
    (-1, 1),
    (1, 1),
    (-2, 0),
    (2, 0),
    (0, -2),
    (0, 2),
];

/// Index of offset `(dx, dy)` in [`STENCIL`] (`None` for the centre).
#[inline]
fn stencil_slot(dx: i32, dy: i32) -> Option<usize> {
    STENCIL.iter().position(|&o| o == (dx, dy))
}

impl Biharmonic {
    fn specs() -> Vec<ParamSpec> {
        vec![
            ParamSpec {
                name: "tolerance",
                label: "Solver tolerance",
                help: "Conjugate gradients stop when the residual is this fraction of the \
                       right-hand side; the default is far below 8-bit visibility",
                default: 1e-6,
                min: 1e-12,
                max: 1e-2,
                integer: false,
            },
            ParamSpec {
                name: "max_iterations",
                label: "Max iterations",
                help: "Upper bound on conjugate-gradient iterations per hole region",
                default: 500.0,
                min: 1.0,
                max: 100_000.0,
                integer: true,
            },
        ]
    }
}

impl Restorer for Biharmonic {
    fn id(&self) -> &'static str {
        "biharmonic"
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        Self::specs()
    }

    /// Two rings of known pixels: the 13-point stencil of a rim pixel reaches two pixels out,
    /// and with them the crop's solution equals the full image's.
    fn context_margin(&self, _params: &Params, _hole: Rect) -> usize {
        2
    }

    fn restore(
        &self,
        image: &ImageF32,
        mask: &Mask,
        params: &Params,
        rep: &dyn Reporter,
    ) -> Result<ImageF32, RestoreError> {
        check_inputs(image, mask)?;
        let specs = Self::specs();
        let settings = SolveSettings {
            tolerance: params.value_of(&specs, "tolerance"),
            max_iterations: params.value_of(&specs, "max_iterations") as usize,
            dense_max: DENSE_MAX,
        };
        inpaint(image, mask, &settings, rep)
    }
}

/// Solver knobs, separated from [`Params`] so tests can force the iterative path.
#[derive(Clone, Copy, Debug)]
struct SolveSettings {
    tolerance: f64,
    max_iterations: usize,
    /// Components up to this many unknowns are solved by dense Cholesky.
    dense_max: usize,
}

/// Fills every hole of `mask` in `image`.
fn inpaint(
    image: &ImageF32,
    mask: &Mask,
    settings: &SolveSettings,
    rep: &dyn Reporter,
) -> Result<ImageF32, RestoreError> {
    let (w, h) = (image.width(), image.height());
    let holes = mask.count();
    if holes == 0 {
        return Ok(image.clone());
    }
    if holes == w * h {
        return Err(RestoreError::InvalidInput(
            "biharmonic inpainting needs known pixels around the hole, but the mask covers \
             the whole image"
                .into(),
        ));
    }
    let mut regions = find_regions(mask);
    // Largest first, so the parallel solve does not end waiting on one big region.
    regions.sort_by_key(|r| std::cmp::Reverse(r.pixels.len()));
    let total = regions.len() as u64;
    let done = AtomicU64::new(0);
    let solved: Vec<Solved> = regions
        .par_iter()
        .map(|region| {
            checkpoint(rep)?;
            let values = match image.channels() {
                1 => solve_region::<1>(image, region, settings, rep)?,
                2 => solve_region::<2>(image, region, settings, rep)?,
                3 => solve_region::<3>(image, region, settings, rep)?,
                4 => solve_region::<4>(image, region, settings, rep)?,
                n => {
                    return Err(RestoreError::InvalidInput(format!(
                        "biharmonic inpainting supports 1 to 4 channels, not {n}"
                    )))
                }
            };
            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
            rep.progress(d, total, "biharmonic: solved hole region");
            Ok(values)
        })
        .collect::<Result<_, RestoreError>>()?;

    let mut out = image.clone();
    let nc = image.channels();
    for (region, sol) in regions.iter().zip(&solved) {
        let values = &sol.values;
        for (k, &(x, y)) in region.pixels.iter().enumerate() {
            let px = out.pixel_mut(x as usize, y as usize);
            for (c, v) in px.iter_mut().enumerate() {
                // The thin plate overshoots next to strong edges (ringing the edge's own
                // contrast into the hole). Clamping to the range of the boundary data it was
                // built from removes that without touching smooth fills, and keeps samples in
                // [0, 1]; on BSDS500 test cases it gains up to 0.1 dB hole PSNR.
                *v = values[k * nc + c].clamp(sol.lo[c], sol.hi[c]) as f32;
            }
        }
    }
    Ok(out)
}

/// One connected component of the hole under stencil adjacency.
#[derive(Debug)]
struct Region {
    /// Hole pixels, in crop coordinates.
    pixels: Vec<(u32, u32)>,
    /// Bounding box of `pixels`.
    bbox: Rect,
}

/// Splits the mask into components whose equations do not interact (see the module docs).
fn find_regions(mask: &Mask) -> Vec<Region> {
    let (w, h) = (mask.width(), mask.height());
    let mut seen = vec![false; w * h];
    let mut regions = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !mask.data()[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut pixels = Vec::new();
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            pixels.push((x as u32, y as u32));
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
            for &(dx, dy) in &STENCIL {
                let (nx, ny) = (x as i64 + dx as i64, y as i64 + dy as i64);
                if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                    continue;
                }
                let j = ny as usize * w + nx as usize;
                if mask.data()[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        // Row-major order keeps neighbouring unknowns close in memory and gives Gauss–Seidel
        // a consistent sweep direction.
        pixels.sort_unstable_by_key(|&(x, y)| (y, x));
        regions.push(Region {
            pixels,
            bbox: Rect {
                x: x0,
                y: y0,
                width: x1 - x0 + 1,
                height: y1 - y0 + 1,
            },
        });
    }
    regions
}

/// The unknowns of one grid level: which pixels of a `w` x `h` box are holes.
struct Grid {
    w: usize,
    h: usize,
    /// Pixel → unknown index, or [`NONE`] for a known pixel.
    idx: Vec<u32>,
    /// Unknown → pixel position, row-major.
    pos: Vec<(u32, u32)>,
}

impl Grid {
    fn from_holes(w: usize, h: usize, hole: impl Fn(usize, usize) -> bool) -> Self {
        let mut idx = vec![NONE; w * h];
        let mut pos = Vec::new();
        for y in 0..h {
            for x in 0..w {
                if hole(x, y) {
                    idx[y * w + x] = pos.len() as u32;
                    pos.push((x as u32, y as u32));
                }
            }
        }
        Self { w, h, idx, pos }
    }

    fn len(&self) -> usize {
        self.pos.len()
    }

    /// The 2x coarser grid: a coarse pixel is a hole only when all its fine pixels are.
    ///
    /// The coarse correction then lives strictly inside the fine hole and never fights the
    /// clamped rim (value and slope fixed by two rings of known pixels), which the smoother
    /// handles. Marking a coarse pixel as hole when *any* fine pixel is one roughly doubled
    /// the CG iteration count in our measurements.
    fn coarsen(&self) -> Self {
        let (cw, ch) = (self.w.div_ceil(2), self.h.div_ceil(2));
        let mut holes = vec![0u8; cw * ch];
        for &(x, y) in &self.pos {
            holes[(y as usize / 2) * cw + x as usize / 2] += 1;
        }
        // Blocks on the far edge of an odd-sized box have fewer than four fine pixels.
        let size = |x: usize, y: usize| {
            ((2 * x + 2).min(self.w) - 2 * x) as u8 * ((2 * y + 2).min(self.h) - 2 * y) as u8
        };
        Self::from_holes(cw, ch, |x, y| holes[y * cw + x] == size(x, y))
    }

    /// Calls `f(dx, dy, a)` for every entry `a` of row `(x, y)` of `LᵀL` on this box, where
    /// `(dx, dy)` is the column's offset; `L` is the graph Laplacian with reflecting edges.
    ///
    /// Entries are produced per Laplacian row `q ∈ {p} ∪ N4(p)`, so an offset can repeat;
    /// callers accumulate.
    fn for_each_entry(&self, x: usize, y: usize, mut f: impl FnMut(i32, i32, f64)) {
        let (w, h) = (self.w as i64, self.h as i64);
        let inside = |x: i64, y: i64| x >= 0 && y >= 0 && x < w && y < h;
        let degree = |x: i64, y: i64| {
            [(-1, 0), (1, 0), (0, -1), (0, 1)]
                .iter()
                .filter(|&&(dx, dy)| inside(x + dx, y + dy))
                .count() as f64
        };
        let (px, py) = (x as i64, y as i64);
        for (qdx, qdy) in [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)] {
            let (qx, qy) = (px + qdx, py + qdy);
            if !inside(qx, qy) {
                continue;
            }
            let dq = degree(qx, qy);
            // L[q, p]: −deg(q) on the diagonal, 1 for a neighbour.
            let lqp = if (qdx, qdy) == (0, 0) { -dq } else { 1.0 };
            f(qdx as i32, qdy as i32, lqp * -dq);
            for (ndx, ndy) in [(-1, 0), (1, 0), (0, -1), (0, 1)] {
                let (nx, ny) = (qx + ndx, qy + ndy);
                if inside(nx, ny) {
                    f((nx - px) as i32, (ny - py) as i32, lqp);
                }
            }
        }
    }

    /// Assembles `scale · Pᵀ LᵀL P` for this grid's unknowns.
    fn assemble(&self, scale: f64) -> Operator {
        let n = self.len();
        let mut diag = vec![0.0; n];
        let mut nb = vec![[0u32; 12]; n];
        let mut coef = vec![[0.0f64; 12]; n];
        for (i, &(x, y)) in self.pos.iter().enumerate() {
            // Absent neighbours point at the row itself with weight 0, so kernels need no
            // branches.
            nb[i] = [i as u32; 12];
            self.for_each_entry(x as usize, y as usize, |dx, dy, a| {
                if (dx, dy) == (0, 0) {
                    diag[i] += scale * a;
                    return;
                }
                let (nx, ny) = (x as i64 + dx as i64, y as i64 + dy as i64);
                let j = self.idx[ny as usize * self.w + nx as usize];
                if j == NONE {
                    return;
                }
                if let Some(s) = stencil_slot(dx, dy) {
                    nb[i][s] = j;
                    coef[i][s] += scale * a;
                }
            });
        }
        Operator { diag, nb, coef }
    }
}

/// A sparse symmetric matrix with the 13-point pattern.
struct Operator {
    diag: Vec<f64>,
    /// Column of each off-diagonal entry (the row itself where the entry is absent).
    nb: Vec<[u32; 12]>,
    coef: Vec<[f64; 12]>,
}

type Vector<const NC: usize> = Vec<[f64; NC]>;

impl Operator {
    fn len(&self) -> usize {
        self.diag.len()
    }

    /// `out = A x`.
    fn apply<const NC: usize>(&self, x: &[[f64; NC]], out: &mut [[f64; NC]]) {
        for (i, o) in out.iter_mut().enumerate() {
            let mut s = [0.0; NC];
            for c in 0..NC {
                s[c] = self.diag[i] * x[i][c];
            }
            for k in 0..12 {
                let (j, a) = (self.nb[i][k] as usize, self.coef[i][k]);
                for c in 0..NC {
                    s[c] += a * x[j][c];
                }
            }
            *o = s;
        }
    }

    /// One Gauss–Seidel update of row `i` for `A x = b`.
    #[inline]
    fn relax<const NC: usize>(&self, i: usize, b: &[[f64; NC]], x: &mut [[f64; NC]]) {
        let mut s = b[i];
        for k in 0..12 {
            let (j, a) = (self.nb[i][k] as usize, self.coef[i][k]);
            for c in 0..NC {
                s[c] -= a * x[j][c];
            }
        }
        // Absent neighbours point at row i with weight 0, so x[i] did not leak into `s`.
        for c in 0..NC {
            x[i][c] = s[c] / self.diag[i];
        }
    }

    fn gauss_seidel_forward<const NC: usize>(&self, b: &[[f64; NC]], x: &mut [[f64; NC]]) {
        for i in 0..self.len() {
            self.relax(i, b, x);
        }
    }

    fn gauss_seidel_backward<const NC: usize>(&self, b: &[[f64; NC]], x: &mut [[f64; NC]]) {
        for i in (0..self.len()).rev() {
            self.relax(i, b, x);
        }
    }

    /// Dense Cholesky factor of the matrix, or `None` if it is not numerically positive
    /// definite.
    fn cholesky(&self) -> Option<DenseCholesky> {
        let n = self.len();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            a[i * n + i] = self.diag[i];
            for k in 0..12 {
                let j = self.nb[i][k] as usize;
                if j != i {
                    a[i * n + j] += self.coef[i][k];
                }
            }
        }
        DenseCholesky::factor(a, n)
    }
}

/// `A = G Gᵀ` with `G` lower triangular, stored row-major in a full `n` x `n` array.
struct DenseCholesky {
    g: Vec<f64>,
    n: usize,
}

impl DenseCholesky {
    fn factor(mut a: Vec<f64>, n: usize) -> Option<Self> {
        for j in 0..n {
            let mut d = a[j * n + j];
            for k in 0..j {
                d -= a[j * n + k] * a[j * n + k];
            }
            if d <= 0.0 || !d.is_finite() {
                return None;
            }
            let d = d.sqrt();
            a[j * n + j] = d;
            for i in j + 1..n {
                let mut s = a[i * n + j];
                for k in 0..j {
                    s -= a[i * n + k] * a[j * n + k];
                }
                a[i * n + j] = s / d;
            }
        }
        Some(Self { g: a, n })
    }

    fn solve<const NC: usize>(&self, b: &[[f64; NC]]) -> Vector<NC> {
        let (n, g) = (self.n, &self.g);
        let mut x = b.to_vec();
        // Forward substitution G y = b, then back substitution Gᵀ x = y.
        for i in 0..n {
            let mut s = x[i];
            for (k, xk) in x[..i].iter().enumerate() {
                let gik = g[i * n + k];
                s.iter_mut().zip(xk).for_each(|(s, v)| *s -= gik * v);
            }
            x[i] = s.map(|v| v / g[i * n + i]);
        }
        for i in (0..n).rev() {
            let mut s = x[i];
            for (k, xk) in x.iter().enumerate().skip(i + 1) {
                let gki = g[k * n + i];
                s.iter_mut().zip(xk).for_each(|(s, v)| *s -= gki * v);
            }
            x[i] = s.map(|v| v / g[i * n + i]);
        }
        x
    }
}

/// One level of the multigrid hierarchy.
struct Level {
    grid: Grid,
    op: Operator,
}

/// Geometric multigrid V-cycle on a component's box, used as a CG preconditioner.
struct Multigrid {
    levels: Vec<Level>,
    /// Exact solver for the coarsest level, when it is small and definite.
    coarsest: Option<DenseCholesky>,
}

impl Multigrid {
    fn new(fine: Level, dense_max: usize) -> Self {
        let mut levels = vec![fine];
        let mut scale = 1.0;
        while let Some(last) = levels.last() {
            if last.op.len() <= dense_max.max(16) {
                break;
            }
            let grid = last.grid.coarsen();
            // Stop if coarsening no longer shrinks the problem or leaves nothing known (the
            // coarse operator would be singular).
            if grid.len() == 0
                || grid.len() * 10 > last.op.len() * 9
                || grid.len() == grid.w * grid.h
            {
                break;
            }
            // With bilinear transfer P, PᵀAP approximates a quarter of the operator
            // re-discretised on the 2x coarser grid (a fourth-order operator gains 2⁴, the
            // transpose-interpolation sums four fine rows).
            scale *= 0.25;
            let op = grid.assemble(scale);
            levels.push(Level { grid, op });
        }
        let coarsest = levels
            .last()
            .filter(|l| l.op.len() <= dense_max.max(16))
            .and_then(|l| l.op.cholesky());
        Self { levels, coarsest }
    }

    /// Approximately solves `A z = r` on level `l` with one symmetric V-cycle from zero.
    fn vcycle<const NC: usize>(&self, l: usize, r: &[[f64; NC]]) -> Vector<NC> {
        let level = &self.levels[l];
        let n = level.op.len();
        if l + 1 == self.levels.len() {
            if let Some(chol) = &self.coarsest {
                return chol.solve(r);
            }
            // No exact coarse solver: a fixed number of symmetric sweeps is still a symmetric
            // positive definite approximation, which is all CG needs.
            let mut z = vec![[0.0; NC]; n];
            for _ in 0..4 {
                level.op.gauss_seidel_forward(r, &mut z);
                level.op.gauss_seidel_backward(r, &mut z);
            }
            return z;
        }
        let mut z = vec![[0.0; NC]; n];
        for _ in 0..SMOOTH_SWEEPS {
            level.op.gauss_seidel_forward(r, &mut z);
        }
        let mut res = vec![[0.0; NC]; n];
        level.op.apply(&z, &mut res);
        for (ri, &bi) in res.iter_mut().zip(r) {
            for c in 0..NC {
                ri[c] = bi[c] - ri[c];
            }
        }
        let coarse = &self.levels[l + 1].grid;
        let mut rc = vec![[0.0; NC]; coarse.len()];
        transfer(&level.grid, coarse, |f, c, wgt| {
            for k in 0..NC {
                rc[c][k] += wgt * res[f][k];
            }
        });
        let ec = self.vcycle(l + 1, &rc);
        transfer(&level.grid, coarse, |f, c, wgt| {
            for k in 0..NC {
                z[f][k] += wgt * ec[c][k];
            }
        });
        for _ in 0..SMOOTH_SWEEPS {
            level.op.gauss_seidel_backward(r, &mut z);
        }
        z
    }
}

/// Enumerates the bilinear interpolation weights from `coarse` to `fine` unknowns as
/// `f(fine_index, coarse_index, weight)`; restriction uses the same weights transposed.
///
/// Pixels are cell centred: fine pixel `x` sits at coarse coordinate `(x − 0.5) / 2`, so it
/// takes 3/4 of its own coarse pixel and 1/4 of the nearer neighbour. Coarse pixels that are
/// known carry no correction and are skipped (a zero Dirichlet condition).
fn transfer(fine: &Grid, coarse: &Grid, mut f: impl FnMut(usize, usize, f64)) {
    let axis = |v: usize, len: usize| -> [(usize, f64); 2] {
        let i = v / 2;
        let other = if v & 1 == 0 {
            i.checked_sub(1)
        } else {
            (i + 1 < len).then_some(i + 1)
        };
        match other {
            Some(o) => [(i, 0.75), (o, 0.25)],
            None => [(i, 1.0), (i, 0.0)],
        }
    };
    for (fi, &(x, y)) in fine.pos.iter().enumerate() {
        for (cx, wx) in axis(x as usize, coarse.w) {
            for (cy, wy) in axis(y as usize, coarse.h) {
                let wgt = wx * wy;
                let ci = coarse.idx[cy * coarse.w + cx];
                if wgt != 0.0 && ci != NONE {
                    f(fi, ci as usize, wgt);
                }
            }
        }
    }
}

/// Solves one component; returns its values (`pixels.len() * NC`, interleaved) in the order
/// of `region.pixels`.
fn solve_region<const NC: usize>(
    image: &ImageF32,
    region: &Region,
    settings: &SolveSettings,
    rep: &dyn Reporter,
) -> Result<Solved, RestoreError> {
    let bx = region.bbox.expand(2, image.width(), image.height());
    let inside = |x: u32, y: u32| {
        let (x, y) = (x as usize, y as usize);
        x >= bx.x && y >= bx.y && x < bx.right() && y < bx.bottom()
    };
    debug_assert!(region.pixels.iter().all(|&(x, y)| inside(x, y)));
    let mut is_hole = vec![false; bx.area()];
    for &(x, y) in &region.pixels {
        is_hole[(y as usize - bx.y) * bx.width + (x as usize - bx.x)] = true;
    }
    let grid = Grid::from_holes(bx.width, bx.height, |x, y| is_hole[y * bx.width + x]);
    // Both lists are row-major over the same pixels, so unknown k is region.pixels[k].
    let n = grid.len();

    // Right-hand side: known pixels inside each stencil, moved across.
    let mut b = vec![[0.0f64; NC]; n];
    // Initial guess: the mean of the known pixels that touch the hole.
    let mut ring = [0.0f64; NC];
    let mut ring_count = 0usize;
    let mut lo = vec![f64::INFINITY; NC];
    let mut hi = vec![f64::NEG_INFINITY; NC];
    for (i, &(x, y)) in grid.pos.iter().enumerate() {
        grid.for_each_entry(x as usize, y as usize, |dx, dy, a| {
            let (nx, ny) = (
                (x as i64 + dx as i64) as usize,
                (y as i64 + dy as i64) as usize,
            );
            if grid.idx[ny * grid.w + nx] != NONE {
                return;
            }
            let px = image.pixel(bx.x + nx, bx.y + ny);
            for c in 0..NC {
                b[i][c] -= a * px[c] as f64;
                lo[c] = lo[c].min(px[c] as f64);
                hi[c] = hi[c].max(px[c] as f64);
            }
            if dx.abs() + dy.abs() == 1 {
                for c in 0..NC {
                    ring[c] += px[c] as f64;
                }
                ring_count += 1;
            }
        });
    }
    let op = grid.assemble(1.0);

    if n <= settings.dense_max {
        if let Some(chol) = op.cholesky() {
            return Ok(Solved {
                values: flatten(&chol.solve(&b)),
                lo,
                hi,
            });
        }
    }

    let mut x = vec![[0.0; NC]; n];
    if ring_count > 0 {
        for xi in x.iter_mut() {
            for c in 0..NC {
                xi[c] = ring[c] / ring_count as f64;
            }
        }
    }
    let mg = Multigrid::new(Level { grid, op }, settings.dense_max);
    pcg(&mg, &b, &mut x, settings, rep)?;
    Ok(Solved {
        values: flatten(&x),
        lo,
        hi,
    })
}

/// The solution of one region and the range of the known pixels its stencils touch.
struct Solved {
    /// `pixels.len() * channels` values, interleaved, in the order of `Region::pixels`.
    values: Vec<f64>,
    lo: Vec<f64>,
    hi: Vec<f64>,
}

fn flatten<const NC: usize>(v: &[[f64; NC]]) -> Vec<f64> {
    v.iter().flat_map(|p| p.iter().copied()).collect()
}

/// Per-channel dot product.
fn dot<const NC: usize>(a: &[[f64; NC]], b: &[[f64; NC]]) -> [f64; NC] {
    let mut s = [0.0; NC];
    for (x, y) in a.iter().zip(b) {
        for c in 0..NC {
            s[c] += x[c] * y[c];
        }
    }
    s
}

/// Multigrid-preconditioned conjugate gradients on the finest level, all channels in lockstep
/// (each with its own step sizes). Returns the number of iterations.
fn pcg<const NC: usize>(
    mg: &Multigrid,
    b: &[[f64; NC]],
    x: &mut [[f64; NC]],
    settings: &SolveSettings,
    rep: &dyn Reporter,
) -> Result<usize, RestoreError> {
    let op = &mg.levels[0].op;
    let n = op.len();
    let mut r = vec![[0.0; NC]; n];
    op.apply(x, &mut r);
    for (ri, &bi) in r.iter_mut().zip(b) {
        for c in 0..NC {
            ri[c] = bi[c] - ri[c];
        }
    }
    let bnorm = dot(b, b);
    // Channels whose right-hand side vanishes (a black surround) are solved by zero; guard
    // the relative test with an absolute floor.
    let target: Vec<f64> = (0..NC)
        .map(|c| (settings.tolerance * bnorm[c].sqrt()).max(1e-300))
        .collect();
    let converged = |r: &[[f64; NC]]| dot(r, r).iter().zip(&target).all(|(rr, t)| rr.sqrt() <= *t);
    if converged(&r) {
        return Ok(0);
    }
    let mut z = mg.vcycle(0, &r);
    let mut p = z.clone();
    let mut rz = dot(&r, &z);
    let mut q = vec![[0.0; NC]; n];
    for it in 1..=settings.max_iterations {
        if it % CHECK_EVERY == 0 {
            checkpoint(rep)?;
        }
        op.apply(&p, &mut q);
        let pq = dot(&p, &q);
        let mut alpha = [0.0; NC];
        for c in 0..NC {
            // A converged channel has p = 0; leave it alone instead of dividing by zero.
            if pq[c] > 0.0 {
                alpha[c] = rz[c] / pq[c];
            }
        }
        for i in 0..n {
            for c in 0..NC {
                x[i][c] += alpha[c] * p[i][c];
                r[i][c] -= alpha[c] * q[i][c];
            }
        }
        if converged(&r) {
            return Ok(it);
        }
        z = mg.vcycle(0, &r);
        let rz_new = dot(&r, &z);
        for c in 0..NC {
            let beta = if rz[c] > 0.0 { rz_new[c] / rz[c] } else { 0.0 };
            for i in 0..n {
                p[i][c] = z[i][c] + beta * p[i][c];
            }
        }
        rz = rz_new;
    }
    // Out of iterations: the current iterate is the best available answer.
    Ok(settings.max_iterations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::NullReporter;

    struct Cancelled;
    impl Reporter for Cancelled {
        fn is_cancelled(&self) -> bool {
            true
        }
        fn progress(&self, _: u64, _: u64, _: &str) {}
        fn preview(&self, _: &ImageF32) {}
    }

    fn run(image: &ImageF32, mask: &Mask) -> ImageF32 {
        match Biharmonic.restore(image, mask, &Params::new(), &NullReporter) {
            Ok(out) => out,
            Err(e) => panic!("restore failed: {e}"),
        }
    }

    fn disk(w: usize, h: usize, cx: f64, cy: f64, r: f64) -> Mask {
        Mask::from_fn(w, h, |x, y| {
            (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2) <= r * r
        })
    }

    fn max_hole_error(
        out: &ImageF32,
        mask: &Mask,
        truth: impl Fn(usize, usize, usize) -> f32,
    ) -> f32 {
        let mut worst = 0.0f32;
        for y in 0..out.height() {
            for x in 0..out.width() {
                if mask.get(x, y) {
                    for c in 0..out.channels() {
                        worst = worst.max((out.pixel(x, y)[c] - truth(x, y, c)).abs());
                    }
                }
            }
        }
        worst
    }

    fn assert_known_untouched(before: &ImageF32, after: &ImageF32, mask: &Mask) {
        for y in 0..before.height() {
            for x in 0..before.width() {
                if !mask.get(x, y) {
                    for c in 0..before.channels() {
                        assert_eq!(
                            before.pixel(x, y)[c].to_bits(),
                            after.pixel(x, y)[c].to_bits()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn stencil_away_from_border_is_the_13_point_biharmonic() {
        let grid = Grid::from_holes(9, 9, |x, y| (x, y) == (4, 4));
        let mut acc = std::collections::BTreeMap::new();
        grid.for_each_entry(4, 4, |dx, dy, a| *acc.entry((dx, dy)).or_insert(0.0) += a);
        assert_eq!(acc[&(0, 0)], 20.0);
        assert_eq!(acc[&(1, 0)], -8.0);
        assert_eq!(acc[&(1, 1)], 2.0);
        assert_eq!(acc[&(0, -2)], 1.0);
        assert_eq!(acc.len(), 13);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = ImageF32::from_fn(40, 30, 3, |_, _, c| 0.25 + 0.2 * c as f32);
        let mask = disk(40, 30, 20.0, 15.0, 9.0);
        let out = run(&img, &mask);
        assert!(max_hole_error(&out, &mask, |_, _, c| 0.25 + 0.2 * c as f32) < 1e-5);
    }

    #[test]
    fn ramp_and_quadratic_are_reproduced() {
        // Both have a constant discrete Laplacian, hence zero biharmonic: the fill is exact
        // up to the solver tolerance. The large disk exercises the multigrid path.
        let ramp = |x: usize, y: usize, _c: usize| 0.1 + 0.01 * x as f32 + 0.005 * y as f32;
        let quad = |x: usize, y: usize, _c: usize| {
            let (u, v) = (x as f32 / 60.0, y as f32 / 50.0);
            0.2 + 0.3 * u * u + 0.2 * u * v - 0.1 * v * v
        };
        for r in [3.0, 18.0] {
            let mask = disk(60, 50, 30.0, 25.0, r);
            let img = ImageF32::from_fn(60, 50, 1, ramp);
            assert!(max_hole_error(&run(&img, &mask), &mask, ramp) < 1e-4);
            let img = ImageF32::from_fn(60, 50, 1, quad);
            assert!(max_hole_error(&run(&img, &mask), &mask, quad) < 1e-4);
        }
    }

    #[test]
    fn known_pixels_bit_identical_for_1_3_4_channels() {
        for nc in [1, 3, 4] {
            let img = ImageF32::from_fn(50, 40, nc, |x, y, c| {
                ((x * 7 + y * 13 + c * 5) % 17) as f32 / 17.0
            });
            let mut mask = disk(50, 40, 25.0, 20.0, 12.0);
            mask.set(3, 3, true);
            let out = run(&img, &mask);
            assert_eq!(out.channels(), nc);
            assert_known_untouched(&img, &out, &mask);
            assert!(out.data().iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }

    #[test]
    fn channels_are_solved_independently() {
        // Channel c of a 4-channel image must equal the single-channel solve of that plane.
        let img = ImageF32::from_fn(30, 30, 4, |x, y, c| {
            (0.5 + 0.4 * ((x as f32 * 0.3 + c as f32).sin() * (y as f32 * 0.2).cos())).abs()
        });
        let mask = disk(30, 30, 14.0, 15.0, 7.0);
        let out = run(&img, &mask);
        for c in 0..4 {
            let plane = ImageF32::from_fn(30, 30, 1, |x, y, _| img.pixel(x, y)[c]);
            let single = run(&plane, &mask);
            let err = max_hole_error(&single, &mask, |x, y, _| out.pixel(x, y)[c]);
            assert!(err < 1e-5, "channel {c}: {err}");
        }
    }

    #[test]
    fn holes_touching_the_border() {
        // A ramp running along the left edge has zero slope across it, which the reflecting
        // boundary reproduces exactly.
        let ramp = |_x: usize, y: usize, _c: usize| 0.1 + 0.02 * y as f32;
        let img = ImageF32::from_fn(30, 40, 1, ramp);
        let mask = Mask::from_fn(30, 40, |x, y| x < 6 && (10..30).contains(&y));
        let out = run(&img, &mask);
        assert!(max_hole_error(&out, &mask, ramp) < 1e-4);
        // A hole over a corner of a constant image stays constant.
        let img = ImageF32::from_fn(30, 40, 3, |_, _, _| 0.6);
        let mask = Mask::from_fn(30, 40, |x, y| x + y < 25);
        let out = run(&img, &mask);
        assert!(max_hole_error(&out, &mask, |_, _, _| 0.6) < 1e-5);
    }

    #[test]
    fn separate_regions_match_individual_solves() {
        let img = ImageF32::from_fn(60, 40, 1, |x, y, _| {
            0.5 + 0.4 * (x as f32 * 0.21).sin() * (y as f32 * 0.17).cos()
        });
        let a = disk(60, 40, 12.0, 12.0, 5.0);
        let b = Mask::from_fn(60, 40, |x, y| x == y + 20 && y > 5); // a diagonal scratch
        let mut both = a.clone();
        for (i, h) in both.data_mut().iter_mut().enumerate() {
            *h |= b.data()[i];
        }
        assert_eq!(find_regions(&both).len(), 2);
        let out = run(&img, &both);
        let out_a = run(&img, &a);
        let out_b = run(&img, &b);
        assert!(max_hole_error(&out, &a, |x, y, _| out_a.pixel(x, y)[0]) < 1e-6);
        assert!(max_hole_error(&out, &b, |x, y, _| out_b.pixel(x, y)[0]) < 1e-6);
        assert_known_untouched(&img, &out, &both);
    }

    #[test]
    fn holes_one_pixel_apart_form_one_region() {
        // Their stencils overlap, so they must be solved together.
        let mask = Mask::from_fn(10, 5, |x, y| y == 2 && (x == 3 || x == 5));
        assert_eq!(find_regions(&mask).len(), 1);
        let mask = Mask::from_fn(10, 5, |x, y| y == 2 && (x == 3 || x == 6));
        assert_eq!(find_regions(&mask).len(), 2);
    }

    #[test]
    fn empty_mask_returns_the_input() {
        let img = ImageF32::from_fn(8, 8, 3, |x, y, c| (x + y + c) as f32 / 20.0);
        assert_eq!(run(&img, &Mask::new(8, 8)), img);
    }

    #[test]
    fn all_hole_is_invalid_input() {
        let img = ImageF32::new(8, 6, 3);
        let mut mask = Mask::new(8, 6);
        mask.invert();
        let res = Biharmonic.restore(&img, &mask, &Params::new(), &NullReporter);
        assert!(matches!(res, Err(RestoreError::InvalidInput(_))));
    }

    #[test]
    fn cancelled_reporter_stops() {
        let img = ImageF32::new(40, 40, 3);
        let mask = disk(40, 40, 20.0, 20.0, 10.0);
        let res = Biharmonic.restore(&img, &mask, &Params::new(), &Cancelled);
        assert!(matches!(res, Err(RestoreError::Cancelled)));
    }

    /// Independent reference: the dense normal equations `(LP)ᵀ(LP) x = −(LP)ᵀ L u_known`,
    /// built from an explicit Laplacian matrix and solved by Gaussian elimination.
    fn dense_reference(img: &ImageF32, mask: &Mask) -> Vec<f64> {
        let (w, h) = (img.width(), img.height());
        let np = w * h;
        let mut lap = vec![0.0f64; np * np];
        for y in 0..h {
            for x in 0..w {
                let q = y * w + x;
                for (dx, dy) in [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)] {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx >= 0 && ny >= 0 && nx < w as i64 && ny < h as i64 {
                        lap[q * np + ny as usize * w + nx as usize] += 1.0;
                        lap[q * np + q] -= 1.0;
                    }
                }
            }
        }
        let unknown: Vec<usize> = (0..np).filter(|&i| mask.data()[i]).collect();
        let n = unknown.len();
        let lu: Vec<f64> = (0..np)
            .map(|q| {
                (0..np)
                    .filter(|&j| !mask.data()[j])
                    .map(|j| lap[q * np + j] * img.data()[j] as f64)
                    .sum()
            })
            .collect();
        let mut a = vec![0.0f64; n * (n + 1)];
        for (r, &i) in unknown.iter().enumerate() {
            for (s, &j) in unknown.iter().enumerate() {
                a[r * (n + 1) + s] = (0..np).map(|q| lap[q * np + i] * lap[q * np + j]).sum();
            }
            a[r * (n + 1) + n] = -(0..np).map(|q| lap[q * np + i] * lu[q]).sum::<f64>();
        }
        for col in 0..n {
            let piv = (col..n)
                .max_by(|&p, &q| {
                    a[p * (n + 1) + col]
                        .abs()
                        .total_cmp(&a[q * (n + 1) + col].abs())
                })
                .unwrap_or(col);
            for k in 0..=n {
                a.swap(col * (n + 1) + k, piv * (n + 1) + k);
            }
            for r in 0..n {
                if r != col {
                    let f = a[r * (n + 1) + col] / a[col * (n + 1) + col];
                    for k in col..=n {
                        a[r * (n + 1) + k] -= f * a[col * (n + 1) + k];
                    }
                }
            }
        }
        (0..n)
            .map(|r| a[r * (n + 1) + n] / a[r * (n + 1) + r])
            .collect()
    }

    #[test]
    fn cg_and_cholesky_agree_with_dense_direct_solve() {
        // A 14x11 image with a hole touching the right border (Neumann rows included).
        let img = ImageF32::from_fn(14, 11, 1, |x, y, _| {
            0.5 + 0.3 * (x as f32 * 0.7).sin() * (y as f32 * 0.5).cos()
        });
        let mask = Mask::from_fn(14, 11, |x, y| {
            (3..9).contains(&y) && (5..14).contains(&x) && !(x == 7 && y == 5)
        });
        let reference = dense_reference(&img, &mask);
        let regions = find_regions(&mask);
        assert_eq!(regions.len(), 1);
        for dense_max in [0, DENSE_MAX] {
            let settings = SolveSettings {
                tolerance: 1e-12,
                max_iterations: 1000,
                dense_max,
            };
            let got = solve_region::<1>(&img, &regions[0], &settings, &NullReporter)
                .unwrap_or_else(|e| panic!("{e}"))
                .values;
            // Region pixels are row-major, like the reference's unknowns.
            for (g, r) in got.iter().zip(&reference) {
                assert!((g - r).abs() < 1e-8, "dense_max {dense_max}: {g} vs {r}");
            }
        }
    }

    #[test]
    fn multigrid_cg_converges_quickly_on_a_large_hole() {
        let mask = Mask::from_fn(160, 120, |x, y| {
            let (u, v) = (x as f64 - 80.0, y as f64 - 60.0);
            u * u / 3600.0 + v * v / 1600.0 <= 1.0 || (y % 23 == 0 && x > 10)
        });
        let regions = find_regions(&mask);
        let Some(region) = regions.iter().max_by_key(|r| r.pixels.len()) else {
            panic!("no region")
        };
        assert!(region.pixels.len() > 5000);
        let bx = region.bbox.expand(2, 160, 120);
        let mut own = Mask::new(160, 120);
        for &(x, y) in &region.pixels {
            own.set(x as usize, y as usize, true);
        }
        let grid = Grid::from_holes(bx.width, bx.height, |x, y| own.get(x + bx.x, y + bx.y));
        assert_eq!(grid.len(), region.pixels.len());
        let op = grid.assemble(1.0);
        let n = op.len();
        let b: Vector<3> = (0..n)
            .map(|i| [((i * 37) % 11) as f64 - 5.0, 1.0, 0.0])
            .collect();
        let mg = Multigrid::new(Level { grid, op }, DENSE_MAX);
        let mut x = vec![[0.0; 3]; n];
        let settings = SolveSettings {
            tolerance: 1e-8,
            max_iterations: 200,
            dense_max: DENSE_MAX,
        };
        let iters = pcg(&mg, &b, &mut x, &settings, &NullReporter).unwrap_or(usize::MAX);
        println!(
            "n = {n}, levels = {}, iterations = {iters}",
            mg.levels.len()
        );
        assert!(iters < 60, "took {iters} iterations");
    }

    #[test]
    fn default_tolerance_matches_a_tight_solve() {
        // The default stopping rule must land well inside 8-bit quantisation (1/255).
        let img = ImageF32::from_fn(120, 90, 3, |x, y, c| {
            0.5 + 0.45 * ((x as f32 * 0.13 + c as f32).sin() * (y as f32 * 0.11).cos())
        });
        let mask = Mask::from_fn(120, 90, |x, y| {
            let (u, v) = (x as f64 - 60.0, y as f64 - 45.0);
            u * u + v * v <= 35.0 * 35.0 && !(x % 17 == 0 && y % 13 == 0)
        });
        let tight = Params::new().with("tolerance", 1e-12);
        let exact = Biharmonic
            .restore(&img, &mask, &tight, &NullReporter)
            .unwrap_or_else(|e| panic!("{e}"));
        let out = run(&img, &mask);
        let err = max_hole_error(&out, &mask, |x, y, c| exact.pixel(x, y)[c]);
        assert!(err < 2e-4, "max deviation {err}");
    }

    /// Manual comparison run: `BH_IMAGE=photo.jpg BH_MASK=mask.png [BH_OUT=out.png]
    /// cargo test --release --lib restore::biharmonic::tests::compare_on_files -- --ignored
    /// --nocapture`. Prints hole PSNR (after 8-bit rounding) and wall time.
    #[test]
    #[ignore]
    fn compare_on_files() {
        let (Ok(ip), Ok(mp)) = (std::env::var("BH_IMAGE"), std::env::var("BH_MASK")) else {
            panic!("set BH_IMAGE and BH_MASK");
        };
        let rgb = image::open(&ip).unwrap_or_else(|e| panic!("{e}")).to_rgb8();
        let m = image::open(&mp)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_luma8();
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        assert_eq!((m.width() as usize, m.height() as usize), (w, h));
        let img = ImageF32::from_vec(
            w,
            h,
            3,
            rgb.as_raw().iter().map(|&v| v as f32 / 255.0).collect(),
        )
        .unwrap_or_else(|| panic!("size"));
        let mask = Mask::from_vec(w, h, m.as_raw().iter().map(|&v| v > 127).collect())
            .unwrap_or_else(|| panic!("size"));
        let mut params = Params::new();
        if let Some(tol) = std::env::var("BH_TOL").ok().and_then(|v| v.parse().ok()) {
            params.set("tolerance", tol);
        }
        let t = std::time::Instant::now();
        let out = Biharmonic
            .restore(&img, &mask, &params, &NullReporter)
            .unwrap_or_else(|e| panic!("{e}"));
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let out8: Vec<u8> = out
            .data()
            .iter()
            .map(|&v| (v * 255.0).round() as u8)
            .collect();
        let (mut se, mut cnt) = (0.0f64, 0usize);
        for (i, &hole) in mask.data().iter().enumerate() {
            if hole {
                for c in 0..3 {
                    let d = out8[i * 3 + c] as f64 - rgb.as_raw()[i * 3 + c] as f64;
                    se += d * d;
                    cnt += 1;
                }
            }
        }
        let psnr = 10.0 * (255.0f64 * 255.0 / (se / cnt as f64)).log10();
        println!(
            "RESULT {mp} regions={} hole={:.3} psnr={psnr:.2} ms={ms:.1}",
            find_regions(&mask).len(),
            mask.coverage()
        );
        if let Ok(op) = std::env::var("BH_OUT") {
            image::RgbImage::from_raw(w as u32, h as u32, out8)
                .unwrap_or_else(|| panic!("size"))
                .save(op)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
