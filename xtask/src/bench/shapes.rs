//! The GEMMs of one LLaMA3-8B layer at a given token count: dense projections, the sliced widths
//! SparseLoRA's configs produce, and the rank-32 LoRA branch; each as its forward (`x W^T`) and
//! its input gradient (`dY W`). `scripts/bench_gemm_torch.py` reads this list (`--list-shapes`),
//! so both sides time the same products.

use serde_json::{json, Value};
use sparse_ops::padded_width;

const HIDDEN: usize = 4096;
const KV: usize = 1024;
const MLP: usize = 14336;
const RANK: usize = 32;

/// `C[m, n] = A[m, k] B[k, n]`, with `B` a weight `[n, k]` read transposed (`x W^T`) or a weight
/// `[k, n]` read as stored (`dY W`).
#[derive(Debug, Clone)]
pub struct GemmShape {
    pub name: String,
    pub group: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `B = W^T` with `W: [n, k]`; otherwise `B = W` with `W: [k, n]`.
    pub weight_transposed: bool,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
impl GemmShape {
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// The stored weight's shape.
    pub fn weight_dims(&self) -> [usize; 2] {
        if self.weight_transposed {
            [self.n, self.k]
        } else {
            [self.k, self.n]
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name, "group": self.group, "m": self.m, "n": self.n, "k": self.k,
            "b": if self.weight_transposed { "wt" } else { "w" },
        })
    }
}

/// Forward and input gradient of a projection with weight `[out, in]` over `tokens` rows.
fn projection(
    out: &mut Vec<GemmShape>,
    group: &'static str,
    name: &str,
    d_out: usize,
    d_in: usize,
    tokens: usize,
) {
    out.push(GemmShape {
        name: format!("{name} fwd"),
        group,
        m: tokens,
        n: d_out,
        k: d_in,
        weight_transposed: true,
    });
    out.push(GemmShape {
        name: format!("{name} dgrad"),
        group,
        m: tokens,
        n: d_in,
        k: d_out,
        weight_transposed: false,
    });
}

/// A sliced shape's name: the kept width, and the padded width it runs at where they differ
/// (`143->144`).
fn sliced_name(kept: usize) -> String {
    match padded_width(kept) {
        width if width == kept => kept.to_string(),
        width => format!("{kept}->{width}"),
    }
}

/// Every shape, in the order they are timed.
pub fn llama3_8b(tokens: usize) -> Vec<GemmShape> {
    let mut shapes = Vec::new();
    let s = &mut shapes;
    for (name, d_out, d_in) in [
        ("q/o", HIDDEN, HIDDEN),
        ("k/v", KV, HIDDEN),
        ("gate/up", MLP, HIDDEN),
        ("down", HIDDEN, MLP),
    ] {
        projection(s, "dense", name, d_out, d_in, tokens);
    }
    // Output slicing keeps rows of W (gate/up/q/k/v); input slicing keeps columns (down/o). The
    // products run on the kept width padded with zero channels to a multiple of 8
    // ([`padded_width`]), as the compact MLP does; the attention's sliced products will
    // take the same rule when they exist, so k/v/q/o are padded here too.
    for kept in [143, 430, 716] {
        let (name, width) = (sliced_name(kept), padded_width(kept));
        projection(
            s,
            "sliced",
            &format!("gate/up[{name}]"),
            width,
            HIDDEN,
            tokens,
        );
        projection(s, "sliced", &format!("down[{name}]"), HIDDEN, width, tokens);
    }
    for kept in [256, 819] {
        let (name, width) = (sliced_name(kept), padded_width(kept));
        projection(s, "sliced", &format!("k/v[{name}]"), width, HIDDEN, tokens);
    }
    for kept in [1024, 3276] {
        let (name, width) = (sliced_name(kept), padded_width(kept));
        projection(s, "sliced", &format!("q[{name}]"), width, HIDDEN, tokens);
        projection(s, "sliced", &format!("o[{name}]"), HIDDEN, width, tokens);
    }
    // LoRA: A is [r, in], B is [out, r].
    for d_in in [HIDDEN, MLP] {
        projection(
            s,
            "lora",
            &format!("lora_A r{RANK} in{d_in}"),
            RANK,
            d_in,
            tokens,
        );
    }
    for d_out in [HIDDEN, KV, MLP] {
        projection(
            s,
            "lora",
            &format!("lora_B r{RANK} out{d_out}"),
            d_out,
            RANK,
            tokens,
        );
    }
    shapes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_flops_match_the_paper_shapes() {
        let shapes = llama3_8b(4096);
        let mut names: Vec<_> = shapes.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), shapes.len());
        let q = &shapes[0];
        assert_eq!(
            (q.m, q.n, q.k, q.flops()),
            (4096, 4096, 4096, 2.0 * 4096f64.powi(3))
        );
        let down_dgrad = shapes.iter().find(|s| s.name == "down dgrad").unwrap();
        assert_eq!(
            (down_dgrad.n, down_dgrad.k, down_dgrad.weight_dims()),
            (14336, 4096, [4096, 14336])
        );
    }

    #[test]
    fn sliced_widths_are_padded_to_multiples_of_8() {
        let shapes = llama3_8b(4096);
        let sliced: Vec<_> = shapes.iter().filter(|s| s.group == "sliced").collect();
        assert!(sliced.iter().all(|s| s.n % 8 == 0 && s.k % 8 == 0));
        let down = sliced
            .iter()
            .find(|s| s.name == "down[143->144] fwd")
            .unwrap();
        assert_eq!((down.m, down.n, down.k), (4096, 4096, 144));
        let kv = sliced
            .iter()
            .find(|s| s.name == "k/v[819->824] dgrad")
            .unwrap();
        assert_eq!((kv.n, kv.k, kv.weight_dims()), (4096, 824, [824, 4096]));
        assert!(sliced.iter().any(|s| s.name == "k/v[256] fwd"));
    }
}
