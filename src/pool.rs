//! A rayon pool that survives `fork`.
//!
//! Rayon's global pool is a set of threads started once per process. After `fork` the child has
//! the pool's bookkeeping but none of its threads, so the first parallel call would wait forever
//! (a DataLoader worker hangs). We keep our own pools keyed by process id: a child sees a
//! different pid and builds a fresh pool; the parent's pool object is leaked in the child, never
//! touched, since dropping it would signal threads that do not exist there.

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

struct Entry {
    pid: u32,
    threads: usize,
    pool: Arc<ThreadPool>,
}

static POOLS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// Number of threads to use when the caller does not say: `RAYON_NUM_THREADS` if set, else the
/// number of CPUs available to this process (read once per process).
pub fn default_threads() -> usize {
    // `available_parallelism` reads cgroup files on every call (~30 µs, a fifth of a small
    // batch's time), so the answer is kept per process; a forked child asks again.
    static CACHED: Mutex<Option<(u32, usize)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut cached = CACHED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((p, n)) = *cached {
        if p == pid {
            return n;
        }
    }
    let n = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    *cached = Some((pid, n));
    n
}

/// A pool of `threads` threads owned by this process, built on first use.
///
/// ```
/// let pool = sftmask::pool::get(2);
/// assert_eq!(pool.current_num_threads(), 2);
/// ```
///
/// # Panics
/// Only if the OS refuses to start threads (the caller then falls back to serial work; see
/// [`try_get`]).
pub fn get(threads: usize) -> Arc<ThreadPool> {
    try_get(threads).expect("could not start rayon threads")
}

/// Like [`get`], but `None` when threads cannot be started.
pub fn try_get(threads: usize) -> Option<Arc<ThreadPool>> {
    let threads = threads.max(1);
    let pid = std::process::id();
    let mut pools = POOLS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if pools.iter().any(|e| e.pid != pid) {
        // We are a forked child: forget the parent's pools without dropping them.
        for stale in pools.drain(..).filter(|e| e.pid != pid) {
            std::mem::forget(stale.pool);
        }
    }
    if let Some(e) = pools.iter().find(|e| e.threads == threads) {
        return Some(Arc::clone(&e.pool));
    }
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("sftmask-{i}"))
        .build()
        .ok()?;
    let pool = Arc::new(pool);
    pools.push(Entry {
        pid,
        threads,
        pool: Arc::clone(&pool),
    });
    Some(pool)
}

/// Runs `work` on every item with per-worker scratch state from `init`, on up to `threads`
/// threads when `parallel` is set (and threads can be had), else on the calling thread; results
/// come back in item order. The one row dispatch of collation and preprocessing.
///
/// ```
/// let squares = sftmask::pool::map_rows(vec![1u64, 2, 3], 2, true, || 0u64, |_scratch, (_i, x)| x * x);
/// assert_eq!(squares, vec![1, 4, 9]);
/// ```
pub fn map_rows<T: Send, S, R: Send>(
    items: Vec<T>,
    threads: usize,
    parallel: bool,
    init: impl Fn() -> S + Sync + Send,
    work: impl Fn(&mut S, (usize, T)) -> R + Sync + Send,
) -> Vec<R> {
    use rayon::prelude::*;
    match (parallel && threads > 1 && items.len() > 1)
        .then(|| try_get(threads))
        .flatten()
    {
        Some(pool) => pool.install(|| items.into_par_iter().enumerate().map_init(init, work).collect()),
        None => {
            let mut scratch = init();
            items
                .into_iter()
                .enumerate()
                .map(|item| work(&mut scratch, item))
                .collect()
        }
    }
}
