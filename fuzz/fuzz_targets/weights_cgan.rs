//! Safetensors bytes through `LoadedGenerator::load` (the small seed architecture); a model
//! that loads must also run.
#![no_main]

mod common;

use candle_core::{DType, Device, Tensor};
use kintsugi::models::cgan::LoadedGenerator;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch_dir().join("g.safetensors");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(m) = LoadedGenerator::load(common::tiny_cgan(), &path, &Device::Cpu) {
        let dev = Device::Cpu;
        let img = Tensor::full(0.5f32, (1, 3, 8, 8), &dev).expect("image");
        let mask = Tensor::zeros((1, 1, 8, 8), DType::F32, &dev).expect("mask");
        let z = Tensor::zeros((1, 1, 8, 8), DType::F32, &dev).expect("z");
        m.gen
            .forward(&img, &mask, &z)
            .expect("a loaded generator runs");
    }
});
