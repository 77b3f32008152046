//! Pixel buffers, image and mask I/O, and quality metrics.

pub mod buffer;

pub use buffer::{ImageF32, Mask, Rect};
pub mod io;
pub mod mask_synth;
pub mod metrics;

pub use io::{load_image, load_mask, save_image, BitDepth, ImagingError, LoadLimits, LoadedImage};
