//! Manifest bytes through the model loaders: as `<id>.json` beside a valid small VAE weights
//! file (`LoadedVae::load_model`, the registry's path), and as a cGAN training manifest whose
//! generator sizes then load a valid small cGAN weights file.
#![no_main]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use kintsugi::models::cgan::LoadedGenerator;
use kintsugi::models::vae::LoadedVae;
use kintsugi::train::cgan::CganManifest;
use libfuzzer_sys::fuzz_target;

fn cgan_weights() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = common::scratch_dir();
        let vae = LoadedVae::fresh(common::tiny_vae(), 1, &Device::Cpu).expect("tiny vae");
        vae.save(&dir.join("m.safetensors")).expect("save vae");
        let gen = LoadedGenerator::fresh(common::tiny_cgan(), 1, &Device::Cpu).expect("tiny cgan");
        let p = dir.join("g.safetensors");
        gen.save(&p).expect("save cgan");
        p
    })
}

fuzz_target!(|data: &[u8]| {
    let gen_path = cgan_weights();
    let dir = common::scratch_dir();
    if std::fs::write(dir.join("m.json"), data).is_err() {
        return;
    }
    let _ = LoadedVae::load_model(dir, "m", &Device::Cpu);
    if let Ok(m) = serde_json::from_slice::<CganManifest>(data) {
        let _ = LoadedGenerator::load(m.generator, gen_path, &Device::Cpu);
    }
});
