//! Action statistics: which actions an agent chooses where.
//!
//! Every pixel is put in a *zone* (for refinement: the seam band of the hole, the hole's
//! interior, outside; for denoising: flat, medium or textured content), and the greedy action
//! maps of the episodes are counted per zone and action.

/// Zones of a refine episode.
pub const REFINE_ZONES: [&str; 3] = [
    "hole seam (within 2 px of a known pixel)",
    "hole interior",
    "outside the hole (chosen, never applied)",
];

/// Zones of a denoise episode, by the local contrast of the clean image.
pub const TEXTURE_ZONES: [&str; 3] = [
    "flat (5x5 luma std < 0.02)",
    "medium",
    "textured (5x5 luma std >= 0.06)",
];

/// Hole pixels whose Chebyshev distance to a known pixel is at most this are the seam.
pub const SEAM_PX: isize = 2;

/// The zone of every pixel of a `w x h` refine crop: 0 seam, 1 interior, 2 outside.
pub fn refine_zones(hole: &[bool], w: usize, h: usize) -> Vec<u8> {
    let mut out = vec![2u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let p = y * w + x;
            if !hole[p] {
                continue;
            }
            let mut near_known = false;
            'search: for dy in -SEAM_PX..=SEAM_PX {
                for dx in -SEAM_PX..=SEAM_PX {
                    let (qx, qy) = (x as isize + dx, y as isize + dy);
                    if qx >= 0
                        && qy >= 0
                        && (qx as usize) < w
                        && (qy as usize) < h
                        && !hole[qy as usize * w + qx as usize]
                    {
                        near_known = true;
                        break 'search;
                    }
                }
            }
            out[p] = if near_known { 0 } else { 1 };
        }
    }
    out
}

/// The zone of every pixel of `clean` by the standard deviation of its luma in the 5x5
/// window (clamped at the border): 0 flat (< 0.02), 1 medium, 2 textured (>= 0.06).
pub fn texture_zones(clean: &super::env::Frame) -> Vec<u8> {
    let (w, h) = (clean.w, clean.h);
    let plane = w * h;
    let luma: Vec<f32> = (0..plane)
        .map(|p| {
            0.299 * clean.data[p]
                + 0.587 * clean.data[plane + p]
                + 0.114 * clean.data[2 * plane + p]
        })
        .collect();
    let at = |x: isize, y: isize| {
        let x = x.clamp(0, w as isize - 1) as usize;
        let y = y.clamp(0, h as isize - 1) as usize;
        luma[y * w + x]
    };
    let mut out = vec![0u8; plane];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let (mut s, mut s2) = (0.0f32, 0.0f32);
            for dy in -2..=2 {
                for dx in -2..=2 {
                    let v = at(x + dx, y + dy);
                    s += v;
                    s2 += v * v;
                }
            }
            let mean = s / 25.0;
            let std = (s2 / 25.0 - mean * mean).max(0.0).sqrt();
            out[y as usize * w + x as usize] = if std < 0.02 {
                0
            } else if std < 0.06 {
                1
            } else {
                2
            };
        }
    }
    out
}

/// Counts of pixel-steps per zone and action.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionStats {
    /// Action names, in policy order.
    pub actions: Vec<String>,
    /// Zone names.
    pub zones: Vec<String>,
    /// `counts[zone][action]`.
    pub counts: Vec<Vec<u64>>,
}

/// The share of each action in one zone.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ZoneShare {
    /// The zone.
    pub zone: String,
    /// Pixel-steps counted in it.
    pub pixel_steps: u64,
    /// `(action, share)` for every action with a non-zero share, largest first.
    pub shares: Vec<(String, f64)>,
}

impl ActionStats {
    /// Empty counts for `actions` over `zones`.
    pub fn new(actions: &[super::env::Action], zones: &[&str]) -> Self {
        Self {
            actions: actions.iter().map(|a| a.name().to_owned()).collect(),
            zones: zones.iter().map(|z| (*z).to_owned()).collect(),
            counts: vec![vec![0; actions.len()]; zones.len()],
        }
    }

    /// Adds every step of `maps` (action indices per pixel) with `zone[p]` per pixel.
    pub fn add(&mut self, maps: &[Vec<u8>], zone: &[u8]) {
        for m in maps {
            for (&a, &z) in m.iter().zip(zone) {
                if let Some(c) = self
                    .counts
                    .get_mut(usize::from(z))
                    .and_then(|row| row.get_mut(usize::from(a)))
                {
                    *c += 1;
                }
            }
        }
    }

    /// Empty counts with one "zone" per step of a `steps`-step episode.
    pub fn per_step(actions: &[super::env::Action], steps: usize) -> Self {
        let names: Vec<String> = (1..=steps).map(|t| format!("step {t}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        Self::new(actions, &refs)
    }

    /// Adds each step `t` of `maps` to zone `t`, over the pixels where `active` is true (all
    /// when `None`).
    pub fn add_steps(&mut self, maps: &[Vec<u8>], active: Option<&[bool]>) {
        for (t, m) in maps.iter().enumerate() {
            let Some(row) = self.counts.get_mut(t) else {
                break;
            };
            for (p, &a) in m.iter().enumerate() {
                if active.is_none_or(|act| act[p]) {
                    if let Some(c) = row.get_mut(usize::from(a)) {
                        *c += 1;
                    }
                }
            }
        }
    }

    /// The shares per zone.
    pub fn shares(&self) -> Vec<ZoneShare> {
        self.zones
            .iter()
            .zip(&self.counts)
            .map(|(zone, row)| {
                let all: u64 = row.iter().sum();
                let mut shares: Vec<(String, f64)> = self
                    .actions
                    .iter()
                    .zip(row)
                    .filter(|(_, &c)| c > 0)
                    .map(|(a, &c)| (a.clone(), c as f64 / all.max(1) as f64))
                    .collect();
                shares.sort_by(|a, b| b.1.total_cmp(&a.1));
                ZoneShare {
                    zone: zone.clone(),
                    pixel_steps: all,
                    shares,
                }
            })
            .collect()
    }
}

/// One line per zone: `zone (n pixel-steps): a 80.0%, b 20.0%` (shares under 0.05% left out).
pub fn format_shares(zones: &[ZoneShare]) -> Vec<String> {
    zones
        .iter()
        .map(|z| {
            let parts: Vec<String> = z
                .shares
                .iter()
                .filter(|(_, s)| *s >= 0.0005)
                .map(|(n, s)| format!("{n} {:.1}%", 100.0 * s))
                .collect();
            format!(
                "{} ({} pixel-steps): {}",
                z.zone,
                z.pixel_steps,
                if parts.is_empty() {
                    "-".to_owned()
                } else {
                    parts.join(", ")
                }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::env::{Action, Frame};

    #[test]
    fn seam_interior_and_outside() {
        // A 9x9 hole in a 13x13 crop: its outer 2-px ring is seam, the 5x5 centre interior.
        let (w, h) = (13, 13);
        let hole: Vec<bool> = (0..w * h)
            .map(|p| (2..11).contains(&(p % w)) && (2..11).contains(&(p / w)))
            .collect();
        let z = refine_zones(&hole, w, h);
        assert_eq!(z.iter().filter(|&&v| v == 2).count(), w * h - 81);
        assert_eq!(z.iter().filter(|&&v| v == 1).count(), 25);
        assert_eq!(z.iter().filter(|&&v| v == 0).count(), 81 - 25);
        assert_eq!(z[6 * w + 6], 1);
        assert_eq!(z[2 * w + 6], 0);
    }

    #[test]
    fn flat_and_textured() {
        // Left half flat grey, right half a 1-px checkerboard.
        let f = Frame::from_planar(
            20,
            10,
            (0..3 * 200)
                .map(|i| {
                    let p = i % 200;
                    let (x, y) = (p % 20, p / 20);
                    if x < 10 {
                        0.5
                    } else {
                        ((x + y) % 2) as f32
                    }
                })
                .collect(),
        )
        .expect("frame");
        let z = texture_zones(&f);
        assert_eq!(z[5 * 20 + 2], 0);
        assert_eq!(z[5 * 20 + 17], 2);
    }

    #[test]
    fn counts_per_zone() {
        let set = [Action::Keep, Action::Diffuse];
        let mut s = ActionStats::new(&set, &["a", "b"]);
        s.add(&[vec![0, 1, 1], vec![1, 1, 0]], &[0, 0, 1]);
        assert_eq!(s.counts, vec![vec![1, 3], vec![1, 1]]);
        let sh = s.shares();
        assert_eq!(sh[0].pixel_steps, 4);
        assert_eq!(sh[0].shares[0], ("diffuse".to_owned(), 0.75));
        // Per step, over the active pixels only.
        let mut st = ActionStats::per_step(&set, 2);
        st.add_steps(&[vec![0, 1, 1], vec![1, 1, 0]], Some(&[true, true, false]));
        assert_eq!(st.zones, vec!["step 1", "step 2"]);
        assert_eq!(st.counts, vec![vec![1, 1], vec![0, 2]]);
    }
}
