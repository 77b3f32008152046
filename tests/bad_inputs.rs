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

/// A PNG of `w` x `h` 8-bit RGB whose header is valid (CRCs right) but whose pixel data is a
/// stub: the size alone must be judged before any pixel is decoded.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn decompression_bombs_and_zero_sizes_are_refused_before_decoding() {
    let d = tempfile::tempdir().expect("tmp");
    let mask = write_mask(d.path(), 40, 30);
    let cases = [
        (
            "bomb.png",
            png_header_only(60_000, 60_000),
            "over the limit",
        ),
        ("wide.png", png_header_only(1 << 20, 1), "over the limit"),
        ("zero_width.png", png_header_only(0, 30), ""),
        ("zero_height.png", png_header_only(40, 0), ""),
    ];
    for (name, bytes, says) in &cases {
        let t = std::time::Instant::now();
        assert_clean_failure(d.path(), name, bytes, &mask);
        let e = load_image(&d.path().join(name))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(says), "{name}: {e}");
        assert!(t.elapsed().as_secs() < 20, "{name}: too slow to refuse");
    }
}

/// Every image input of this file, by name: the broken ones and the valid ones.
fn all_cases() -> Vec<(String, Vec<u8>)> {
    let mut cases = Vec::new();
    for (k, (ext, bytes)) in valid_files().into_iter().enumerate() {
        let n = bytes.len();
        cases.push((format!("valid{k}.{ext}"), bytes.clone()));
        cases.push((format!("empty{k}.{ext}"), Vec::new()));
        for (label, cut) in [("head", 16.min(n)), ("quarter", n / 4), ("half", n / 2)] {
            cases.push((format!("{label}{k}.{ext}"), bytes[..cut].to_vec()));
        }
        let mut garbage = bytes[..12.min(n)].to_vec();
        garbage.extend((0..500u32).map(|i| (i * 131 % 251) as u8));
        cases.push((format!("garbage{k}.{ext}"), garbage));
    }
    for ext in ["png", "jpg", "tif", "webp", "bmp", "xyz"] {
        cases.push((format!("text.{ext}"), b"not an image, just text\n".to_vec()));
    }
    let rgb = sample_rgb8();
    for (name, img, format) in [
        (
            "grey.png",
            DynamicImage::ImageLuma8(rgb.to_luma8()),
            ImageFormat::Png,
        ),
        (
            "grey16.png",
            DynamicImage::ImageLuma16(rgb.to_luma16()),
            ImageFormat::Png,
        ),
        (
            "rgba16.tif",
            DynamicImage::ImageRgba16(rgb.to_rgba16()),
            ImageFormat::Tiff,
        ),
        (
            "float.tif",
            DynamicImage::ImageRgb32F(rgb.to_rgb32f()),
            ImageFormat::Tiff,
        ),
    ] {
        cases.push((name.to_owned(), encode(&img, format)));
    }
    cases.push(("bomb.png".into(), png_header_only(60_000, 60_000)));
    cases.push(("zero_width.png".into(), png_header_only(0, 30)));
    cases
}

/// Loading from bytes takes the same path as loading the file: the same result, or the same
/// kind of error, for every case. With `KINTSUGI_FUZZ_SEEDS=<dir>` the cases are also written as
/// seeds of the `load_image` and `load_mask` fuzz targets (first byte: the name's extension).
#[test]
fn loading_from_bytes_matches_loading_the_file() {
    use kintsugi::imaging::io::{load_image_from_bytes, load_mask_any_size, load_mask_from_bytes};
    use kintsugi::imaging::LoadLimits;
    let d = tempfile::tempdir().expect("tmp");
    let limits = LoadLimits::default();
    let cases = all_cases();
    let mut loaded = 0;
    for (name, bytes) in &cases {
        let path = d.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let from_file = load_image(&path);
        let from_bytes = load_image_from_bytes(bytes, Path::new(name), &limits);
        match (&from_file, &from_bytes) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.pixels.data(), b.pixels.data(), "{name}");
                assert_eq!((a.depth, a.format), (b.depth, b.format), "{name}");
                loaded += 1;
            }
            (Err(a), Err(b)) => assert_eq!(
                std::mem::discriminant(a),
                std::mem::discriminant(b),
                "{name}: {a} vs {b}"
            ),
            _ => panic!("{name}: file and bytes disagree"),
        }
        let mask_file = load_mask_any_size(&path).ok();
        let mask_bytes = load_mask_from_bytes(bytes, Path::new(name), &limits).ok();
        assert_eq!(
            mask_file.map(|m| m.data().to_vec()),
            mask_bytes.map(|m| m.data().to_vec()),
            "{name}"
        );
    }
    // The valid files and variants load; all the others fail.
    assert_eq!(loaded, 6 + 4, "{} cases", cases.len());
    if let Some(root) = std::env::var_os("KINTSUGI_FUZZ_SEEDS") {
        const HINTS: [&str; 6] = ["", "png", "jpg", "tif", "webp", "bmp"];
        for target in ["load_image", "load_mask"] {
            let dir = Path::new(&root).join(target);
            std::fs::create_dir_all(&dir).expect("seed dir");
            for (name, bytes) in &cases {
                let ext = Path::new(name)
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("");
                let hint = HINTS.iter().position(|h| *h == ext).unwrap_or(0) as u8;
                let mut seed = vec![hint];
                seed.extend_from_slice(bytes);
                std::fs::write(dir.join(format!("seed-{name}")), seed).expect("seed");
            }
        }
    }
}
