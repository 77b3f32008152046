//! Mask bytes through the same decode path as `load_mask`, then the size check.
#![no_main]

mod common;

use kintsugi::imaging::io::load_mask_from_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((name, bytes)) = common::split_hint(data) else {
        return;
    };
    if let Ok(mask) = load_mask_from_bytes(bytes, name, &common::LIMITS) {
        assert!(mask.width() >= 1 && mask.height() >= 1);
        assert_eq!(mask.data().len(), mask.width() * mask.height());
        assert!(mask.count() <= mask.data().len());
    }
});
