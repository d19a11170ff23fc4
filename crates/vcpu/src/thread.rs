//! vCPU threads, and kicking a vCPU out of `KVM_RUN` from another thread.
//!
//! A kick is a real-time signal sent to the vCPU thread. Its handler sets
//! `immediate_exit` in that thread's `kvm_run`: if the thread is inside
//! `KVM_RUN` the ioctl returns `EINTR` (the handler is installed without
//! `SA_RESTART`); if it is about to enter, KVM returns `EINTR` at once. So a
//! kick is never lost between a check of a stop flag and the ioctl.

use std::cell::Cell;
use std::sync::{Once, mpsc};
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::{Error, Result, Vcpu};

thread_local! {
    /// The `kvm_run` of the vCPU running on this thread, or null.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used to kick vCPU threads.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` was set by `BoundVcpu` on this very thread and points
        // at the vCPU's mmapped kvm_run, which stays mapped until the guard
        // clears the pointer (before the vCPU can be dropped). A volatile
        // byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick signal handler (once per process).
pub fn install_kick_handler() -> Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(kick_signal(), handle_kick).map_err(Error::Signal);
    });
    result
}

/// Publishes a vCPU's `kvm_run` to this thread's kick handler while alive.
struct BoundVcpu;

impl BoundVcpu {
    fn bind(vcpu: &mut Vcpu) -> BoundVcpu {
        KVM_RUN.with(|run| run.set(vcpu.kvm_run_ptr()));
        BoundVcpu
    }
}

impl Drop for BoundVcpu {
    fn drop(&mut self) {
        KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
    }
}

/// A vCPU running on its own thread.
#[derive(Debug)]
pub struct VcpuThread<T> {
    handle: JoinHandle<T>,
}

/// Runs `body` with `vcpu` on a new thread named `vcpuN`, kickable with
/// [`VcpuThread::kick`].
pub fn spawn<T, F>(mut vcpu: Vcpu, body: F) -> Result<VcpuThread<T>>
where
    T: Send + 'static,
    F: FnOnce(&mut Vcpu) -> T + Send + 'static,
{
    install_kick_handler()?;
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{}", vcpu.index()))
        .spawn(move || run_bound(&mut vcpu, body))
        .map_err(Error::Spawn)?;
    Ok(VcpuThread { handle })
}

/// Runs `body` with `vcpu` published to this thread's kick handler.
fn run_bound<T>(vcpu: &mut Vcpu, body: impl FnOnce(&mut Vcpu) -> T) -> T {
    let bound = BoundVcpu::bind(vcpu);
    let result = body(vcpu);
    drop(bound);
    result
}

/// What a waiting thread is handed: its vCPU and the work to do with it.
type Job<T> = (Vcpu, Box<dyn FnOnce(&mut Vcpu) -> T + Send>);

/// A vCPU thread started before its vCPU exists ([`spawn_waiting`]).
#[derive(Debug)]
pub struct WaitingThread<T> {
    handle: JoinHandle<Option<T>>,
    jobs: mpsc::SyncSender<Job<T>>,
}

/// Starts the thread `vcpuN` for the vCPU of index `index` before that
/// vCPU exists: it runs `prepare` at once (say, installs its seccomp
/// filter, which costs the kernel a JIT compile), while the caller goes on
/// creating the VM, then waits for [`WaitingThread::start`]. If `prepare`
/// returns false, or the `WaitingThread` is dropped unstarted, the thread
/// ends without running anything.
pub fn spawn_waiting<T, P>(index: u8, prepare: P) -> Result<WaitingThread<T>>
where
    T: Send + 'static,
    P: FnOnce() -> bool + Send + 'static,
{
    install_kick_handler()?;
    let (jobs, job) = mpsc::sync_channel::<Job<T>>(1);
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            if !prepare() {
                return None;
            }
            let (mut vcpu, body) = job.recv().ok()?;
            Some(run_bound(&mut vcpu, body))
        })
        .map_err(Error::Spawn)?;
    Ok(WaitingThread { handle, jobs })
}

impl<T: Send + 'static> WaitingThread<T> {
    /// Hands the thread `vcpu` and `body`, as [`spawn`] would on a new
    /// thread. Joining gives `None` if `prepare` had failed (then `body`
    /// never ran and the vCPU was dropped).
    pub fn start<F>(self, vcpu: Vcpu, body: F) -> VcpuThread<Option<T>>
    where
        F: FnOnce(&mut Vcpu) -> T + Send + 'static,
    {
        // A send fails only when the thread already ended (prepare failed).
        let _ = self.jobs.send((vcpu, Box::new(body)));
        VcpuThread { handle: self.handle }
    }
}

impl<T> VcpuThread<T> {
    /// Forces the vCPU out of `KVM_RUN` (or keeps it from entering).
    pub fn kick(&self) {
        if !self.handle.is_finished()
            && let Err(err) = self.handle.kill(kick_signal())
        {
            log::debug!("kick: {err}");
        }
    }

    /// Waits for the thread to end and returns what its body returned.
    pub fn join(self) -> std::thread::Result<T> {
        self.handle.join()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::{Vm, kvm};

    /// A VM with one vCPU, or None (said) where KVM is not usable, unless
    /// `VMM_REQUIRE_KVM=1`.
    fn vcpu() -> Option<(Vm, Vcpu)> {
        let made = kvm::open(kvm::DEFAULT_DEVICE).and_then(|kvm| {
            let vm = Vm::new(&kvm, vmm_memory::GuestRam::new(2).expect("2 MiB of RAM"))?;
            let vcpu = vm.create_vcpu(&kvm, 0, Default::default())?;
            Ok((vm, vcpu))
        });
        match made {
            Ok(made) => Some(made),
            Err(err) if std::env::var("VMM_REQUIRE_KVM").as_deref() != Ok("1") => {
                eprintln!("SKIPPED: KVM is not usable here: {err}");
                None
            }
            Err(err) => panic!("KVM is required: {err}"),
        }
    }

    #[test]
    fn a_waiting_thread_prepares_before_its_vcpu_exists_then_runs_it() {
        let (named, name) = mpsc::channel();
        let waiting = spawn_waiting(3, move || {
            named.send(std::thread::current().name().map(str::to_owned)).unwrap();
            true
        })
        .unwrap();
        // Prepared with no vCPU in sight.
        assert_eq!(name.recv().unwrap().as_deref(), Some("vcpu3"));
        let Some((_vm, vcpu)) = vcpu() else { return };
        let running = waiting.start(vcpu, |vcpu| {
            let bound = KVM_RUN.with(Cell::get);
            (vcpu.index(), bound == vcpu.kvm_run_ptr())
        });
        assert_eq!(running.join().unwrap(), Some((0, true)), "the body ran with its vCPU bound");
    }

    #[test]
    fn a_thread_whose_prepare_failed_never_runs_the_body() {
        let waiting = spawn_waiting::<(), _>(0, || false).unwrap();
        let Some((_vm, vcpu)) = vcpu() else { return };
        let ran = Arc::new(AtomicBool::new(false));
        let running = waiting.start(vcpu, {
            let ran = ran.clone();
            move |_| ran.store(true, Ordering::SeqCst)
        });
        assert_eq!(running.join().unwrap(), None);
        assert!(!ran.load(Ordering::SeqCst));
    }
}
