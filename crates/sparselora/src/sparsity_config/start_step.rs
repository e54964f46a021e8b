//! `start_step`: when a run's sparse steps begin.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// When sparsity starts (SPEC 6): a number `<= 1` is a fraction of the run's steps, a whole
/// number `> 1` an absolute step count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StartStep {
    /// Fraction of the total steps, in `[0, 1]`.
    Fraction(f64),
    /// Steps, more than 1.
    Steps(usize),
}

impl Default for StartStep {
    /// 5% of the run, as every configuration of the paper but one.
    fn default() -> Self {
        Self::Fraction(0.05)
    }
}

impl StartStep {
    /// Dense steps of a run of `total_steps`: `floor(fraction * total_steps)` (a product that is
    /// a whole number up to rounding error counts as that number: 0.29 of 100 steps is 29), or
    /// the absolute count as given (a count past the run's end keeps the whole run dense).
    pub fn dense_steps(self, total_steps: usize) -> usize {
        match self {
            Self::Fraction(f) => {
                let exact = f * total_steps as f64;
                let nearest = exact.round();
                let steps = if (exact - nearest).abs() <= 1e-9 * nearest.max(1.0) {
                    nearest
                } else {
                    exact.floor()
                };
                (steps.max(0.0) as usize).min(total_steps)
            }
            Self::Steps(n) => n,
        }
    }
}

impl TryFrom<f64> for StartStep {
    type Error = String;

    fn try_from(value: f64) -> Result<Self, Self::Error> {
        if value.is_nan() || value < 0.0 {
            return Err(format!(
                "start_step {value} must be a fraction in [0, 1] or a step count > 1"
            ));
        }
        if value <= 1.0 {
            return Ok(Self::Fraction(value));
        }
        if value.fract() != 0.0 || value > u32::MAX as f64 {
            return Err(format!(
                "start_step {value}: a value above 1 is an absolute step count and must be a \
                 whole number (use a value <= 1 for a fraction of the run)"
            ));
        }
        Ok(Self::Steps(value as usize))
    }
}

impl fmt::Display for StartStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fraction(x) => write!(f, "{x} of the steps"),
            Self::Steps(n) => write!(f, "{n} steps"),
        }
    }
}

impl Serialize for StartStep {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Self::Fraction(x) => serializer.serialize_f64(x),
            Self::Steps(n) => serializer.serialize_u64(n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for StartStep {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        Self::try_from(value).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_floor_and_counts_stay() {
        assert_eq!(StartStep::default().dense_steps(1000), 50);
        assert_eq!(StartStep::Fraction(0.29).dense_steps(100), 29);
        assert_eq!(StartStep::Fraction(1.0).dense_steps(7), 7);
        assert_eq!(StartStep::Steps(30).dense_steps(10), 30);
        assert_eq!(StartStep::try_from(1.0), Ok(StartStep::Fraction(1.0)));
        assert_eq!(StartStep::try_from(3.0), Ok(StartStep::Steps(3)));
        assert!(StartStep::try_from(3.5).is_err());
        assert!(StartStep::try_from(f64::INFINITY).is_err());
    }
}
