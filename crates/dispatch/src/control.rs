//! Deciding, once, how a run ends, and telling every thread; pausing the
//! vCPU loops; blocking the signals that end a run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

use vmm_vcpu::Vcpu;
use vmm_vcpu::pause::PauseGate;

use crate::Outcome;

/// The shared run state: the first outcome reported wins, every vCPU loop
/// sees the stop flag (and the pause gate), and the main thread waits for
/// the outcome. Ending the run releases paused vCPUs.
#[derive(Debug, Default)]
pub struct RunControl {
    stop: AtomicBool,
    outcome: Mutex<Option<Outcome>>,
    finished: Condvar,
    gate: PauseGate<Vcpu>,
}

impl RunControl {
    /// A run that has not ended.
    pub fn new() -> Self {
        RunControl::default()
    }

    /// Reports how the run ended. The first report wins; later ones are
    /// logged and dropped. Returns whether this one was taken.
    pub fn finish(&self, outcome: Outcome) -> bool {
        let mut slot = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        self.stop.store(true, Ordering::SeqCst);
        // A paused vCPU leaves its wait and sees the stop flag.
        self.gate.release();
        if slot.is_some() {
            log::debug!("run already ended; ignoring: {outcome}");
            return false;
        }
        *slot = Some(outcome);
        self.finished.notify_all();
        true
    }

    /// True once the run has ended; vCPU loops stop entering the guest.
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The gate that pauses the vCPU loops (see [`vmm_vcpu::pause`]).
    pub fn gate(&self) -> &PauseGate<Vcpu> {
        &self.gate
    }

    /// Blocks until the run ends and returns how.
    pub fn wait(&self) -> Outcome {
        let mut slot = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(outcome) = slot.as_ref() {
                return outcome.clone();
            }
            slot = self.finished.wait(slot).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Signals blocked in the process, for a thread to take them (e.g.
/// through a signalfd) rather than a signal handler.
///
/// [`BlockedSignals::block`] blocks them in the calling thread, and so in
/// every thread it spawns afterwards: call it before spawning any. A signal
/// that arrives before a thread takes it stays pending.
#[derive(Debug)]
pub struct BlockedSignals(());

impl BlockedSignals {
    /// Blocks `signals` in the calling thread.
    pub fn block(signals: &[libc::c_int]) -> std::io::Result<BlockedSignals> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it below.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t.
        unsafe { libc::sigemptyset(&mut set) };
        for &signal in signals {
            // SAFETY: `set` is initialised; an invalid number only returns EINVAL.
            if unsafe { libc::sigaddset(&mut set, signal) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: `set` is initialised and the old mask is not requested.
        let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if blocked != 0 {
            return Err(std::io::Error::from_raw_os_error(blocked));
        }
        Ok(BlockedSignals(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_outcome_wins_and_wakes_the_waiter() {
        let control = Arc::new(RunControl::new());
        assert!(!control.should_stop());
        let waiter = {
            let control = control.clone();
            std::thread::spawn(move || control.wait())
        };
        assert!(control.finish(Outcome::DebugExit { value: 1 }));
        assert!(!control.finish(Outcome::PowerOff { vcpu: 0 }));
        assert!(control.should_stop());
        assert_eq!(waiter.join().unwrap(), Outcome::DebugExit { value: 1 });
    }

    #[test]
    fn the_end_of_the_run_releases_a_pause() {
        let control = RunControl::new();
        assert!(control.gate().request_pause());
        control.finish(Outcome::DebugExit { value: 0 });
        assert!(!control.gate().is_paused());
        assert!(!control.gate().request_pause());
    }
}
