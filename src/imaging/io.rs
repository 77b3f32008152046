//! Loading and saving images and masks: formats, bit depth, EXIF orientation, size limits and
//! atomic writes that never touch the source file.

use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Cursor, Seek, Write};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

use super::buffer::{ImageF32, Mask};

/// The sample type of a source image, kept so that a save writes the same depth back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitDepth {
    /// 8 bits per sample.
    U8,
    /// 16 bits per sample.
    U16,
    /// 32-bit floating-point samples.
    F32,
}

impl BitDepth {
    /// Bits per sample.
    pub fn bits(self) -> u32 {
        match self {
            BitDepth::U8 => 8,
            BitDepth::U16 => 16,
            BitDepth::F32 => 32,
        }
    }
}

/// How large an image we agree to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadLimits {
    /// Largest accepted width or height in pixels.
    pub max_side: u32,
    /// Largest accepted width x height.
    pub max_pixels: u64,
    /// Largest allocation the decoder may make, in bytes.
    pub max_alloc: u64,
}

impl Default for LoadLimits {
    /// 65535 px a side, 400 megapixels, 8 GiB of decoder memory: generous for real scans (a
    /// 100 MP 16-bit RGB scan needs 600 MB), far below what a crafted header can claim.
    fn default() -> Self {
        Self {
            max_side: 65_535,
            max_pixels: 400_000_000,
            max_alloc: 8 << 30,
        }
    }
}

/// Everything that can go wrong reading or writing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file has no bytes at all.
    #[error("{path} is empty (0 bytes)")]
    EmptyFile {
        /// File concerned.
        path: PathBuf,
    },
    /// Neither the content nor the extension names a format we read.
    #[error(
        "{path}: unsupported or unrecognised image format (supported: PNG, JPEG, TIFF, WebP, BMP)"
    )]
    UnsupportedFormat {
        /// File concerned.
        path: PathBuf,
    },
    /// The decoder failed: a truncated or corrupt file.
    #[error("{path} is truncated or corrupt: {message}")]
    Corrupt {
        /// File concerned.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// The image is larger than the configured limits (for example a decompression bomb).
    #[error("{path} declares {width}x{height} pixels, over the limit of {limit}")]
    TooLarge {
        /// File concerned.
        path: PathBuf,
        /// Declared width.
        width: u64,
        /// Declared height.
        height: u64,
        /// Human-readable limit that was exceeded.
        limit: String,
    },
    /// The image has no pixels.
    #[error("{path} has no pixels ({width}x{height})")]
    ZeroArea {
        /// File concerned.
        path: PathBuf,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// A mask whose size differs from its image.
    #[error(
        "mask {path} is {mask_width}x{mask_height} but the image is {image_width}x{image_height}"
    )]
    MaskSizeMismatch {
        /// Mask file.
        path: PathBuf,
        /// Mask width.
        mask_width: usize,
        /// Mask height.
        mask_height: usize,
        /// Image width.
        image_width: usize,
        /// Image height.
        image_height: usize,
    },
    /// Saving over the file the image was loaded from.
    #[error("refusing to overwrite the input file {path}; choose another output name")]
    WouldOverwriteInput {
        /// The input file.
        path: PathBuf,
    },
    /// The output extension names no format we write.
    #[error("cannot save {path}: unknown output format (use .png, .tif, .jpg, .webp or .bmp)")]
    UnsupportedOutput {
        /// Requested output.
        path: PathBuf,
    },
    /// Encoding or writing the output failed; any existing file at `path` is unchanged.
    #[error("cannot write {path}: {message}")]
    Write {
        /// Requested output.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// An image as loaded from disk, with what is needed to save it back faithfully.
#[derive(Clone, Debug)]
pub struct LoadedImage {
    /// Pixels, orientation already applied.
    pub pixels: ImageF32,
    /// Sample depth of the source.
    pub depth: BitDepth,
    /// Detected format of the source.
    pub format: ImageFormat,
}

/// Loads an image with the default [`LoadLimits`].
pub fn load_image(path: &Path) -> Result<LoadedImage, ImagingError> {
    load_image_with(path, &LoadLimits::default())
}

/// Loads an image: PNG, JPEG, TIFF, WebP or BMP, 8/16-bit or float, grey or colour, with or
/// without alpha. EXIF orientation is applied. Sizes are checked against `limits` before any
/// pixel is decoded.
pub fn load_image_with(path: &Path, limits: &LoadLimits) -> Result<LoadedImage, ImagingError> {
    let (dynimg, format) = decode(path, limits)?;
    let depth = depth_of(&dynimg);
    Ok(LoadedImage {
        pixels: to_f32(&dynimg),
        depth,
        format,
    })
}

/// Loads a mask for an image of `width` x `height` (any format; see [`mask_from_dynamic`]).
/// A mask of another size is an error naming both sizes.
pub fn load_mask(path: &Path, width: usize, height: usize) -> Result<Mask, ImagingError> {
    let mask = load_mask_any_size(path)?;
    if mask.width() != width || mask.height() != height {
        return Err(ImagingError::MaskSizeMismatch {
            path: path.to_owned(),
            mask_width: mask.width(),
            mask_height: mask.height(),
            image_width: width,
            image_height: height,
        });
    }
    Ok(mask)
}

/// Loads a mask without checking its size against an image.
pub fn load_mask_any_size(path: &Path) -> Result<Mask, ImagingError> {
    let (dynimg, _) = decode(path, &LoadLimits::default())?;
    Ok(mask_from_dynamic(&dynimg))
}

/// Loads an image from bytes in memory, exactly as [`load_image_with`] loads a file: `name`
/// stands for the file in errors, and its extension is the fallback when the content names no
/// format (pass `Path::new("")` for none).
pub fn load_image_from_bytes(
    bytes: &[u8],
    name: &Path,
    limits: &LoadLimits,
) -> Result<LoadedImage, ImagingError> {
    let (dynimg, format) = decode_bytes(bytes, name, limits)?;
    let depth = depth_of(&dynimg);
    Ok(LoadedImage {
        pixels: to_f32(&dynimg),
        depth,
        format,
    })
}

/// Loads a mask of any size from bytes in memory, as [`load_mask_any_size`] loads a file.
pub fn load_mask_from_bytes(
    bytes: &[u8],
    name: &Path,
    limits: &LoadLimits,
) -> Result<Mask, ImagingError> {
    let (dynimg, _) = decode_bytes(bytes, name, limits)?;
    Ok(mask_from_dynamic(&dynimg))
}

fn decode_bytes(
    bytes: &[u8],
    name: &Path,
    limits: &LoadLimits,
) -> Result<(DynamicImage, ImageFormat), ImagingError> {
    if bytes.is_empty() {
        return Err(ImagingError::EmptyFile {
            path: name.to_owned(),
        });
    }
    decode_reader(Cursor::new(bytes), name, limits)
}

/// Interprets a decoded image as a mask.
///
/// A pixel is a hole where its alpha is non-zero, for images with an alpha channel that is not
/// fully opaque (a painted overlay layer); otherwise where any colour sample is non-zero (a
/// white-on-black mask, with or without an opaque alpha channel).
pub fn mask_from_dynamic(img: &DynamicImage) -> Mask {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if img.color().has_alpha() {
        let rgba = img.to_rgba16();
        if rgba.pixels().any(|p| p.0[3] != u16::MAX) {
            let data = rgba.pixels().map(|p| p.0[3] != 0).collect();
            return Mask::from_vec(w, h, data).unwrap_or_else(|| Mask::new(w, h));
        }
        let data = rgba
            .pixels()
            .map(|p| p.0[..3].iter().any(|&v| v != 0))
            .collect();
        return Mask::from_vec(w, h, data).unwrap_or_else(|| Mask::new(w, h));
    }
    let rgb = img.to_rgb16();
    let data = rgb.pixels().map(|p| p.0.iter().any(|&v| v != 0)).collect();
    Mask::from_vec(w, h, data).unwrap_or_else(|| Mask::new(w, h))
}

fn decode(path: &Path, limits: &LoadLimits) -> Result<(DynamicImage, ImageFormat), ImagingError> {
    let read_err = |source| ImagingError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    if meta.len() == 0 {
        return Err(ImagingError::EmptyFile {
            path: path.to_owned(),
        });
    }
    let file = fs::File::open(path).map_err(read_err)?;
    decode_reader(BufReader::new(file), path, limits)
}

/// Decodes from any seekable reader. `path` names the source in errors, and its extension is
/// the fallback when the content names no format.
fn decode_reader<R: BufRead + Seek>(
    source: R,
    path: &Path,
    limits: &LoadLimits,
) -> Result<(DynamicImage, ImageFormat), ImagingError> {
    let read_err = |source| ImagingError::Read {
        path: path.to_owned(),
        source,
    };
    let mut reader = ImageReader::new(source)
        .with_guessed_format()
        .map_err(read_err)?;
    if reader.format().is_none() {
        reader.set_format(ImageFormat::from_path(path).map_err(|_| {
            ImagingError::UnsupportedFormat {
                path: path.to_owned(),
            }
        })?);
    }
    let format = reader
        .format()
        .ok_or_else(|| ImagingError::UnsupportedFormat {
            path: path.to_owned(),
        })?;
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(limits.max_side);
    lim.max_image_height = Some(limits.max_side);
    lim.max_alloc = Some(limits.max_alloc);
    reader.limits(lim);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| classify(path, e, limits))?;
    let (w, h) = decoder.dimensions();
    check_size(path, w, h, limits)?;
    let orientation = decoder
        .orientation()
        .map_err(|e| classify(path, e, limits))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| classify(path, e, limits))?;
    img.apply_orientation(orientation);
    Ok((img, format))
}

fn check_size(path: &Path, w: u32, h: u32, limits: &LoadLimits) -> Result<(), ImagingError> {
    if w == 0 || h == 0 {
        return Err(ImagingError::ZeroArea {
            path: path.to_owned(),
            width: w,
            height: h,
        });
    }
    let too_large = |limit: String| ImagingError::TooLarge {
        path: path.to_owned(),
        width: w as u64,
        height: h as u64,
        limit,
    };
    if w > limits.max_side || h > limits.max_side {
        return Err(too_large(format!("{} px a side", limits.max_side)));
    }
    if w as u64 * h as u64 > limits.max_pixels {
        return Err(too_large(format!(
            "{} megapixels",
            limits.max_pixels / 1_000_000
        )));
    }
    Ok(())
}

fn classify(path: &Path, e: ImageError, limits: &LoadLimits) -> ImagingError {
    match e {
        ImageError::Unsupported(_) => ImagingError::UnsupportedFormat {
            path: path.to_owned(),
        },
        ImageError::Limits(l) => ImagingError::TooLarge {
            path: path.to_owned(),
            width: 0,
            height: 0,
            limit: format!(
                "{} px a side / {} MiB of decoder memory ({l})",
                limits.max_side,
                limits.max_alloc >> 20
            ),
        },
        other => ImagingError::Corrupt {
            path: path.to_owned(),
            message: other.to_string(),
        },
    }
}

fn depth_of(img: &DynamicImage) -> BitDepth {
    match img {
        DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_)
        | DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_) => BitDepth::U16,
        DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_) => BitDepth::F32,
        _ => BitDepth::U8,
    }
}

/// Converts a decoded image to interleaved `f32`, keeping its channel count (1-4).
pub fn to_f32(img: &DynamicImage) -> ImageF32 {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (channels, data): (usize, Vec<f32>) = match img {
        DynamicImage::ImageLuma8(b) => (1, scale(b.as_raw(), 255.0)),
        DynamicImage::ImageLumaA8(b) => (2, scale(b.as_raw(), 255.0)),
        DynamicImage::ImageRgb8(b) => (3, scale(b.as_raw(), 255.0)),
        DynamicImage::ImageRgba8(b) => (4, scale(b.as_raw(), 255.0)),
        DynamicImage::ImageLuma16(b) => (1, scale(b.as_raw(), 65535.0)),
        DynamicImage::ImageLumaA16(b) => (2, scale(b.as_raw(), 65535.0)),
        DynamicImage::ImageRgb16(b) => (3, scale(b.as_raw(), 65535.0)),
        DynamicImage::ImageRgba16(b) => (4, scale(b.as_raw(), 65535.0)),
        DynamicImage::ImageRgb32F(b) => (3, b.as_raw().clone()),
        DynamicImage::ImageRgba32F(b) => (4, b.as_raw().clone()),
        other => {
            let c = if other.color().has_alpha() { 4 } else { 3 };
            let raw = if c == 4 {
                other.to_rgba32f().into_raw()
            } else {
                other.to_rgb32f().into_raw()
            };
            (c, raw)
        }
    };
    ImageF32::from_vec(w, h, channels, data).unwrap_or_else(|| ImageF32::new(w, h, channels))
}

fn scale<T: Copy + Into<f32>>(raw: &[T], max: f32) -> Vec<f32> {
    raw.iter().map(|&v| v.into() / max).collect()
}

fn quantise_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

fn quantise_u16(v: f32) -> u16 {
    (v.clamp(0.0, 1.0) * 65535.0).round() as u16
}

/// Converts `f32` samples back to an `image` buffer of the given depth.
///
/// For 8- and 16-bit depths this is the exact inverse of [`to_f32`] on unmodified samples.
pub fn from_f32(img: &ImageF32, depth: BitDepth) -> DynamicImage {
    let (w, h) = (img.width() as u32, img.height() as u32);
    let d = img.data();
    // `from_raw` only fails on a length mismatch, which ImageF32's invariant rules out; fall
    // back to a blank image of the right size rather than panic.
    macro_rules! build {
        ($px:ty, $variant:ident, $q:expr, $ct:ident) => {
            image::ImageBuffer::<$px, _>::from_raw(w, h, d.iter().map(|&v| $q(v)).collect())
                .map(DynamicImage::$variant)
                .unwrap_or_else(|| DynamicImage::new(w, h, image::ColorType::$ct))
        };
    }
    match (img.channels(), depth) {
        (1, BitDepth::U8) => build!(image::Luma<u8>, ImageLuma8, quantise_u8, L8),
        (2, BitDepth::U8) => build!(image::LumaA<u8>, ImageLumaA8, quantise_u8, La8),
        (3, BitDepth::U8) => build!(image::Rgb<u8>, ImageRgb8, quantise_u8, Rgb8),
        (4, BitDepth::U8) => build!(image::Rgba<u8>, ImageRgba8, quantise_u8, Rgba8),
        (1, BitDepth::U16) => build!(image::Luma<u16>, ImageLuma16, quantise_u16, L16),
        (2, BitDepth::U16) => build!(image::LumaA<u16>, ImageLumaA16, quantise_u16, La16),
        (3, BitDepth::U16) => build!(image::Rgb<u16>, ImageRgb16, quantise_u16, Rgb16),
        (4, BitDepth::U16) => build!(image::Rgba<u16>, ImageRgba16, quantise_u16, Rgba16),
        (4, BitDepth::F32) | (2, BitDepth::F32) => {
            let rgba = expand_to(img, 4);
            image::Rgba32FImage::from_raw(w, h, rgba)
                .map(DynamicImage::ImageRgba32F)
                .unwrap_or_else(|| DynamicImage::new(w, h, image::ColorType::Rgba32F))
        }
        (_, BitDepth::F32) => {
            let rgb = expand_to(img, 3);
            image::Rgb32FImage::from_raw(w, h, rgb)
                .map(DynamicImage::ImageRgb32F)
                .unwrap_or_else(|| DynamicImage::new(w, h, image::ColorType::Rgb32F))
        }
        (_, d) => {
            // Unusual channel counts: go through RGB(A) at the same depth.
            let c = if img.channels() % 2 == 0 { 4 } else { 3 };
            let expanded = ImageF32::from_vec(img.width(), img.height(), c, expand_to(img, c))
                .unwrap_or_else(|| ImageF32::new(img.width(), img.height(), c));
            from_f32(&expanded, d)
        }
    }
}

/// Grey(+alpha) to RGB(+alpha) (or identity) for encoders that need colour.
fn expand_to(img: &ImageF32, c: usize) -> Vec<f32> {
    let src_c = img.channels();
    let mut out = Vec::with_capacity(img.width() * img.height() * c);
    for px in img.data().chunks_exact(src_c) {
        let (colour, alpha) = match src_c {
            1 => ([px[0]; 3], 1.0),
            2 => ([px[0]; 3], px[1]),
            3 => ([px[0], px[1], px[2]], 1.0),
            _ => ([px[0], px[1], px[2]], px[3]),
        };
        out.extend_from_slice(&colour);
        if c == 4 {
            out.push(alpha);
        }
    }
    out
}

/// What a save actually wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaveReport {
    /// Depth written; lower than requested when the format cannot hold it (JPEG, WebP, BMP).
    pub depth: BitDepth,
    /// Format written.
    pub format: ImageFormat,
}

/// Saves `img` to `path` at `depth` (or the nearest depth the format can hold), atomically:
/// the bytes go to a temporary file in the same folder, are flushed to disk, and only then
/// renamed over `path`. Refuses to write over `input` (the file the image came from).
pub fn save_image(
    img: &ImageF32,
    depth: BitDepth,
    path: &Path,
    input: Option<&Path>,
) -> Result<SaveReport, ImagingError> {
    if let Some(input) = input {
        if same_file(input, path) {
            return Err(ImagingError::WouldOverwriteInput {
                path: input.to_owned(),
            });
        }
    }
    let format = ImageFormat::from_path(path).map_err(|_| ImagingError::UnsupportedOutput {
        path: path.to_owned(),
    })?;
    let (depth, dynimg) =
        encodable(img, depth, format).ok_or_else(|| ImagingError::UnsupportedOutput {
            path: path.to_owned(),
        })?;
    let write_err = |message: String| ImagingError::Write {
        path: path.to_owned(),
        message,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".kintsugi-save-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| {
            write_err(format!(
                "cannot create a temporary file in {}: {e}",
                dir.display()
            ))
        })?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        encode(&dynimg, format, &mut w).map_err(|e| write_err(e.to_string()))?;
        w.flush().map_err(|e| write_err(e.to_string()))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| write_err(e.to_string()))?;
    // `persist` renames within the folder: readers see the old file or the new one, never half.
    tmp.persist(path)
        .map_err(|e| write_err(e.error.to_string()))?;
    Ok(SaveReport { depth, format })
}

/// True when `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn encodable(
    img: &ImageF32,
    depth: BitDepth,
    format: ImageFormat,
) -> Option<(BitDepth, DynamicImage)> {
    match format {
        ImageFormat::Png => {
            let d = if depth == BitDepth::U8 {
                BitDepth::U8
            } else {
                BitDepth::U16
            };
            Some((d, from_f32(img, d)))
        }
        ImageFormat::Tiff => Some((depth, from_f32(img, depth))),
        ImageFormat::Jpeg => {
            // JPEG holds 8-bit grey or RGB only: drop alpha.
            let d = from_f32(img, BitDepth::U8);
            let d = if d.color().has_alpha() {
                if img.channels() <= 2 {
                    DynamicImage::ImageLuma8(d.to_luma8())
                } else {
                    DynamicImage::ImageRgb8(d.to_rgb8())
                }
            } else {
                d
            };
            Some((BitDepth::U8, d))
        }
        ImageFormat::WebP | ImageFormat::Bmp => {
            let d = from_f32(img, BitDepth::U8);
            let d = if d.color().has_alpha() {
                DynamicImage::ImageRgba8(d.to_rgba8())
            } else {
                DynamicImage::ImageRgb8(d.to_rgb8())
            };
            Some((BitDepth::U8, d))
        }
        _ => None,
    }
}

fn encode(img: &DynamicImage, format: ImageFormat, w: &mut impl Write) -> Result<(), ImageError> {
    match format {
        ImageFormat::Jpeg => {
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(w, 95);
            img.write_with_encoder(enc)
        }
        ImageFormat::Tiff => {
            // The TIFF encoder needs `Seek`; encode to memory first.
            let mut buf = std::io::Cursor::new(Vec::new());
            img.write_to(&mut buf, ImageFormat::Tiff)?;
            w.write_all(buf.get_ref()).map_err(ImageError::IoError)
        }
        other => {
            let mut buf = std::io::Cursor::new(Vec::new());
            img.write_to(&mut buf, other)?;
            w.write_all(buf.get_ref()).map_err(ImageError::IoError)
        }
    }
}

/// Saves a mask as an 8-bit greyscale PNG (or any format by extension), white = hole, atomically.
pub fn save_mask(
    mask: &Mask,
    path: &Path,
    input: Option<&Path>,
) -> Result<SaveReport, ImagingError> {
    let img = ImageF32::from_vec(
        mask.width(),
        mask.height(),
        1,
        mask.data()
            .iter()
            .map(|&h| if h { 1.0 } else { 0.0 })
            .collect(),
    )
    .unwrap_or_else(|| ImageF32::new(mask.width(), mask.height(), 1));
    save_image(&img, BitDepth::U8, path, input)
}
