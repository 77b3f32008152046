//! Exponential moving average of a network's variables (Polyak averaging), shared by the
//! trainers that ship the average instead of the last step's weights (the GAN's generator, and
//! the detector with `train detect --ema`).

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use super::{TrainError, TrainResult};

/// The running average of a set of named variables.
#[derive(Clone, Debug)]
pub struct Ema {
    names: Vec<String>,
    avg: Vec<Tensor>,
    decay: f64,
}

impl Ema {
    /// An average that starts at the variables' current values; `decay` is its largest decay
    /// per step (0.999: about the last 1000 steps).
    pub fn new(vars: &[(String, Var)], decay: f64) -> TrainResult<Self> {
        let mut ema = Self {
            names: vars.iter().map(|(n, _)| n.clone()).collect(),
            avg: Vec::new(),
            decay,
        };
        ema.reset(vars)?;
        Ok(ema)
    }

    /// Restarts the average at the variables' current values (the same names, in order).
    pub fn reset(&mut self, vars: &[(String, Var)]) -> TrainResult<()> {
        self.check(vars)?;
        self.avg = vars
            .iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(())
    }

    /// Moves the average towards the variables after `step` steps (1-based) of this average:
    /// the decay is `min(decay, (1 + step) / (10 + step))`, so that the first steps, where the
    /// start would weigh far more than it deserves, count in full.
    pub fn update(&mut self, vars: &[(String, Var)], step: u64) -> TrainResult<()> {
        self.check(vars)?;
        let t = step as f64;
        let decay = self.decay.min((1.0 + t) / (10.0 + t));
        for (e, (_, v)) in self.avg.iter_mut().zip(vars) {
            // Detached: an op on a variable records its graph, which would chain every step's
            // average to the previous one and grow without bound.
            *e = ((&*e * decay)? + (v.as_tensor().detach() * (1.0 - decay))?)?.detach();
        }
        Ok(())
    }

    /// The averages by variable name, each under `prefix` + name.
    pub fn tensors(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.names
            .iter()
            .zip(&self.avg)
            .map(|(n, t)| (format!("{prefix}{n}"), t.clone()))
            .collect()
    }

    /// Sets the averages from `tensors` (a checkpoint), each under `prefix` + name; every one
    /// must be there with its variable's shape.
    pub fn load(&mut self, tensors: &HashMap<String, Tensor>, prefix: &str) -> TrainResult<()> {
        let mut avg = Vec::with_capacity(self.avg.len());
        for (name, old) in self.names.iter().zip(&self.avg) {
            let key = format!("{prefix}{name}");
            let t = tensors
                .get(&key)
                .ok_or_else(|| TrainError::Invalid(format!("checkpoint has no {key}")))?;
            if t.dims() != old.dims() {
                return Err(TrainError::Invalid(format!(
                    "checkpoint's {key} has shape {:?}, not {:?}",
                    t.dims(),
                    old.dims()
                )));
            }
            avg.push(t.to_dtype(old.dtype())?);
        }
        self.avg = avg;
        Ok(())
    }

    fn check(&self, vars: &[(String, Var)]) -> TrainResult<()> {
        if vars.len() != self.names.len() || vars.iter().zip(&self.names).any(|((n, _), m)| n != m)
        {
            return Err(TrainError::Invalid(
                "moving average: the variables are not the ones it was made for".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(name: &str, v: &[f32]) -> (String, Var) {
        let t = Var::from_slice(v, v.len(), &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        (name.to_owned(), t)
    }

    fn values(ema: &Ema, name: &str) -> Vec<f32> {
        ema.tensors("")[name]
            .to_vec1()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_average_follows_the_closed_form_and_survives_a_checkpoint() {
        let vars = vec![var("a", &[0.0, 0.0]), var("b", &[1.0])];
        let mut ema = Ema::new(&vars, 0.5).unwrap_or_else(|e| panic!("{e}"));
        let mut expected_a0 = 0.0f64;
        for step in 1..=4u64 {
            let x = step as f32;
            vars[0]
                .1
                .set(&Tensor::new(&[x, 2.0 * x], &Device::Cpu).unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("{e}"));
            ema.update(&vars, step).unwrap_or_else(|e| panic!("{e}"));
            let t = step as f64;
            let d = 0.5f64.min((1.0 + t) / (10.0 + t));
            expected_a0 = d * expected_a0 + (1.0 - d) * f64::from(x);
        }
        let a = values(&ema, "a");
        assert!(
            (f64::from(a[0]) - expected_a0).abs() < 1e-6,
            "{a:?} vs {expected_a0}"
        );
        assert!(
            (a[1] - 2.0 * a[0]).abs() < 1e-6,
            "{a:?}: each value averaged on its own"
        );
        assert_eq!(values(&ema, "b"), [1.0], "a constant variable stays put");
        // Round trip through a checkpoint's map.
        let saved = ema.tensors("ema.");
        let mut other = Ema::new(&vars, 0.5).unwrap_or_else(|e| panic!("{e}"));
        other.load(&saved, "ema.").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(values(&other, "a"), a);
        // A checkpoint without the average, or with another shape, is refused.
        let e = other
            .load(&HashMap::new(), "ema.")
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("ema.a")));
        let wrong: HashMap<String, Tensor> = [
            (
                "ema.a".to_owned(),
                Tensor::new(&[1f32], &Device::Cpu).unwrap_or_else(|e| panic!("{e}")),
            ),
            (
                "ema.b".to_owned(),
                Tensor::new(&[1f32], &Device::Cpu).unwrap_or_else(|e| panic!("{e}")),
            ),
        ]
        .into();
        let e = other.load(&wrong, "ema.").err().map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("shape")));
        // Other variables than its own are refused.
        let e = other
            .update(&[var("c", &[1.0])], 5)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("not the ones")));
    }
}
