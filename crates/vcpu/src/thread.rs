//! vCPU threads, and kicking a vCPU out of `KVM_RUN` from another thread.
//!
//! A kick is a real-time signal sent to the vCPU thread. Its handler sets
//! `immediate_exit` in that thread's `kvm_run`: if the thread is inside
//! `KVM_RUN` the ioctl returns `EINTR` (the handler is installed without
//! `SA_RESTART`); if it is about to enter, KVM returns `EINTR` at once. So a
//! kick is never lost between a check of a stop flag and the ioctl.

use std::cell::Cell;
use std::sync::Once;
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
        .spawn(move || {
            let bound = BoundVcpu::bind(&mut vcpu);
            let result = body(&mut vcpu);
            drop(bound);
            result
        })
        .map_err(Error::Spawn)?;
    Ok(VcpuThread { handle })
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
