//! Restorers: everything that turns a damaged image plus a mask into a repaired image.
//!
//! A [`Restorer`] works on one crop (an image and a mask of the same size). The
//! [`pipeline`] splits a full-size job into crops around each damaged region, so the cost of a
//! repair grows with the damaged area and not with the size of the scan, and pastes back only
//! the hole pixels: known pixels stay bit-identical.

pub mod biharmonic;
pub mod params;
pub mod patchmatch;
pub mod pipeline;
pub mod telea;

pub use params::{ParamSpec, Params};

use crate::imaging::{ImageF32, Mask, Rect};

/// Why a restoration did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The job's cancel token was set; not a failure.
    #[error("cancelled")]
    Cancelled,
    /// The image and mask cannot be restored as given.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A restorer id that the registry does not know.
    #[error("unknown model '{0}' (see `kintsugi models`)")]
    UnknownModel(String),
    /// The restorer produced something unusable (for example non-finite values).
    #[error("restoration failed: {0}")]
    Failed(String),
    /// A known model that cannot run here, with the reason.
    #[error("model '{id}' is unavailable: {reason}")]
    Unavailable {
        /// Model id.
        id: String,
        /// Why it cannot run.
        reason: String,
    },
}

/// The channel through which a running restoration reports back and learns it was cancelled.
///
/// Implementations must be cheap to call: restorers call [`Reporter::is_cancelled`] between
/// every step (every few milliseconds of work).
pub trait Reporter: Sync {
    /// True once the job should stop; the restorer then returns [`RestoreError::Cancelled`].
    fn is_cancelled(&self) -> bool;
    /// `done` of `total` steps are complete.
    fn progress(&self, done: u64, total: u64, message: &str);
    /// An intermediate result for the crop being restored (same size as the restorer's input).
    fn preview(&self, image: &ImageF32);
}

/// Returns `Err(Cancelled)` when the reporter says so: `checkpoint(rep)?` between steps.
pub fn checkpoint(rep: &dyn Reporter) -> Result<(), RestoreError> {
    if rep.is_cancelled() {
        Err(RestoreError::Cancelled)
    } else {
        Ok(())
    }
}

/// A reporter that never cancels and drops every report (tests, benchmarks).
pub struct NullReporter;

impl Reporter for NullReporter {
    fn is_cancelled(&self) -> bool {
        false
    }
    fn progress(&self, _done: u64, _total: u64, _message: &str) {}
    fn preview(&self, _image: &ImageF32) {}
}

/// An inpainting method.
///
/// `restore` receives one crop: an image and a mask of the same size with at least one hole.
/// It returns an image of the same size whose hole pixels are filled. Pixels outside the mask
/// must be returned unchanged (the pipeline also enforces this when it pastes back).
pub trait Restorer: Send + Sync {
    /// Stable id used on the command line and in the registry (`telea`, `patchmatch`, ...).
    fn id(&self) -> &'static str;

    /// The tunable parameters with their defaults and ranges.
    fn param_specs(&self) -> Vec<ParamSpec>;

    /// How many known pixels around a hole's bounding box the restorer needs to see.
    fn context_margin(&self, params: &Params, hole: Rect) -> usize;

    /// Fills the holes of `mask` in `image`.
    fn restore(
        &self,
        image: &ImageF32,
        mask: &Mask,
        params: &Params,
        rep: &dyn Reporter,
    ) -> Result<ImageF32, RestoreError>;
}

/// Checks the common preconditions of [`Restorer::restore`].
pub fn check_inputs(image: &ImageF32, mask: &Mask) -> Result<(), RestoreError> {
    if image.width() != mask.width() || image.height() != mask.height() {
        return Err(RestoreError::InvalidInput(format!(
            "mask is {}x{} but the image is {}x{}",
            mask.width(),
            mask.height(),
            image.width(),
            image.height()
        )));
    }
    if image.width() == 0 || image.height() == 0 || image.channels() == 0 {
        return Err(RestoreError::InvalidInput("the image is empty".into()));
    }
    Ok(())
}
