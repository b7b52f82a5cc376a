//! A small spinning fork/join pool for the single-vector kernels of decode.
//!
//! Decode runs a few hundred matrix-vector products per token, each a few to
//! a few tens of microseconds. Handing half of one to a rayon worker that has
//! gone to sleep costs a futex wake-up, about as long as the work itself on a
//! small model. Here the helpers spin on a generation counter for a while
//! after each job (`SPIN`), so back-to-back jobs start in well under a
//! microsecond, and block on a condition variable when decode stops. Every
//! wait spins without yielding only for `SPIN_ALONE` (20 µs) and then
//! yields between rounds, so many sessions on few cores do not burn the
//! cores their own helpers need.
//!
//! One job runs at a time: a second caller that finds the pool busy runs its
//! job on its own thread ([`run`] returns false and does nothing).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it blocks.
const SPIN: Duration = Duration::from_micros(200);

/// How long a waiter (an idle helper, or the caller waiting for its job's
/// parts) spins without giving up its core. After that it yields between
/// rounds, so when more threads want the cores than there are (many
/// sessions on few cores) a spinning waiter hands its time slice to the
/// thread it waits for, or to another session, instead of burning it. On an
/// idle machine `yield_now` returns at once and nothing changes.
const SPIN_ALONE: Duration = Duration::from_micros(20);

/// How every wait in the pool backs off: spin-loop hints for [`SPIN_ALONE`],
/// then a yield per round.
struct Backoff {
    start: Instant,
    rounds: u32,
    yielding: bool,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            start: Instant::now(),
            rounds: 0,
            yielding: false,
        }
    }

    /// One round of waiting. Every 64th round it reads the clock and returns
    /// how long the wait has lasted (reading it every round would cost more
    /// than the spin).
    fn snooze(&mut self) -> Option<Duration> {
        if self.yielding {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
        self.rounds = self.rounds.wrapping_add(1);
        if !self.rounds.is_multiple_of(64) {
            return None;
        }
        let waited = self.start.elapsed();
        self.yielding = waited > SPIN_ALONE;
        Some(waited)
    }
}

/// Spin until `ready`, yielding the core between rounds after [`SPIN_ALONE`].
fn wait_until(ready: impl Fn() -> bool) {
    let mut backoff = Backoff::new();
    while !ready() {
        backoff.snooze();
    }
}

/// Most helpers the pool starts.
const MAX_HELPERS: usize = 63;

/// A job: `f(part)` for every part, lifetime erased while the job runs.
type Task = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Held by the submitting thread for the whole job.
    submit: Mutex<()>,
    /// Bumped once per job.
    generation: AtomicUsize,
    /// The current job, valid while `open` (and until `active` drops to 0).
    task: UnsafeCell<Option<Task>>,
    parts: AtomicUsize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Whether helpers may still join the current job.
    open: AtomicBool,
    /// Helpers inside a job (between joining and leaving).
    active: AtomicUsize,
    /// Whether a part of the current job panicked.
    panicked: AtomicBool,
    /// Helpers blocked on `wake`.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    helpers: AtomicUsize,
}

// SAFETY: `task` is written only by the thread holding `submit`, while no
// helper can read it (before `open` is set, after `active` is back to 0), and
// read by helpers only between those points; everything else is atomic or
// locked.
unsafe impl Sync for Shared {}
// SAFETY: as above.
unsafe impl Send for Shared {}

static POOL: OnceLock<Arc<Shared>> = OnceLock::new();

fn pool() -> &'static Arc<Shared> {
    POOL.get_or_init(|| {
        Arc::new(Shared {
            submit: Mutex::new(()),
            generation: AtomicUsize::new(0),
            task: UnsafeCell::new(None),
            parts: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            open: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            helpers: AtomicUsize::new(0),
        })
    })
}

impl Shared {
    /// Claim and run parts of the current job until none are left. A panic
    /// in a part is caught (so every part is still counted) and reported to
    /// the submitter, which raises it after the job.
    fn work(&self, f: &(dyn Fn(usize) + Sync)) {
        let parts = self.parts.load(SeqCst);
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= parts {
                break;
            }
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, SeqCst);
            }
            self.done.fetch_add(1, SeqCst);
        }
    }

    fn helper(self: Arc<Self>) {
        let mut seen = self.generation.load(SeqCst);
        loop {
            // Spin for a new job, then block.
            let mut backoff = Backoff::new();
            while self.generation.load(SeqCst) == seen {
                if backoff.snooze().is_some_and(|waited| waited > SPIN) {
                    let mut g = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
                    self.sleepers.fetch_add(1, SeqCst);
                    while self.generation.load(SeqCst) == seen {
                        g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                    }
                    self.sleepers.fetch_sub(1, SeqCst);
                }
            }
            let g = self.generation.load(SeqCst);
            seen = g;
            self.active.fetch_add(1, SeqCst);
            if self.open.load(SeqCst) && self.generation.load(SeqCst) == g {
                // SAFETY: `open` was seen after joining (`active` > 0), so the
                // submitter has not yet passed its wait for `active == 0` and
                // the task it stored is alive.
                if let Some(t) = unsafe { *self.task.get() } {
                    // SAFETY: as above.
                    self.work(unsafe { &*t });
                }
            }
            self.active.fetch_sub(1, SeqCst);
        }
    }
}

/// Run `f(0) .. f(parts - 1)` on the calling thread and up to `threads - 1`
/// spinning helpers, returning when all have finished. Returns false without
/// running anything when the pool is busy with another caller's job (run it
/// yourself then).
pub(crate) fn run(threads: usize, parts: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
    let p = pool();
    let guard = match p.submit.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return false,
    };
    let want = threads.saturating_sub(1).min(MAX_HELPERS);
    while p.helpers.load(SeqCst) < want {
        let sh = Arc::clone(p);
        let spawned = std::thread::Builder::new()
            .name("twain-spin".into())
            .spawn(move || sh.helper());
        if spawned.is_err() {
            break;
        }
        p.helpers.fetch_add(1, SeqCst);
    }
    // SAFETY: only the lifetime is erased; the pointer is dropped from the
    // pool (below) before this function returns, so before `f` can die.
    let erased: Task =
        unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), Task>(f as *const _) };
    // SAFETY: no helper reads `task` now: the previous job ended with
    // `open == false` and `active == 0`, and `open` is set only below.
    unsafe { *p.task.get() = Some(erased) };
    p.parts.store(parts, SeqCst);
    p.next.store(0, SeqCst);
    p.done.store(0, SeqCst);
    p.panicked.store(false, SeqCst);
    p.open.store(true, SeqCst);
    p.generation.fetch_add(1, SeqCst);
    if p.sleepers.load(SeqCst) > 0 {
        let _g = p.sleep.lock().unwrap_or_else(|e| e.into_inner());
        p.wake.notify_all();
    }
    p.work(f);
    wait_until(|| p.done.load(SeqCst) >= parts);
    p.open.store(false, SeqCst);
    wait_until(|| p.active.load(SeqCst) == 0);
    // SAFETY: helpers are out of the job (`active == 0`) and no new one can
    // join (`open == false`).
    unsafe { *p.task.get() = None };
    let panicked = p.panicked.load(SeqCst);
    drop(guard);
    if panicked {
        panic!("a part of a pooled kernel job panicked");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `run`, retried while another caller holds the pool (the tests of this
    /// crate run in parallel and share it): false only means busy, and then
    /// nothing ran.
    fn run_when_free(threads: usize, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        for _ in 0..1_000_000 {
            if run(threads, parts, f) {
                return;
            }
            std::thread::yield_now();
        }
        panic!("the pool stayed busy");
    }

    #[test]
    fn every_part_runs_once() {
        for parts in [1, 2, 3, 17] {
            let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..200 {
                run_when_free(2, parts, &|i| {
                    hits[i].fetch_add(1, SeqCst);
                });
            }
            assert!(hits.iter().all(|h| h.load(SeqCst) == 200), "{parts}");
        }
    }

    #[test]
    fn a_panicking_part_is_raised_on_the_caller_and_the_pool_survives() {
        let r = std::panic::catch_unwind(|| {
            run_when_free(2, 4, &|i| {
                if i == 3 {
                    panic!("part 3");
                }
            })
        });
        assert!(r.is_err());
        let hits = AtomicUsize::new(0);
        run_when_free(2, 4, &|_| {
            hits.fetch_add(1, SeqCst);
        });
        assert_eq!(hits.load(SeqCst), 4);
    }

    #[test]
    fn concurrent_callers_never_share_a_job() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        let mine = AtomicUsize::new(0);
                        if !run(3, 4, &|_| {
                            mine.fetch_add(1, SeqCst);
                        }) {
                            (0..4).for_each(|_| {
                                mine.fetch_add(1, SeqCst);
                            });
                        }
                        assert_eq!(mine.load(SeqCst), 4);
                        total.fetch_add(4, SeqCst);
                    }
                });
            }
        });
        assert_eq!(total.load(SeqCst), 4 * 500 * 4);
    }
}
