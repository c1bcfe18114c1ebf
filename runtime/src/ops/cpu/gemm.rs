//! Matrix products on the `gemm` crate (AVX2 or portable kernels, chosen at run time), each
//! single-threaded (the callers split the work): the [`Mat`] view, [`gemm_into`] (a strided
//! destination, overwritten: the fused kernels' path without AVX-512) and [`gemm_acc`] (a
//! contiguous destination, overwritten or accumulated into: the candle training op's).

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
    #[inline]
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
    #[inline]
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
    #[inline]
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

/// `dst = a x b`, or `dst += a x b` with `accumulate`, for a contiguous row-major `dst` of
/// `a.rows x b.cols`; single-threaded (callers parallelize over images). Errors name `op`.
pub(crate) fn gemm_acc(
    op: &str,
    dst: &mut [f32],
    accumulate: bool,
    a: Mat<'_>,
    b: Mat<'_>,
) -> Result<()> {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if b.rows != k || !a.fits() || !b.fits() || dst.len() != m * n {
        bail!(
            "{op}: bad GEMM operands {}x{} x {}x{} into {} elements",
            a.rows,
            a.cols,
            b.rows,
            b.cols,
            dst.len()
        );
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return Ok(());
    }
    // SAFETY: both operand views were checked to lie inside their slices, `dst` holds exactly
    // `m * n` elements written at `i * n + j`, and nothing else can touch it (it is borrowed
    // mutably). Strides fit in isize because the slices do.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}
