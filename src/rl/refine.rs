//! `rl-refine`: a fill (Telea, or the restorer named in the agent's manifest) improved by a
//! PixelRL agent acting on the hole pixels only.

use std::path::Path;
use std::sync::Arc;

use crate::imaging::{ImageF32, Mask, Rect};
use crate::restore::telea::Telea;
use crate::restore::{
    check_inputs, checkpoint, ParamSpec, Params, Reporter, RestoreError, Restorer,
};

use super::agent::Agent;
use super::env::Frame;
use super::net::{RlError, RlResult};

/// The refinement restorer: the starting fill, then a greedy episode of the agent on the holes.
pub struct RlRefine {
    id: &'static str,
    agent: Agent,
    /// The starting fill; Telea when `None`.
    start: Option<Arc<dyn Restorer>>,
}

impl RlRefine {
    /// Loads the `refine` agent `<dir>/<id>.safetensors` + `<id>.json` whose manifest names
    /// Telea (or nothing) as its starting fill.
    pub fn load(dir: &Path, id: &'static str) -> RlResult<Self> {
        Self::load_with_start(dir, id, None)
    }

    /// Loads the agent `id`, starting from `start` (the restorer its manifest names; `None`
    /// for Telea). Refuses a manifest whose start fill is not the one given.
    pub fn load_with_start(
        dir: &Path,
        id: &'static str,
        start: Option<(&str, Arc<dyn Restorer>)>,
    ) -> RlResult<Self> {
        let agent = Agent::load(dir, id)?;
        if agent.manifest.task != "refine" {
            return Err(RlError::Invalid(format!(
                "{id} is a '{}' agent, not a 'refine' one",
                agent.manifest.task
            )));
        }
        let wanted = agent.manifest.start.as_deref().unwrap_or("telea");
        let given = start.as_ref().map_or("telea", |(name, _)| *name);
        if wanted != given {
            return Err(RlError::Invalid(format!(
                "{id} was trained on '{wanted}' fills, but '{given}' was given"
            )));
        }
        Ok(Self {
            id,
            agent,
            start: start.map(|(_, r)| r),
        })
    }
}

/// Runs the refine `agent` on `image` whose holes `mask` are already filled; hole pixels
/// change, known pixels are returned bit-identical. `on_step(done, total, image)`.
pub fn refine_fill(
    agent: &Agent,
    filled: &ImageF32,
    mask: &Mask,
    on_step: &mut dyn FnMut(usize, usize) -> bool,
) -> RlResult<ImageF32> {
    let (w, h, ch) = (filled.width(), filled.height(), filled.channels());
    let rgb = ImageF32::from_fn(w, h, 3, |x, y, c| {
        let p = filled.pixel(x, y);
        if ch >= 3 {
            p[c]
        } else {
            p[0]
        }
    });
    let frame = Frame::from_image(&rgb).ok_or_else(|| RlError::Invalid("not RGB".into()))?;
    let hole = mask.data().to_vec();
    let run = agent.run(&frame, Some(&hole), on_step)?;
    let out = run.image.to_image();
    Ok(ImageF32::from_fn(w, h, ch, |x, y, c| {
        if !mask.get(x, y) || (ch == 4 && c == 3) || (ch == 2 && c == 1) {
            filled.pixel(x, y)[c]
        } else if ch < 3 {
            out.pixel(x, y).iter().sum::<f32>() / 3.0
        } else {
            out.pixel(x, y)[c].clamp(0.0, 1.0)
        }
    }))
}

impl Restorer for RlRefine {
    fn id(&self) -> &'static str {
        self.id
    }

    /// The starting fill's parameters (none for Telea, as before).
    fn param_specs(&self) -> Vec<ParamSpec> {
        self.start
            .as_ref()
            .map(|s| s.param_specs())
            .unwrap_or_default()
    }

    /// The starting fill's context, and at least the agent's reach (receptive radius 11 +
    /// filter radius 2).
    fn context_margin(&self, params: &Params, hole: Rect) -> usize {
        match &self.start {
            Some(s) => s.context_margin(params, hole),
            None => Telea.context_margin(params, hole),
        }
        .max(16)
    }

    fn restore(
        &self,
        image: &ImageF32,
        mask: &Mask,
        params: &Params,
        rep: &dyn Reporter,
    ) -> Result<ImageF32, RestoreError> {
        check_inputs(image, mask)?;
        let filled = match &self.start {
            Some(s) => s.restore(image, mask, params, rep)?,
            None => Telea.restore(image, mask, params, rep)?,
        };
        checkpoint(rep)?;
        let steps = self.agent.steps() as u64;
        let mut cancelled = false;
        let out = refine_fill(&self.agent, &filled, mask, &mut |done, total| {
            rep.progress(done as u64, total.max(1) as u64, "rl-refine step");
            cancelled = rep.is_cancelled();
            !cancelled
        });
        if cancelled {
            return Err(RestoreError::Cancelled);
        }
        let out = out.map_err(|e| RestoreError::Failed(e.to_string()))?;
        rep.progress(steps, steps, "rl-refine done");
        rep.preview(&out);
        Ok(out)
    }
}
