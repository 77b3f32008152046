//! Full-image restoration: split the mask into damaged regions, restore a crop around each
//! (in parallel), and paste back only the hole pixels.
//!
//! This is what makes cost grow with the damaged area rather than with the scan: a speck of
//! dust on a 24-megapixel scan costs a crop of a few thousand pixels. Known pixels are copied
//! from the input, so they stay bit-identical whatever the restorer does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use super::{check_inputs, Params, Reporter, RestoreError, Restorer};
use crate::imaging::{ImageF32, Mask, Rect};

/// Receives reports from a full-image restoration, in full-image coordinates.
pub trait RegionReporter: Sync {
    /// True once the job should stop.
    fn is_cancelled(&self) -> bool;
    /// `done` of `total` units of work are complete.
    fn progress(&self, done: u64, total: u64, message: &str);
    /// New pixels for the rectangle whose top-left corner is `(x, y)`.
    fn preview(&self, x: usize, y: usize, patch: &ImageF32);
    /// Whether a preview sent now would be used; lets callers skip building one that a
    /// throttled consumer would drop.
    fn wants_preview(&self) -> bool {
        true
    }
}

/// A region reporter that never cancels and drops every report.
pub struct Silent;

impl RegionReporter for Silent {
    fn is_cancelled(&self) -> bool {
        false
    }
    fn progress(&self, _: u64, _: u64, _: &str) {}
    fn preview(&self, _: usize, _: usize, _: &ImageF32) {}
    fn wants_preview(&self) -> bool {
        false
    }
}

/// One crop to restore: the rectangle, and the hole pixels (full-image indices) it owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// Crop rectangle, including context.
    pub crop: Rect,
    /// Indices `y * width + x` of the hole pixels this region pastes back.
    pub pixels: Vec<usize>,
}

/// Regions are not merged beyond this many pixels (unless one of them is already larger): a
/// scan with dense scattered dust would otherwise chain into one whole-image crop, which runs
/// on one thread and streams no preview until it is done.
pub const MAX_MERGED_AREA: usize = 384 * 384;

/// Finds 8-connected hole components, grows each by the restorer's context margin, and merges
/// components whose grown boxes overlap into one region, up to [`MAX_MERGED_AREA`].
///
/// Crops of regions that were not merged may still overlap; that is harmless because every
/// crop's mask marks all holes inside it (no hole is ever read as known) and each region pastes
/// back only its own pixels.
pub fn find_regions(mask: &Mask, margin: impl Fn(Rect) -> usize) -> Vec<Region> {
    let (w, h) = (mask.width(), mask.height());
    let comps = components(mask)
        .into_iter()
        .map(|pixels| {
            let bbox = bounding_box(&pixels, w);
            Region {
                crop: bbox.expand(margin(bbox), w, h),
                pixels,
            }
        })
        .collect();
    merge_overlapping(comps)
}

/// The smallest rectangle holding the pixels at row-major indices `pixels` of an image `width`
/// wide (an empty rectangle at the origin for no pixels).
pub fn bounding_box(pixels: &[usize], width: usize) -> Rect {
    if pixels.is_empty() {
        return Rect {
            x: 0,
            y: 0,
            width: 0,
            height: 0,
        };
    }
    let w = width.max(1);
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for &i in pixels {
        let (x, y) = (i % w, i / w);
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    Rect {
        x: x0,
        y: y0,
        width: x1 - x0 + 1,
        height: y1 - y0 + 1,
    }
}

/// The 8-connected components of the holes of `mask`, each as its pixel indices (row-major),
/// in the order of their first pixel.
pub fn components(mask: &Mask) -> Vec<Vec<usize>> {
    let (w, h) = (mask.width(), mask.height());
    let mut todo = mask.data().to_vec();
    let mut comps = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !todo[start] {
            continue;
        }
        todo[start] = false;
        stack.push(start);
        let mut pixels = Vec::new();
        while let Some(i) = stack.pop() {
            pixels.push(i);
            let (x, y) = (i % w, i / w);
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let j = ny * w + nx;
                    if todo[j] {
                        todo[j] = false;
                        stack.push(j);
                    }
                }
            }
        }
        comps.push(pixels);
    }
    comps
}

/// Unions regions whose crops intersect, repeatedly, until all crops are disjoint.
fn merge_overlapping(mut regions: Vec<Region>) -> Vec<Region> {
    loop {
        regions.sort_by_key(|r| r.crop.x);
        let mut merged: Vec<Region> = Vec::with_capacity(regions.len());
        let mut changed = false;
        // Sweep by left edge; `active` holds indices into `merged` whose right edge may still
        // reach the current crop.
        let mut active: Vec<usize> = Vec::new();
        for r in regions {
            active.retain(|&k| merged[k].crop.right() > r.crop.x);
            let fits = |m: &Region| {
                let u = m.crop.union(&r.crop).area();
                u <= MAX_MERGED_AREA.max(m.crop.area()).max(r.crop.area())
            };
            if let Some(&k) = active
                .iter()
                .find(|&&k| merged[k].crop.intersects(&r.crop) && fits(&merged[k]))
            {
                let m = &mut merged[k];
                m.crop = m.crop.union(&r.crop);
                m.pixels.extend(r.pixels);
                changed = true;
            } else {
                active.push(merged.len());
                merged.push(r);
            }
        }
        regions = merged;
        if !changed {
            return regions;
        }
    }
}

/// Maps one region's local progress into the job's global progress.
struct RegionScope<'a> {
    outer: &'a dyn RegionReporter,
    crop: Rect,
    weight: u64,
    reported: AtomicU64,
    global: &'a AtomicU64,
    total: u64,
    message: &'a str,
}

impl RegionScope<'_> {
    fn advance_to(&self, local: u64) {
        let prev = self.reported.swap(local, Ordering::Relaxed);
        let now = if local >= prev {
            self.global.fetch_add(local - prev, Ordering::Relaxed) + (local - prev)
        } else {
            self.global.fetch_sub(prev - local, Ordering::Relaxed) - (prev - local)
        };
        self.outer.progress(now, self.total, self.message);
    }
}

impl Reporter for RegionScope<'_> {
    fn is_cancelled(&self) -> bool {
        self.outer.is_cancelled()
    }
    fn progress(&self, done: u64, total: u64, _message: &str) {
        let local = (self.weight * done.min(total))
            .checked_div(total)
            .unwrap_or(0);
        self.advance_to(local);
    }
    fn preview(&self, image: &ImageF32) {
        self.outer.preview(self.crop.x, self.crop.y, image);
    }
}

/// Restores every hole of `mask` in `image` with `restorer`, region by region.
///
/// Returns the full image: hole pixels filled, every other pixel identical to `image`.
pub fn restore_image(
    restorer: &dyn Restorer,
    image: &ImageF32,
    mask: &Mask,
    params: &Params,
    rep: &dyn RegionReporter,
) -> Result<ImageF32, RestoreError> {
    check_inputs(image, mask)?;
    let regions = find_regions(mask, |b| restorer.context_margin(params, b));
    checkpoint_full(rep)?;
    let total: u64 = regions.iter().map(|r| r.pixels.len() as u64).sum();
    let global = AtomicU64::new(0);
    // Each region's fill, in the order of its `pixels`. The full-size output is assembled only
    // at the end, so a job on a large scan starts (and can be cancelled) without first copying
    // the whole image.
    let fills: Vec<Mutex<Vec<f32>>> = regions.iter().map(|_| Mutex::new(Vec::new())).collect();
    let w = image.width();
    let c = image.channels();
    let message = restorer.id();
    rep.progress(0, total, message);
    regions
        .par_iter()
        .zip(&fills)
        .try_for_each(|(region, fill)| {
            checkpoint_full(rep)?;
            let crop_img = image.crop(region.crop);
            let crop_mask = mask.crop(region.crop);
            let scope = RegionScope {
                outer: rep,
                crop: region.crop,
                weight: region.pixels.len() as u64,
                reported: AtomicU64::new(0),
                global: &global,
                total,
                message,
            };
            let restored = restorer.restore(&crop_img, &crop_mask, params, &scope)?;
            if restored.width() != crop_img.width()
                || restored.height() != crop_img.height()
                || restored.channels() != crop_img.channels()
            {
                return Err(RestoreError::Failed(format!(
                    "{} returned a {}x{}x{} image for a {}x{}x{} crop",
                    restorer.id(),
                    restored.width(),
                    restored.height(),
                    restored.channels(),
                    crop_img.width(),
                    crop_img.height(),
                    crop_img.channels()
                )));
            }
            let (cx, cy) = (region.crop.x, region.crop.y);
            let mut values = Vec::with_capacity(region.pixels.len() * c);
            for &i in &region.pixels {
                let s = restored.index(i % w - cx, i / w - cy);
                values.extend_from_slice(&restored.data()[s..s + c]);
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(RestoreError::Failed(format!(
                    "{} produced non-finite values",
                    restorer.id()
                )));
            }
            *fill
                .lock()
                .map_err(|_| RestoreError::Failed("a region worker panicked".into()))? = values;
            scope.advance_to(scope.weight);
            if rep.wants_preview() {
                let mut done_patch = crop_img;
                done_patch.paste(&restored, 0, 0, Some(&crop_mask));
                rep.preview(cx, cy, &done_patch);
            }
            Ok(())
        })?;
    checkpoint_full(rep)?;
    let mut out = image.clone();
    let dst = out.data_mut();
    for (region, fill) in regions.iter().zip(fills) {
        let values = fill
            .into_inner()
            .map_err(|_| RestoreError::Failed("a region worker panicked".into()))?;
        for (&i, v) in region.pixels.iter().zip(values.chunks_exact(c)) {
            dst[i * c..(i + 1) * c].copy_from_slice(v);
        }
    }
    Ok(out)
}

fn checkpoint_full(rep: &dyn RegionReporter) -> Result<(), RestoreError> {
    if rep.is_cancelled() {
        Err(RestoreError::Cancelled)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounding_box_of_row_major_pixels() {
        // Pixels (3, 1), (1, 2) and (4, 4) of a 10-wide image.
        let r = bounding_box(&[13, 21, 44], 10);
        assert_eq!((r.x, r.y, r.width, r.height), (1, 1, 4, 4));
        let one = bounding_box(&[7], 10);
        assert_eq!((one.x, one.y, one.width, one.height), (7, 0, 1, 1));
        assert_eq!(bounding_box(&[], 10).area(), 0);
    }

    #[test]
    fn regions_are_found_and_merged() {
        let mut m = Mask::new(100, 40);
        m.set(10, 10, true);
        m.set(11, 11, true); // 8-connected to (10,10)
        m.set(20, 10, true); // merges with the first when margins reach
        m.set(80, 30, true); // far away
        let tight = find_regions(&m, |_| 0);
        assert_eq!(tight.len(), 3);
        let wide = find_regions(&m, |_| 5);
        assert_eq!(wide.len(), 2);
        let mut sizes: Vec<usize> = wide.iter().map(|r| r.pixels.len()).collect();
        sizes.sort();
        assert_eq!(sizes, vec![1, 3]);
        // A dense chain of specks does not collapse into one huge region.
        let chain = Mask::from_fn(4000, 50, |x, y| y == 25 && x % 40 == 0);
        let regions = find_regions(&chain, |_| 30);
        assert!(regions.len() >= 2, "{} regions", regions.len());
        assert!(regions.iter().all(|r| r.crop.area() <= MAX_MERGED_AREA));
        assert_eq!(regions.iter().map(|r| r.pixels.len()).sum::<usize>(), 100);
        for r in &wide {
            for &i in &r.pixels {
                let (x, y) = (i % 100, i / 100);
                assert!(
                    x >= r.crop.x && x < r.crop.right() && y >= r.crop.y && y < r.crop.bottom()
                );
            }
        }
    }
}
