//! The learning-rate schedule: linear warm-up then cosine decay to zero, as `transformers`'
//! `get_cosine_schedule_with_warmup` (the paper's schedule). A pure function of the step, so a
//! resumed run needs no scheduler state.

/// Cosine schedule with linear warm-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    /// Peak learning rate.
    pub peak_lr: f64,
    /// Steps of linear warm-up: `ceil(warmup_ratio * total_steps)`.
    pub warmup_steps: usize,
    /// Optimizer steps in the whole run.
    pub total_steps: usize,
}

impl CosineSchedule {
    /// A schedule whose warm-up covers `warmup_ratio` of `total_steps` (rounded up, as HF does).
    pub fn new(peak_lr: f64, warmup_ratio: f64, total_steps: usize) -> Self {
        Self {
            peak_lr,
            warmup_steps: (warmup_ratio * total_steps as f64).ceil() as usize,
            total_steps,
        }
    }

    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = (step - self.warmup_steps) as f64 / decay_steps as f64;
        self.peak_lr * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_zero() {
        let s = CosineSchedule::new(3e-4, 0.04, 100);
        assert_eq!(s.warmup_steps, 4);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(2) - 1.5e-4).abs() < 1e-12);
        assert!((s.lr(4) - 3e-4).abs() < 1e-12);
        assert!(
            (s.lr(52) - 1.5e-4).abs() < 1e-12,
            "half way through the decay"
        );
        assert!(s.lr(100).abs() < 1e-12);
        assert!((5..100).all(|k| s.lr(k) <= s.lr(k - 1)));
    }

    #[test]
    fn matches_transformers_values() {
        // transformers.get_cosine_schedule_with_warmup(opt(lr=1), 3, 10): steps 0..10.
        let expected = [
            0.0, 0.333333, 0.666667, 1.0, 0.950484, 0.811745, 0.611260, 0.388740, 0.188255,
            0.049516,
        ];
        let s = CosineSchedule {
            peak_lr: 1.0,
            warmup_steps: 3,
            total_steps: 10,
        };
        for (k, e) in expected.iter().enumerate() {
            assert!((s.lr(k) - e).abs() < 1e-6, "step {k}: {} vs {e}", s.lr(k));
        }
    }
}
