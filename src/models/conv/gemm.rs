//! Thin, safe wrappers over the `gemm` crate's matrix multiply for row-major `f32` blocks.
//!
//! Every convolution method ends in a matrix product; keeping the unsafe FFI-like call in one
//! place lets the rest of the code work with slices and checked shapes.

use gemm::Parallelism;

/// A read-only matrix view: `rows x cols` with explicit strides (in elements).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    /// The backing storage.
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between two consecutive rows.
    pub row_stride: usize,
    /// Distance between two consecutive columns.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of this view (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Whether every element the strides address lies inside `data`.
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `dst[m x n] (row stride dst_rs, unit column stride) = acc * dst + a * b`.
///
/// `accumulate == false` overwrites `dst` without reading it, so it may hold garbage.
pub fn matmul(
    dst: &mut [f32],
    dst_rs: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    accumulate: bool,
    par: Parallelism,
) -> candle_core::Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k {
        candle_core::bail!("matmul: inner dims differ ({k} vs {})", b.rows);
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if !a.fits() || !b.fits() || (m - 1) * dst_rs + n > dst.len() || dst_rs < n {
        candle_core::bail!("matmul: a view runs past its buffer");
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return Ok(());
    }
    // SAFETY: the checks above guarantee that every address gemm derives from the shapes and
    // strides lies inside the given slices; `dst` is exclusively borrowed, and with
    // `dst_rs >= n` its rows do not overlap, so no element is written twice or aliased.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}
