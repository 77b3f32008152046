//! Saving under faults: a full disk, a write interrupted by the OS, a folder we cannot write.
//! The source and any existing output must survive each one, and the error must be clear.
//!
//! A full disk is simulated with a file-size limit (`ulimit -f`) on the child process: with
//! SIGXFSZ ignored, writes past the limit fail with EFBIG like they would with ENOSPC; with the
//! signal at its default, the process is killed in the middle of the write.
//!
//! A read-only folder is made with `chmod 555`. Root ignores permission bits (CI runs as
//! root), so that case is checked for real only where the write is refused; as root it reports
//! that it was skipped. Two cases refuse writes to root too: an output whose folder is a file,
//! and a folder of a pseudo file system where no one may create files (`/sys`).

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

/// Runs `kintsugi inpaint` on the fixture's input and mask, writing `output`.
fn inpaint_to(f: &Fixture, output: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kintsugi"))
        .arg("inpaint")
        .arg(&f.input)
        .arg("--mask")
        .arg(&f.mask)
        .args(["--model", "telea", "-q", "-o"])
        .arg(output)
        .output()
        .expect("run kintsugi")
}

/// Asserts a clean one-line write error naming `output`.
fn assert_write_error(out: &std::process::Output, output: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the save succeeded");
    let line = stderr.trim();
    assert_eq!(line.lines().count(), 1, "{stderr}");
    assert!(line.starts_with("error: "), "{line}");
    assert!(line.contains("cannot write "), "{line}");
    assert!(line.contains(&*output.to_string_lossy()), "{line}");
    assert!(!line.contains("panicked"), "{line}");
}

fn mode(p: &Path, m: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
}

#[test]
fn a_read_only_folder_keeps_source_and_old_output_with_a_clear_error() {
    let f = fixture();
    let source = std::fs::read(&f.input).expect("read");
    let old = std::fs::read(&f.output).expect("read");
    mode(f.dir.path(), 0o555);
    let out = inpaint_to(&f, &f.output);
    let written = std::fs::read(&f.output).expect("read");
    let leftovers = temp_leftovers(f.dir.path());
    mode(f.dir.path(), 0o755);
    assert_eq!(
        std::fs::read(&f.input).expect("read"),
        source,
        "source changed"
    );
    if out.status.success() {
        // Only a user who ignores permission bits (root, or CAP_DAC_OVERRIDE) gets here.
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
            })
            .unwrap_or_default();
        assert_eq!(uid, "0", "a read-only folder was written by a normal user");
        eprintln!(
            "skipped: running as root, which ignores the folder's read-only bits; the \
             file-as-folder and /sys cases check a refused write instead"
        );
        return;
    }
    assert_write_error(&out, &f.output);
    assert_eq!(written, old, "old output damaged");
    assert!(leftovers.is_empty(), "temporary file left: {leftovers:?}");
}

#[test]
fn an_output_folder_that_is_a_file_fails_cleanly() {
    let f = fixture();
    let source = std::fs::read(&f.input).expect("read");
    let old = std::fs::read(&f.output).expect("read");
    // `restored.png` is a file, so `restored.png/out.png` cannot be created, even by root.
    let target = f.output.join("out.png");
    let out = inpaint_to(&f, &target);
    assert_write_error(&out, &target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("temporary file"), "{stderr}");
    assert_eq!(std::fs::read(&f.input).expect("read"), source);
    assert_eq!(std::fs::read(&f.output).expect("read"), old);
    assert!(temp_leftovers(f.dir.path()).is_empty());
}

#[test]
fn an_output_name_taken_by_a_folder_fails_cleanly_without_leftovers() {
    let f = fixture();
    let taken = f.dir.path().join("taken.png");
    std::fs::create_dir(&taken).expect("mkdir");
    std::fs::write(taken.join("keep.txt"), b"keep").expect("w");
    let out = inpaint_to(&f, &taken);
    assert_write_error(&out, &taken);
    assert_eq!(
        std::fs::read(taken.join("keep.txt")).expect("read"),
        b"keep"
    );
    assert!(
        temp_leftovers(f.dir.path()).is_empty(),
        "the temporary file was not removed"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn a_folder_where_no_one_may_create_files_fails_cleanly() {
    let f = fixture();
    let source = std::fs::read(&f.input).expect("read");
    let target = Path::new("/sys").join(format!("kintsugi-{}.png", std::process::id()));
    let out = inpaint_to(&f, &target);
    assert_write_error(&out, &target);
    assert!(!target.exists());
    assert_eq!(std::fs::read(&f.input).expect("read"), source);
    // The library says the same, as a typed error.
    let img = kintsugi::imaging::load_image(&f.input).expect("load");
    let e = kintsugi::imaging::save_image(&img.pixels, img.depth, &target, Some(&f.input));
    assert!(
        matches!(e, Err(kintsugi::imaging::ImagingError::Write { .. })),
        "{e:?}"
    );
}
