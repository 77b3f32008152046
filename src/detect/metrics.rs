//! Pixel-level scores of a proposed mask against the true damage: precision, recall, F1, IoU
//! and the fraction of clean pixels falsely flagged.

use crate::imaging::Mask;

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
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
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
}
