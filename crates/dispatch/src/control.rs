//! Deciding, once, how a run ends, and telling every thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::Outcome;

/// The shared end-of-run state: the first outcome reported wins, every vCPU
/// loop sees the stop flag, and the main thread waits for the outcome.
#[derive(Debug, Default)]
pub struct RunControl {
    stop: AtomicBool,
    outcome: Mutex<Option<Outcome>>,
    finished: Condvar,
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

/// Exit status for a run stopped by signal `signal`: 128 + its number, as
/// shells report it.
fn signal_exit_status(signal: libc::c_int) -> u8 {
    u8::try_from(128 + signal).unwrap_or(u8::MAX)
}

/// Signals blocked in the process, waiting for a thread to take them.
///
/// [`BlockedSignals::block`] blocks them in the calling thread, and so in
/// every thread it spawns afterwards: call it before spawning any.
/// [`BlockedSignals::stop_run_on_them`] then starts the thread that takes
/// them with `sigwait` (no work happens in a signal handler) and ends the
/// run (`Outcome::Stopped`, status 128 + signal number). A signal that
/// arrives in between stays pending and is taken then.
#[derive(Debug)]
pub struct BlockedSignals {
    set: libc::sigset_t,
}

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
        Ok(BlockedSignals { set })
    }

    /// Starts the thread that ends the run when one of the signals comes.
    pub fn stop_run_on_them(self, control: Arc<RunControl>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || wait_for_signals(&self.set, &control))?;
        Ok(())
    }
}

fn wait_for_signals(set: &libc::sigset_t, control: &RunControl) -> ! {
    loop {
        let mut signal: libc::c_int = 0;
        // SAFETY: `set` holds signals blocked in this thread; `signal` is writable.
        if unsafe { libc::sigwait(set, &mut signal) } != 0 {
            continue;
        }
        let name = match signal {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            libc::SIGHUP => "SIGHUP",
            _ => "a signal",
        };
        control.finish(Outcome::Stopped {
            reason: format!("received {name}"),
            status: signal_exit_status(signal),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

#[cfg(test)]
mod signal_tests {
    use super::*;

    #[test]
    fn signal_statuses_follow_the_shell_convention() {
        assert_eq!(signal_exit_status(libc::SIGINT), 130);
        assert_eq!(signal_exit_status(libc::SIGTERM), 143);
    }
}
