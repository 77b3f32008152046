//! Helpers shared by the integration tests: small generated images and masks.

#![allow(dead_code)]

use kintsugi::imaging::{ImageF32, Mask};

/// A smooth colour gradient with some structure, values in [0.1, 0.9].
pub fn gradient(w: usize, h: usize, c: usize) -> ImageF32 {
    ImageF32::from_fn(w, h, c, |x, y, ch| {
        0.1 + 0.8 * ((x as f32 / w as f32) * 0.6 + (y as f32 / h as f32) * 0.3 + ch as f32 * 0.03)
    })
}

/// A filled disc of holes.
pub fn disc_mask(w: usize, h: usize, cx: usize, cy: usize, r: usize) -> Mask {
    Mask::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as isize - cx as isize, y as isize - cy as isize);
        dx * dx + dy * dy <= (r * r) as isize
    })
}

/// A thin diagonal scratch plus a few dust specks.
pub fn scratch_and_dust(w: usize, h: usize) -> Mask {
    Mask::from_fn(w, h, |x, y| {
        let on_scratch = (x as isize - y as isize - 3).abs() <= 1;
        let speck = (x % 17 == 5 || x % 17 == 6) && y % 13 == 7;
        on_scratch || speck
    })
}

/// SHA-like fingerprint of a file's bytes, to prove a file was not touched.
pub fn file_fingerprint(path: &std::path::Path) -> (u64, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_default();
    (bytes.len() as u64, bytes)
}
