//! A corpus of broken and unusual inputs, generated here: every case must end in a clear
//! one-line error (or a correct result), never a panic, and never touch the source file.

use std::path::{Path, PathBuf};
use std::process::Command;

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba};
use kintsugi::imaging::load_image;

fn sample_rgb8() -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(40, 30, |x, y| {
        Rgb([(x * 6) as u8, (y * 8) as u8, ((x + y) * 3) as u8])
    }))
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, format).expect("encode fixture");
    buf.into_inner()
}

/// Every supported format, as valid bytes.
fn valid_files() -> Vec<(&'static str, Vec<u8>)> {
    let rgb = sample_rgb8();
    let rgb16 = DynamicImage::ImageRgb16(rgb.to_rgb16());
    let rgba = DynamicImage::ImageRgba8(rgb.to_rgba8());
    vec![
        ("png", encode(&rgb, ImageFormat::Png)),
        ("png", encode(&rgb16, ImageFormat::Png)),
        ("jpg", encode(&rgb, ImageFormat::Jpeg)),
        ("tif", encode(&rgb16, ImageFormat::Tiff)),
        ("webp", encode(&rgba, ImageFormat::WebP)),
        ("bmp", encode(&rgb, ImageFormat::Bmp)),
    ]
}

fn write_mask(dir: &Path, w: u32, h: u32) -> PathBuf {
    let p = dir.join("mask.png");
    DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| {
        Luma([if (x as i32 - y as i32).abs() <= 1 {
            255
        } else {
            0
        }])
    }))
    .save(&p)
    .expect("mask");
    p
}

struct Outcome {
    ok: bool,
    stderr: String,
}

fn inpaint(input: &Path, mask: &Path, output: &Path) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_kintsugi"))
        .arg("inpaint")
        .arg(input)
        .arg("--mask")
        .arg(mask)
        .args(["--model", "telea", "-q", "-o"])
        .arg(output)
        .output()
        .expect("run kintsugi");
    Outcome {
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the CLI on a broken input and checks the failure is clean and harmless.
fn assert_clean_failure(dir: &Path, name: &str, bytes: &[u8], mask: &Path) {
    let input = dir.join(name);
    std::fs::write(&input, bytes).expect("write case");
    let output = dir.join(format!("out_{name}.png"));
    // The library reports an error, without panicking.
    let lib = std::panic::catch_unwind(|| load_image(&input).map(|_| ()));
    match lib {
        Ok(Err(_)) => {}
        Ok(Ok(())) => panic!("{name}: broken input loaded without error"),
        Err(_) => panic!("{name}: load_image panicked"),
    }
    let r = inpaint(&input, mask, &output);
    assert!(!r.ok, "{name}: CLI succeeded on a broken file");
    let line = r.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{name}: not one line: {line}");
    assert!(line.starts_with("error: "), "{name}: {line}");
    assert!(!line.contains("panicked"), "{name}: {line}");
    assert!(
        !output.exists(),
        "{name}: output written for a broken input"
    );
    assert_eq!(
        std::fs::read(&input).expect("read"),
        bytes,
        "{name}: source changed"
    );
}

#[test]
fn truncated_empty_and_garbage_files_fail_cleanly_in_every_format() {
    let d = tempfile::tempdir().expect("tmp");
    let mask = write_mask(d.path(), 40, 30);
    let mut cases = 0;
    for (k, (ext, bytes)) in valid_files().into_iter().enumerate() {
        let n = bytes.len();
        assert_clean_failure(d.path(), &format!("empty{k}.{ext}"), &[], &mask);
        for (label, cut) in [("head", 16.min(n)), ("quarter", n / 4), ("half", n / 2)] {
            assert_clean_failure(d.path(), &format!("{label}{k}.{ext}"), &bytes[..cut], &mask);
        }
        // Garbage after a valid signature.
        let mut garbage = bytes[..12.min(n)].to_vec();
        garbage.extend((0..500u32).map(|i| (i * 131 % 251) as u8));
        assert_clean_failure(d.path(), &format!("garbage{k}.{ext}"), &garbage, &mask);
        cases += 5;
    }
    // Plain text under image extensions.
    for ext in ["png", "jpg", "tif", "webp", "bmp", "xyz"] {
        assert_clean_failure(
            d.path(),
            &format!("text.{ext}"),
            b"not an image, just text\n",
            &mask,
        );
        cases += 1;
    }
    assert!(cases >= 36);
}

#[test]
fn wrong_extension_is_read_by_content() {
    let d = tempfile::tempdir().expect("tmp");
    let png = encode(&sample_rgb8(), ImageFormat::Png);
    let disguised = d.path().join("really_a_png.jpg");
    std::fs::write(&disguised, &png).expect("write");
    let img = load_image(&disguised).expect("content sniffing");
    assert_eq!(img.format, ImageFormat::Png);
    assert_eq!((img.pixels.width(), img.pixels.height()), (40, 30));
}

#[test]
fn unusual_but_valid_images_restore_end_to_end() {
    let d = tempfile::tempdir().expect("tmp");
    let mask = write_mask(d.path(), 40, 30);
    let rgb = sample_rgb8();
    let variants: Vec<(&str, DynamicImage)> = vec![
        ("grey.png", DynamicImage::ImageLuma8(rgb.to_luma8())),
        (
            "grey_alpha.png",
            DynamicImage::ImageLumaA8(ImageBuffer::from_fn(40, 30, |x, _| {
                LumaA([x as u8 * 5, 200])
            })),
        ),
        ("grey16.png", DynamicImage::ImageLuma16(rgb.to_luma16())),
        (
            "rgba.png",
            DynamicImage::ImageRgba8(ImageBuffer::from_fn(40, 30, |x, y| {
                Rgba([x as u8, y as u8, 9, 255 - x as u8])
            })),
        ),
        ("rgba16.tif", DynamicImage::ImageRgba16(rgb.to_rgba16())),
        ("float.tif", DynamicImage::ImageRgb32F(rgb.to_rgb32f())),
    ];
    for (name, img) in variants {
        let input = d.path().join(name);
        img.save(&input).expect(name);
        let before = std::fs::read(&input).expect("read");
        let ext = Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("png");
        let output = d.path().join(format!("restored_{name}"));
        let r = inpaint(&input, &mask, &output.with_extension(ext));
        assert!(r.ok, "{name}: {}", r.stderr);
        let back = load_image(&output.with_extension(ext)).expect("reload");
        let src = load_image(&input).expect("src");
        assert_eq!(back.pixels.channels(), src.pixels.channels(), "{name}");
        assert_eq!(back.depth, src.depth, "{name}: depth changed");
        assert_eq!(
            std::fs::read(&input).expect("read"),
            before,
            "{name}: source changed"
        );
    }
}

#[test]
fn degenerate_images_and_masks_give_clear_errors() {
    let d = tempfile::tempdir().expect("tmp");
    // A 1x1 image whose only pixel is a hole: nothing to restore from.
    let one = d.path().join("one.png");
    DynamicImage::ImageRgb8(ImageBuffer::from_pixel(1, 1, Rgb([1, 2, 3])))
        .save(&one)
        .expect("w");
    let one_mask = d.path().join("one_mask.png");
    DynamicImage::ImageLuma8(ImageBuffer::from_pixel(1, 1, Luma([255])))
        .save(&one_mask)
        .expect("w");
    let r = inpaint(&one, &one_mask, &d.path().join("o1.png"));
    assert!(!r.ok);
    assert!(
        r.stderr.contains("known pixel") || r.stderr.contains("whole image"),
        "{}",
        r.stderr
    );

    // An all-black mask marks nothing.
    let img = d.path().join("img.png");
    sample_rgb8().save(&img).expect("w");
    let empty_mask = d.path().join("empty_mask.png");
    DynamicImage::ImageLuma8(ImageBuffer::new(40, 30))
        .save(&empty_mask)
        .expect("w");
    let r = inpaint(&img, &empty_mask, &d.path().join("o2.png"));
    assert!(!r.ok && r.stderr.contains("marks no pixel"), "{}", r.stderr);

    // A mask that is not an image, and one that does not exist.
    let text_mask = d.path().join("mask.png.txt");
    std::fs::write(&text_mask, b"hello").expect("w");
    let r = inpaint(&img, &text_mask, &d.path().join("o3.png"));
    assert!(
        !r.ok && r.stderr.trim().lines().count() == 1,
        "{}",
        r.stderr
    );
    let r = inpaint(
        &img,
        &d.path().join("missing.png"),
        &d.path().join("o4.png"),
    );
    assert!(!r.ok && r.stderr.contains("cannot read"), "{}", r.stderr);
}
