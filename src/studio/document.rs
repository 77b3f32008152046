//! The document being edited: the original image (never modified), the current result, the
//! damage mask and the undo history.
//!
//! History entries store only the tiles that changed (before and after), so a brush stroke on a
//! 24-megapixel scan costs a few kilobytes, not another copy of the scan.

use std::path::PathBuf;
use std::sync::Arc;

use crate::imaging::{BitDepth, ImageF32, Mask, Rect};

/// Side of the square tiles in which history diffs are stored.
const DIFF_TILE: usize = 64;

/// History is trimmed (oldest first) above this many bytes of stored diffs.
const HISTORY_BUDGET: usize = 1 << 30;

/// A grid of samples that a [`TileDiff`] can read and write.
trait Grid {
    type Sample: Copy + PartialEq;
    fn dims(&self) -> (usize, usize, usize);
    fn samples(&self) -> &[Self::Sample];
    fn samples_mut(&mut self) -> &mut [Self::Sample];
}

impl Grid for ImageF32 {
    type Sample = f32;
    fn dims(&self) -> (usize, usize, usize) {
        (self.width(), self.height(), self.channels())
    }
    fn samples(&self) -> &[f32] {
        self.data()
    }
    fn samples_mut(&mut self) -> &mut [f32] {
        self.data_mut()
    }
}

impl Grid for Mask {
    type Sample = bool;
    fn dims(&self) -> (usize, usize, usize) {
        (self.width(), self.height(), 1)
    }
    fn samples(&self) -> &[bool] {
        self.data()
    }
    fn samples_mut(&mut self) -> &mut [bool] {
        self.data_mut()
    }
}

/// The tiles of one grid that an edit changed, with their contents before and after.
#[derive(Clone, Debug, Default)]
pub struct TileDiff<T> {
    tiles: Vec<(Rect, Vec<T>, Vec<T>)>,
}

impl<T: Copy + PartialEq> TileDiff<T> {
    /// True when the edit changed nothing.
    pub fn is_empty(&self) -> bool {
        self.tiles.is_empty()
    }

    /// The smallest rectangle covering every changed tile.
    pub fn bounds(&self) -> Option<Rect> {
        self.tiles.iter().map(|t| t.0).reduce(|a, b| a.union(&b))
    }

    fn bytes(&self) -> usize {
        self.tiles
            .iter()
            .map(|t| (t.1.len() + t.2.len()) * std::mem::size_of::<T>())
            .sum()
    }
}

fn read_rect<G: Grid>(g: &G, r: Rect) -> Vec<G::Sample> {
    let (w, _, c) = g.dims();
    let mut out = Vec::with_capacity(r.area() * c);
    for y in r.y..r.bottom() {
        let s = (y * w + r.x) * c;
        out.extend_from_slice(&g.samples()[s..s + r.width * c]);
    }
    out
}

fn write_rect<G: Grid>(g: &mut G, r: Rect, src: &[G::Sample]) {
    let (w, _, c) = g.dims();
    let row = r.width * c;
    for (i, y) in (r.y..r.bottom()).enumerate() {
        let s = (y * w + r.x) * c;
        g.samples_mut()[s..s + row].copy_from_slice(&src[i * row..(i + 1) * row]);
    }
}

/// Tiles of a `width` x `height` grid that intersect `area`.
fn tiles_in(width: usize, height: usize, area: Rect) -> impl Iterator<Item = Rect> {
    let (tx0, ty0) = (area.x / DIFF_TILE, area.y / DIFF_TILE);
    let tx1 = area.right().min(width).div_ceil(DIFF_TILE);
    let ty1 = area.bottom().min(height).div_ceil(DIFF_TILE);
    (ty0..ty1).flat_map(move |ty| {
        (tx0..tx1).map(move |tx| {
            let (x, y) = (tx * DIFF_TILE, ty * DIFF_TILE);
            Rect {
                x,
                y,
                width: DIFF_TILE.min(width - x),
                height: DIFF_TILE.min(height - y),
            }
        })
    })
}

/// Compares `before` and `after` (same size) inside `area` and keeps the tiles that differ.
fn diff<G: Grid>(before: &G, after: &G, area: Rect) -> TileDiff<G::Sample> {
    let (w, h, _) = before.dims();
    let tiles = tiles_in(w, h, area)
        .filter_map(|r| {
            let (b, a) = (read_rect(before, r), read_rect(after, r));
            (b != a).then_some((r, b, a))
        })
        .collect();
    TileDiff { tiles }
}

fn apply<G: Grid>(g: &mut G, d: &TileDiff<G::Sample>, forward: bool) {
    for (r, before, after) in &d.tiles {
        write_rect(g, *r, if forward { after } else { before });
    }
}

/// Scattered samples of one grid that an edit changed: pixel indices with their samples before
/// and after. A repair of dust on a large scan changes a few thousand scattered pixels; storing
/// (and applying) only those keeps its cost proportional to the damage, not to the tiles it
/// touches.
#[derive(Clone, Debug, Default)]
pub struct PixelDiff<T> {
    channels: usize,
    pixels: Vec<usize>,
    before: Vec<T>,
    after: Vec<T>,
}

impl<T: Copy + PartialEq> PixelDiff<T> {
    fn new(channels: usize) -> Self {
        Self {
            channels,
            pixels: Vec::new(),
            before: Vec::new(),
            after: Vec::new(),
        }
    }

    fn push(&mut self, pixel: usize, before: &[T], after: &[T]) {
        self.pixels.push(pixel);
        self.before.extend_from_slice(before);
        self.after.extend_from_slice(after);
    }

    /// True when the edit changed nothing.
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    fn bytes(&self) -> usize {
        self.pixels.len() * std::mem::size_of::<usize>()
            + (self.before.len() + self.after.len()) * std::mem::size_of::<T>()
    }

    /// One-pixel rectangles of the changed pixels of a `width`-wide grid.
    fn rects(&self, width: usize) -> impl Iterator<Item = Rect> + '_ {
        self.pixels.iter().map(move |&i| Rect {
            x: i % width,
            y: i / width,
            width: 1,
            height: 1,
        })
    }

    fn apply<G: Grid<Sample = T>>(&self, g: &mut G, forward: bool) {
        let c = self.channels;
        let src = if forward { &self.after } else { &self.before };
        let dst = g.samples_mut();
        for (k, &i) in self.pixels.iter().enumerate() {
            dst[i * c..(i + 1) * c].copy_from_slice(&src[k * c..(k + 1) * c]);
        }
    }
}

/// Indices of the hole pixels of `m`, skipping empty runs quickly (a 100 MP mask with scattered
/// dust is almost all empty).
fn hole_indices(m: &Mask) -> Vec<usize> {
    const RUN: usize = 64;
    let mut out = Vec::new();
    for (k, run) in m.data().chunks(RUN).enumerate() {
        if run.iter().any(|&h| h) {
            out.extend(
                run.iter()
                    .enumerate()
                    .filter(|(_, &h)| h)
                    .map(|(j, _)| k * RUN + j),
            );
        }
    }
    out
}

/// One undoable change.
#[derive(Clone, Debug)]
pub enum Edit {
    /// A brush or eraser stroke, clear, invert or loaded mask.
    Mask(TileDiff<bool>),
    /// A repair applied to the image; the mask it consumed is cleared in the same step.
    Repair {
        /// Changed image pixels.
        image: PixelDiff<f32>,
        /// Mask pixels the repair cleared.
        mask: PixelDiff<bool>,
    },
}

impl Edit {
    fn bytes(&self) -> usize {
        match self {
            Edit::Mask(m) => m.bytes(),
            Edit::Repair { image, mask } => image.bytes() + mask.bytes(),
        }
    }
}

/// Which regions of the document changed since the textures were last updated.
///
/// Kept as a list of rectangles, not one bounding box: a repair of scattered dust on a large
/// scan touches a few hundred small tiles, and re-uploading their bounding box (often the
/// whole scan) would stall the UI for a noticeable fraction of a second.
#[derive(Clone, Debug, Default)]
pub struct Dirty {
    /// Changed image pixels.
    pub image: Vec<Rect>,
    /// Changed mask pixels.
    pub mask: Vec<Rect>,
}

/// Merges `rects` cell by cell on a `cell`-pixel grid: each rectangle is clipped to the cells
/// it covers and the pieces in one cell are replaced by their bounding box. Bounds the number
/// of texture updates while keeping each close to what changed.
pub fn coalesce(rects: &[Rect], cell: usize) -> Vec<Rect> {
    let cell = cell.max(1);
    let mut cells: std::collections::BTreeMap<(usize, usize), Rect> = Default::default();
    for r in rects.iter().filter(|r| r.area() > 0) {
        for cy in r.y / cell..=(r.bottom() - 1) / cell {
            for cx in r.x / cell..=(r.right() - 1) / cell {
                let (x0, y0) = (r.x.max(cx * cell), r.y.max(cy * cell));
                let (x1, y1) = (
                    r.right().min((cx + 1) * cell),
                    r.bottom().min((cy + 1) * cell),
                );
                let piece = Rect {
                    x: x0,
                    y: y0,
                    width: x1 - x0,
                    height: y1 - y0,
                };
                cells
                    .entry((cx, cy))
                    .and_modify(|u| *u = u.union(&piece))
                    .or_insert(piece);
            }
        }
    }
    cells.into_values().collect()
}

fn grow(slot: &mut Option<Rect>, r: Rect) {
    *slot = Some(match slot {
        Some(s) => s.union(&r),
        None => r,
    });
}

fn mark_diff<T>(list: &mut Vec<Rect>, d: &TileDiff<T>) {
    list.extend(d.tiles.iter().map(|t| t.0));
}

/// An open image with its mask and history.
pub struct Document {
    /// Where the image came from (`None` for the built-in demo).
    pub path: Option<PathBuf>,
    /// Sample depth of the source, kept for Save As.
    pub depth: BitDepth,
    original: Arc<ImageF32>,
    current: Arc<ImageF32>,
    mask: Arc<Mask>,
    undo: Vec<Edit>,
    redo: Vec<Edit>,
    /// The mask as it was when the running stroke began (freed when the stroke ends).
    stroke_start: Option<(Mask, Option<Rect>)>,
    dirty: Dirty,
    /// Number of hole pixels, kept up to date by every edit (counting a 100 MP mask each
    /// frame would cost tens of milliseconds).
    mask_count: usize,
    /// True when the image differs from what was last saved (or loaded).
    pub unsaved: bool,
}

impl Document {
    /// A document for `image` with an empty mask.
    pub fn new(image: ImageF32, depth: BitDepth, path: Option<PathBuf>) -> Self {
        let mask = Mask::new(image.width(), image.height());
        let image = Arc::new(image);
        Self {
            path,
            depth,
            original: image.clone(),
            current: image,
            mask: Arc::new(mask),
            undo: Vec::new(),
            redo: Vec::new(),
            stroke_start: None,
            dirty: Dirty::default(),
            mask_count: 0,
            unsaved: false,
        }
    }

    /// A document for `image` whose mask starts as `mask` (ignored if its size differs).
    pub fn with_mask(image: ImageF32, mask: Mask, depth: BitDepth, path: Option<PathBuf>) -> Self {
        let mut doc = Self::new(image, depth, path);
        if mask.width() == doc.width() && mask.height() == doc.height() {
            doc.mask_count = mask.count();
            doc.mask = Arc::new(mask);
        }
        doc
    }

    /// Number of hole pixels in the mask (kept up to date, no scan).
    pub fn mask_count(&self) -> usize {
        self.mask_count
    }

    /// Fraction of the image that is masked, in `[0, 1]`.
    pub fn mask_coverage(&self) -> f64 {
        let n = self.width() * self.height();
        if n == 0 {
            0.0
        } else {
            self.mask_count as f64 / n as f64
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.current.width()
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.current.height()
    }

    /// The whole image as a rectangle.
    pub fn full_rect(&self) -> Rect {
        Rect {
            x: 0,
            y: 0,
            width: self.width(),
            height: self.height(),
        }
    }

    /// The image as loaded.
    pub fn original(&self) -> &Arc<ImageF32> {
        &self.original
    }

    /// The image with every applied repair.
    pub fn current(&self) -> &Arc<ImageF32> {
        &self.current
    }

    /// The damage mask.
    pub fn mask(&self) -> &Arc<Mask> {
        &self.mask
    }

    /// Takes the regions changed since the last call.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Whether there is something to undo.
    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    /// Whether there is something to redo.
    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// Number of entries in the undo stack.
    pub fn undo_len(&self) -> usize {
        self.undo.len()
    }

    fn push(&mut self, edit: Edit) {
        self.redo.clear();
        self.undo.push(edit);
        let mut total: usize = self.undo.iter().map(Edit::bytes).sum();
        // Drop the oldest steps rather than grow without bound on huge scans.
        while total > HISTORY_BUDGET && self.undo.len() > 1 {
            total -= self.undo.remove(0).bytes();
        }
    }

    /// Starts a brush or eraser stroke; the mask is remembered until [`Self::end_stroke`].
    pub fn begin_stroke(&mut self) {
        if self.stroke_start.is_none() {
            self.stroke_start = Some(((*self.mask).clone(), None));
        }
    }

    /// True between [`Self::begin_stroke`] and [`Self::end_stroke`].
    pub fn in_stroke(&self) -> bool {
        self.stroke_start.is_some()
    }

    /// Paints (or erases) a capsule of `radius` image pixels from `a` to `b` (image
    /// coordinates, pixel centres at `+0.5`). Painting whole segments keeps strokes continuous
    /// however fast the pointer moves and whatever the zoom.
    pub fn paint_segment(&mut self, a: [f32; 2], b: [f32; 2], radius: f32, hole: bool) {
        let (w, h) = (self.width() as f32, self.height() as f32);
        let r = radius.max(0.5);
        let x0 = (a[0].min(b[0]) - r).floor().max(0.0);
        let y0 = (a[1].min(b[1]) - r).floor().max(0.0);
        let x1 = (a[0].max(b[0]) + r).ceil().min(w);
        let y1 = (a[1].max(b[1]) + r).ceil().min(h);
        if x1 <= x0 || y1 <= y0 {
            return;
        }
        let rect = Rect {
            x: x0 as usize,
            y: y0 as usize,
            width: (x1 - x0) as usize,
            height: (y1 - y0) as usize,
        };
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let len2 = dx * dx + dy * dy;
        let mask = Arc::make_mut(&mut self.mask);
        let mut touched = false;
        for y in rect.y..rect.bottom() {
            for x in rect.x..rect.right() {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                // Distance from the pixel centre to the segment.
                let t = if len2 > 0.0 {
                    (((px - a[0]) * dx + (py - a[1]) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (qx, qy) = (a[0] + t * dx - px, a[1] + t * dy - py);
                if qx * qx + qy * qy <= r * r && mask.get(x, y) != hole {
                    mask.set(x, y, hole);
                    if hole {
                        self.mask_count += 1;
                    } else {
                        self.mask_count -= 1;
                    }
                    touched = true;
                }
            }
        }
        if touched {
            self.dirty.mask.push(rect);
            if let Some((_, area)) = &mut self.stroke_start {
                grow(area, rect);
            }
        }
    }

    /// Ends the stroke and records it in the history; returns whether anything changed.
    pub fn end_stroke(&mut self) -> bool {
        let Some((before, area)) = self.stroke_start.take() else {
            return false;
        };
        let Some(area) = area else {
            return false;
        };
        let d = diff(&before, &*self.mask, area);
        if d.is_empty() {
            return false;
        }
        self.push(Edit::Mask(d));
        true
    }

    /// Replaces the whole mask as one undoable step (clear, invert, load).
    pub fn replace_mask(&mut self, new: Mask) -> bool {
        if new.width() != self.width() || new.height() != self.height() {
            return false;
        }
        let d = diff(&*self.mask, &new, self.full_rect());
        if d.is_empty() {
            return false;
        }
        mark_diff(&mut self.dirty.mask, &d);
        self.mask_count = new.count();
        self.mask = Arc::new(new);
        self.push(Edit::Mask(d));
        true
    }

    /// Applies a finished repair: the hole pixels of `result` go into the current image, and
    /// the holes it filled are cleared from the mask, both in one undo step.
    ///
    /// `input` is the image the job started from. When the document still shows it (nothing
    /// was undone meanwhile), `result` simply becomes the current image: the pipeline leaves
    /// every pixel outside `holes` bit-identical to `input`, and taking its buffer avoids
    /// copying a large scan on the UI thread. Otherwise only the hole pixels are written.
    pub fn apply_repair(
        &mut self,
        result: Arc<ImageF32>,
        holes: Arc<Mask>,
        input: &Arc<ImageF32>,
    ) -> Option<Rect> {
        if result.width() != self.width()
            || result.height() != self.height()
            || result.channels() != self.current.channels()
            || holes.width() != self.width()
            || holes.height() != self.height()
        {
            return None;
        }
        let swap = Arc::ptr_eq(&self.current, input);
        let (w, c) = (self.width(), self.current.channels());
        let mut image_diff = PixelDiff::new(c);
        let mut mask_diff = PixelDiff::new(1);
        let hole_pixels = hole_indices(&holes);
        // Usually the job's mask is still the document's: letting go of it first spares
        // `make_mut` a copy of the whole mask.
        drop(holes);
        let mask = Arc::make_mut(&mut self.mask);
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for &i in &hole_pixels {
            // Every hole pixel is redrawn, changed or not: a streamed preview may have shown
            // another value there.
            self.dirty.image.push(Rect {
                x: i % w,
                y: i / w,
                width: 1,
                height: 1,
            });
            let mut touched = false;
            let (before, after) = (
                &self.current.data()[i * c..(i + 1) * c],
                &result.data()[i * c..(i + 1) * c],
            );
            if before != after {
                image_diff.push(i, before, after);
                touched = true;
            }
            if mask.data()[i] {
                mask_diff.push(i, &[true], &[false]);
                self.mask_count -= 1;
                mask.data_mut()[i] = false;
                touched = true;
            }
            if touched {
                let (x, y) = (i % w, i / w);
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
        if x0 == usize::MAX {
            return None;
        }
        if swap {
            self.current = result;
        } else {
            // Only hole pixels are taken from the result, so edits made while the job ran
            // (an undo) survive.
            image_diff.apply(Arc::make_mut(&mut self.current), true);
        }
        if !image_diff.is_empty() {
            self.unsaved = true;
        }
        self.dirty.mask.extend(mask_diff.rects(w));
        self.push(Edit::Repair {
            image: image_diff,
            mask: mask_diff,
        });
        Some(Rect {
            x: x0,
            y: y0,
            width: x1 - x0 + 1,
            height: y1 - y0 + 1,
        })
    }

    fn replay(&mut self, edit: &Edit, forward: bool) {
        match edit {
            Edit::Mask(m) => {
                apply(Arc::make_mut(&mut self.mask), m, forward);
                self.mask_count = self.mask.count();
                mark_diff(&mut self.dirty.mask, m);
            }
            Edit::Repair { image, mask } => {
                let w = self.width();
                image.apply(Arc::make_mut(&mut self.current), forward);
                mask.apply(Arc::make_mut(&mut self.mask), forward);
                // A repair's mask diff only ever clears holes.
                if forward {
                    self.mask_count -= mask.pixels.len();
                } else {
                    self.mask_count += mask.pixels.len();
                }
                if !image.is_empty() {
                    self.dirty.image.extend(image.rects(w));
                    self.unsaved = true;
                }
                self.dirty.mask.extend(mask.rects(w));
            }
        }
    }

    /// Reverts the newest edit; returns false when there is none.
    pub fn undo(&mut self) -> bool {
        let _ = self.end_stroke();
        let Some(edit) = self.undo.pop() else {
            return false;
        };
        self.replay(&edit, false);
        self.redo.push(edit);
        true
    }

    /// Re-applies the newest undone edit; returns false when there is none.
    pub fn redo(&mut self) -> bool {
        let Some(edit) = self.redo.pop() else {
            return false;
        };
        self.replay(&edit, true);
        self.undo.push(edit);
        true
    }

    /// Marks everything for a full texture upload (after opening).
    pub fn mark_all_dirty(&mut self) {
        let r = self.full_rect();
        self.dirty = Dirty {
            image: vec![r],
            mask: vec![r],
        };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn coalesce_merges_per_cell_and_covers_everything() {
        let r = |x, y, width, height| Rect {
            x,
            y,
            width,
            height,
        };
        let rects = [
            r(0, 0, 10, 10),
            r(20, 20, 5, 5),
            r(600, 600, 30, 30),
            r(1020, 5, 10, 4),
        ];
        let out = coalesce(&rects, 512);
        // The two in cell (0,0) merge; the last one straddles cells (1,0) and (2,0).
        assert_eq!(out.len(), 1 + 1 + 2);
        for src in &rects {
            for y in src.y..src.bottom() {
                for x in src.x..src.right() {
                    assert!(out
                        .iter()
                        .any(|o| x >= o.x && x < o.right() && y >= o.y && y < o.bottom()));
                }
            }
        }
        assert!(out.iter().map(|o| o.area()).sum::<usize>() < 30_000);
    }

    use super::*;

    #[test]
    fn stroke_undo_redo_round_trip() {
        let img = ImageF32::from_fn(150, 90, 3, |x, y, c| ((x + y + c) % 7) as f32 / 7.0);
        let mut doc = Document::new(img, BitDepth::U8, None);
        doc.begin_stroke();
        doc.paint_segment([10.0, 10.0], [140.0, 80.0], 3.0, true);
        assert!(doc.end_stroke());
        let painted = doc.mask().count();
        assert!(painted > 100);
        assert!(doc.undo());
        assert_eq!(doc.mask().count(), 0);
        assert!(doc.redo());
        assert_eq!(doc.mask().count(), painted);
    }

    #[test]
    fn repair_diff_covers_only_hole_pixels_and_undoes() {
        let img = ImageF32::new(300, 300, 1);
        for swap in [true, false] {
            let mut doc = Document::new(img.clone(), BitDepth::U16, None);
            doc.begin_stroke();
            doc.paint_segment([5.0, 5.0], [6.0, 6.0], 2.0, true);
            doc.end_stroke();
            let holes = (**doc.mask()).clone();
            let mut result = (**doc.current()).clone();
            for y in 0..300 {
                for x in 0..300 {
                    if holes.get(x, y) {
                        result.pixel_mut(x, y)[0] = 1.0;
                    }
                }
            }
            // When the document moved on since the job started, only hole pixels are copied.
            let input = if swap {
                doc.current().clone()
            } else {
                Arc::new(ImageF32::new(300, 300, 1))
            };
            let b = doc
                .apply_repair(Arc::new(result), Arc::new(holes.clone()), &input)
                .expect("changed");
            assert!(b.width <= 8 && b.height <= 8, "{b:?}");
            assert_eq!(doc.mask().count(), 0);
            assert_eq!(doc.current().pixel(5, 5), &[1.0]);
            assert_eq!(doc.current().pixel(100, 100), &[0.0]);
            assert!(doc.undo());
            assert_eq!(doc.current().data(), doc.original().data());
            assert_eq!(doc.mask().count(), holes.count());
            assert!(doc.redo());
            assert_eq!(doc.current().pixel(5, 5), &[1.0]);
        }
    }

    #[test]
    fn mask_count_follows_every_edit() {
        let mut doc = Document::new(ImageF32::new(80, 60, 1), BitDepth::U8, None);
        let check = |d: &Document| assert_eq!(d.mask_count(), d.mask().count());
        doc.begin_stroke();
        doc.paint_segment([10.0, 10.0], [50.0, 30.0], 3.0, true);
        doc.end_stroke();
        check(&doc);
        doc.begin_stroke();
        doc.paint_segment([20.0, 10.0], [40.0, 40.0], 2.0, false);
        doc.end_stroke();
        check(&doc);
        let holes = (**doc.mask()).clone();
        let mut result = (**doc.current()).clone();
        result.data_mut().iter_mut().for_each(|v| *v = 0.5);
        let input = doc.current().clone();
        doc.apply_repair(Arc::new(result), Arc::new(holes), &input);
        check(&doc);
        assert_eq!(doc.mask_count(), 0);
        for _ in 0..3 {
            doc.undo();
            check(&doc);
        }
        doc.redo();
        check(&doc);
        assert!(doc.mask_coverage() > 0.0);
    }
}
