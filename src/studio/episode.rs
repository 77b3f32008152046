//! The RL episode viewer (R): runs one greedy episode of a PixelRL agent on the worker and lets
//! the user step through it.
//!
//! - `rl-denoise` acts on a region of the image (at the centre of the view), optionally after
//!   adding Gaussian noise, so that the loaded photo is the clean target and each step's
//!   reward and PSNR change are real measurements;
//! - `rl-refine` (or `rl-refine-cgan`) fills the current mask with its starting fill (Telea, or
//!   the cGAN) and refines the hole pixels; optionally the photo under the mask is the target
//!   (for masks painted over intact pixels).
//!
//! The episode is an engine job ([`JobKind::Task`]), so it queues, cancels (Esc) and reports
//! panics like every other job; each step is sent to the viewer as soon as it is made (image,
//! action map, statistics: [`crate::rl::episode::StepRecord`]) over a bounded channel and
//! shown while the episode runs. The viewer then steps back and forth through the recorded
//! images (`,` and `.`, Home and End), with an overlay of the action each pixel chose (one
//! colour per action, with a legend) and a table of mean reward and PSNR change per step; the
//! window itself is drawn in `episode_ui.rs`.

use std::path::PathBuf;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver};
use egui::{Color32, ColorImage, TextureHandle, TextureOptions};

use super::app::StudioApp;
use crate::engine::{Event, EventKind, JobContext, JobId, JobKind, JobOutput};
use crate::imaging::{ImageF32, Mask, Rect};
use crate::restore::RestoreError;
use crate::rl::agent::Agent;
use crate::rl::episode::{record_episode, EpisodeRecord, StepRecord};
use crate::rl::{Action, Frame};

/// Default side of the region an episode runs on: large enough to see, small enough that a
/// 5-step episode takes about a second on the CPU and every step fits in memory.
pub const DEFAULT_MAX_SIDE: usize = 256;

/// Context kept around the mask's bounding box for refinement.
const REFINE_MARGIN: usize = 16;

/// Shown side of the episode image in the window (points).
pub(super) const VIEW_SIDE: f32 = 360.0;

/// One colour per action, in [`Action::ALL`] order (distinct hues; `keep` is grey).
pub const ACTION_COLOURS: [Color32; 11] = [
    Color32::from_rgb(40, 90, 230),   // minus1: blue
    Color32::from_rgb(150, 150, 150), // keep: grey
    Color32::from_rgb(230, 60, 40),   // plus1: red
    Color32::from_rgb(120, 220, 240), // gauss0.5: light cyan
    Color32::from_rgb(0, 150, 160),   // gauss1.5: teal
    Color32::from_rgb(250, 200, 0),   // bilateral0.1: yellow
    Color32::from_rgb(250, 120, 0),   // bilateral0.3: orange
    Color32::from_rgb(170, 60, 210),  // median3: purple
    Color32::from_rgb(120, 80, 40),   // box5: brown
    Color32::from_rgb(240, 90, 190),  // masked-median5: pink
    Color32::from_rgb(60, 200, 60),   // diffuse: green
];

/// The overlay colour of `action`.
pub fn action_colour(action: Action) -> Color32 {
    Action::ALL
        .iter()
        .position(|&a| a == action)
        .and_then(|i| ACTION_COLOURS.get(i).copied())
        .unwrap_or(Color32::WHITE)
}

/// Which agent the viewer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpisodeTask {
    /// `rl-denoise` on a region at the centre of the view.
    Denoise,
    /// `rl-refine` on the current mask.
    Refine,
    /// `rl-refine-cgan` (cGAN fill, then the agent) on the current mask.
    RefineCgan,
}

impl EpisodeTask {
    /// The agent's model id.
    pub fn model(self) -> &'static str {
        match self {
            EpisodeTask::Denoise => "rl-denoise",
            EpisodeTask::Refine => "rl-refine",
            EpisodeTask::RefineCgan => "rl-refine-cgan",
        }
    }

    /// Whether the agent refines the mask (rather than denoising).
    pub fn refines(self) -> bool {
        self != EpisodeTask::Denoise
    }
}

/// The region an episode runs on, at most `max_side` on a side.
///
/// Denoising: the window centred on `centre`, moved inside the image. Refinement: the mask's
/// bounding box with a margin when that fits, else the window centred on the mask pixel
/// nearest to `centre`; `None` when the mask is empty.
pub fn episode_region(
    width: usize,
    height: usize,
    mask: Option<&Mask>,
    centre: (usize, usize),
    max_side: usize,
) -> Option<Rect> {
    if width == 0 || height == 0 || max_side == 0 {
        return None;
    }
    let window = |cx: usize, cy: usize| {
        let (ww, wh) = (max_side.min(width), max_side.min(height));
        let x = cx.saturating_sub(ww / 2).min(width - ww);
        let y = cy.saturating_sub(wh / 2).min(height - wh);
        Rect {
            x,
            y,
            width: ww,
            height: wh,
        }
    };
    let Some(mask) = mask else {
        return Some(window(centre.0, centre.1));
    };
    let bb = mask.bounding_box()?;
    let (x0, y0) = (
        bb.x.saturating_sub(REFINE_MARGIN),
        bb.y.saturating_sub(REFINE_MARGIN),
    );
    let x1 = (bb.x + bb.width + REFINE_MARGIN).min(width);
    let y1 = (bb.y + bb.height + REFINE_MARGIN).min(height);
    if x1 - x0 <= max_side && y1 - y0 <= max_side {
        return Some(Rect {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        });
    }
    let mut best = (usize::MAX, centre);
    for y in bb.y..bb.y + bb.height {
        for x in bb.x..bb.x + bb.width {
            if mask.get(x, y) {
                let d = x.abs_diff(centre.0).pow(2) + y.abs_diff(centre.1).pow(2);
                if d < best.0 {
                    best = (d, (x, y));
                }
            }
        }
    }
    Some(window(best.1 .0, best.1 .1))
}

/// `region` of `img` as an RGB frame (grey replicated, alpha dropped).
pub fn crop_frame(img: &ImageF32, region: Rect) -> Frame {
    let ch = img.channels().max(1);
    let rgb = ImageF32::from_fn(region.width, region.height, 3, |x, y, c| {
        let p = img.pixel(region.x + x, region.y + y);
        if ch >= 3 {
            p[c]
        } else {
            p.first().copied().unwrap_or(0.0)
        }
    });
    Frame::from_image(&rgb).unwrap_or_else(|| Frame::filled(region.width, region.height, 0.0))
}

/// What an episode job sends the viewer.
enum EpisodeMsg {
    /// The episode's setting before the first step, its region and its number of steps.
    Started(Box<EpisodeRecord>, Rect, usize),
    /// One step, as soon as it is made.
    Step(Box<StepRecord>),
}

/// The state of the viewer's episode.
#[derive(Clone, Debug, PartialEq)]
pub enum EpisodeState {
    /// Nothing run yet.
    Idle,
    /// The job is queued or running.
    Running,
    /// Finished in this many seconds.
    Done(f64),
    /// Failed, with the reason.
    Failed(String),
    /// Cancelled (Esc or a new job).
    Cancelled,
}

/// The episode viewer's state (a field of the studio).
pub struct EpisodeViewer {
    pub(super) open: bool,
    /// Which agent runs.
    pub task: EpisodeTask,
    /// Denoise: add Gaussian noise of this sigma (8-bit units) first; the photo is the target.
    pub add_noise: Option<f32>,
    /// Refine: measure rewards against the photo under the mask.
    pub photo_as_target: bool,
    /// Largest side of the episode's region.
    pub max_side: usize,
    /// Show the action overlay.
    pub overlay: bool,
    /// Opacity of the action overlay.
    pub overlay_alpha: f32,
    /// Jump to each new step while the episode runs.
    pub follow: bool,
    pub(super) state: EpisodeState,
    job: Option<JobId>,
    started: Option<Instant>,
    rx: Option<Receiver<EpisodeMsg>>,
    pub(super) record: Option<EpisodeRecord>,
    pub(super) region: Option<Rect>,
    pub(super) total_steps: usize,
    pub(super) shown: usize,
    pub(super) texture: Option<TextureHandle>,
    uploaded: Option<(usize, bool, u8, usize)>,
    /// Bumped whenever a new episode starts (part of the texture's key).
    generation: usize,
    weights_dir: PathBuf,
}

impl EpisodeViewer {
    /// A closed viewer loading agents from `weights_dir`.
    pub fn new(weights_dir: PathBuf) -> Self {
        Self {
            open: false,
            task: EpisodeTask::Denoise,
            add_noise: Some(25.0),
            photo_as_target: false,
            max_side: DEFAULT_MAX_SIDE,
            overlay: true,
            overlay_alpha: 0.6,
            follow: true,
            state: EpisodeState::Idle,
            job: None,
            started: None,
            rx: None,
            record: None,
            region: None,
            total_steps: 0,
            shown: 0,
            texture: None,
            uploaded: None,
            generation: 0,
            weights_dir,
        }
    }

    /// Whether the window is shown.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Shows or hides the window.
    pub fn set_open(&mut self, open: bool) {
        self.open = open;
    }

    /// The episode's state.
    pub fn state(&self) -> &EpisodeState {
        &self.state
    }

    /// True while the episode job is queued or running.
    pub fn running(&self) -> bool {
        self.state == EpisodeState::Running
    }

    /// The recorded episode so far.
    pub fn record(&self) -> Option<&EpisodeRecord> {
        self.record.as_ref()
    }

    /// Where in the image the episode runs.
    pub fn region(&self) -> Option<Rect> {
        self.region
    }

    /// Steps the episode will make.
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// Steps received so far.
    pub fn steps_received(&self) -> usize {
        self.record.as_ref().map_or(0, EpisodeRecord::len)
    }

    /// The step shown (0 = the start image).
    pub fn shown_step(&self) -> usize {
        self.shown
    }

    /// The image shown.
    pub fn shown_frame(&self) -> Option<&Frame> {
        self.record.as_ref()?.frame(self.shown)
    }

    /// Shows step `t` (clamped to the recorded steps); stops following the live episode
    /// unless `t` is the newest step.
    pub fn show_step(&mut self, t: usize) {
        let last = self.steps_received();
        self.shown = t.min(last);
        self.follow = self.shown == last;
    }

    /// One step back.
    pub fn step_back(&mut self) {
        self.show_step(self.shown.saturating_sub(1));
    }

    /// One step forward.
    pub fn step_forward(&mut self) {
        self.show_step(self.shown + 1);
    }

    /// The shown image with the action overlay as it is drawn (overlay only on the pixels
    /// that act, and only after step 0).
    pub fn composite(&self) -> Option<ColorImage> {
        let rec = self.record.as_ref()?;
        let frame = rec.frame(self.shown)?;
        let actions = (self.overlay && self.shown > 0)
            .then(|| rec.steps.get(self.shown - 1).map(|s| &s.actions))
            .flatten();
        let (w, h) = (frame.w, frame.h);
        let plane = w * h;
        let a = self.overlay_alpha.clamp(0.0, 1.0);
        let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
        let pixels = (0..plane)
            .map(|p| {
                let base = [
                    frame.data[p],
                    frame.data[plane + p],
                    frame.data[2 * plane + p],
                ];
                let tint = actions
                    .filter(|_| rec.active(p))
                    .and_then(|m| rec.set.get(usize::from(m[p])))
                    .map(|&act| action_colour(act));
                match tint {
                    Some(c) => {
                        let mix = |b: f32, o: u8| q((1.0 - a) * b + a * f32::from(o) / 255.0);
                        Color32::from_rgb(
                            mix(base[0], c.r()),
                            mix(base[1], c.g()),
                            mix(base[2], c.b()),
                        )
                    }
                    None => Color32::from_rgb(q(base[0]), q(base[1]), q(base[2])),
                }
            })
            .collect();
        Some(ColorImage::new([w, h], pixels))
    }

    /// Takes this frame's engine events about the episode job (the studio's other jobs ignore
    /// them).
    pub(super) fn take_engine_events(&mut self, events: &[Event]) {
        let Some(id) = self.job else {
            return;
        };
        for ev in events.iter().filter(|e| e.job == id) {
            let end = match &ev.kind {
                EventKind::Done(_) => Some(EpisodeState::Done(
                    self.started.map_or(0.0, |t| t.elapsed().as_secs_f64()),
                )),
                EventKind::Failed(e) => Some(EpisodeState::Failed(e.clone())),
                EventKind::Cancelled => Some(EpisodeState::Cancelled),
                _ => None,
            };
            if let Some(end) = end {
                // Steps sent before the end are still in the channel: take them first.
                self.drain();
                self.state = end;
                self.job = None;
                self.rx = None;
            }
        }
    }

    /// Applies the steps that arrived.
    pub(super) fn drain(&mut self) {
        let Some(rx) = &self.rx else {
            return;
        };
        let msgs: Vec<EpisodeMsg> = rx.try_iter().collect();
        for m in msgs {
            match m {
                EpisodeMsg::Started(rec, region, steps) => {
                    self.record = Some(*rec);
                    self.region = Some(region);
                    self.total_steps = steps;
                    self.shown = 0;
                }
                EpisodeMsg::Step(step) => {
                    if let Some(rec) = &mut self.record {
                        rec.steps.push(*step);
                        if self.follow {
                            self.shown = rec.len();
                        }
                    }
                }
            }
        }
    }

    /// Uploads the composite when the shown step or the overlay changed.
    pub(super) fn sync_texture(&mut self, ctx: &egui::Context) {
        let key = (
            self.shown,
            self.overlay,
            (self.overlay_alpha * 255.0) as u8,
            self.generation * 1000 + self.steps_received(),
        );
        if self.uploaded == Some(key) && self.texture.is_some() {
            return;
        }
        let Some(img) = self.composite() else {
            self.texture = None;
            self.uploaded = None;
            return;
        };
        match &mut self.texture {
            Some(t) => t.set(img, TextureOptions::NEAREST),
            None => {
                self.texture = Some(ctx.load_texture("rl-episode", img, TextureOptions::NEAREST))
            }
        }
        self.uploaded = Some(key);
    }
}

/// The episode job: loads the agent, crops the region, builds the start (and target), and
/// records the episode, sending every step to the viewer.
struct EpisodeJob {
    weights_dir: PathBuf,
    registry: crate::models::registry::Registry,
    task: EpisodeTask,
    image: std::sync::Arc<ImageF32>,
    mask: std::sync::Arc<Mask>,
    centre: (usize, usize),
    max_side: usize,
    add_noise: Option<f32>,
    photo_as_target: bool,
}

impl EpisodeJob {
    fn run(
        self,
        ctx: &JobContext<'_>,
        tx: &crossbeam_channel::Sender<EpisodeMsg>,
    ) -> Result<JobOutput, RestoreError> {
        let failed = |e: String| RestoreError::Failed(e);
        let agent = Agent::load(&self.weights_dir, self.task.model())
            .map_err(|e| failed(format!("cannot load {}: {e}", self.task.model())))?;
        let want = if self.task.refines() {
            "refine"
        } else {
            "denoise"
        };
        if agent.manifest.task != want {
            return Err(failed(format!(
                "{} is a '{}' agent, not a '{want}' one",
                self.task.model(),
                agent.manifest.task
            )));
        }
        ctx.checkpoint()?;
        let (w, h) = (self.image.width(), self.image.height());
        let mask = self.task.refines().then_some(&*self.mask);
        let region = episode_region(w, h, mask, self.centre, self.max_side).ok_or_else(|| {
            RestoreError::InvalidInput(
                "the mask is empty: paint over the damage (B) before refining it".into(),
            )
        })?;
        let photo = crop_frame(&self.image, region);
        let (start, hole, target) = match self.task {
            EpisodeTask::Denoise => match self.add_noise {
                Some(sigma) => {
                    let noisy = crate::train::rl::add_noise(&photo, f64::from(sigma), 0x5eed);
                    (noisy, None, Some(photo))
                }
                None => (photo, None, None),
            },
            EpisodeTask::Refine | EpisodeTask::RefineCgan => {
                let hole: Vec<bool> = (0..region.height)
                    .flat_map(|y| (0..region.width).map(move |x| (x, y)))
                    .map(|(x, y)| self.mask.get(region.x + x, region.y + y))
                    .collect();
                let start_id = agent.manifest.start.as_deref().unwrap_or("telea");
                let fill = crate::train::rl::StartFill::from_registry(&self.registry, start_id)
                    .and_then(|s| s.fill(&photo, &hole))
                    .map_err(|e| failed(format!("starting fill: {e}")))?;
                let target = self.photo_as_target.then_some(photo);
                (fill, Some(hole), target)
            }
        };
        ctx.checkpoint()?;
        let total = agent.steps();
        let empty = EpisodeRecord {
            set: agent.set.clone(),
            start: start.clone(),
            hole: hole.clone(),
            target: target.clone(),
            reward_scale: agent.manifest.a2c.reward_scale,
            steps: Vec::new(),
        };
        let _ = tx.try_send(EpisodeMsg::Started(Box::new(empty), region, total));
        ctx.progress(0, total as u64, "episode: step 0");
        let rec = record_episode(
            &agent,
            &start,
            hole.as_deref(),
            target.as_ref(),
            &mut |step| {
                let _ = tx.try_send(EpisodeMsg::Step(Box::new(step.clone())));
                ctx.progress(
                    step.step as u64,
                    total as u64,
                    &format!("episode: step {}", step.step),
                );
                !ctx.is_cancelled()
            },
        )
        .map_err(|e| failed(e.to_string()))?;
        ctx.checkpoint()?;
        Ok(JobOutput::Message(format!(
            "{}: episode of {} steps on {}x{} px",
            self.task.model(),
            rec.len(),
            region.width,
            region.height
        )))
    }
}

impl StudioApp {
    /// The episode viewer.
    pub fn episode(&self) -> &EpisodeViewer {
        &self.episode
    }

    /// The episode viewer, mutable (options, stepping).
    pub fn episode_mut(&mut self) -> &mut EpisodeViewer {
        &mut self.episode
    }

    /// Shows or hides the episode viewer.
    pub fn toggle_episode(&mut self) {
        self.episode.open = !self.episode.open;
    }

    /// The image pixel at the centre of the canvas view.
    fn view_centre(&self) -> (usize, usize) {
        let Some(doc) = &self.doc else {
            return (0, 0);
        };
        let v = self.canvas.view;
        let c = (self.canvas.rect.center() - self.canvas.rect.min - v.offset) / v.zoom.max(1e-6);
        let clamp = |v: f32, n: usize| {
            if v.is_finite() {
                v.max(0.0).min(n.saturating_sub(1) as f32) as usize
            } else {
                n / 2
            }
        };
        (clamp(c.x, doc.width()), clamp(c.y, doc.height()))
    }

    /// Submits an episode of the viewer's agent to the worker (it waits behind a running
    /// restoration; Esc cancels it).
    pub fn start_episode(&mut self) {
        let Some(doc) = &self.doc else {
            self.episode.state = EpisodeState::Failed("open an image first".into());
            return;
        };
        if self.episode.task.refines() && doc.mask_count() == 0 {
            self.episode.state = EpisodeState::Failed(
                "the mask is empty: paint over the damage (B) before refining it".into(),
            );
            return;
        }
        let Some(engine) = &self.engine else {
            self.episode.state = EpisodeState::Failed("the worker is not running".into());
            return;
        };
        let job = EpisodeJob {
            weights_dir: self.episode.weights_dir.clone(),
            registry: self.registry.clone(),
            task: self.episode.task,
            image: doc.current().clone(),
            mask: doc.mask().clone(),
            centre: self.view_centre(),
            max_side: self.episode.max_side,
            add_noise: self.episode.add_noise,
            photo_as_target: self.episode.photo_as_target,
        };
        // Steps are few (5 for the shipped agents); the bound only guards a hostile manifest.
        let (tx, rx) = bounded(256);
        let kind = JobKind::Task {
            name: format!("{} episode", job.task.model()),
            run: Box::new(move |ctx| job.run(ctx, &tx)),
        };
        if let Some(old) = self.episode.job.take() {
            engine.cancel(old);
        }
        match engine.submit(kind) {
            Ok(h) => {
                let v = &mut self.episode;
                v.job = Some(h.id);
                v.rx = Some(rx);
                v.state = EpisodeState::Running;
                v.started = Some(Instant::now());
                v.record = None;
                v.region = None;
                v.total_steps = 0;
                v.shown = 0;
                v.follow = true;
                v.generation += 1;
            }
            Err(e) => self.episode.state = EpisodeState::Failed(e.to_string()),
        }
    }

    /// Cancels the running episode.
    pub fn cancel_episode(&mut self) {
        if let (Some(engine), Some(id)) = (&self.engine, self.episode.job) {
            engine.cancel(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denoise_region_is_a_window_inside_the_image() {
        let r = episode_region(1000, 800, None, (990, 5), 256).expect("region");
        assert_eq!((r.x, r.y, r.width, r.height), (744, 0, 256, 256));
        let small = episode_region(100, 60, None, (50, 30), 256).expect("region");
        assert_eq!(
            (small.x, small.y, small.width, small.height),
            (0, 0, 100, 60)
        );
    }

    #[test]
    fn refine_region_covers_the_mask_or_the_nearest_part() {
        let mut m = Mask::new(1000, 800);
        for y in 100..120 {
            for x in 300..340 {
                m.set(x, y, true);
            }
        }
        let r = episode_region(1000, 800, Some(&m), (0, 0), 256).expect("region");
        assert_eq!((r.x, r.y, r.width, r.height), (284, 84, 72, 52));
        // A second blob far away: the box no longer fits, the window goes to the blob nearest
        // the view centre.
        for y in 700..710 {
            for x in 900..910 {
                m.set(x, y, true);
            }
        }
        let far = episode_region(1000, 800, Some(&m), (950, 750), 256).expect("region");
        assert!(far.x <= 900 && far.x + far.width >= 910, "{far:?}");
        assert!(far.y <= 700 && far.y + far.height >= 710, "{far:?}");
        assert_eq!((far.width, far.height), (256, 256));
        assert!(episode_region(1000, 800, Some(&Mask::new(1000, 800)), (0, 0), 256).is_none());
    }

    #[test]
    fn every_action_has_its_own_colour() {
        let mut seen: Vec<Color32> = Action::ALL.iter().map(|&a| action_colour(a)).collect();
        seen.sort_by_key(|c| c.to_array());
        seen.dedup();
        assert_eq!(seen.len(), Action::ALL.len());
    }
}
