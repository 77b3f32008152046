//! Scores of a proposed mask against the true damage: pixel-level precision, recall, F1, IoU
//! and the fraction of clean pixels falsely flagged, and defect-level counts (how many of the
//! defects the proposal covers, how many of its regions are false alarms).

use crate::imaging::Mask;
use crate::restore::pipeline::components;

/// Pixel counts of a prediction against the truth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Damaged pixels flagged.
    pub tp: u64,
    /// Clean pixels flagged.
    pub fp: u64,
    /// Damaged pixels missed.
    pub fn_: u64,
    /// Clean pixels left alone.
    pub tn: u64,
}

impl Counts {
    /// Counts of `pred` against `truth` (same size; extra pixels of either are ignored).
    pub fn of(pred: &Mask, truth: &Mask) -> Self {
        let mut c = Self::default();
        for (&p, &t) in pred.data().iter().zip(truth.data()) {
            c.add(p, t);
        }
        c
    }

    /// Counts of `pred` against `truth` (same size) in each `side` x `side` tile, row by row
    /// (the last row and column of tiles may be smaller): items for a [`Bootstrap`] of a few
    /// large images.
    pub fn tiled(pred: &Mask, truth: &Mask, side: usize) -> Vec<Self> {
        let (w, h) = (
            truth.width().min(pred.width()),
            truth.height().min(pred.height()),
        );
        let side = side.max(1);
        let mut tiles = Vec::with_capacity(w.div_ceil(side) * h.div_ceil(side));
        for ty in (0..h).step_by(side) {
            for tx in (0..w).step_by(side) {
                let mut c = Self::default();
                for y in ty..(ty + side).min(h) {
                    for x in tx..(tx + side).min(w) {
                        c.add(pred.get(x, y), truth.get(x, y));
                    }
                }
                tiles.push(c);
            }
        }
        tiles
    }

    /// Adds one pixel.
    #[inline]
    pub fn add(&mut self, pred: bool, truth: bool) {
        match (pred, truth) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, true) => self.fn_ += 1,
            (false, false) => self.tn += 1,
        }
    }

    /// Sum of two counts.
    pub fn merged(self, o: Self) -> Self {
        Self {
            tp: self.tp + o.tp,
            fp: self.fp + o.fp,
            fn_: self.fn_ + o.fn_,
            tn: self.tn + o.tn,
        }
    }

    /// Flagged pixels that are damage (1 when nothing is flagged).
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// Damage pixels that are flagged (1 when there is no damage).
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// Harmonic mean of precision and recall.
    pub fn f1(&self) -> f64 {
        let d = 2 * self.tp + self.fp + self.fn_;
        ratio(2 * self.tp, d)
    }

    /// Intersection over union of the two masks.
    pub fn iou(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp + self.fn_)
    }

    /// Clean pixels flagged, as a fraction of all clean pixels.
    pub fn false_positive_rate(&self) -> f64 {
        if self.fp + self.tn == 0 {
            0.0
        } else {
            self.fp as f64 / (self.fp + self.tn) as f64
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

/// The counts of several crops or tiles pooled, as [`Counts::merged`] one after the other.
impl<'a> std::iter::Sum<&'a Counts> for Counts {
    fn sum<I: Iterator<Item = &'a Counts>>(iter: I) -> Self {
        iter.fold(Self::default(), |a, &c| a.merged(c))
    }
}

/// Scores with a spatial tolerance: a flagged pixel counts as right when damage lies within
/// `r` pixels of it, and a damage pixel as found when something within `r` pixels of it is
/// flagged (boundary-tolerant precision and recall, as used for thin-structure segmentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tolerant {
    /// Flagged pixels.
    pub flagged: u64,
    /// Flagged pixels within `r` of damage.
    pub flagged_near_damage: u64,
    /// Damage pixels.
    pub damage: u64,
    /// Damage pixels within `r` of a flagged pixel.
    pub damage_near_flagged: u64,
}

impl Tolerant {
    /// Counts of `pred` against `truth` (same size) with tolerance `r` pixels.
    pub fn of(pred: &Mask, truth: &Mask, r: usize) -> Self {
        let (pd, td) = (pred.dilate(r), truth.dilate(r));
        let mut c = Self::default();
        for (((&p, &t), &pn), &tn) in pred
            .data()
            .iter()
            .zip(truth.data())
            .zip(pd.data())
            .zip(td.data())
        {
            c.flagged += u64::from(p);
            c.flagged_near_damage += u64::from(p && tn);
            c.damage += u64::from(t);
            c.damage_near_flagged += u64::from(t && pn);
        }
        c
    }

    /// Sum of two.
    pub fn merged(self, o: Self) -> Self {
        Self {
            flagged: self.flagged + o.flagged,
            flagged_near_damage: self.flagged_near_damage + o.flagged_near_damage,
            damage: self.damage + o.damage,
            damage_near_flagged: self.damage_near_flagged + o.damage_near_flagged,
        }
    }

    /// Flagged pixels near damage (1 when nothing is flagged).
    pub fn precision(&self) -> f64 {
        ratio(self.flagged_near_damage, self.flagged)
    }

    /// Damage pixels near a flagged pixel (1 when there is no damage).
    pub fn recall(&self) -> f64 {
        ratio(self.damage_near_flagged, self.damage)
    }

    /// Harmonic mean of the tolerant precision and recall.
    pub fn f1(&self) -> f64 {
        harmonic(self.precision(), self.recall())
    }
}

/// Upper bounds (pixels, inclusive) of the defect-size bins of [`Defects`]; the last bin holds
/// every larger defect.
pub const DEFECT_SIZE_BINS: [usize; 2] = [10, 100];

/// Defect-level counts, what a user of the proposal sees: damage pixels closer than a grouping
/// distance form one defect (a faint scratch whose visible change breaks into dashes is one
/// scratch), each 8-connected region of the proposal is one flag. A defect is *found* when the
/// proposal covers at least [`Defects::COVER`] of its damage pixels (enough for a repair to
/// take most of it); a flag is *right* when it covers at least one damage pixel, and a false
/// alarm (a region the user has to erase) otherwise. Pixel-level scores stay the measure of how
/// well the proposal fits; these say how many defects it leaves and how many spots it invents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Defects {
    /// Defects in the truth, by their damage pixels (see [`DEFECT_SIZE_BINS`]).
    pub defects: [u64; 3],
    /// Of those, the ones found.
    pub found: [u64; 3],
    /// Of those, the ones the proposal covers at least one pixel of (found or partly flagged:
    /// the user sees them and can brush in the rest).
    pub touched: [u64; 3],
    /// Regions of the proposal.
    pub flags: u64,
    /// Regions of the proposal that cover damage.
    pub flags_on_damage: u64,
}

impl Defects {
    /// Share of a defect's pixels the proposal must cover for the defect to count as found.
    pub const COVER: f64 = 0.5;

    /// Counts of `proposal` against `truth` (same size; extra pixels of either are ignored).
    /// Damage regions that touch once grown by `group` pixels (gaps of up to `2 * group` clean
    /// pixels, what one stroke of a proposal grown by `group` bridges) are one defect; 0 makes
    /// each 8-connected region one.
    pub fn of(proposal: &Mask, truth: &Mask, group: usize) -> Self {
        let (w, h) = (
            truth.width().min(proposal.width()),
            truth.height().min(proposal.height()),
        );
        // Both masks cut to the common size, so that pixel indices agree (copied only then).
        let (proposal, truth) = (fit_to(proposal, w, h), fit_to(truth, w, h));
        let mut c = Self::default();
        for grown in components(&truth.dilate(group)) {
            let defect: Vec<usize> = grown.into_iter().filter(|&i| truth.data()[i]).collect();
            let bin = DEFECT_SIZE_BINS
                .iter()
                .position(|&top| defect.len() <= top)
                .unwrap_or(DEFECT_SIZE_BINS.len());
            let covered = defect.iter().filter(|&&i| proposal.data()[i]).count();
            c.defects[bin] += 1;
            c.found[bin] += u64::from(covered as f64 >= Self::COVER * defect.len() as f64);
            c.touched[bin] += u64::from(covered > 0);
        }
        for flag in components(&proposal) {
            c.flags += 1;
            c.flags_on_damage += u64::from(flag.iter().any(|&i| truth.data()[i]));
        }
        c
    }

    /// Sum of two.
    pub fn merged(self, o: Self) -> Self {
        let add = |a: [u64; 3], b: [u64; 3]| std::array::from_fn(|k| a[k] + b[k]);
        Self {
            defects: add(self.defects, o.defects),
            found: add(self.found, o.found),
            touched: add(self.touched, o.touched),
            flags: self.flags + o.flags,
            flags_on_damage: self.flags_on_damage + o.flags_on_damage,
        }
    }

    /// Flags that cover damage (1 when nothing is flagged).
    pub fn precision(&self) -> f64 {
        ratio(self.flags_on_damage, self.flags)
    }

    /// Defects found, of every size (1 when there is no damage).
    pub fn recall(&self) -> f64 {
        ratio(self.found.iter().sum(), self.defects.iter().sum())
    }

    /// Defects of every size the proposal covers at least one pixel of.
    pub fn touched_share(&self) -> f64 {
        ratio(self.touched.iter().sum(), self.defects.iter().sum())
    }

    /// Defects found among those of size bin `bin` (see [`DEFECT_SIZE_BINS`]).
    pub fn recall_of_size(&self, bin: usize) -> f64 {
        ratio(self.found[bin], self.defects[bin])
    }

    /// Harmonic mean of the defect-level precision and recall.
    pub fn f1(&self) -> f64 {
        harmonic(self.precision(), self.recall())
    }

    /// Flags that cover no damage.
    pub fn false_alarms(&self) -> u64 {
        self.flags - self.flags_on_damage
    }
}

/// `m` cut to `w` x `h` (no larger than it), copied only when its size differs.
fn fit_to(m: &Mask, w: usize, h: usize) -> std::borrow::Cow<'_, Mask> {
    if (m.width(), m.height()) == (w, h) {
        std::borrow::Cow::Borrowed(m)
    } else {
        std::borrow::Cow::Owned(Mask::from_fn(w, h, |x, y| m.get(x, y)))
    }
}

/// The counts of several crops pooled, as [`Defects::merged`] one after the other.
impl<'a> std::iter::Sum<&'a Defects> for Defects {
    fn sum<I: Iterator<Item = &'a Defects>>(iter: I) -> Self {
        iter.fold(Self::default(), |a, &c| a.merged(c))
    }
}

fn harmonic(p: f64, r: f64) -> f64 {
    if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

/// Counts at each of the 255 thresholds of an 8-bit probability map: entry `t - 1` counts the
/// pixels with probability `>= t` as flagged (`t` in `1..=255`). Built from two histograms in
/// one pass, so a calibration sweep costs no more than one evaluation.
#[derive(Clone, Debug)]
pub struct Sweep {
    pos: [u64; 256],
    neg: [u64; 256],
}

impl Default for Sweep {
    fn default() -> Self {
        Self {
            pos: [0; 256],
            neg: [0; 256],
        }
    }
}

impl Sweep {
    /// Adds the pixels of a probability map (`0..=255`) with their truth.
    pub fn add(&mut self, probs: &[u8], truth: &Mask) {
        for (&p, &t) in probs.iter().zip(truth.data()) {
            if t {
                self.pos[usize::from(p)] += 1;
            } else {
                self.neg[usize::from(p)] += 1;
            }
        }
    }

    /// Counts when pixels with probability `>= level` are flagged.
    pub fn at(&self, level: u8) -> Counts {
        let l = usize::from(level);
        let tp: u64 = self.pos[l..].iter().sum();
        let fp: u64 = self.neg[l..].iter().sum();
        let fn_: u64 = self.pos[..l].iter().sum();
        let tn: u64 = self.neg[..l].iter().sum();
        Counts { tp, fp, fn_, tn }
    }

    /// The level (`1..=255`) with the best F1.
    pub fn best_f1(&self) -> (u8, Counts) {
        (1..=255u8)
            .map(|l| (l, self.at(l)))
            .max_by(|a, b| a.1.f1().total_cmp(&b.1.f1()))
            .unwrap_or((128, self.at(128)))
    }
}

/// Bootstrap resamples of a set of scored items (crops): each resample draws as many items as
/// the set holds, with replacement. A score pooled over the items (such as the F1 of their summed
/// counts) recomputed on every resample shows how much it owes to which items were drawn; two
/// detectors scored on the same items and compared on the same resamples give a paired interval
/// for their difference, far narrower than the two intervals side by side.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    draws: Vec<Vec<usize>>,
}

impl Bootstrap {
    /// `resamples` resamples of `n` items, a function of `seed`.
    pub fn new(n: usize, resamples: usize, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let draws = (0..resamples)
            .map(|_| (0..n).map(|_| rng.random_range(0..n)).collect())
            .collect();
        Self { draws }
    }

    /// The F1 of the pooled counts of each resample (`items`: one entry per item, in the order
    /// the resamples index).
    pub fn f1s(&self, items: &[Counts]) -> Vec<f64> {
        self.pooled(items, |c: Counts| c.f1())
    }

    /// `score` of the pooled items of each resample (`items`: one entry per item, in the order
    /// the resamples index), for counts of any kind that add up ([`Counts`], [`Defects`]).
    pub fn pooled<T>(&self, items: &[T], score: impl Fn(T) -> f64) -> Vec<f64>
    where
        T: for<'a> std::iter::Sum<&'a T>,
    {
        self.draws
            .iter()
            .map(|d| score(d.iter().filter_map(|&i| items.get(i)).sum::<T>()))
            .collect()
    }
}

/// The central `level` share of `values` (e.g. 0.95: from the 2.5th to the 97.5th percentile),
/// by the nearest-rank rule; `(NaN, NaN)` when there are none.
pub fn percentile_interval(values: &[f64], level: f64) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let tail = (1.0 - level.clamp(0.0, 1.0)) / 2.0;
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (at(tail), at(1.0 - tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_of_a_known_prediction() {
        let truth = Mask::from_fn(4, 1, |x, _| x < 2);
        let pred = Mask::from_fn(4, 1, |x, _| x == 1 || x == 2);
        let c = Counts::of(&pred, &truth);
        assert_eq!(
            c,
            Counts {
                tp: 1,
                fp: 1,
                fn_: 1,
                tn: 1
            }
        );
        assert!((c.f1() - 0.5).abs() < 1e-12);
        assert!((c.iou() - 1.0 / 3.0).abs() < 1e-12);
        let mut s = Sweep::default();
        s.add(&[200, 100, 50, 0], &truth);
        assert_eq!(s.at(100).tp, 2);
        assert_eq!(s.at(101).tp, 1);
        assert_eq!(s.at(50).fp, 1);
    }

    #[test]
    fn tolerance_forgives_a_one_pixel_shift_only() {
        // A vertical line at x = 3 predicted at x = 4: no exact overlap, all within 1 px.
        let truth = Mask::from_fn(8, 4, |x, _| x == 3);
        let pred = Mask::from_fn(8, 4, |x, _| x == 4);
        assert_eq!(Counts::of(&pred, &truth).tp, 0);
        let t = Tolerant::of(&pred, &truth, 1);
        assert_eq!((t.precision(), t.recall()), (1.0, 1.0));
        let far = Mask::from_fn(8, 4, |x, _| x == 6);
        let t = Tolerant::of(&far, &truth, 1);
        assert_eq!((t.precision(), t.recall(), t.f1()), (0.0, 0.0, 0.0));
    }

    #[test]
    fn defects_count_found_defects_by_size_and_false_alarms() {
        // Truth: a 3 px speck, a 20 px line and a 12x12 blot (144 px), apart.
        let truth = Mask::from_fn(40, 30, |x, y| {
            (y == 1 && x < 3)
                || (x == 10 && (5..25).contains(&y))
                || ((20..32).contains(&x) && (10..22).contains(&y))
        });
        // Proposal: none of the speck, 9 of the line's 20 pixels (not half), a 2 px wider
        // blot (a dilated cover: still one right flag), and two spots on clean pixels.
        let proposal = Mask::from_fn(40, 30, |x, y| {
            (x == 10 && (5..14).contains(&y))
                || ((18..34).contains(&x) && (8..24).contains(&y))
                || (x == 2 && y == 28)
                || (x == 38 && y == 1)
        });
        let d = Defects::of(&proposal, &truth, 0);
        assert_eq!(d.defects, [1, 1, 1]);
        assert_eq!(d.found, [0, 0, 1]);
        assert_eq!(d.touched, [0, 1, 1]);
        assert!((d.touched_share() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!((d.flags, d.flags_on_damage, d.false_alarms()), (4, 2, 2));
        assert!((d.recall() - 1.0 / 3.0).abs() < 1e-12);
        assert!((d.precision() - 0.5).abs() < 1e-12);
        assert!((d.f1() - 0.4).abs() < 1e-12);
        assert_eq!((d.recall_of_size(0), d.recall_of_size(2)), (0.0, 1.0));
        // Ten of the line's pixels are half of it: found.
        let more = Mask::from_fn(40, 30, |x, y| proposal.get(x, y) || (x == 10 && y == 14));
        assert_eq!(Defects::of(&more, &truth, 0).found, [0, 1, 1]);
        // Grouped by 4 px (gaps up to 8), the speck and the line (a gap of 7) are one defect of
        // 23 pixels, 9 of them covered: not found; the blot (a gap of 9) stays apart.
        let grouped = Defects::of(&proposal, &truth, 4);
        assert_eq!((grouped.defects, grouped.found), ([0, 1, 1], [0, 0, 1]));
        // A scratch broken into dashes 2 px apart is one defect when grouped by 2.
        let dashes = Mask::from_fn(30, 3, |x, y| y == 1 && x % 4 != 3);
        assert_eq!(
            Defects::of(&Mask::new(30, 3), &dashes, 0).defects,
            [8, 0, 0]
        );
        assert_eq!(
            Defects::of(&Mask::new(30, 3), &dashes, 2).defects,
            [0, 1, 0]
        );
        // Nothing to find and nothing flagged: perfect by convention, and sums add up.
        let empty = Mask::new(40, 30);
        let none = Defects::of(&empty, &empty, 2);
        assert_eq!((none.precision(), none.recall()), (1.0, 1.0));
        // A proposal larger than the truth is scored over the truth's pixels only.
        let wider = Mask::from_fn(44, 30, |x, y| proposal.get(x.min(39), y) || x >= 40);
        assert_eq!(Defects::of(&wider, &truth, 0), d);
        let total: Defects = [d, none, d].iter().sum();
        assert_eq!((total.defects, total.flags), ([2, 2, 2], 8));
    }

    #[test]
    fn pooled_bootstrap_of_defects_spreads_around_their_f1() {
        let truth = Mask::from_fn(16, 16, |x, y| x % 4 == 0 && y % 4 == 0);
        let crops: Vec<Defects> = (0..30)
            .map(|k| {
                let pred = Mask::from_fn(16, 16, |x, y| truth.get(x, y) && (x + y + k) % 3 != 0);
                Defects::of(&pred, &truth, 0)
            })
            .collect();
        let pooled = crops.iter().sum::<Defects>().f1();
        let f1s = Bootstrap::new(crops.len(), 400, 3).pooled(&crops, |d: Defects| d.f1());
        let (lo, hi) = percentile_interval(&f1s, 0.95);
        assert!(
            lo <= pooled && pooled <= hi && lo < hi,
            "{lo} {pooled} {hi}"
        );
    }

    fn varied_crops() -> Vec<Counts> {
        (0..40u64)
            .map(|i| Counts {
                tp: 10 + i % 7,
                fp: 3 + (i * 5) % 11,
                fn_: 4 + (i * 3) % 9,
                tn: 1000,
            })
            .collect()
    }

    #[test]
    fn bootstrap_f1s_spread_around_the_pooled_f1_and_vanish_for_identical_crops() {
        let crops = varied_crops();
        let pooled = crops.iter().sum::<Counts>().f1();
        let b = Bootstrap::new(crops.len(), 500, 9);
        let f1s = b.f1s(&crops);
        assert_eq!(f1s.len(), 500);
        let (lo, hi) = percentile_interval(&f1s, 0.95);
        assert!(lo < pooled && pooled < hi, "{lo} {pooled} {hi}");
        assert!(hi - lo < 0.2, "{lo} {hi}");
        // Same seed, same resamples.
        assert_eq!(Bootstrap::new(crops.len(), 500, 9).f1s(&crops), f1s);
        // Every crop alike: every resample scores the same.
        let same = vec![crops[0]; 40];
        let (lo, hi) = percentile_interval(&b.f1s(&same), 0.95);
        assert!((lo - crops[0].f1()).abs() < 1e-12 && (hi - crops[0].f1()).abs() < 1e-12);
    }

    #[test]
    fn paired_resamples_tell_a_detector_better_on_every_crop() {
        let base = varied_crops();
        // One more damage pixel found on every crop.
        let better: Vec<Counts> = base
            .iter()
            .map(|c| Counts {
                tp: c.tp + 1,
                fn_: c.fn_ - 1,
                ..*c
            })
            .collect();
        let b = Bootstrap::new(base.len(), 300, 1);
        let diffs = |x: &[Counts], y: &[Counts]| -> Vec<f64> {
            b.f1s(x).iter().zip(b.f1s(y)).map(|(p, q)| p - q).collect()
        };
        assert!(diffs(&better, &base).iter().all(|&d| d > 0.0));
        let self_diffs = diffs(&base, &base);
        assert!(self_diffs.iter().all(|&d| d == 0.0));
    }

    #[test]
    fn tiled_counts_cover_every_pixel_once() {
        let truth = Mask::from_fn(10, 7, |x, y| (x + y) % 3 == 0);
        let pred = Mask::from_fn(10, 7, |x, y| x % 2 == 0 && y != 4);
        let tiles = Counts::tiled(&pred, &truth, 4);
        assert_eq!(tiles.len(), 3 * 2);
        let total: Counts = tiles.iter().sum();
        assert_eq!(total, Counts::of(&pred, &truth));
        let t = tiles[5];
        assert_eq!(t.tp + t.fp + t.fn_ + t.tn, 2 * 3);
    }

    #[test]
    fn percentile_interval_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile_interval(&v, 0.9), (5.0, 95.0));
        assert_eq!(percentile_interval(&v, 1.0), (1.0, 100.0));
        assert_eq!(percentile_interval(&[0.5], 0.95), (0.5, 0.5));
        assert!(percentile_interval(&[], 0.95).0.is_nan());
    }
}
