//! `auto`: the default restorer. It looks at each damaged component of a crop and picks the
//! method that suits it, so users need not know the models:
//! - thin damage (scratches, hairs, dust: every pixel within `wide_from` px of the photo) gets
//!   the biharmonic fill, the most accurate smooth fill on such holes in our evaluations;
//! - wide holes get a blend of the cGAN and Telea (weight `cgan_weight`; the two make different
//!   errors, so their mean is closer to the photo than either on our validation set) when the
//!   cGAN's weights are present, else Telea alone (the best classical method on wide holes in
//!   our evaluations).
//!
//! Wide holes are filled first (with the thin ones still marked as holes, so no damaged pixel
//! is read as known); the thin ones are then filled from the photo with the wide fills in place.
//! Components never touch (they are separated by known pixels), so there is no seam between
//! methods; the cGAN feathers its own seam with the photo.

use std::sync::Arc;

use super::cgan_inpaint::inward_distance;
use crate::imaging::{ImageF32, Mask, Rect};
use crate::restore::biharmonic::Biharmonic;
use crate::restore::pipeline::components;
use crate::restore::telea::Telea;
use crate::restore::{
    check_inputs, checkpoint, ParamSpec, Params, Reporter, RestoreError, Restorer,
};

/// Default of the `wide_from` parameter, in px of inward distance (tuned on validation data,
/// see the README's restorer comparison).
pub const DEFAULT_WIDE_FROM: f64 = 6.0;

/// Default of the `cgan_weight` parameter (tuned on validation data).
pub const DEFAULT_CGAN_WEIGHT: f64 = 0.5;

/// The automatic per-region choice.
pub struct Auto {
    cgan: Option<Arc<dyn Restorer>>,
    telea: Telea,
    thin: Biharmonic,
}

impl Auto {
    /// `cgan` (if its weights loaded) takes part in filling wide holes.
    pub fn new(cgan: Option<Arc<dyn Restorer>>) -> Self {
        Self {
            cgan,
            telea: Telea,
            thin: Biharmonic,
        }
    }

    /// Whether the cGAN takes part.
    pub fn uses_cgan(&self) -> bool {
        self.cgan.is_some()
    }

    fn specs() -> Vec<ParamSpec> {
        vec![
            ParamSpec {
                name: "cgan_weight",
                label: "cGAN share in wide holes",
                help: "Wide holes get this share of the cGAN's fill and the rest of Telea's \
                       (1 = cGAN only, 0 = Telea only; ignored without cGAN weights)",
                default: DEFAULT_CGAN_WEIGHT,
                min: 0.0,
                max: 1.0,
                integer: false,
            },
            ParamSpec {
                name: "wide_from",
                label: "Wide from (px)",
                help: "Holes reaching deeper than this from the photo use the wide-hole model \
                   (cGAN); thinner damage uses the biharmonic fill",
                default: DEFAULT_WIDE_FROM,
                min: 0.0,
                max: 1000.0,
                integer: false,
            },
        ]
    }

    /// Splits `mask` into (thin, wide) by the depth of each 8-connected component.
    pub fn split(mask: &Mask, wide_from: f64) -> (Mask, Mask) {
        let (w, h) = (mask.width(), mask.height());
        let (dist, _) = inward_distance(mask);
        let mut thin = Mask::new(w, h);
        let mut wide = Mask::new(w, h);
        for comp in components(mask) {
            let deepest = comp.iter().map(|&i| dist[i]).fold(0.0f32, f32::max);
            let target = if f64::from(deepest) > wide_from {
                &mut wide
            } else {
                &mut thin
            };
            for i in comp {
                target.data_mut()[i] = true;
            }
        }
        (thin, wide)
    }
}

impl Restorer for Auto {
    fn id(&self) -> &'static str {
        "auto"
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        Self::specs()
    }

    fn context_margin(&self, params: &Params, hole: Rect) -> usize {
        let telea = self.telea.context_margin(params, hole);
        let cgan = self
            .cgan
            .as_ref()
            .map_or(0, |c| c.context_margin(params, hole));
        telea.max(cgan).max(self.thin.context_margin(params, hole))
    }

    fn restore(
        &self,
        image: &ImageF32,
        mask: &Mask,
        params: &Params,
        rep: &dyn Reporter,
    ) -> Result<ImageF32, RestoreError> {
        check_inputs(image, mask)?;
        let specs = Self::specs();
        let wide_from = params.value_of(&specs, "wide_from");
        let weight = params.value_of(&specs, "cgan_weight").clamp(0.0, 1.0) as f32;
        let (thin, wide) = Self::split(mask, wide_from);
        let mut out = image.clone();
        if !wide.is_empty() {
            // The wide restorers see every hole of the crop as a hole.
            let mut filled = self.telea.restore(image, mask, &Params::new(), rep)?;
            if let Some(cgan) = self.cgan.as_ref().filter(|_| weight > 0.0) {
                checkpoint(rep)?;
                let c = cgan.restore(image, mask, &Params::new(), rep)?;
                for (t, g) in filled.data_mut().iter_mut().zip(c.data()) {
                    *t = weight * g + (1.0 - weight) * *t;
                }
            }
            out.paste(&filled, 0, 0, Some(&wide));
            checkpoint(rep)?;
        }
        if !thin.is_empty() {
            let filled = self.thin.restore(&out, &thin, &Params::new(), rep)?;
            out.paste(&filled, 0, 0, Some(&thin));
        }
        rep.preview(&out);
        Ok(out)
    }
}
