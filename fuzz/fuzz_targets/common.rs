//! Shared by the fuzz targets: decode limits, format hints, scratch files and the small model
//! sizes whose weights the seeds hold.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kintsugi::imaging::LoadLimits;
use kintsugi::models::cgan::GeneratorConfig;
use kintsugi::models::vae::VaeConfig;

/// Limits small enough that a crafted header exercises the limit checks instead of making
/// libFuzzer's memory limit fire on a legal (if huge) allocation.
pub const LIMITS: LoadLimits = LoadLimits {
    max_side: 4096,
    max_pixels: 4_000_000,
    max_alloc: 256 << 20,
};

/// The first input byte picks the file name the bytes pretend to have: its extension is the
/// loader's fallback when the content names no format.
pub fn split_hint(data: &[u8]) -> Option<(&'static Path, &[u8])> {
    const NAMES: [&str; 6] = ["", "x.png", "x.jpg", "x.tif", "x.webp", "x.bmp"];
    let (&h, rest) = data.split_first()?;
    Some((Path::new(NAMES[h as usize % NAMES.len()]), rest))
}

/// A folder of this process's own for files the loaders must read from disk.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("kintsugi-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}

/// The VAE size of the weight seeds (`tests/weights_faults.rs` writes them with the same).
pub fn tiny_vae() -> VaeConfig {
    VaeConfig {
        image_size: 16,
        latent: 4,
        base: 2,
        sigma: 0.1,
    }
}

/// The cGAN generator size of the weight seeds.
pub fn tiny_cgan() -> GeneratorConfig {
    GeneratorConfig { base: 2 }
}
