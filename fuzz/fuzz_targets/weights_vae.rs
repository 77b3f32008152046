//! Safetensors bytes through `LoadedVae::load` (the small seed architecture); a model that
//! loads must also decode.
#![no_main]

mod common;

use candle_core::{Device, Tensor};
use kintsugi::models::vae::LoadedVae;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch_dir().join("w.safetensors");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let cfg = common::tiny_vae();
    if let Ok(m) = LoadedVae::load(cfg, &path, &Device::Cpu) {
        let z =
            Tensor::zeros((1, cfg.latent), candle_core::DType::F32, &Device::Cpu).expect("zeros");
        let out = m.vae.decode(&z).expect("a loaded VAE decodes");
        let v: Vec<f32> = out.flatten_all().and_then(|t| t.to_vec1()).expect("values");
        assert!(
            v.iter().all(|x| x.is_finite()),
            "finite weights decoded to non-finite"
        );
    }
});
