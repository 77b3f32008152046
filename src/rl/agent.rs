//! A trained pixel agent: its manifest, loading, and greedy episodes on images of any size.

use std::path::Path;

use candle_core::Device;

use super::a2c::{greedy_episode, A2cConfig};
use super::env::{Action, Frame};
use super::net::{LoadedNet, NetConfig, RlError, RlResult};

/// Measured quality of a denoising agent at one noise level.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DenoiseRow {
    /// Noise standard deviation in 8-bit units.
    pub sigma: f64,
    /// PSNR of the noisy input (dB).
    pub noisy_psnr_db: f64,
    /// PSNR after the agent's greedy episode (dB).
    pub agent_psnr_db: f64,
    /// The best single action of the set applied `steps` times everywhere, and its PSNR.
    pub best_fixed: (String, f64),
    /// The best classical denoiser tuned for this sigma (Gaussian or bilateral grid), its
    /// settings and PSNR.
    pub classical: (String, f64),
    /// Fraction of pixel-steps per action in the agent's episodes.
    pub action_share: Vec<(String, f64)>,
    /// Action shares on flat, medium and textured content (local contrast of the clean image).
    #[serde(default)]
    pub zones: Vec<super::stats::ZoneShare>,
    /// Action shares per step of the episode.
    #[serde(default)]
    pub per_step: Vec<super::stats::ZoneShare>,
}

/// Measured quality of a denoising agent.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DenoiseMetrics {
    /// What was measured and how.
    pub protocol: String,
    /// One row per noise level.
    pub rows: Vec<DenoiseRow>,
    /// The best single (action, repetitions) over all noise levels together (blind, like the
    /// agent, which is not told the noise level), with its PSNR per row.
    #[serde(default)]
    pub blind_fixed: Option<(String, Vec<f64>)>,
}

/// The manifest written beside an agent's weights.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RlManifest {
    /// Model id.
    pub id: String,
    /// Always `rl`.
    pub family: String,
    /// `denoise` or `refine`.
    pub task: String,
    /// Architecture description.
    pub architecture: String,
    /// Network sizes.
    pub net: NetConfig,
    /// Trainable values.
    pub params: usize,
    /// The action set, by [`Action::name`], in policy-output order.
    pub actions: Vec<String>,
    /// Episode and loss settings.
    pub a2c: A2cConfig,
    /// Optimiser and schedule.
    pub optimiser: String,
    /// Training data.
    pub data: String,
    /// Licence notes.
    pub data_license: String,
    /// Crop side used in training.
    pub crop: usize,
    /// Episodes (images) per update.
    pub batch: usize,
    /// Updates done.
    pub updates: u64,
    /// Training seconds over all sessions.
    pub train_seconds: f64,
    /// Updates per second of the last session.
    pub updates_per_sec: f64,
    /// The command that trained it.
    pub command: String,
    /// Seed.
    pub seed: u64,
    /// Mean training reward and PSNR gain over the last updates.
    pub last_train: Option<(f64, f64)>,
    /// Held-out denoising metrics (see `kintsugi denoise --eval`).
    pub metrics: Option<DenoiseMetrics>,
    /// Held-out refinement metrics (hole-PSNR before and after), when measured.
    pub refine_metrics: Option<serde_json::Value>,
    /// Refine agents: the registry id of the fill the agent starts from (`telea` when absent).
    #[serde(default)]
    pub start: Option<String>,
    /// Refine agents: the holes it was trained on (`scattered` when absent).
    #[serde(default)]
    pub holes: Option<String>,
    /// The weights training started from (fine-tuning), if any.
    #[serde(default)]
    pub init: Option<String>,
}

/// A manifest file's error as [`RlError::Weights`].
fn manifest_err(path: &Path, e: crate::jsonfile::JsonFileError) -> RlError {
    RlError::Weights {
        path: path.to_owned(),
        reason: format!("manifest: {}", e.cause()),
    }
}

impl RlManifest {
    /// Reads a manifest.
    pub fn read(path: &Path) -> RlResult<Self> {
        crate::jsonfile::read(path).map_err(|e| manifest_err(path, e))
    }

    /// Writes the manifest (pretty JSON, atomically).
    pub fn write(&self, path: &Path) -> RlResult<()> {
        crate::jsonfile::write(path, self).map_err(|e| manifest_err(path, e))
    }

    /// The action set.
    pub fn action_set(&self) -> RlResult<Vec<Action>> {
        self.actions
            .iter()
            .map(|n| {
                Action::from_name(n)
                    .ok_or_else(|| RlError::Invalid(format!("unknown action '{n}'")))
            })
            .collect()
    }
}

/// Images larger than this many pixels run in overlapping tiles.
const TILE_PIXELS: usize = 1024 * 1024;
/// Core side of a tile.
const TILE: usize = 512;
/// Context around a tile's core: more than the episode's reach (steps x (network receptive
/// radius 11 + filter radius 2)).
const TILE_MARGIN: usize = 72;

/// The outcome of a greedy run.
#[derive(Clone, Debug)]
pub struct AgentRun {
    /// The final image.
    pub image: Frame,
    /// The action map of every step (indices into the set, `h * w` each).
    pub maps: Vec<Vec<u8>>,
}

/// A trained agent ready to run.
pub struct Agent {
    /// The network.
    pub net: LoadedNet,
    /// Its manifest.
    pub manifest: RlManifest,
    /// The action set.
    pub set: Vec<Action>,
    dev: Device,
}

impl Agent {
    /// Loads `<dir>/<id>.safetensors` with its `<id>.json` manifest.
    pub fn load(dir: &Path, id: &str) -> RlResult<Self> {
        let manifest = RlManifest::read(&dir.join(format!("{id}.json")))?;
        let set = manifest.action_set()?;
        if set.len() != manifest.net.actions {
            return Err(RlError::Invalid(format!(
                "{id}: {} actions listed but the network has {} outputs",
                set.len(),
                manifest.net.actions
            )));
        }
        let dev = Device::Cpu;
        let net = LoadedNet::load(manifest.net, &dir.join(format!("{id}.safetensors")), &dev)?;
        Ok(Self {
            net,
            manifest,
            set,
            dev,
        })
    }

    /// An agent from a network in memory (training, tests).
    pub fn from_net(net: LoadedNet, manifest: RlManifest, set: Vec<Action>) -> Self {
        Self {
            net,
            manifest,
            set,
            dev: Device::Cpu,
        }
    }

    /// Steps of an episode.
    pub fn steps(&self) -> usize {
        self.manifest.a2c.steps
    }

    /// Runs a greedy episode on `start` (`hole` marks the pixels that act; all when `None`).
    /// Large images run in overlapping tiles. `on_step(done, total)` returns false to stop.
    pub fn run(
        &self,
        start: &Frame,
        hole: Option<&[bool]>,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> RlResult<AgentRun> {
        let steps = self.steps();
        let (w, h) = (start.w, start.h);
        if w * h <= TILE_PIXELS {
            let (image, maps) = greedy_episode(
                &self.net,
                start,
                hole,
                &self.set,
                steps,
                &self.dev,
                |t, _| on_step(t, steps),
            )?;
            return Ok(AgentRun { image, maps });
        }
        let mut image = start.clone();
        let mut maps = vec![vec![1u8; w * h]; steps];
        let tiles_x = w.div_ceil(TILE);
        let tiles_y = h.div_ceil(TILE);
        let total = tiles_x * tiles_y;
        for ty in 0..tiles_y {
            for tx in 0..tiles_x {
                let (x0, y0) = (tx * TILE, ty * TILE);
                let (x1, y1) = ((x0 + TILE).min(w), (y0 + TILE).min(h));
                let (ex0, ey0) = (
                    x0.saturating_sub(TILE_MARGIN),
                    y0.saturating_sub(TILE_MARGIN),
                );
                let (ex1, ey1) = ((x1 + TILE_MARGIN).min(w), (y1 + TILE_MARGIN).min(h));
                let (tw, th) = (ex1 - ex0, ey1 - ey0);
                let mut tile = Frame::filled(tw, th, 0.0);
                let mut tile_hole = hole.map(|_| vec![false; tw * th]);
                for c in 0..3 {
                    for y in 0..th {
                        for x in 0..tw {
                            tile.data[c * tw * th + y * tw + x] =
                                start.data[c * w * h + (ey0 + y) * w + ex0 + x];
                        }
                    }
                }
                if let (Some(th_), Some(src)) = (tile_hole.as_mut(), hole) {
                    for y in 0..th {
                        for x in 0..tw {
                            th_[y * tw + x] = src[(ey0 + y) * w + ex0 + x];
                        }
                    }
                }
                let (out, tmaps) = greedy_episode(
                    &self.net,
                    &tile,
                    tile_hole.as_deref(),
                    &self.set,
                    steps,
                    &self.dev,
                    |_, _| true,
                )?;
                for y in y0..y1 {
                    for x in x0..x1 {
                        let src = (y - ey0) * tw + (x - ex0);
                        for c in 0..3 {
                            image.data[c * w * h + y * w + x] = out.data[c * tw * th + src];
                        }
                        for (m, tm) in maps.iter_mut().zip(&tmaps) {
                            m[y * w + x] = tm[src];
                        }
                    }
                }
                if !on_step(ty * tiles_x + tx + 1, total) {
                    return Err(RlError::Invalid("stopped".into()));
                }
            }
        }
        Ok(AgentRun { image, maps })
    }
}

/// Fraction of pixel-steps per action in `maps` (over `active` pixels when given).
pub fn action_share(set: &[Action], maps: &[Vec<u8>], active: Option<&[bool]>) -> Vec<u64> {
    let mut counts = vec![0u64; set.len()];
    for m in maps {
        for (p, &a) in m.iter().enumerate() {
            if active.is_none_or(|act| act[p]) {
                if let Some(c) = counts.get_mut(usize::from(a)) {
                    *c += 1;
                }
            }
        }
    }
    counts
}
