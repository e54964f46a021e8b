//! How strided 2-D views map onto cuBLASLt's column-major operands, without copies.
//!
//! burn's tensors are row-major; cuBLASLt is column-major. A row-major `C[m, n]` (leading
//! dimension `n`) is the column-major `C^T`, so `C = A B` is computed as `C^T = B^T A^T`: our `B`
//! becomes cuBLASLt's first operand and our `A` its second. Each operand is read in place when its
//! strides are those of a dense row-major or column-major matrix with some leading dimension (a
//! transposed weight, a row block, a column block of a wider tensor); anything else is made
//! contiguous first.

/// The storage order of a readable 2-D view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Order {
    /// `element(r, c) = base[r * ld + c]`
    RowMajor,
    /// `element(r, c) = base[r + c * ld]`
    ColMajor,
}

/// A 2-D view `[rows, cols]` that cuBLASLt can read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct View {
    pub rows: usize,
    pub cols: usize,
    pub order: Order,
    /// Distance in elements between consecutive rows (row-major) or columns (column-major).
    pub ld: usize,
}

impl View {
    /// The view described by `shape` and `strides` (in elements), or `None` when they are not a
    /// dense order with a leading dimension (broadcast or overlapping strides, both strides
    /// above one): the tensor must then be made contiguous.
    pub fn from_strides(shape: [usize; 2], strides: [usize; 2]) -> Option<View> {
        let [rows, cols] = shape;
        let view = |order, ld: usize| {
            Some(View {
                rows,
                cols,
                order,
                ld: ld.max(1),
            })
        };
        // A single row (column) has no row (column) stride to speak of.
        if strides[1] == 1 && (rows <= 1 || strides[0] >= cols) {
            return view(Order::RowMajor, if rows <= 1 { cols } else { strides[0] });
        }
        if strides[0] == 1 && (cols <= 1 || strides[1] >= rows) {
            return view(Order::ColMajor, if cols <= 1 { rows } else { strides[1] });
        }
        if rows <= 1 && cols <= 1 {
            return view(Order::RowMajor, 1);
        }
        None
    }

    /// A contiguous row-major `[rows, cols]` tensor.
    pub fn contiguous(rows: usize, cols: usize) -> View {
        View {
            rows,
            cols,
            order: Order::RowMajor,
            ld: cols.max(1),
        }
    }

    /// The cuBLASLt operand whose `op()` is this view's transpose: the stored matrix as
    /// column-major `rows x cols` with leading dimension `ld`, and whether cuBLASLt transposes it.
    fn transposed_operand(self) -> Operand {
        match self.order {
            // Row-major M[r, c] is the column-major M^T (c x r): already the transpose.
            Order::RowMajor => Operand {
                rows: self.cols as u64,
                cols: self.rows as u64,
                ld: self.ld as i64,
                trans: false,
                batch_stride: 0,
            },
            // Column-major M (r x c): cuBLASLt transposes it.
            Order::ColMajor => Operand {
                rows: self.rows as u64,
                cols: self.cols as u64,
                ld: self.ld as i64,
                trans: true,
                batch_stride: 0,
            },
        }
    }
}

/// One cuBLASLt matrix operand: the stored column-major matrix and its `op()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Operand {
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
    pub trans: bool,
    /// Elements between consecutive matrices of a strided batch (0: one matrix for all).
    pub batch_stride: i64,
}

/// `C[m, n] = A[m, k] B[k, n]` as cuBLASLt's column-major `D = op(first) op(second)`, with
/// `D = C^T` (`n x m`, leading dimension `n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Problem {
    /// Our `B`, as `op(first) = B^T` (`n x k`).
    pub first: Operand,
    /// Our `A`, as `op(second) = A^T` (`k x m`).
    pub second: Operand,
    /// `D`'s rows: our `n`.
    pub rows: u64,
    /// `D`'s columns: our `m`.
    pub cols: u64,
    /// The reduction length `k`.
    pub depth: u64,
    /// Matrices in a strided batch (1: a single product).
    pub batch: u64,
    /// Elements between consecutive columns of `D` (our output's row stride): `rows` for a packed
    /// output, more for a block of a wider one.
    pub out_ld: u64,
    /// Elements between consecutive matrices of `D` (`rows * cols` when packed).
    pub out_batch_stride: u64,
}

impl Problem {
    /// cuBLASLt's transposes of `first` and `second`, `N` or `T` each (as the GEMM logs print
    /// them).
    pub fn transposes(&self) -> String {
        let op = |o: &Operand| if o.trans { 'T' } else { 'N' };
        format!("{}{}", op(&self.first), op(&self.second))
    }

    /// The cuBLASLt problem for `A B` (`a`: `[m, k]`, `b`: `[k, n]`; the caller checked `k`).
    pub fn new(a: View, b: View) -> Problem {
        Problem {
            first: b.transposed_operand(),
            second: a.transposed_operand(),
            rows: b.cols as u64,
            cols: a.rows as u64,
            depth: a.cols as u64,
            batch: 1,
            out_ld: b.cols as u64,
            out_batch_stride: (b.cols * a.rows) as u64,
        }
    }

    /// `batch` products `A_i B_i`, where `A_i` starts `a_stride` elements after `A_{i-1}` and
    /// `B_i` `b_stride` after `B_{i-1}`; the outputs are packed (`m * n` apart).
    pub fn batched(a: View, a_stride: usize, b: View, b_stride: usize, batch: usize) -> Problem {
        let mut problem = Problem::new(a, b);
        if batch > 1 {
            problem.batch = batch as u64;
            problem.first.batch_stride = b_stride as i64;
            problem.second.batch_stride = a_stride as i64;
        }
        problem
    }

    /// The same product written into a block of a larger row-major output: our output's rows
    /// `row_stride` elements apart, its matrices `batch_stride` apart.
    pub fn into_block(mut self, row_stride: usize, batch_stride: usize) -> Problem {
        self.out_ld = row_stride as u64;
        self.out_batch_stride = batch_stride as u64;
        self
    }

    /// Elements from `D`'s first to one past its last (what a scratch copy of it must hold).
    pub fn out_span(&self) -> u64 {
        if self.rows * self.cols * self.batch == 0 {
            return 0;
        }
        (self.batch - 1) * self.out_batch_stride + (self.cols - 1) * self.out_ld + self.rows
    }
}

/// The largest power of two (up to 256, cuBLASLt's default assumption) that divides a device
/// address: what the algorithm heuristic must be told about each operand's alignment.
pub(crate) fn alignment(address: u64) -> u32 {
    if address == 0 {
        return 256;
    }
    1u32 << address.trailing_zeros().min(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads element `(i, j)` of `op(stored)` the way cuBLASLt does.
    fn op_elem(buf: &[f32], op: Operand, i: usize, j: usize) -> f32 {
        let (r, c) = if op.trans { (j, i) } else { (i, j) };
        assert!(
            (r as u64) < op.rows && (c as u64) < op.cols,
            "read outside the operand"
        );
        buf[r + c * op.ld as usize]
    }

    /// cuBLASLt's `D = op(first) op(second)`, column-major with leading dimension `rows`.
    fn simulate(p: Problem, first: &[f32], second: &[f32]) -> Vec<f32> {
        let (rows, cols, depth) = (p.rows as usize, p.cols as usize, p.depth as usize);
        let mut d = vec![0f32; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                d[i + j * rows] = (0..depth)
                    .map(|l| op_elem(first, p.first, i, l) * op_elem(second, p.second, l, j))
                    .sum();
            }
        }
        d
    }

    /// A `[rows, cols]` matrix with values `f(r, c)` laid out with `strides` in a buffer of
    /// `len` elements (padding holds NaN, so reading it shows).
    fn store(
        rows: usize,
        cols: usize,
        strides: [usize; 2],
        f: impl Fn(usize, usize) -> f32,
    ) -> Vec<f32> {
        let len = (rows.max(1) - 1) * strides[0] + (cols.max(1) - 1) * strides[1] + 1;
        let mut buf = vec![f32::NAN; len];
        for r in 0..rows {
            for c in 0..cols {
                buf[r * strides[0] + c * strides[1]] = f(r, c);
            }
        }
        buf
    }

    fn a_val(r: usize, c: usize) -> f32 {
        ((r * 7 + c * 3) % 11) as f32 - 5.0
    }

    fn b_val(r: usize, c: usize) -> f32 {
        ((r * 5 + c * 2) % 13) as f32 - 6.0
    }

    /// Every storage of A and B the seam meets gives the row-major product.
    #[test]
    fn row_major_product_from_any_readable_layout() {
        let (m, k, n) = (5, 7, 3);
        // (strides of a [rows, cols] matrix): contiguous, padded rows (a column block of a wider
        // tensor), transposed (column-major), transposed with padding.
        let layouts =
            |rows: usize, cols: usize| [[cols, 1], [cols + 4, 1], [1, rows], [1, rows + 2]];
        for sa in layouts(m, k) {
            for sb in layouts(k, n) {
                let va = View::from_strides([m, k], sa).expect("readable");
                let vb = View::from_strides([k, n], sb).expect("readable");
                let p = Problem::new(va, vb);
                let d = simulate(p, &store(k, n, sb, b_val), &store(m, k, sa, a_val));
                for r in 0..m {
                    for c in 0..n {
                        let expected: f32 = (0..k).map(|l| a_val(r, l) * b_val(l, c)).sum();
                        // D = C^T with leading dimension n: C[r, c] = D[c + r * n].
                        assert_eq!(d[c + r * n], expected, "A strides {sa:?}, B strides {sb:?}");
                    }
                }
                assert_eq!((p.rows, p.cols, p.depth), (n as u64, m as u64, k as u64));
            }
        }
    }

    #[test]
    fn single_rows_and_columns_are_readable_whatever_their_other_stride() {
        // W[5..6, :] of a [14336, 4096] weight, and its transpose.
        let row = View::from_strides([1, 4096], [4096, 1]).unwrap();
        assert_eq!((row.order, row.ld), (Order::RowMajor, 4096));
        let col = View::from_strides([4096, 1], [1, 4096]).unwrap();
        assert_eq!((col.order, col.ld), (Order::ColMajor, 4096));
        // A one-element tensor with arbitrary strides.
        assert!(View::from_strides([1, 1], [0, 0]).is_some());
        // x[m, 1] contiguous: strides [1, 1].
        let x = View::from_strides([8, 1], [1, 1]).unwrap();
        assert_eq!((x.order, x.ld), (Order::RowMajor, 1));
    }

    #[test]
    fn broadcast_and_overlapping_views_need_a_copy() {
        assert_eq!(View::from_strides([4, 8], [0, 1]), None); // expanded rows
        assert_eq!(View::from_strides([4, 8], [4, 1]), None); // rows overlap
        assert_eq!(View::from_strides([4, 8], [16, 2]), None); // every other column
        assert_eq!(View::from_strides([4, 8], [1, 2]), None); // columns overlap
    }

    #[test]
    fn alignment_is_the_largest_power_of_two_up_to_256() {
        assert_eq!(alignment(0x7f00_0000_0000), 256);
        assert_eq!(alignment(0x7f00_0000_0200 + 286), 2); // a bf16 column offset of 143
        assert_eq!(alignment(0x7f00_0000_0010), 16);
    }
}
