//! Maps a model id to its implementation, family, description and availability.
//!
//! Classical restorers are always available. Learned models need `weights/<id>.safetensors`
//! and its `weights/<id>.json` manifest; a model whose files are missing or unreadable is
//! listed with the reason, so the studio can show it disabled and the CLI can explain.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::restore::biharmonic::Biharmonic;
use crate::restore::patchmatch::PatchMatch;
use crate::restore::telea::Telea;
use crate::restore::{RestoreError, Restorer};

/// The four generative families plus classical methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Weight-free algorithms.
    Classical,
    /// Image-conditioned GAN.
    CGan,
    /// Variational autoencoder.
    Vae,
    /// Unconditional GAN.
    Gan,
    /// Reinforcement-learning agent.
    Rl,
}

impl Family {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Family::Classical => "classical",
            Family::CGan => "cGAN",
            Family::Vae => "VAE",
            Family::Gan => "GAN",
            Family::Rl => "RL",
        }
    }
}

/// Whether a model can run here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Ready.
    Available,
    /// Cannot run, with the reason.
    Unavailable(String),
}

/// One entry of the registry.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Stable id.
    pub id: &'static str,
    /// Family.
    pub family: Family,
    /// One line for the picker.
    pub description: &'static str,
    /// Whether it can run, and if not why.
    pub availability: Availability,
}

struct Entry {
    id: &'static str,
    family: Family,
    description: &'static str,
}

const CLASSICAL: &[Entry] = &[
    Entry {
        id: "auto",
        family: Family::Classical,
        description: "Automatic: biharmonic for thin scratches and dust, cGAN + Telea for wide \
                      holes (Telea alone while the cGAN's weights are missing)",
    },
    Entry {
        id: "telea",
        family: Family::Classical,
        description: "Telea fast marching: fast, good on thin scratches and dust",
    },
    Entry {
        id: "biharmonic",
        family: Family::Classical,
        description: "Biharmonic smoothest fill: strongest smooth fill for scratches and specks",
    },
    Entry {
        id: "patchmatch",
        family: Family::Classical,
        description:
            "PatchMatch completion: copies texture from the rest of the image into large holes",
    },
];

const LEARNED: &[Entry] = &[
    Entry {
        id: "cgan-inpaint",
        family: Family::CGan,
        description: "Gated-convolution cGAN inpainting for real damage",
    },
    Entry {
        id: "vae-faces",
        family: Family::Vae,
        description: "Face VAE: latent-optimisation inpainting of 64x64 faces",
    },
    Entry {
        id: "gan-faces",
        family: Family::Gan,
        description: "Face GAN: GAN-inversion inpainting of 64x64 faces",
    },
    Entry {
        id: "rl-refine",
        family: Family::Rl,
        description: "PixelRL agent that refines a fill step by step",
    },
    Entry {
        id: "rl-refine-cgan",
        family: Family::Rl,
        description: "The cGAN's fill refined by a PixelRL agent trained on cGAN fills",
    },
];

/// The model registry: where weights live, and which models exist.
#[derive(Clone, Debug)]
pub struct Registry {
    weights_dir: PathBuf,
}

impl Default for Registry {
    /// Looks for weights in `$KINTSUGI_WEIGHTS`, else `weights/` beside the executable's
    /// project (the crate root when run with cargo), else `./weights`.
    fn default() -> Self {
        let dir = std::env::var_os("KINTSUGI_WEIGHTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights"));
        let dir = if dir.is_dir() {
            dir
        } else {
            PathBuf::from("weights")
        };
        Self::new(dir)
    }
}

impl Registry {
    /// A registry reading weights from `weights_dir`.
    pub fn new(weights_dir: impl Into<PathBuf>) -> Self {
        Self {
            weights_dir: weights_dir.into(),
        }
    }

    /// The weights folder.
    pub fn weights_dir(&self) -> &Path {
        &self.weights_dir
    }

    /// Every model, with its availability.
    pub fn list(&self) -> Vec<ModelInfo> {
        let classical = CLASSICAL.iter().map(|e| ModelInfo {
            id: e.id,
            family: e.family,
            description: e.description,
            availability: Availability::Available,
        });
        let learned = LEARNED.iter().map(|e| ModelInfo {
            id: e.id,
            family: e.family,
            description: e.description,
            availability: match self.learned_restorer(e.id) {
                Some(Ok(_)) => Availability::Available,
                Some(Err(reason)) => Availability::Unavailable(reason),
                None => Availability::Unavailable(self.learned_reason(e.id)),
            },
        });
        classical.chain(learned).collect()
    }

    /// Why a learned model cannot run in this build.
    fn learned_reason(&self, id: &str) -> String {
        let weights = self.weights_dir.join(format!("{id}.safetensors"));
        if !weights.is_file() {
            format!("weights not found: {}", weights.display())
        } else {
            format!("the {id} network is not part of this build yet")
        }
    }

    /// The restorer of a learned model that this build implements (`None` for the others):
    /// `vae-faces` and `cgan-inpaint` need `<id>.safetensors` and its `<id>.json` manifest.
    fn learned_restorer(&self, id: &str) -> Option<Result<Arc<dyn Restorer>, String>> {
        match id {
            "cgan-inpaint" => {
                let weights = self.weights_dir.join(format!("{id}.safetensors"));
                if !weights.is_file() {
                    return None;
                }
                Some(
                    crate::models::cgan_inpaint::CganInpaint::load(
                        &self.weights_dir,
                        "cgan-inpaint",
                    )
                    .map(|r| Arc::new(r) as Arc<dyn Restorer>)
                    .map_err(|e| format!("cannot load {id}: {e}")),
                )
            }
            "vae-faces" => {
                let weights = self.weights_dir.join(format!("{id}.safetensors"));
                let manifest = self.weights_dir.join(format!("{id}.json"));
                if !weights.is_file() {
                    return None;
                }
                if !manifest.is_file() {
                    return Some(Err(format!(
                        "manifest not found: {} (the weights need it for their sizes)",
                        manifest.display()
                    )));
                }
                Some(
                    crate::models::vae_inpaint::VaeInpaint::load(&self.weights_dir, "vae-faces")
                        .map(|r| Arc::new(r) as Arc<dyn Restorer>)
                        .map_err(|e| format!("cannot load {id}: {e}")),
                )
            }
            "gan-faces" => {
                let weights = self.weights_dir.join(format!("{id}.safetensors"));
                if !weights.is_file() {
                    return None;
                }
                Some(
                    crate::models::gan_inpaint::GanInpaint::load(&self.weights_dir, "gan-faces")
                        .map(|r| Arc::new(r) as Arc<dyn Restorer>)
                        .map_err(|e| format!("cannot load {id}: {e}")),
                )
            }
            "rl-refine" => {
                let weights = self.weights_dir.join(format!("{id}.safetensors"));
                if !weights.is_file() {
                    return None;
                }
                Some(
                    crate::rl::refine::RlRefine::load(&self.weights_dir, "rl-refine")
                        .map(|r| Arc::new(r) as Arc<dyn Restorer>)
                        .map_err(|e| format!("cannot load {id}: {e}")),
                )
            }
            "rl-refine-cgan" => {
                let weights = self.weights_dir.join(format!("{id}.safetensors"));
                if !weights.is_file() {
                    return None;
                }
                let cgan = match self.learned_restorer("cgan-inpaint") {
                    Some(Ok(cgan)) => cgan,
                    Some(Err(reason)) => return Some(Err(format!("its start fill: {reason}"))),
                    None => {
                        return Some(Err(format!(
                            "its start fill: {}",
                            self.learned_reason("cgan-inpaint")
                        )))
                    }
                };
                Some(
                    crate::rl::refine::RlRefine::load_with_start(
                        &self.weights_dir,
                        "rl-refine-cgan",
                        Some(("cgan-inpaint", cgan)),
                    )
                    .map(|r| Arc::new(r) as Arc<dyn Restorer>)
                    .map_err(|e| format!("cannot load {id}: {e}")),
                )
            }
            _ => None,
        }
    }

    /// The damage detectors (`kintsugi detect --detector ...`) with their availability:
    /// `classical` always, `detect-damage` when its weights and manifest load.
    pub fn detectors(&self) -> Vec<(&'static str, &'static str, Availability)> {
        let learned = match crate::detect::learned::Learned::load(
            &self.weights_dir,
            crate::detect::learned::MODEL_ID,
        ) {
            Ok(_) => Availability::Available,
            Err(e) => Availability::Unavailable(format!("{e}; the classical detector is used")),
        };
        vec![
            (
                crate::detect::learned::MODEL_ID,
                "Tiny U-Net damage detector (dust, scratches, hairs, small stains)",
                learned,
            ),
            (
                "classical",
                "Top-hat/black-hat and oriented line filters: the weight-free fallback",
                Availability::Available,
            ),
        ]
    }

    /// The restorer for `id`, or why there is none.
    pub fn restorer(&self, id: &str) -> Result<Arc<dyn Restorer>, RestoreError> {
        // Short alias used in the docs and on the command line.
        let id = if id == "cgan" { "cgan-inpaint" } else { id };
        match id {
            "telea" => Ok(Arc::new(Telea)),
            "biharmonic" => Ok(Arc::new(Biharmonic)),
            "patchmatch" => Ok(Arc::new(PatchMatch)),
            "auto" => {
                let cgan = match self.learned_restorer("cgan-inpaint") {
                    Some(Ok(cgan)) => Some(cgan),
                    _ => None,
                };
                Ok(Arc::new(crate::models::auto::Auto::new(cgan)))
            }
            other => match LEARNED.iter().find(|e| e.id == other) {
                Some(e) => match self.learned_restorer(e.id) {
                    Some(Ok(r)) => Ok(r),
                    Some(Err(reason)) => Err(RestoreError::Unavailable {
                        id: e.id.to_owned(),
                        reason,
                    }),
                    None => Err(RestoreError::Unavailable {
                        id: e.id.to_owned(),
                        reason: self.learned_reason(e.id),
                    }),
                },
                None => Err(RestoreError::UnknownModel(other.to_owned())),
            },
        }
    }
}
