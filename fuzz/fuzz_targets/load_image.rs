//! Image bytes through the same decode path as `load_image`.
#![no_main]

mod common;

use kintsugi::imaging::io::load_image_from_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((name, bytes)) = common::split_hint(data) else {
        return;
    };
    if let Ok(img) = load_image_from_bytes(bytes, name, &common::LIMITS) {
        let p = &img.pixels;
        assert!(
            p.width() >= 1 && p.height() >= 1,
            "an image without pixels loaded"
        );
        assert!((p.width() * p.height()) as u64 <= common::LIMITS.max_pixels);
        assert!((1..=4).contains(&p.channels()));
        assert_eq!(p.data().len(), p.width() * p.height() * p.channels());
    }
});
