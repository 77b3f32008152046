//! Models: the registry of every restorer the app knows, classical and learned.

pub mod auto;
pub mod cgan;
pub mod cgan_inpaint;
pub mod conv;
pub mod gan;
pub mod gan_inpaint;
pub mod latent_pca;
pub mod layers;
pub mod registry;
pub mod vae;
pub mod vae_inpaint;

/// Whether every value of `t` (any float dtype) is finite: loaders use it to refuse weights
/// that hold NaN or infinity (a diverged or damaged file) before they poison every output.
pub fn all_finite(t: &candle_core::Tensor) -> candle_core::Result<bool> {
    Ok(t.flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?
        .iter()
        .all(|v| v.is_finite()))
}
