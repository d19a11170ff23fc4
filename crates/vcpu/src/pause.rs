//! Pausing and resuming vCPU threads, and running requests on paused vCPUs.
//!
//! A [`PauseGate`] is shared by the VMM and every vCPU thread. The VMM
//! [requests](PauseGate::request_pause) a pause and kicks each vCPU out of
//! `KVM_RUN` (see [`crate::thread`]); each vCPU loop calls
//! [`PauseGate::park_if_requested`] before it enters the guest again, and
//! parks there on a condition variable until the VMM
//! [resumes](PauseGate::resume) or [releases](PauseGate::release) the gate
//! (the run ends). A vCPU parks between two `KVM_RUN`s, never inside an exit's
//! handling, so its state is complete and resuming continues exactly where it
//! stopped.
//!
//! While parked a vCPU thread serves requests: [`PauseGate::run_on`] hands a
//! closure to one parked vCPU, which runs it on its own thread with the vCPU
//! (its `VcpuFd`) and returns the result. This is how a snapshot reads vCPU
//! state: the vCPU stays owned by its thread, as in Firecracker's vCPU state
//! machine (`Pause`, `Resume`, `SaveState`), and the VMM never reaches into it.
//!
//! The gate is generic over what the vCPU thread owns (`T`, a [`Vcpu`](crate::Vcpu)
//! in the VMM) so it can be tested without KVM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

/// A request for one paused vCPU.
type Request<T> = Box<dyn FnOnce(&mut T) + Send>;

struct GateState<T> {
    paused: bool,
    /// The run is over: parked vCPUs leave and none parks again.
    released: bool,
    /// vCPU threads parked now.
    parked: usize,
    /// Requests waiting for a parked vCPU, by vCPU index.
    requests: Vec<(u8, Request<T>)>,
}

/// Pauses a set of vCPU threads; see the [module documentation](self).
pub struct PauseGate<T> {
    /// Fast check for the vCPU loop: a pause was requested.
    requested: AtomicBool,
    state: Mutex<GateState<T>>,
    changed: Condvar,
}

impl<T> std::fmt::Debug for PauseGate<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("PauseGate")
            .field("paused", &state.paused)
            .field("released", &state.released)
            .field("parked", &state.parked)
            .finish_non_exhaustive()
    }
}

impl<T> Default for PauseGate<T> {
    fn default() -> Self {
        PauseGate {
            requested: AtomicBool::new(false),
            state: Mutex::new(GateState {
                paused: false,
                released: false,
                parked: 0,
                requests: Vec::new(),
            }),
            changed: Condvar::new(),
        }
    }
}

impl<T> PauseGate<T> {
    /// An open gate: vCPUs run.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, GateState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks every vCPU to park at its next check; the caller then kicks
    /// them out of `KVM_RUN`. False (and nothing changes) when already
    /// paused or released.
    pub fn request_pause(&self) -> bool {
        let mut state = self.lock();
        if state.paused || state.released {
            return false;
        }
        state.paused = true;
        self.requested.store(true, Ordering::SeqCst);
        true
    }

    /// Waits until `count` vCPUs are parked (true), the gate is released, or
    /// `timeout` passes (false for both).
    pub fn wait_parked(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.released {
                return false;
            }
            if state.parked >= count {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state =
                self.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Lets parked vCPUs run again. False (and nothing changes) when not
    /// paused.
    pub fn resume(&self) -> bool {
        let mut state = self.lock();
        if !state.paused {
            return false;
        }
        state.paused = false;
        self.requested.store(false, Ordering::SeqCst);
        // Requests nobody took are dropped: their callers see no answer.
        state.requests.clear();
        self.changed.notify_all();
        true
    }

    /// Ends the gate for good (the run is over): parked vCPUs leave and
    /// none parks again.
    pub fn release(&self) {
        let mut state = self.lock();
        state.released = true;
        state.paused = false;
        state.requests.clear();
        self.requested.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// The vCPU loop's check, before each `KVM_RUN`: when a pause was
    /// requested, parks until resumed or released, serving the requests for
    /// vCPU `index` on `vcpu` meanwhile, and returns true (the caller then
    /// checks whether the run ended meanwhile). Costs one atomic load
    /// otherwise.
    #[inline]
    pub fn park_if_requested(&self, index: u8, vcpu: &mut T) -> bool {
        self.requested.load(Ordering::SeqCst) && self.park(index, vcpu)
    }

    fn park(&self, index: u8, vcpu: &mut T) -> bool {
        let mut state = self.lock();
        if !state.paused || state.released {
            return false;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused && !state.released {
            if let Some(at) = state.requests.iter().position(|(target, _)| *target == index) {
                let (_, request) = state.requests.swap_remove(at);
                // Run without the lock: the request may take a while (a
                // snapshot's state reads) and others may be served meanwhile.
                drop(state);
                request(vcpu);
                state = self.lock();
                continue;
            }
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.parked -= 1;
        self.changed.notify_all();
        true
    }

    /// Runs `request` on paused vCPU `index`'s thread and returns its result;
    /// `None` when not paused, or when no parked vCPU `index` took it within
    /// `timeout`.
    pub fn run_on<R, F>(&self, index: u8, timeout: Duration, request: F) -> Option<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut T) -> R + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel(1);
        {
            let mut state = self.lock();
            if !state.paused || state.released {
                return None;
            }
            state.requests.push((
                index,
                Box::new(move |vcpu: &mut T| {
                    let _ = reply.send(request(vcpu));
                }),
            ));
            self.changed.notify_all();
        }
        answer.recv_timeout(timeout).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    /// A fake vCPU loop: counts "runs" until released, checking the gate
    /// before each.
    fn spawn_loop(
        gate: Arc<PauseGate<u64>>,
        index: u8,
        runs: Arc<AtomicU64>,
    ) -> std::thread::JoinHandle<u64> {
        std::thread::spawn(move || {
            let mut state = u64::from(index) * 1000;
            loop {
                gate.park_if_requested(index, &mut state);
                if gate.lock().released {
                    return state;
                }
                state += 1;
                runs.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    }

    #[test]
    fn paused_loops_stop_and_resume_where_they_were() {
        let gate = Arc::new(PauseGate::new());
        let runs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..2).map(|i| spawn_loop(gate.clone(), i, runs.clone())).collect();
        std::thread::sleep(Duration::from_millis(20));
        assert!(gate.request_pause());
        assert!(!gate.request_pause(), "a second pause is refused");
        assert!(gate.wait_parked(2, Duration::from_secs(5)));
        assert!(gate.is_paused());
        let at_pause = runs.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(runs.load(Ordering::SeqCst), at_pause, "a parked loop ran");
        // A request runs on the parked thread of that vCPU, with its state.
        let seen = gate.run_on(1, Duration::from_secs(5), |state: &mut u64| *state);
        assert!(matches!(seen, Some(n) if n >= 1000), "{seen:?}");
        assert!(gate.resume());
        assert!(!gate.resume(), "resuming a running gate is refused");
        std::thread::sleep(Duration::from_millis(20));
        assert!(runs.load(Ordering::SeqCst) > at_pause);
        assert_eq!(gate.run_on(0, Duration::from_millis(10), |s: &mut u64| *s), None);
        gate.release();
        for thread in threads {
            thread.join().unwrap();
        }
    }

    #[test]
    fn release_frees_parked_loops_and_waiters() {
        let gate = Arc::new(PauseGate::new());
        let runs = Arc::new(AtomicU64::new(0));
        let thread = spawn_loop(gate.clone(), 0, runs);
        assert!(gate.request_pause());
        assert!(gate.wait_parked(1, Duration::from_secs(5)));
        gate.release();
        thread.join().unwrap();
        assert!(!gate.request_pause());
        // Nobody parks after a release, so a wait returns at once.
        assert!(!gate.wait_parked(1, Duration::from_secs(5)));
    }

    #[test]
    fn a_pause_nobody_reaches_times_out() {
        let gate: PauseGate<u64> = PauseGate::new();
        assert!(gate.request_pause());
        assert!(!gate.wait_parked(1, Duration::from_millis(20)));
    }
}
