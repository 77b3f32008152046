//! Loading and saving: formats, bit depth, EXIF orientation, limits and clear errors.

mod common;

use std::io::Write;

use image::{DynamicImage, ImageBuffer, ImageEncoder, Rgb, RgbImage};
use kintsugi::imaging::io::{load_image_with, save_mask};
use kintsugi::imaging::{
    load_image, load_mask, save_image, BitDepth, ImageF32, ImagingError, LoadLimits, Mask,
};

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn rgb16_test_image(w: u32, h: u32) -> ImageBuffer<Rgb<u16>, Vec<u16>> {
    ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([
            (x * 2741 + y * 13) as u16,
            (y * 3001 + 7) as u16,
            ((x * y * 97) % 65536) as u16,
        ])
    })
}

#[test]
fn sixteen_bit_png_and_tiff_round_trip_exactly() {
    let d = dir();
    let src = rgb16_test_image(23, 17);
    for ext in ["png", "tif"] {
        let input = d.path().join(format!("in16.{ext}"));
        DynamicImage::ImageRgb16(src.clone())
            .save(&input)
            .expect("write fixture");
        let loaded = load_image(&input).expect("load");
        assert_eq!(loaded.depth, BitDepth::U16, "{ext}");
        assert_eq!(loaded.pixels.channels(), 3);
        let out = d.path().join(format!("out16.{ext}"));
        let report = save_image(&loaded.pixels, loaded.depth, &out, Some(&input)).expect("save");
        assert_eq!(report.depth, BitDepth::U16);
        let back = image::open(&out).expect("reopen").into_rgb16();
        assert_eq!(back.as_raw(), src.as_raw(), "{ext}: 16-bit samples changed");
    }
}

#[test]
fn eight_bit_formats_load_with_their_channels() {
    let d = dir();
    let rgb = RgbImage::from_fn(9, 7, |x, y| Rgb([(x * 20) as u8, (y * 30) as u8, 200]));
    for ext in ["png", "bmp", "webp", "tiff"] {
        let p = d.path().join(format!("a.{ext}"));
        DynamicImage::ImageRgb8(rgb.clone())
            .save(&p)
            .expect("write");
        let l = load_image(&p).expect(ext);
        assert_eq!((l.pixels.width(), l.pixels.height()), (9, 7), "{ext}");
        assert_eq!(l.depth, BitDepth::U8);
        let px = l.pixels.pixel(3, 2);
        assert!((px[0] - 60.0 / 255.0).abs() < 1e-6, "{ext}: {px:?}");
    }
    // JPEG is lossy: check size and rough colour only.
    let p = d.path().join("a.jpg");
    DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 16, Rgb([200, 100, 50])))
        .save(&p)
        .expect("write");
    let l = load_image(&p).expect("jpeg");
    assert!((l.pixels.pixel(8, 8)[0] - 200.0 / 255.0).abs() < 0.03);
    // Grey + alpha keeps two channels.
    let p = d.path().join("ga.png");
    DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_pixel(
        4,
        4,
        image::LumaA([9, 128]),
    ))
    .save(&p)
    .expect("write");
    assert_eq!(load_image(&p).expect("la").pixels.channels(), 2);
}

#[test]
fn exif_orientation_is_applied() {
    let d = dir();
    // A 4x2 image, left half red, right half blue, stored with orientation 6 (rotate 90 CW).
    let img = RgbImage::from_fn(4, 2, |x, _| {
        if x < 2 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let p = d.path().join("rotated.jpg");
    let mut bytes = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 100);
    // Minimal big-endian TIFF header with one IFD entry: Orientation (0x0112), SHORT, 1, 6.
    let exif = vec![
        b'M', b'M', 0, 42, 0, 0, 0, 8, // header, IFD at offset 8
        0, 1, // one entry
        0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, // orientation = 6
        0, 0, 0, 0, // no next IFD
    ];
    enc.set_exif_metadata(exif).expect("jpeg supports exif");
    enc.write_image(img.as_raw(), 4, 2, image::ExtendedColorType::Rgb8)
        .expect("encode");
    std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(&bytes))
        .expect("write");
    let l = load_image(&p).expect("load");
    assert_eq!(
        (l.pixels.width(), l.pixels.height()),
        (2, 4),
        "rotation not applied"
    );
    // Rotating 90 degrees clockwise puts the left (red) half on top.
    let top = l.pixels.pixel(0, 0);
    let bottom = l.pixels.pixel(1, 3);
    assert!(top[0] > 0.7 && top[2] < 0.3, "top should be red: {top:?}");
    assert!(
        bottom[2] > 0.7 && bottom[0] < 0.3,
        "bottom should be blue: {bottom:?}"
    );
}

#[test]
fn zero_byte_truncated_and_unsupported_files_give_clear_errors() {
    let d = dir();
    let empty = d.path().join("empty.png");
    std::fs::File::create(&empty).expect("create");
    let e = load_image(&empty).expect_err("empty must fail");
    assert!(matches!(e, ImagingError::EmptyFile { .. }), "{e}");
    assert!(e.to_string().contains("empty"), "{e}");

    let full = d.path().join("full.png");
    DynamicImage::ImageRgb8(RgbImage::from_fn(64, 64, |x, y| Rgb([x as u8, y as u8, 7])))
        .save(&full)
        .expect("write");
    let bytes = std::fs::read(&full).expect("read");
    let cut = d.path().join("cut.png");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let e = load_image(&cut).expect_err("truncated must fail");
    assert!(matches!(e, ImagingError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("truncated or corrupt"), "{e}");

    let text = d.path().join("notes.txt");
    std::fs::write(&text, b"this is not an image at all").expect("write");
    let e = load_image(&text).expect_err("text must fail");
    assert!(matches!(e, ImagingError::UnsupportedFormat { .. }), "{e}");

    let missing = d.path().join("missing.png");
    let e = load_image(&missing).expect_err("missing must fail");
    assert!(matches!(e, ImagingError::Read { .. }), "{e}");
}

#[test]
fn decompression_bomb_is_refused_before_decoding() {
    let d = dir();
    // A BMP header declaring 60000 x 60000 24-bit pixels (10 GB) with no pixel data.
    let (w, h): (u32, u32) = (60_000, 60_000);
    let mut b = Vec::new();
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&(54u32).to_le_bytes()); // file size (lies)
    b.extend_from_slice(&[0, 0, 0, 0]);
    b.extend_from_slice(&(54u32).to_le_bytes()); // pixel data offset
    b.extend_from_slice(&(40u32).to_le_bytes()); // BITMAPINFOHEADER
    b.extend_from_slice(&(w as i32).to_le_bytes());
    b.extend_from_slice(&(h as i32).to_le_bytes());
    b.extend_from_slice(&(1u16).to_le_bytes());
    b.extend_from_slice(&(24u16).to_le_bytes());
    b.extend_from_slice(&[0u8; 24]);
    let p = d.path().join("bomb.bmp");
    std::fs::write(&p, &b).expect("write");
    let e = load_image(&p).expect_err("bomb must fail");
    assert!(matches!(e, ImagingError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("60000x60000"), "{e}");

    // A real image over a small custom limit is refused the same way.
    let small = d.path().join("small.png");
    DynamicImage::ImageRgb8(RgbImage::new(50, 40))
        .save(&small)
        .expect("write");
    let limits = LoadLimits {
        max_pixels: 1000,
        ..LoadLimits::default()
    };
    let e = load_image_with(&small, &limits).expect_err("over limit");
    assert!(matches!(e, ImagingError::TooLarge { .. }), "{e}");
}

#[test]
fn masks_hole_rules_and_size_mismatch() {
    let d = dir();
    // White-on-black greyscale.
    let grey = d.path().join("m.png");
    DynamicImage::ImageLuma8(image::GrayImage::from_fn(6, 4, |x, _| {
        image::Luma([if x == 2 { 255 } else { 0 }])
    }))
    .save(&grey)
    .expect("write");
    let m = load_mask(&grey, 6, 4).expect("mask");
    assert_eq!(m.count(), 4);
    assert!(m.get(2, 3) && !m.get(3, 3));

    // A painted overlay: transparent except where painted, colour irrelevant.
    let overlay = d.path().join("o.png");
    DynamicImage::ImageRgba8(image::RgbaImage::from_fn(6, 4, |x, y| {
        image::Rgba([255, 0, 0, if x == 1 && y == 1 { 200 } else { 0 }])
    }))
    .save(&overlay)
    .expect("write");
    assert_eq!(load_mask(&overlay, 6, 4).expect("mask").count(), 1);

    // Mismatched size names both sizes.
    let e = load_mask(&grey, 7, 5).expect_err("size mismatch");
    let msg = e.to_string();
    assert!(msg.contains("6x4") && msg.contains("7x5"), "{msg}");

    // Round trip through save_mask.
    let mut mm = Mask::new(5, 5);
    mm.set(2, 2, true);
    let out = d.path().join("saved_mask.png");
    save_mask(&mm, &out, None).expect("save mask");
    assert_eq!(load_mask(&out, 5, 5).expect("reload"), mm);
}

#[test]
fn save_refuses_the_input_and_is_atomic() {
    let d = dir();
    let input = d.path().join("photo.png");
    DynamicImage::ImageRgb8(RgbImage::from_pixel(8, 8, Rgb([10, 20, 30])))
        .save(&input)
        .expect("write");
    let before = std::fs::read(&input).expect("read");
    let img = load_image(&input).expect("load").pixels;
    let e = save_image(&img, BitDepth::U8, &input, Some(&input)).expect_err("must refuse");
    assert!(matches!(e, ImagingError::WouldOverwriteInput { .. }), "{e}");
    // The same file through another spelling of its path.
    let sneaky = d.path().join(".").join("photo.png");
    assert!(save_image(&img, BitDepth::U8, &sneaky, Some(&input)).is_err());
    assert_eq!(
        std::fs::read(&input).expect("read"),
        before,
        "input changed"
    );

    // Unknown extension: clear error, nothing written.
    let bad = d.path().join("out.xyz");
    assert!(matches!(
        save_image(&img, BitDepth::U8, &bad, Some(&input)),
        Err(ImagingError::UnsupportedOutput { .. })
    ));
    assert!(!bad.exists());

    // Overwriting an existing output replaces it whole and leaves no temporary file.
    let out = d.path().join("out.png");
    std::fs::write(&out, b"old").expect("write");
    save_image(&img, BitDepth::U8, &out, Some(&input)).expect("save");
    assert_eq!(load_image(&out).expect("reload").pixels, img);
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // A folder that does not exist: clear error.
    let nowhere = d.path().join("no/such/dir/out.png");
    assert!(matches!(
        save_image(&img, BitDepth::U8, &nowhere, None),
        Err(ImagingError::Write { .. })
    ));
}

#[test]
fn sixteen_bit_to_jpeg_reports_the_lower_depth() {
    let d = dir();
    let img = ImageF32::from_fn(8, 8, 3, |x, _, _| x as f32 / 8.0);
    let r = save_image(&img, BitDepth::U16, &d.path().join("o.jpg"), None).expect("save");
    assert_eq!(r.depth, BitDepth::U8);
}
