//! Matrix products on the `gemm` crate (AVX2 or portable kernels, chosen at run time): the
//! [`Mat`] view and [`gemm_into`], the product every kernel without AVX-512 runs on.

use candle_core::{Result, bail};

/// A matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> Mat<'a> {
    /// A contiguous row-major `rows x cols` matrix.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, as a view of the same data.
    pub(crate) fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

impl Mat<'_> {
    /// Whether every element lies inside `data`.
    pub(crate) fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = a x b` for `dst` of `a.rows x b.cols` at `dst`, element `(i, j)` at
/// `i * rs + j * cs`, overwriting it, single-threaded. The `gemm` crate's micro-kernel runs
/// 64 rows of the destination's contiguous dimension at a time, so that dimension should be
/// the long one.
///
/// # Safety
/// `dst` must be valid for writes at every `i * rs + j * cs` with `i < a.rows`, `j < b.cols`,
/// and no other thread may access those elements during the call.
pub(crate) unsafe fn gemm_into(
    a: Mat<'_>,
    b: Mat<'_>,
    dst: *mut f32,
    rs: usize,
    cs: usize,
) -> Result<()> {
    if a.cols != b.rows || !a.fits() || !b.fits() {
        bail!(
            "fused gemm: bad operands {}x{} (rs {}, cs {}, len {}) x {}x{} (rs {}, cs {}, len {})",
            a.rows,
            a.cols,
            a.rs,
            a.cs,
            a.data.len(),
            b.rows,
            b.cols,
            b.rs,
            b.cs,
            b.data.len()
        );
    }
    if a.rows == 0 || b.cols == 0 {
        return Ok(());
    }
    if a.cols == 0 {
        for i in 0..a.rows {
            for j in 0..b.cols {
                // SAFETY: in range per this function's contract.
                unsafe { *dst.add(i * rs + j * cs) = 0.0 };
            }
        }
        return Ok(());
    }
    // SAFETY: the operand views were checked to lie inside their slices; `dst` is the
    // caller's responsibility (see above). Strides fit in isize because the slices do.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst,
            cs as isize,
            rs as isize,
            false,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}
