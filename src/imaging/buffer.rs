//! In-memory pixel buffers shared by every restorer: interleaved `f32` images and binary masks.

/// An interleaved floating-point image with values nominally in `[0, 1]`.
///
/// Pixel `(x, y)` channel `c` lives at `data[(y * width + x) * channels + c]`.
/// 8- and 16-bit sources convert to this exactly (`v / 255` or `v / 65535`) and convert back
/// bit-identically, so restorers may copy known pixels through it without loss.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageF32 {
    width: usize,
    height: usize,
    channels: usize,
    data: Vec<f32>,
}

impl ImageF32 {
    /// A black image.
    pub fn new(width: usize, height: usize, channels: usize) -> Self {
        Self {
            width,
            height,
            channels,
            data: vec![0.0; width * height * channels],
        }
    }

    /// Wraps existing samples; returns `None` when `data.len() != width * height * channels`.
    pub fn from_vec(width: usize, height: usize, channels: usize, data: Vec<f32>) -> Option<Self> {
        (data.len() == width * height * channels).then_some(Self {
            width,
            height,
            channels,
            data,
        })
    }

    /// Builds an image by evaluating `f(x, y, c)` for every sample.
    pub fn from_fn(
        width: usize,
        height: usize,
        channels: usize,
        mut f: impl FnMut(usize, usize, usize) -> f32,
    ) -> Self {
        let mut data = Vec::with_capacity(width * height * channels);
        for y in 0..height {
            for x in 0..width {
                for c in 0..channels {
                    data.push(f(x, y, c));
                }
            }
        }
        Self {
            width,
            height,
            channels,
            data,
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Samples per pixel (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// All samples, interleaved row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// All samples, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the image, returning its samples.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Index of the first sample of pixel `(x, y)`.
    #[inline]
    pub fn index(&self, x: usize, y: usize) -> usize {
        (y * self.width + x) * self.channels
    }

    /// The samples of pixel `(x, y)`.
    #[inline]
    pub fn pixel(&self, x: usize, y: usize) -> &[f32] {
        let i = self.index(x, y);
        &self.data[i..i + self.channels]
    }

    /// The samples of pixel `(x, y)`, mutable.
    #[inline]
    pub fn pixel_mut(&mut self, x: usize, y: usize) -> &mut [f32] {
        let i = self.index(x, y);
        let c = self.channels;
        &mut self.data[i..i + c]
    }

    /// Copies the rectangle `rect` out into a new image.
    pub fn crop(&self, rect: Rect) -> Self {
        let mut out = Self::new(rect.width, rect.height, self.channels);
        let row = rect.width * self.channels;
        for y in 0..rect.height {
            let src = self.index(rect.x, rect.y + y);
            out.data[y * row..(y + 1) * row].copy_from_slice(&self.data[src..src + row]);
        }
        out
    }

    /// Writes `patch` into this image with its top-left corner at `(x, y)`.
    ///
    /// Only pixels where `only` is set (if given, in patch coordinates) are written.
    pub fn paste(&mut self, patch: &ImageF32, x: usize, y: usize, only: Option<&Mask>) {
        debug_assert_eq!(patch.channels, self.channels);
        let c = self.channels;
        for py in 0..patch.height {
            for px in 0..patch.width {
                if only.is_some_and(|m| !m.get(px, py)) {
                    continue;
                }
                let d = self.index(x + px, y + py);
                let s = patch.index(px, py);
                self.data[d..d + c].copy_from_slice(&patch.data[s..s + c]);
            }
        }
    }
}

/// An axis-aligned rectangle in pixel coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left column.
    pub x: usize,
    /// Top row.
    pub y: usize,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

impl Rect {
    /// Number of pixels covered.
    pub fn area(&self) -> usize {
        self.width * self.height
    }

    /// One past the right column.
    pub fn right(&self) -> usize {
        self.x + self.width
    }

    /// One past the bottom row.
    pub fn bottom(&self) -> usize {
        self.y + self.height
    }

    /// Grows the rectangle by `margin` on every side, clamped to a `width` x `height` image.
    pub fn expand(&self, margin: usize, width: usize, height: usize) -> Rect {
        let x0 = self.x.saturating_sub(margin);
        let y0 = self.y.saturating_sub(margin);
        let x1 = (self.right() + margin).min(width);
        let y1 = (self.bottom() + margin).min(height);
        Rect {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }
    }

    /// True when the two rectangles share at least one pixel.
    pub fn intersects(&self, other: &Rect) -> bool {
        self.x < other.right()
            && other.x < self.right()
            && self.y < other.bottom()
            && other.y < self.bottom()
    }

    /// The smallest rectangle containing both.
    pub fn union(&self, other: &Rect) -> Rect {
        let x0 = self.x.min(other.x);
        let y0 = self.y.min(other.y);
        let x1 = self.right().max(other.right());
        let y1 = self.bottom().max(other.bottom());
        Rect {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }
    }
}

/// A binary damage mask: `true` marks a hole pixel to be restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    width: usize,
    height: usize,
    data: Vec<bool>,
}

impl Mask {
    /// An empty mask (no holes).
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![false; width * height],
        }
    }

    /// Wraps existing flags; returns `None` when `data.len() != width * height`.
    pub fn from_vec(width: usize, height: usize, data: Vec<bool>) -> Option<Self> {
        (data.len() == width * height).then_some(Self {
            width,
            height,
            data,
        })
    }

    /// Builds a mask by evaluating `f(x, y)` for every pixel.
    pub fn from_fn(width: usize, height: usize, mut f: impl FnMut(usize, usize) -> bool) -> Self {
        let mut data = Vec::with_capacity(width * height);
        for y in 0..height {
            for x in 0..width {
                data.push(f(x, y));
            }
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Row-major flags.
    pub fn data(&self) -> &[bool] {
        &self.data
    }

    /// Row-major flags, mutable.
    pub fn data_mut(&mut self) -> &mut [bool] {
        &mut self.data
    }

    /// Whether `(x, y)` is a hole.
    #[inline]
    pub fn get(&self, x: usize, y: usize) -> bool {
        self.data[y * self.width + x]
    }

    /// Marks or clears `(x, y)`.
    #[inline]
    pub fn set(&mut self, x: usize, y: usize, hole: bool) {
        self.data[y * self.width + x] = hole;
    }

    /// Number of hole pixels.
    pub fn count(&self) -> usize {
        self.data.iter().filter(|&&h| h).count()
    }

    /// True when no pixel is a hole.
    pub fn is_empty(&self) -> bool {
        !self.data.iter().any(|&h| h)
    }

    /// Fraction of the image that is hole, in `[0, 1]`.
    pub fn coverage(&self) -> f64 {
        if self.data.is_empty() {
            0.0
        } else {
            self.count() as f64 / self.data.len() as f64
        }
    }

    /// Swaps holes and known pixels.
    pub fn invert(&mut self) {
        self.data.iter_mut().for_each(|h| *h = !*h);
    }

    /// Copies the rectangle `rect` out into a new mask.
    pub fn crop(&self, rect: Rect) -> Self {
        let mut data = Vec::with_capacity(rect.area());
        for y in rect.y..rect.bottom() {
            let row = y * self.width;
            data.extend_from_slice(&self.data[row + rect.x..row + rect.right()]);
        }
        Self {
            width: rect.width,
            height: rect.height,
            data,
        }
    }

    /// Grows every hole by `radius` pixels (square structuring element).
    pub fn dilate(&self, radius: usize) -> Self {
        if radius == 0 {
            return self.clone();
        }
        let (w, h) = (self.width, self.height);
        // Separable max filter: horizontal pass then vertical pass.
        let mut horiz = vec![false; w * h];
        for y in 0..h {
            let row = &self.data[y * w..(y + 1) * w];
            let mut last_hole: Option<usize> = None;
            // Forward pass: distance to the nearest hole on the left, then on the right.
            for x in 0..w {
                if row[x] {
                    last_hole = Some(x);
                }
                if last_hole.is_some_and(|l| x - l <= radius) {
                    horiz[y * w + x] = true;
                }
            }
            last_hole = None;
            for x in (0..w).rev() {
                if row[x] {
                    last_hole = Some(x);
                }
                if last_hole.is_some_and(|l| l - x <= radius) {
                    horiz[y * w + x] = true;
                }
            }
        }
        let mut out = vec![false; w * h];
        for x in 0..w {
            let mut last_hole: Option<usize> = None;
            for y in 0..h {
                if horiz[y * w + x] {
                    last_hole = Some(y);
                }
                if last_hole.is_some_and(|l| y - l <= radius) {
                    out[y * w + x] = true;
                }
            }
            last_hole = None;
            for y in (0..h).rev() {
                if horiz[y * w + x] {
                    last_hole = Some(y);
                }
                if last_hole.is_some_and(|l| l - y <= radius) {
                    out[y * w + x] = true;
                }
            }
        }
        Self {
            width: w,
            height: h,
            data: out,
        }
    }

    /// Nearest-neighbour resize to `width` x `height`.
    pub fn resize_nearest(&self, width: usize, height: usize) -> Self {
        Self::from_fn(width, height, |x, y| {
            let sx = (x * self.width / width.max(1)).min(self.width.saturating_sub(1));
            let sy = (y * self.height / height.max(1)).min(self.height.saturating_sub(1));
            self.width > 0 && self.height > 0 && self.get(sx, sy)
        })
    }

    /// The tight bounding box of all holes, or `None` for an empty mask.
    pub fn bounding_box(&self) -> Option<Rect> {
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for y in 0..self.height {
            for x in 0..self.width {
                if self.get(x, y) {
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x);
                    y1 = y1.max(y);
                }
            }
        }
        (x0 != usize::MAX).then(|| Rect {
            x: x0,
            y: y0,
            width: x1 - x0 + 1,
            height: y1 - y0 + 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_and_paste_round_trip() {
        let img = ImageF32::from_fn(7, 5, 3, |x, y, c| (x * 100 + y * 10 + c) as f32);
        let r = Rect {
            x: 2,
            y: 1,
            width: 3,
            height: 2,
        };
        let patch = img.crop(r);
        assert_eq!(patch.pixel(0, 0), img.pixel(2, 1));
        let mut black = ImageF32::new(7, 5, 3);
        black.paste(&patch, 2, 1, None);
        assert_eq!(black.pixel(4, 2), img.pixel(4, 2));
        assert_eq!(black.pixel(1, 1), &[0.0, 0.0, 0.0]);
    }

    #[test]
    fn dilate_grows_by_radius() {
        let mut m = Mask::new(9, 9);
        m.set(4, 4, true);
        let d = m.dilate(2);
        assert_eq!(d.count(), 25);
        assert!(d.get(2, 2) && d.get(6, 6) && !d.get(1, 4));
        assert_eq!(
            d.bounding_box(),
            Some(Rect {
                x: 2,
                y: 2,
                width: 5,
                height: 5
            })
        );
    }
}
