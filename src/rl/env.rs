//! The PixelRL environment: every pixel is an agent that picks one action per step.
//!
//! An episode starts from a degraded image (noisy for denoising, a classical fill for
//! refinement) and runs a fixed number of steps. At each step every pixel of the *active*
//! region applies its chosen [`Action`] to the current image (all actions read the image as it
//! was before the step), and receives the reward `scale * (e_before - e_after)` where `e` is
//! that pixel's squared error to the clean target, averaged over the three channels. So the
//! return of an episode telescopes to the total decrease of squared error.
//!
//! Images are planar RGB in `[0, 1]` ([`Frame`]), the layout the network reads.

use rayon::prelude::*;

/// One per-pixel action. Windows are clamped at the image border.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Action {
    /// Subtract 1/255 from every channel.
    MinusOne,
    /// Leave the pixel alone.
    Keep,
    /// Add 1/255 to every channel.
    PlusOne,
    /// Gaussian blur, sigma 0.5, 3x3 window.
    GaussianNarrow,
    /// Gaussian blur, sigma 1.5, 5x5 window.
    GaussianWide,
    /// Bilateral 5x5 (spatial sigma 1.5), range sigma 0.1 on the RGB distance: edge-keeping.
    BilateralTight,
    /// Bilateral 5x5 (spatial sigma 1.5), range sigma 0.3: smooths strong noise.
    BilateralLoose,
    /// Per-channel median of the 3x3 window.
    Median,
    /// Mean of the 5x5 window.
    Box,
    /// Per-channel median of the known (unmasked) pixels of the 5x5 window; unchanged when
    /// none is known. Pulls the surrounding colours into a hole.
    MaskedMedian,
    /// One Jacobi step of the Laplace equation (mean of the 4 neighbours): repeated, it
    /// diffuses the hole boundary inward.
    Diffuse,
}

impl Action {
    /// Every action, in a fixed order.
    pub const ALL: [Action; 11] = [
        Action::MinusOne,
        Action::Keep,
        Action::PlusOne,
        Action::GaussianNarrow,
        Action::GaussianWide,
        Action::BilateralTight,
        Action::BilateralLoose,
        Action::Median,
        Action::Box,
        Action::MaskedMedian,
        Action::Diffuse,
    ];

    /// PixelRL's classic set, used for denoising.
    pub const DENOISE: [Action; 9] = [
        Action::MinusOne,
        Action::Keep,
        Action::PlusOne,
        Action::GaussianNarrow,
        Action::GaussianWide,
        Action::BilateralTight,
        Action::BilateralLoose,
        Action::Median,
        Action::Box,
    ];

    /// Short stable name (manifests, statistics).
    pub fn name(self) -> &'static str {
        match self {
            Action::MinusOne => "minus1",
            Action::Keep => "keep",
            Action::PlusOne => "plus1",
            Action::GaussianNarrow => "gauss0.5",
            Action::GaussianWide => "gauss1.5",
            Action::BilateralTight => "bilateral0.1",
            Action::BilateralLoose => "bilateral0.3",
            Action::Median => "median3",
            Action::Box => "box5",
            Action::MaskedMedian => "masked-median5",
            Action::Diffuse => "diffuse",
        }
    }

    /// The action called `name` (see [`Action::name`]).
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.iter().copied().find(|a| a.name() == name)
    }
}

/// A planar RGB image in `[0, 1]`: `data[c * h * w + y * w + x]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
    /// The three planes.
    pub data: Vec<f32>,
}

impl Frame {
    /// A `w x h` frame filled with `v`.
    pub fn filled(w: usize, h: usize, v: f32) -> Self {
        Self {
            w,
            h,
            data: vec![v; 3 * w * h],
        }
    }

    /// A frame from planar data; `None` when the length is not `3 * w * h`.
    pub fn from_planar(w: usize, h: usize, data: Vec<f32>) -> Option<Self> {
        (data.len() == 3 * w * h).then_some(Self { w, h, data })
    }

    /// From an RGB [`crate::imaging::ImageF32`] (interleaved); `None` when it is not RGB.
    pub fn from_image(img: &crate::imaging::ImageF32) -> Option<Self> {
        if img.channels() != 3 {
            return None;
        }
        let (w, h) = (img.width(), img.height());
        let plane = w * h;
        let mut data = vec![0.0; 3 * plane];
        for (p, px) in img.data().chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[c * plane + p] = px[c];
            }
        }
        Some(Self { w, h, data })
    }

    /// As an interleaved RGB [`crate::imaging::ImageF32`].
    pub fn to_image(&self) -> crate::imaging::ImageF32 {
        let plane = self.w * self.h;
        crate::imaging::ImageF32::from_fn(self.w, self.h, 3, |x, y, c| {
            self.data[c * plane + y * self.w + x]
        })
    }

    /// Channel `c` at `(x, y)`, with coordinates clamped into the image.
    #[inline]
    pub fn at(&self, c: usize, x: isize, y: isize) -> f32 {
        let x = x.clamp(0, self.w as isize - 1) as usize;
        let y = y.clamp(0, self.h as isize - 1) as usize;
        self.data[c * self.w * self.h + y * self.w + x]
    }

    /// Squared error to `other` at pixel `p`, averaged over the channels.
    #[inline]
    pub fn sq_err(&self, other: &Frame, p: usize) -> f32 {
        let plane = self.w * self.h;
        (0..3)
            .map(|c| {
                let d = self.data[c * plane + p] - other.data[c * plane + p];
                d * d
            })
            .sum::<f32>()
            / 3.0
    }

    /// Mean squared error to `other` over the pixels where `region` is true (all pixels when
    /// `None`); 0 for an empty region.
    pub fn mse(&self, other: &Frame, region: Option<&[bool]>) -> f64 {
        let mut sum = 0.0f64;
        let mut n = 0usize;
        for p in 0..self.w * self.h {
            if region.is_none_or(|r| r[p]) {
                sum += f64::from(self.sq_err(other, p));
                n += 1;
            }
        }
        if n == 0 {
            0.0
        } else {
            sum / n as f64
        }
    }
}

/// PSNR in dB for a mean squared error of values in `[0, 1]`.
pub fn psnr(mse: f64) -> f64 {
    10.0 * (1.0 / mse.max(1e-12)).log10()
}

fn gaussian_weights(sigma: f32, radius: isize) -> Vec<f32> {
    let mut w = Vec::new();
    for dy in -radius..=radius {
        for dx in -radius..=radius {
            w.push((-((dx * dx + dy * dy) as f32) / (2.0 * sigma * sigma)).exp());
        }
    }
    let s: f32 = w.iter().sum();
    w.iter().map(|v| v / s).collect()
}

/// Precomputed filter kernels.
#[derive(Clone, Debug)]
struct Kernels {
    g05: Vec<f32>,
    g15: Vec<f32>,
    spatial: Vec<f32>,
}

impl Kernels {
    fn new() -> Self {
        Self {
            g05: gaussian_weights(0.5, 1),
            g15: gaussian_weights(1.5, 2),
            spatial: gaussian_weights(1.5, 2),
        }
    }
}

fn median(v: &mut [f32]) -> f32 {
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f32::total_cmp);
    *m
}

fn weighted(img: &Frame, x: isize, y: isize, r: isize, k: &[f32]) -> [f32; 3] {
    let mut out = [0.0; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let mut i = 0;
        for dy in -r..=r {
            for dx in -r..=r {
                *o += k[i] * img.at(c, x + dx, y + dy);
                i += 1;
            }
        }
    }
    out
}

fn bilateral(img: &Frame, x: isize, y: isize, range_sigma: f32, spatial: &[f32]) -> [f32; 3] {
    let centre = [img.at(0, x, y), img.at(1, x, y), img.at(2, x, y)];
    let inv = 1.0 / (2.0 * range_sigma * range_sigma);
    let mut acc = [0.0f32; 3];
    let mut wsum = 0.0f32;
    let mut i = 0;
    for dy in -2..=2 {
        for dx in -2..=2 {
            let q = [
                img.at(0, x + dx, y + dy),
                img.at(1, x + dx, y + dy),
                img.at(2, x + dx, y + dy),
            ];
            let d2: f32 = (0..3)
                .map(|c| (q[c] - centre[c]) * (q[c] - centre[c]))
                .sum();
            let wt = spatial[i] * (-d2 * inv).exp();
            for c in 0..3 {
                acc[c] += wt * q[c];
            }
            wsum += wt;
            i += 1;
        }
    }
    acc.map(|a| a / wsum.max(1e-12))
}

/// What `action` makes of pixel `(x, y)` of `img`. `known[p]` is false for hole pixels (only
/// [`Action::MaskedMedian`] reads it; `None` means every pixel is known).
pub fn apply_at(
    action: Action,
    img: &Frame,
    known: Option<&[bool]>,
    x: usize,
    y: usize,
) -> [f32; 3] {
    thread_local! {
        static K: Kernels = Kernels::new();
    }
    let (xi, yi) = (x as isize, y as isize);
    let here = [img.at(0, xi, yi), img.at(1, xi, yi), img.at(2, xi, yi)];
    match action {
        Action::Keep => here,
        Action::MinusOne => here.map(|v| v - 1.0 / 255.0),
        Action::PlusOne => here.map(|v| v + 1.0 / 255.0),
        Action::GaussianNarrow => K.with(|k| weighted(img, xi, yi, 1, &k.g05)),
        Action::GaussianWide => K.with(|k| weighted(img, xi, yi, 2, &k.g15)),
        Action::BilateralTight => K.with(|k| bilateral(img, xi, yi, 0.1, &k.spatial)),
        Action::BilateralLoose => K.with(|k| bilateral(img, xi, yi, 0.3, &k.spatial)),
        Action::Box => weighted(img, xi, yi, 2, &[1.0 / 25.0; 25]),
        Action::Median => {
            let mut out = [0.0; 3];
            let mut v = [0.0f32; 9];
            for (c, o) in out.iter_mut().enumerate() {
                let mut i = 0;
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        v[i] = img.at(c, xi + dx, yi + dy);
                        i += 1;
                    }
                }
                *o = median(&mut v);
            }
            out
        }
        Action::MaskedMedian => {
            let mut pts = Vec::with_capacity(25);
            for dy in -2..=2isize {
                for dx in -2..=2isize {
                    let (qx, qy) = (xi + dx, yi + dy);
                    if (dx, dy) == (0, 0)
                        || qx < 0
                        || qy < 0
                        || qx >= img.w as isize
                        || qy >= img.h as isize
                    {
                        continue;
                    }
                    let q = qy as usize * img.w + qx as usize;
                    if known.is_none_or(|k| k[q]) {
                        pts.push((qx, qy));
                    }
                }
            }
            if pts.is_empty() {
                return here;
            }
            let mut out = [0.0; 3];
            let mut v = Vec::with_capacity(pts.len());
            for (c, o) in out.iter_mut().enumerate() {
                v.clear();
                v.extend(pts.iter().map(|&(qx, qy)| img.at(c, qx, qy)));
                *o = median(&mut v);
            }
            out
        }
        Action::Diffuse => {
            let mut out = [0.0; 3];
            for (c, o) in out.iter_mut().enumerate() {
                *o = 0.25
                    * (img.at(c, xi - 1, yi)
                        + img.at(c, xi + 1, yi)
                        + img.at(c, xi, yi - 1)
                        + img.at(c, xi, yi + 1));
            }
            out
        }
    }
}

/// Applies one step: pixel `p` takes `set[choice[p]]` where `active[p]` (everywhere when
/// `None`), and keeps its value elsewhere. Every action reads `img` as it was before the step.
pub fn step_frame(
    img: &Frame,
    set: &[Action],
    choice: &[u8],
    known: Option<&[bool]>,
    active: Option<&[bool]>,
) -> Frame {
    let (w, h) = (img.w, img.h);
    let plane = w * h;
    let rows: Vec<Vec<[f32; 3]>> = (0..h)
        .into_par_iter()
        .map(|y| {
            (0..w)
                .map(|x| {
                    let p = y * w + x;
                    let a = set
                        .get(usize::from(choice[p]))
                        .copied()
                        .unwrap_or(Action::Keep);
                    if active.is_some_and(|m| !m[p]) {
                        apply_at(Action::Keep, img, known, x, y)
                    } else {
                        apply_at(a, img, known, x, y)
                    }
                })
                .collect()
        })
        .collect();
    let mut out = Frame::filled(w, h, 0.0);
    for (y, row) in rows.iter().enumerate() {
        for (x, v) in row.iter().enumerate() {
            for (c, &val) in v.iter().enumerate() {
                out.data[c * plane + y * w + x] = val;
            }
        }
    }
    out
}

/// Applies `action` to every pixel (the fixed-filter baselines).
pub fn filter_frame(img: &Frame, action: Action) -> Frame {
    let choice = vec![0u8; img.w * img.h];
    step_frame(img, &[action], &choice, None, None)
}

/// Per-pixel rewards `scale * (e(before) - e(after))`, `e` = squared error to `target`
/// averaged over channels; 0 outside `active`.
pub fn reward(
    target: &Frame,
    before: &Frame,
    after: &Frame,
    scale: f32,
    active: Option<&[bool]>,
) -> Vec<f32> {
    (0..target.w * target.h)
        .map(|p| {
            if active.is_some_and(|m| !m[p]) {
                0.0
            } else {
                scale * (before.sq_err(target, p) - after.sq_err(target, p))
            }
        })
        .collect()
}

/// One image of an episode: its clean target, current state and optional hole.
#[derive(Clone, Debug)]
pub struct Episode {
    /// The clean image.
    pub target: Frame,
    /// The current image (the degraded input at step 0).
    pub state: Frame,
    /// `true` at hole pixels (refinement); `None` for denoising (every pixel active).
    pub hole: Option<Vec<bool>>,
}

impl Episode {
    /// The pixels that act (the hole, or every pixel).
    pub fn active(&self) -> Option<&[bool]> {
        self.hole.as_deref()
    }

    /// The known-pixel map (not hole), if there is a hole.
    pub fn known(&self) -> Option<Vec<bool>> {
        self.hole.as_ref().map(|h| h.iter().map(|&b| !b).collect())
    }

    /// Applies `choice` (indices into `set`) and returns the per-pixel rewards.
    pub fn step(&mut self, set: &[Action], choice: &[u8], scale: f32) -> Vec<f32> {
        let known = self.known();
        let next = step_frame(&self.state, set, choice, known.as_deref(), self.active());
        let r = reward(&self.target, &self.state, &next, scale, self.active());
        self.state = next;
        r
    }
}
