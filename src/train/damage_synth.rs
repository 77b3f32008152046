//! Seeded synthetic damage for training crops: free-form brush strokes, thin curved scratches,
//! hairs, dust specks and blobs, and real artifact shapes (film-damage cut-outs) composited with
//! a random scale, rotation, opacity and brightness.
//!
//! [`synthesize`] turns a clean crop into `(damaged, mask)`. The damaged image differs from the
//! clean one only inside the mask: faint edges of a soft artifact (alpha below
//! [`MASK_THRESHOLD`]) are left clean, so every pixel the model is told is "known" really is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::imaging::{mask_synth, ImageF32, Mask};

/// Damage alpha above which a pixel counts as a hole.
pub const MASK_THRESHOLD: f32 = 0.08;

/// Why the artifact bank could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DamageError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An artifact image could not be decoded.
    #[error("{path}: {source}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// The underlying error.
        source: image::ImageError,
    },
    /// The listing is empty or malformed.
    #[error("{0}")]
    Invalid(String),
}

/// One real artifact shape: its alpha (coverage) as 8-bit values, row-major.
#[derive(Clone, Debug)]
pub struct Artifact {
    width: usize,
    height: usize,
    alpha: Vec<u8>,
    /// The film-damage category (`hair`, `dust`, `scratches`, ...).
    pub category: String,
}

impl Artifact {
    /// An artifact from an alpha map (`alpha.len() == width * height`).
    pub fn from_alpha(width: usize, height: usize, alpha: Vec<u8>, category: &str) -> Option<Self> {
        (alpha.len() == width * height && width > 0 && height > 0).then(|| Self {
            width,
            height,
            alpha,
            category: category.to_owned(),
        })
    }

    /// Reads the alpha channel of an RGBA cut-out, shrinking it by an integer factor with a max
    /// filter until its longer side is at most `max_side` (a max keeps thin hairs visible).
    pub fn load(path: &Path, category: &str, max_side: usize) -> Result<Self, DamageError> {
        let img = image::open(path)
            .map_err(|source| DamageError::Image {
                path: path.to_owned(),
                source,
            })?
            .to_rgba8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let f = w.max(h).div_ceil(max_side.max(1)).max(1);
        let (ow, oh) = (w.div_ceil(f), h.div_ceil(f));
        let mut alpha = vec![0u8; ow * oh];
        for (x, y, px) in img.enumerate_pixels() {
            let i = (y as usize / f) * ow + x as usize / f;
            alpha[i] = alpha[i].max(px.0[3]);
        }
        Self::from_alpha(ow, oh, alpha, category)
            .ok_or_else(|| DamageError::Invalid(format!("{} is empty", path.display())))
    }

    /// Width of the alpha map.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height of the alpha map.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Bilinear alpha in `[0, 1]` at `(x, y)`; zero outside.
    fn sample(&self, x: f32, y: f32) -> f32 {
        if x < 0.0 || y < 0.0 {
            return 0.0;
        }
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        if x0 + 1 >= self.width || y0 + 1 >= self.height {
            return 0.0;
        }
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let a = |xx: usize, yy: usize| f32::from(self.alpha[yy * self.width + xx]) / 255.0;
        let top = a(x0, y0) * (1.0 - fx) + a(x0 + 1, y0) * fx;
        let bot = a(x0, y0 + 1) * (1.0 - fx) + a(x0 + 1, y0 + 1) * fx;
        top * (1.0 - fy) + bot * fy
    }
}

/// Real artifact shapes held in memory.
#[derive(Clone, Debug, Default)]
pub struct ArtifactBank {
    items: Vec<Artifact>,
}

impl ArtifactBank {
    /// A bank of given artifacts.
    pub fn new(items: Vec<Artifact>) -> Self {
        Self { items }
    }

    /// Reads `root/artifacts.csv` (`file,category`, paths relative to `root`), keeps up to
    /// `per_category` files of each category (a seeded choice, so the mix stays balanced: the
    /// set is mostly hair) and loads them at most `max_side` pixels on a side.
    pub fn load(
        root: &Path,
        per_category: usize,
        max_side: usize,
        seed: u64,
    ) -> Result<Self, DamageError> {
        let csv = root.join("artifacts.csv");
        let text = std::fs::read_to_string(&csv).map_err(|source| DamageError::Io {
            path: csv.clone(),
            source,
        })?;
        let mut by_cat: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in text.lines().skip(1) {
            let mut parts = line.trim().splitn(2, ',');
            if let (Some(file), Some(cat)) = (parts.next(), parts.next()) {
                by_cat
                    .entry(cat.trim().to_owned())
                    .or_default()
                    .push(file.trim().to_owned());
            }
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut chosen = Vec::new();
        for (cat, mut files) in by_cat {
            files.sort();
            files.shuffle(&mut rng);
            chosen.extend(
                files
                    .into_iter()
                    .take(per_category)
                    .map(|f| (f, cat.clone())),
            );
        }
        if chosen.is_empty() {
            return Err(DamageError::Invalid(format!(
                "{} lists no artifacts",
                csv.display()
            )));
        }
        let items = chosen
            .par_iter()
            .map(|(file, cat)| Artifact::load(&root.join(file), cat, max_side))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { items })
    }

    /// Number of artifacts.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when the bank holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Writes the bank as a folder that [`ArtifactBank::load`] reads back unchanged (with
    /// `max_side` at least the largest side, and `per_category` at least the largest
    /// category): `artifacts.csv` and one RGBA PNG per artifact under `artifacts/`, its alpha
    /// the coverage. For carrying the chosen, already shrunk artifacts to another machine.
    pub fn save_dir(&self, root: &Path) -> Result<(), DamageError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| DamageError::Io { path, source }
        };
        let dir = root.join("artifacts");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut csv = String::from("file,category\n");
        for (i, a) in self.items.iter().enumerate() {
            let file = format!("artifacts/{i:04}.png");
            let path = root.join(&file);
            let (w, h) = (a.width as u32, a.height as u32);
            let img = image::RgbaImage::from_fn(w, h, |x, y| {
                image::Rgba([255, 255, 255, a.alpha[y as usize * a.width + x as usize]])
            });
            img.save(&path)
                .map_err(|source| DamageError::Image { path, source })?;
            csv.push_str(&format!("{file},{}\n", a.category));
        }
        let path = root.join("artifacts.csv");
        std::fs::write(&path, csv).map_err(io(&path))
    }

    /// Artifacts per category.
    pub fn categories(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for a in &self.items {
            *out.entry(a.category.clone()).or_insert(0) += 1;
        }
        out
    }
}

/// What drew a damage pixel: for scoring detectors per kind of damage
/// ([`synthesize_traced`], the evaluation's recall by kind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DamageSource {
    /// Nothing (clean, or a change that no drawing can be traced to).
    #[default]
    None,
    /// A free-form brush stroke.
    Brush,
    /// A thin curved scratch.
    Scratch,
    /// A drawn hair.
    Hair,
    /// A dust speck or blob (also the fallback speck).
    Dust,
    /// A real artifact cut-out: its index in the [`ArtifactBank`].
    Artifact(u16),
    /// A long film scratch (drawn by the detector's synthesis).
    FilmScratch,
    /// A short film dash (training only).
    FilmDash,
    /// An emulsion crack (training only).
    Crack,
}

impl DamageSource {
    /// A short name; artifacts are named by their film-damage category (`artifact: hair`).
    pub fn name(self, bank: Option<&ArtifactBank>) -> String {
        match self {
            Self::None => "untraced".into(),
            Self::Brush => "brush stroke".into(),
            Self::Scratch => "thin scratch".into(),
            Self::Hair => "drawn hair".into(),
            Self::Dust => "dust speck".into(),
            Self::Artifact(i) => match bank.and_then(|b| b.items.get(usize::from(i))) {
                Some(a) => format!("artifact: {}", a.category),
                None => "artifact".into(),
            },
            Self::FilmScratch => "film scratch".into(),
            Self::FilmDash => "film dash".into(),
            Self::Crack => "emulsion crack".into(),
        }
    }
}

/// One damage layer being drawn: soft coverage per pixel, the colour it paints and what drew
/// most of it.
struct Layer {
    width: usize,
    height: usize,
    alpha: Vec<f32>,
    colour: Vec<[f32; 3]>,
    source: Vec<DamageSource>,
    /// What is drawing now.
    pen: DamageSource,
}

impl Layer {
    fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            alpha: vec![0.0; width * height],
            colour: vec![[0.0; 3]; width * height],
            source: vec![DamageSource::None; width * height],
            pen: DamageSource::None,
        }
    }

    /// Paints `a` of `colour` at pixel `i`, over what is there (alpha "over" compositing).
    fn paint(&mut self, i: usize, a: f32, colour: [f32; 3]) {
        let a = a.clamp(0.0, 1.0);
        if a <= 0.0 {
            return;
        }
        let old = self.alpha[i];
        let new = a + old * (1.0 - a);
        // The pixel is traced to whichever contributes more of its coverage.
        if a >= old * (1.0 - a) {
            self.source[i] = self.pen;
        }
        for (c, v) in self.colour[i].iter_mut().enumerate() {
            *v = (colour[c] * a + *v * old * (1.0 - a)) / new.max(1e-6);
        }
        self.alpha[i] = new;
    }

    /// A disc of radius `r` with a one-pixel soft edge.
    fn disc(&mut self, cx: f32, cy: f32, r: f32, opacity: f32, colour: [f32; 3]) {
        let ri = r.ceil() as isize + 1;
        let (x0, y0) = (cx.round() as isize, cy.round() as isize);
        for y in (y0 - ri).max(0)..(y0 + ri + 1).min(self.height as isize) {
            for x in (x0 - ri).max(0)..(x0 + ri + 1).min(self.width as isize) {
                let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
                let cover = (r + 0.5 - d).clamp(0.0, 1.0);
                if cover > 0.0 {
                    let i = y as usize * self.width + x as usize;
                    // Max, not over: overlapping stamps of one stroke must not darken it.
                    if cover * opacity > self.alpha[i] {
                        self.alpha[i] = 0.0;
                        self.paint(i, cover * opacity, colour);
                    }
                }
            }
        }
    }

    /// A smooth random walk stamped with discs of radius `r` (varying by `wobble`).
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &mut self,
        rng: &mut StdRng,
        start: (f32, f32),
        angle: f32,
        length: f32,
        r: f32,
        curl: f32,
        opacity: f32,
        colour: [f32; 3],
    ) {
        let (mut x, mut y) = start;
        let mut angle = angle;
        let mut turn = 0.0f32;
        let step = (r * 0.5).clamp(0.5, 2.0);
        let mut travelled = 0.0;
        while travelled < length {
            self.disc(x, y, r, opacity, colour);
            turn = 0.92 * turn + rng.random_range(-curl..=curl);
            angle += turn;
            x += angle.cos() * step;
            y += angle.sin() * step;
            travelled += step;
        }
    }
}

/// Random brightness of damage: bright (dust on a negative prints white) or dark.
fn damage_colour(rng: &mut StdRng) -> [f32; 3] {
    let v = if rng.random_bool(0.6) {
        rng.random_range(0.8..1.0)
    } else {
        rng.random_range(0.0..0.2)
    };
    let tint = rng.random_range(-0.04..0.04);
    [v + tint, v, v - tint]
}

/// Which kinds of damage [`synthesize`] draws, each with a probability per crop.
#[derive(Clone, Copy, Debug)]
pub struct DamageConfig {
    /// Free-form brush strokes (wide holes, as in DeepFill v2's training masks).
    pub brush: f64,
    /// Thin curved scratches (1-3 px).
    pub scratches: f64,
    /// Hairs: thin, curly, short.
    pub hairs: f64,
    /// Dust specks and blobs.
    pub dust: f64,
    /// Real artifact cut-outs (needs an [`ArtifactBank`]).
    pub artifacts: f64,
    /// Largest hole fraction kept; strokes stop once it is reached.
    pub max_coverage: f64,
    /// Size range in pixels (longer side, log-uniform) of the real artifacts; `None` scales
    /// them to 0.3 to 1.3 times the crop side (large holes, as inpainting training wants).
    pub artifact_px: Option<(f32, f32)>,
}

impl Default for DamageConfig {
    fn default() -> Self {
        Self {
            brush: 0.6,
            scratches: 0.35,
            hairs: 0.35,
            dust: 0.4,
            artifacts: 0.6,
            max_coverage: 0.5,
            artifact_px: None,
        }
    }
}

fn coverage(layer: &Layer) -> f64 {
    let n = layer.alpha.iter().filter(|&&a| a > MASK_THRESHOLD).count();
    n as f64 / layer.alpha.len().max(1) as f64
}

/// Composites one artifact onto `layer` with a random scale, rotation, opacity and colour.
fn stamp_artifact(layer: &mut Layer, art: &Artifact, px: Option<(f32, f32)>, rng: &mut StdRng) {
    let side = layer.width.max(layer.height) as f32;
    // Target size of the artifact's longer side on the crop.
    let target = match px {
        Some((lo, hi)) if lo > 0.0 && hi > lo => (rng.random_range(lo.ln()..hi.ln())).exp(),
        _ => side * rng.random_range(0.3..1.3),
    };
    let scale = target / art.width.max(art.height) as f32;
    let theta: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let (s, c) = theta.sin_cos();
    let opacity = rng.random_range(0.6..1.0);
    let colour = damage_colour(rng);
    let (cx, cy) = (
        rng.random_range(0.0..layer.width as f32),
        rng.random_range(0.0..layer.height as f32),
    );
    let (acx, acy) = (art.width as f32 / 2.0, art.height as f32 / 2.0);
    let flip = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
    for y in 0..layer.height {
        for x in 0..layer.width {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            // Inverse map: rotate back, unscale, into artifact coordinates.
            let u = (c * dx + s * dy) / scale * flip + acx;
            let v = (-s * dx + c * dy) / scale + acy;
            let a = art.sample(u, v) * opacity;
            if a > 0.0 {
                layer.paint(y * layer.width + x, a, colour);
            }
        }
    }
}

/// Damages a clean crop: returns `(damaged, mask)` where `damaged` equals `clean` outside the
/// mask and the mask marks every pixel the damage visibly altered. Deterministic for a seed.
/// Never returns an empty mask (a speck is added if nothing else landed).
pub fn synthesize(
    clean: &ImageF32,
    bank: Option<&ArtifactBank>,
    cfg: &DamageConfig,
    seed: u64,
) -> (ImageF32, Mask) {
    let (damaged, mask, _) = synthesize_traced(clean, bank, cfg, seed);
    (damaged, mask)
}

/// [`synthesize`], and for each pixel what drew most of its damage ([`DamageSource::None`]
/// where nothing did). Draws the same damage as [`synthesize`] for the same seed.
pub fn synthesize_traced(
    clean: &ImageF32,
    bank: Option<&ArtifactBank>,
    cfg: &DamageConfig,
    seed: u64,
) -> (ImageF32, Mask, Vec<DamageSource>) {
    let (w, h) = (clean.width(), clean.height());
    let mut rng = StdRng::seed_from_u64(seed ^ 0xda3a_6e5e_ed00_0001);
    let mut layer = Layer::new(w, h);
    let side = w.max(h) as f32;
    if w == 0 || h == 0 {
        return (clean.clone(), Mask::new(w, h), Vec::new());
    }
    layer.pen = DamageSource::Brush;
    if rng.random_bool(cfg.brush) {
        let strokes = rng.random_range(1..=4);
        for _ in 0..strokes {
            if coverage(&layer) > cfg.max_coverage * 0.7 {
                break;
            }
            let r = side * rng.random_range(0.025..0.09);
            let start = (
                rng.random_range(0.0..w as f32),
                rng.random_range(0.0..h as f32),
            );
            let colour = damage_colour(&mut rng);
            let angle = rng.random_range(0.0..std::f32::consts::TAU);
            let length = side * rng.random_range(0.2..0.8);
            layer.walk(&mut rng, start, angle, length, r, 0.08, 1.0, colour);
        }
    }
    layer.pen = DamageSource::Scratch;
    if rng.random_bool(cfg.scratches) {
        // Reuse the evaluation scratches (film-like, mostly vertical) plus a soft brightness.
        let m = mask_synth::scratch_mask(w, h, rng.random());
        let colour = damage_colour(&mut rng);
        let opacity = rng.random_range(0.6..1.0);
        for (i, &hole) in m.data().iter().enumerate() {
            if hole {
                layer.paint(i, opacity, colour);
            }
        }
    }
    layer.pen = DamageSource::Hair;
    if rng.random_bool(cfg.hairs) {
        for _ in 0..rng.random_range(1..=3) {
            let start = (
                rng.random_range(0.0..w as f32),
                rng.random_range(0.0..h as f32),
            );
            let colour = damage_colour(&mut rng);
            let angle = rng.random_range(0.0..std::f32::consts::TAU);
            let length = side * rng.random_range(0.1..0.5);
            let r = rng.random_range(0.5..1.2);
            let opacity = rng.random_range(0.7..1.0);
            layer.walk(&mut rng, start, angle, length, r, 0.06, opacity, colour);
        }
    }
    layer.pen = DamageSource::Dust;
    if rng.random_bool(cfg.dust) {
        let n = rng.random_range(3..30);
        for _ in 0..n {
            let colour = damage_colour(&mut rng);
            let (x, y) = (
                rng.random_range(0.0..w as f32),
                rng.random_range(0.0..h as f32),
            );
            // Mostly specks, a few blobs made of overlapping discs.
            if rng.random_bool(0.85) {
                layer.disc(x, y, rng.random_range(0.5..2.5), 1.0, colour);
            } else {
                for _ in 0..rng.random_range(2..6) {
                    let (ox, oy) = (rng.random_range(-4.0..4.0), rng.random_range(-4.0..4.0));
                    layer.disc(x + ox, y + oy, rng.random_range(1.5..4.5), 1.0, colour);
                }
            }
        }
    }
    if let Some(bank) = bank.filter(|b| !b.is_empty()) {
        if rng.random_bool(cfg.artifacts) {
            for _ in 0..rng.random_range(1..=3) {
                let k = rng.random_range(0..bank.items.len());
                let art = &bank.items[k];
                layer.pen = u16::try_from(k).map_or(DamageSource::None, DamageSource::Artifact);
                stamp_artifact(&mut layer, art, cfg.artifact_px, &mut rng);
                if coverage(&layer) > cfg.max_coverage {
                    break;
                }
            }
        }
    }
    if coverage(&layer) == 0.0 {
        layer.pen = DamageSource::Dust;
        let colour = damage_colour(&mut rng);
        let (x, y) = (
            rng.random_range(0.0..w as f32),
            rng.random_range(0.0..h as f32),
        );
        layer.disc(x, y, rng.random_range(1.5..6.0), 1.0, colour);
    }
    let mask = Mask::from_fn(w, h, |x, y| layer.alpha[y * w + x] > MASK_THRESHOLD);
    let ch = clean.channels();
    let mut damaged = clean.clone();
    for (i, px) in damaged.data_mut().chunks_exact_mut(ch).enumerate() {
        let a = layer.alpha[i];
        if a > MASK_THRESHOLD {
            for (c, v) in px.iter_mut().enumerate().take(3) {
                *v = (*v * (1.0 - a) + layer.colour[i][c] * a).clamp(0.0, 1.0);
            }
        }
    }
    (damaged, mask, layer.source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(w: usize, h: usize) -> ImageF32 {
        ImageF32::from_fn(w, h, 3, |x, y, c| {
            0.3 + 0.4 * ((x + 2 * y + c) % 7) as f32 / 7.0
        })
    }

    #[test]
    fn same_seed_same_damage_and_changes_only_inside_mask() {
        let clean = grey(64, 48);
        let cfg = DamageConfig::default();
        let (d1, m1) = synthesize(&clean, None, &cfg, 11);
        let (d2, m2) = synthesize(&clean, None, &cfg, 11);
        assert_eq!(d1, d2);
        assert_eq!(m1, m2);
        assert!(m1.count() > 0);
        for y in 0..48 {
            for x in 0..64 {
                if !m1.get(x, y) {
                    assert_eq!(d1.pixel(x, y), clean.pixel(x, y));
                }
            }
        }
        let (_, m3) = synthesize(&clean, None, &cfg, 12);
        assert_ne!(m1, m3);
    }

    /// A mix that draws nothing, to switch single kinds on.
    fn nothing() -> DamageConfig {
        DamageConfig {
            brush: 0.0,
            scratches: 0.0,
            hairs: 0.0,
            dust: 0.0,
            artifacts: 0.0,
            max_coverage: 0.5,
            artifact_px: None,
        }
    }

    #[test]
    fn each_kind_alone_draws_a_bounded_mask() {
        let clean = grey(96, 96);
        let off = nothing();
        for (i, cfg) in [
            DamageConfig { brush: 1.0, ..off },
            DamageConfig {
                scratches: 1.0,
                ..off
            },
            DamageConfig { hairs: 1.0, ..off },
            DamageConfig { dust: 1.0, ..off },
        ]
        .iter()
        .enumerate()
        {
            for seed in 0..5 {
                let (_, m) = synthesize(&clean, None, cfg, seed * 10 + i as u64);
                assert!(m.count() > 0, "kind {i} seed {seed}");
                assert!(m.coverage() < 0.8, "kind {i} covers {}", m.coverage());
            }
        }
        // Thin damage stays thin: hairs cover far less than brush strokes on average.
        let avg = |cfg: &DamageConfig| -> f64 {
            (0..10)
                .map(|s| synthesize(&clean, None, cfg, s).1.coverage())
                .sum::<f64>()
                / 10.0
        };
        assert!(
            avg(&DamageConfig { hairs: 1.0, ..off }) < avg(&DamageConfig { brush: 1.0, ..off })
        );
    }

    #[test]
    fn each_damaged_pixel_is_traced_to_the_kind_that_drew_it() {
        let clean = grey(96, 96);
        let off = DamageConfig {
            artifact_px: Some((20.0, 40.0)),
            ..nothing()
        };
        let disc = |w: usize| {
            let c = w as f32 / 2.0;
            (0..w * w)
                .map(|i| {
                    let (x, y) = ((i % w) as f32 + 0.5, (i / w) as f32 + 0.5);
                    if (x - c).hypot(y - c) < c * 0.8 {
                        255
                    } else {
                        0
                    }
                })
                .collect()
        };
        let bank = ArtifactBank::new(
            [(9, "stain"), (13, "smut")]
                .into_iter()
                .filter_map(|(w, cat)| Artifact::from_alpha(w, w, disc(w), cat))
                .collect(),
        );
        for (cfg, kinds) in [
            (
                DamageConfig { brush: 1.0, ..off },
                vec![DamageSource::Brush],
            ),
            (
                DamageConfig {
                    scratches: 1.0,
                    ..off
                },
                vec![DamageSource::Scratch],
            ),
            (DamageConfig { hairs: 1.0, ..off }, vec![DamageSource::Hair]),
            (DamageConfig { dust: 1.0, ..off }, vec![DamageSource::Dust]),
            (
                DamageConfig {
                    artifacts: 1.0,
                    ..off
                },
                vec![DamageSource::Artifact(0), DamageSource::Artifact(1)],
            ),
        ] {
            for seed in 0..4 {
                let (d, m, src) = synthesize_traced(&clean, Some(&bank), &cfg, seed);
                // The same damage as `synthesize` draws.
                assert_eq!((d, m.clone()), synthesize(&clean, Some(&bank), &cfg, seed));
                assert_eq!(src.len(), 96 * 96);
                for (i, &s) in src.iter().enumerate() {
                    if m.data()[i] {
                        assert!(kinds.contains(&s), "{kinds:?}, seed {seed}: {s:?}");
                    }
                }
            }
        }
        // Drawn over each other, the pixels are split between the kinds, and each is named.
        let all = DamageConfig {
            brush: 1.0,
            hairs: 1.0,
            dust: 1.0,
            artifacts: 1.0,
            ..off
        };
        let (_, m, src) = synthesize_traced(&clean, Some(&bank), &all, 3);
        let mut names: Vec<String> = m
            .data()
            .iter()
            .zip(&src)
            .filter(|(&t, _)| t)
            .map(|(_, s)| s.name(Some(&bank)))
            .collect();
        names.sort();
        names.dedup();
        assert!(names.len() >= 3, "{names:?}");
        assert!(!names.iter().any(|n| n == "untraced"), "{names:?}");
        assert!(
            names.iter().any(|n| n.starts_with("artifact: ")),
            "{names:?}"
        );
    }

    #[test]
    fn a_saved_bank_loads_back_unchanged() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let ramp =
            |w: usize, h: usize, k: usize| (0..w * h).map(|i| ((i * k) % 256) as u8).collect();
        let items: Vec<Artifact> = [(7, 5, 3, "hair"), (12, 9, 11, "dust"), (4, 4, 29, "hair")]
            .into_iter()
            .filter_map(|(w, h, k, cat)| Artifact::from_alpha(w, h, ramp(w, h, k), cat))
            .collect();
        assert_eq!(items.len(), 3);
        let bank = ArtifactBank::new(items);
        bank.save_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let back = ArtifactBank::load(dir.path(), 10, 12, 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.categories(), bank.categories());
        // Loading shuffles within a category: match each artifact by its size.
        for a in &bank.items {
            let found = back
                .items
                .iter()
                .find(|b| (b.width, b.height) == (a.width, a.height));
            let b = found.unwrap_or_else(|| panic!("no {}x{} artifact", a.width, a.height));
            assert_eq!((&b.alpha, &b.category), (&a.alpha, &a.category));
        }
    }

    #[test]
    fn artifacts_are_loaded_and_composited() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let sub = dir.path().join("artifacts/dust");
        std::fs::create_dir_all(&sub).unwrap_or_else(|e| panic!("{e}"));
        // A 40x40 white cut-out with an opaque 20x20 square in the middle.
        let img = image::RgbaImage::from_fn(40, 40, |x, y| {
            let inside = (10..30).contains(&x) && (10..30).contains(&y);
            image::Rgba([255, 255, 255, if inside { 255 } else { 0 }])
        });
        img.save(sub.join("a.png"))
            .unwrap_or_else(|e| panic!("save: {e}"));
        std::fs::write(
            dir.path().join("artifacts.csv"),
            "file,category\nartifacts/dust/a.png,dust\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let bank = ArtifactBank::load(dir.path(), 10, 20, 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bank.len(), 1);
        assert_eq!(bank.categories().get("dust"), Some(&1));
        assert_eq!((bank.items[0].width(), bank.items[0].height()), (20, 20));
        let only_art = DamageConfig {
            brush: 0.0,
            scratches: 0.0,
            hairs: 0.0,
            dust: 0.0,
            artifacts: 1.0,
            max_coverage: 0.9,
            artifact_px: None,
        };
        let clean = grey(32, 32);
        let mut hit = 0;
        for seed in 0..8 {
            let (_, m) = synthesize(&clean, Some(&bank), &only_art, seed);
            if m.count() > 30 {
                hit += 1;
            }
        }
        assert!(hit >= 4, "the square landed in only {hit} of 8 crops");
    }
}
