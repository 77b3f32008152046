//! Models: the registry of every restorer the app knows, classical and learned.

pub mod auto;
pub mod cgan;
pub mod cgan_inpaint;
pub mod conv;
pub mod latent_pca;
pub mod layers;
pub mod registry;
pub mod vae;
pub mod vae_inpaint;
