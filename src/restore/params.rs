//! Named numeric parameters of a restorer, with specs the UI and CLI can render.

use std::collections::BTreeMap;

/// The description of one tunable parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Key used in [`Params`] and on the command line (`--param patch_size=5`).
    pub name: &'static str,
    /// Short human label.
    pub label: &'static str,
    /// One-line explanation (hover text).
    pub help: &'static str,
    /// Value used when the parameter is not set.
    pub default: f64,
    /// Smallest accepted value.
    pub min: f64,
    /// Largest accepted value.
    pub max: f64,
    /// Whether only whole numbers make sense.
    pub integer: bool,
}

/// Parameter values by name; anything unset takes the spec's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params(BTreeMap<String, f64>);

impl Params {
    /// No values set: every parameter at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`.
    pub fn set(&mut self, name: &str, value: f64) {
        self.0.insert(name.to_owned(), value);
    }

    /// Builder form of [`Params::set`].
    pub fn with(mut self, name: &str, value: f64) -> Self {
        self.set(name, value);
        self
    }

    /// The value of `name`, or `default` when unset or not finite.
    pub fn get(&self, name: &str, default: f64) -> f64 {
        self.0
            .get(name)
            .copied()
            .filter(|v| v.is_finite())
            .unwrap_or(default)
    }

    /// The value of the parameter described by `spec`, clamped to its range.
    pub fn value(&self, spec: &ParamSpec) -> f64 {
        let v = self.get(spec.name, spec.default).clamp(spec.min, spec.max);
        if spec.integer {
            v.round()
        } else {
            v
        }
    }

    /// Looks `name` up in `specs` and returns its clamped value (its default if unknown).
    pub fn value_of(&self, specs: &[ParamSpec], name: &str) -> f64 {
        specs
            .iter()
            .find(|s| s.name == name)
            .map(|s| self.value(s))
            .unwrap_or_else(|| self.get(name, 0.0))
    }

    /// Iterates over the explicitly set values.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Parses `name=value`, as given on the command line.
    pub fn parse_assignment(s: &str) -> Result<(String, f64), String> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=VALUE, got '{s}'"))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("'{v}' is not a number (in '{s}')"))?;
        Ok((k.trim().to_owned(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_clamps_and_rounds() {
        let spec = ParamSpec {
            name: "n",
            label: "N",
            help: "",
            default: 3.0,
            min: 1.0,
            max: 9.0,
            integer: true,
        };
        assert_eq!(Params::new().value(&spec), 3.0);
        assert_eq!(Params::new().with("n", 20.0).value(&spec), 9.0);
        assert_eq!(Params::new().with("n", 4.6).value(&spec), 5.0);
        assert_eq!(
            Params::parse_assignment("n = 2.5"),
            Ok(("n".to_string(), 2.5))
        );
        assert!(Params::parse_assignment("n").is_err());
    }
}
