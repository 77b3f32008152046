//! Saving under faults: a full disk, a write interrupted by the OS, a folder we cannot write.
//! The source and any existing output must survive each one, and the error must be clear.
//!
//! A full disk is simulated with a file-size limit (`ulimit -f`) on the child process: with
//! SIGXFSZ ignored, writes past the limit fail with EFBIG like they would with ENOSPC; with the
//! signal at its default, the process is killed in the middle of the write.

use std::path::{Path, PathBuf};
use std::process::Command;

use image::{DynamicImage, ImageBuffer, Luma, Rgb};

struct Fixture {
    dir: tempfile::TempDir,
    input: PathBuf,
    mask: PathBuf,
    output: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    // Noisy content so the encoded PNG is large (about 100 KB) compared to the size limit.
    let img = ImageBuffer::from_fn(200, 150, |x, y| {
        let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) as u8;
        Rgb([v, v.wrapping_mul(7), v ^ 0x5a])
    });
    let input = dir.path().join("scan.png");
    DynamicImage::ImageRgb8(img).save(&input).expect("input");
    let mask = dir.path().join("mask.png");
    DynamicImage::ImageLuma8(ImageBuffer::from_fn(200, 150, |x, y| {
        Luma([if (x as i32 - y as i32).abs() <= 2 {
            255
        } else {
            0
        }])
    }))
    .save(&mask)
    .expect("mask");
    let output = dir.path().join("restored.png");
    std::fs::write(&output, b"an earlier result the user wants to keep").expect("output");
    Fixture {
        dir,
        input,
        mask,
        output,
    }
}

/// Runs `kintsugi inpaint` under `sh` with a file-size limit of `blocks`.
fn inpaint_limited(f: &Fixture, blocks: u32, ignore_signal: bool) -> std::process::Output {
    let trap = if ignore_signal { "trap '' XFSZ; " } else { "" };
    let script = format!(
        "{trap}ulimit -f {blocks}; exec \"$0\" inpaint \"$1\" --mask \"$2\" --model telea -q -o \"$3\""
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_kintsugi"))
        .arg(&f.input)
        .arg(&f.mask)
        .arg(&f.output)
        .output()
        .expect("run sh")
}

fn temp_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kintsugi-save-"))
        .collect()
}

#[test]
fn a_full_disk_leaves_source_and_old_output_intact_with_a_clear_error() {
    let f = fixture();
    let source = std::fs::read(&f.input).expect("read");
    let old = std::fs::read(&f.output).expect("read");
    let out = inpaint_limited(&f, 16, true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "write past the limit succeeded");
    assert!(stderr.contains("cannot write"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read(&f.input).expect("read"), source);
    assert_eq!(
        std::fs::read(&f.output).expect("read"),
        old,
        "old output damaged"
    );
    assert!(
        temp_leftovers(f.dir.path()).is_empty(),
        "temporary file left behind"
    );
}

#[test]
fn a_write_killed_midway_leaves_source_and_old_output_intact() {
    let f = fixture();
    let source = std::fs::read(&f.input).expect("read");
    let old = std::fs::read(&f.output).expect("read");
    let out = inpaint_limited(&f, 16, false);
    assert!(!out.status.success(), "the process was not stopped");
    assert_eq!(std::fs::read(&f.input).expect("read"), source);
    assert_eq!(
        std::fs::read(&f.output).expect("read"),
        old,
        "old output damaged"
    );
    // A killed process cannot remove its temporary file; it is a hidden partial file, never
    // the output itself.
    for name in temp_leftovers(f.dir.path()) {
        assert!(name.ends_with(".tmp"), "{name}");
    }
}

#[test]
fn the_same_save_succeeds_without_the_limit() {
    let f = fixture();
    let out = inpaint_limited(&f, 100_000, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(&f.output).expect("valid output");
    assert_eq!((img.width(), img.height()), (200, 150));
}
