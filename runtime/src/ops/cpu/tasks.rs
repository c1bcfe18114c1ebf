//! Splitting a kernel's work between rayon's tasks: a raw output pointer for tasks that
//! write disjoint tiles ([`OutPtr`]), per-thread scratch ([`with_scratch`]) and the sum of
//! per-task partial results in a fixed order ([`sum_partials`]).

use std::cell::RefCell;

/// A raw output pointer shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks only write disjoint regions through it (see each use).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Send + Sync` wrapper).
    #[inline]
    pub(crate) fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

thread_local! {
    /// Per-thread scratch for the tasks' im2col tiles and Winograd blocks, reused across tasks
    /// and calls: rayon builds a fresh `init` value for nearly every task, and a fresh buffer
    /// costs an allocation, page faults and zeroing that its first use overwrites anyway.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's scratch. The contents are whatever the last
/// user left: `f` must write what it reads.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (a task run while another waits): a buffer of its own.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Element-wise sum of equally long per-thread partial results (an empty list sums to
/// `len` zeros).
pub(crate) fn sum_partials<T>(partials: &[Vec<T>], len: usize) -> Vec<T>
where
    T: Copy + Default + std::ops::AddAssign,
{
    let mut out = vec![T::default(); len];
    for p in partials {
        for (o, &v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}
