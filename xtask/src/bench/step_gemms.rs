//! What a training step's GEMMs are made of: the cuBLASLt plans launched during the timed steps,
//! shape by shape, with their launches per step and the time each took when it was tuned (alone
//! on the GPU, operands in cache). Their sum is a floor for the step's GEMM time under the
//! chosen algorithms; comparing it with the step's time, and the plans' rates with the GPU's,
//! says where the GEMM part of the step loses (docs/perf.md).

use serde_json::{json, Value};

use crate::backend::GemmPlan;

/// One plan's share of a step.
#[derive(Debug, Clone, PartialEq)]
struct PlanShare {
    plan: GemmPlan,
    /// Launches per timed step.
    launches_per_step: f64,
}

impl PlanShare {
    /// Milliseconds per step at the tuned speed.
    fn tuned_ms_per_step(&self) -> Option<f64> {
        self.plan.tuned_ms.map(|ms| ms * self.launches_per_step)
    }

    /// TFLOP/s of one launch at the tuned speed.
    fn tuned_tflops(&self) -> Option<f64> {
        self.plan
            .tuned_ms
            .filter(|ms| *ms > 0.0)
            .map(|ms| self.plan.flops / (ms * 1e-3) / 1e12)
    }
}

/// The plans launched between two readings of [`crate::backend::gemm_plans`] taken `steps`
/// steps apart, largest tuned time per step first.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct StepGemms {
    shares: Vec<PlanShare>,
}

impl StepGemms {
    /// The launches between `before` and `after` (plans made in between count from zero).
    pub fn between(before: &[GemmPlan], after: &[GemmPlan], steps: usize) -> StepGemms {
        let steps = steps.max(1) as f64;
        let mut shares: Vec<PlanShare> = after
            .iter()
            .filter_map(|plan| {
                let earlier = before
                    .iter()
                    .find(|b| b.id == plan.id)
                    .map_or(0, |b| b.launches);
                let launches = plan.launches.saturating_sub(earlier);
                (launches > 0).then(|| PlanShare {
                    plan: plan.clone(),
                    launches_per_step: launches as f64 / steps,
                })
            })
            .collect();
        shares.sort_by(|a, b| {
            let key = |s: &PlanShare| s.tuned_ms_per_step().unwrap_or(0.0);
            key(b).total_cmp(&key(a)).then(a.plan.id.cmp(&b.plan.id))
        });
        StepGemms { shares }
    }

    /// `run`'s result and the plans it launched over its `steps` steps on `backend`'s GPU.
    pub fn around<T>(
        backend: crate::backend::BackendKind,
        steps: usize,
        run: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, StepGemms)> {
        let before = crate::backend::gemm_plans(backend);
        let value = run()?;
        let after = crate::backend::gemm_plans(backend);
        Ok((value, StepGemms::between(&before, &after, steps)))
    }

    /// Whether no plan was launched (off CUDA, or cuBLASLt not in use).
    pub fn is_empty(&self) -> bool {
        self.shares.is_empty()
    }

    /// GEMM launches per step.
    fn launches_per_step(&self) -> f64 {
        self.shares.iter().map(|s| s.launches_per_step).sum()
    }

    /// GEMM FLOPs per step.
    fn flops_per_step(&self) -> f64 {
        self.shares
            .iter()
            .map(|s| s.plan.flops * s.launches_per_step)
            .sum()
    }

    /// Milliseconds per step at the tuned speeds, over the plans that were timed, and the
    /// launches per step of those that were not.
    fn tuned_ms_per_step(&self) -> (f64, f64) {
        let timed = self.shares.iter().filter_map(PlanShare::tuned_ms_per_step);
        let untimed = self
            .shares
            .iter()
            .filter(|s| s.plan.tuned_ms.is_none())
            .map(|s| s.launches_per_step);
        (timed.sum(), untimed.sum())
    }

    /// The result document's `gemm_plans` object.
    pub fn to_json(&self) -> Value {
        let (tuned_ms, untimed_launches) = self.tuned_ms_per_step();
        json!({
            "launches_per_step": self.launches_per_step(),
            "flops_per_step": self.flops_per_step(),
            "tuned_ms_per_step": tuned_ms,
            "untimed_launches_per_step": untimed_launches,
            "plans": self.shares.iter().map(|s| json!({
                "id": s.plan.id,
                "shape": s.plan.shape,
                "launches_per_step": s.launches_per_step,
                "tuned_ms": s.plan.tuned_ms,
                "tuned_ms_per_step": s.tuned_ms_per_step(),
                "tuned_tflops": s.tuned_tflops(),
            })).collect::<Vec<_>>(),
        })
    }

    /// A summary line and the `top` plans by tuned time per step, for the console.
    pub fn summary(&self, top: usize) -> String {
        let (tuned_ms, untimed) = self.tuned_ms_per_step();
        let flops = self.flops_per_step();
        let mut out = format!(
            "  GEMMs (cuBLASLt, {} plans): {:.0} launches and {:.1} TFLOP a step; at their tuned speeds {:.1} ms ({:.0} TFLOP/s){}",
            self.shares.len(),
            self.launches_per_step(),
            flops / 1e12,
            tuned_ms,
            if tuned_ms > 0.0 { flops / (tuned_ms * 1e-3) / 1e12 } else { 0.0 },
            if untimed > 0.0 {
                format!(", plus {untimed:.0} untimed launches")
            } else {
                String::new()
            }
        );
        for s in self.shares.iter().take(top) {
            out.push_str(&format!(
                "\n    #{:<3} {:<28} {:>5.1} a step  {:>7} ms each  {:>6} ms a step  {:>5} TFLOP/s",
                s.plan.id,
                s.plan.shape,
                s.launches_per_step,
                s.plan.tuned_ms.map_or("-".into(), |ms| format!("{ms:.4}")),
                s.tuned_ms_per_step()
                    .map_or("-".into(), |ms| format!("{ms:.2}")),
                s.tuned_tflops().map_or("-".into(), |t| format!("{t:.0}")),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: usize, flops: f64, launches: u64, tuned_ms: Option<f64>) -> GemmPlan {
        GemmPlan {
            id,
            shape: format!("shape {id}"),
            flops,
            launches,
            tuned_ms,
        }
    }

    #[test]
    fn shares_count_the_launches_between_two_readings() {
        let before = [plan(0, 1e12, 10, Some(2.0)), plan(1, 1e9, 4, Some(0.01))];
        let after = [
            plan(0, 1e12, 30, Some(2.0)), // 20 launches over 10 steps
            plan(1, 1e9, 4, Some(0.01)),  // not launched in between
            plan(2, 2e9, 50, Some(0.02)), // made in between: 50 launches
            plan(3, 1e9, 10, None),       // untimed
        ];
        let gemms = StepGemms::between(&before, &after, 10);
        let ids: Vec<usize> = gemms.shares.iter().map(|s| s.plan.id).collect();
        assert_eq!(
            ids,
            [0, 2, 3],
            "largest tuned time per step first, untimed last"
        );
        assert_eq!(gemms.launches_per_step(), 2.0 + 5.0 + 1.0);
        assert_eq!(gemms.flops_per_step(), 2.0 * 1e12 + 5.0 * 2e9 + 1e9);
        assert_eq!(gemms.tuned_ms_per_step(), (2.0 * 2.0 + 5.0 * 0.02, 1.0));
        let doc = gemms.to_json();
        assert_eq!(doc["plans"][0]["tuned_tflops"], json!(500.0));
        assert_eq!(doc["plans"][2]["tuned_ms_per_step"], Value::Null);
        let text = gemms.summary(2);
        assert!(text.contains("3 plans"), "{text}");
        assert!(text.contains("plus 1 untimed launches"), "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn no_plan_gives_an_empty_table() {
        let gemms = StepGemms::between(&[], &[], 0);
        assert!(gemms.is_empty());
        assert_eq!(gemms.tuned_ms_per_step(), (0.0, 0.0));
    }
}
