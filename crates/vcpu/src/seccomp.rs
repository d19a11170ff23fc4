//! Seccomp filters: once the guest runs, each VMM thread may make only the
//! system calls its work needs; any other call kills the process (SIGSYS),
//! so a guest that took over a device emulation could not open files,
//! sockets or processes.
//!
//! Three kinds of thread: vCPU threads (KVM_RUN and the few vCPU ioctls the
//! exit path uses, writes of device output, memory allocation, locking),
//! the VMM's event-loop thread (main: reading stdin, terminal modes,
//! serving devices, kicking and joining vCPU threads, the VM's clock over a
//! pause, writing output) and the control API's thread (accepting and
//! serving connections on its Unix socket; nothing else).

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::{Error, Result};

/// The kinds of thread that get their own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A thread running KVM_RUN for one vCPU.
    Vcpu,
    /// The main thread: the event loop (devices, console input, signals).
    Vmm,
    /// The control API's thread (`--api-socket`): accepts connections on
    /// its already bound Unix socket and talks HTTP on them.
    Api,
}

const KVMIO: u64 = 0xae;
const IOC_READ: u64 = 2;
const IOC_WRITE: u64 = 1;

/// The Linux `_IOC` encoding of an ioctl request.
const fn ioc(direction: u64, nr: u64, size: usize) -> u64 {
    (direction << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

/// KVM_RUN: `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = ioc(0, 0x80, 0);
/// KVM_GET_REGS: `_IOR(KVMIO, 0x81, struct kvm_regs)`.
pub const KVM_GET_REGS: u64 = ioc(IOC_READ, 0x81, std::mem::size_of::<kvm_regs>());
/// KVM_GET_SREGS: `_IOR(KVMIO, 0x83, struct kvm_sregs)`.
pub const KVM_GET_SREGS: u64 = ioc(IOC_READ, 0x83, std::mem::size_of::<kvm_sregs>());
/// KVM_TRANSLATE: `_IOWR(KVMIO, 0x85, struct kvm_translation)`.
pub const KVM_TRANSLATE: u64 =
    ioc(IOC_READ | IOC_WRITE, 0x85, std::mem::size_of::<kvm_translation>());

/// KVM_GET_CLOCK: `_IOR(KVMIO, 0x7c, struct kvm_clock_data)`; the event loop
/// reads the guest's clock when it pauses the VM.
pub const KVM_GET_CLOCK: u64 = ioc(IOC_READ, 0x7c, std::mem::size_of::<kvm_clock_data>());
/// KVM_SET_CLOCK: `_IOW(KVMIO, 0x7b, struct kvm_clock_data)`; and sets it
/// back when it resumes, so a paused guest's clock does not jump.
pub const KVM_SET_CLOCK: u64 = ioc(IOC_WRITE, 0x7b, std::mem::size_of::<kvm_clock_data>());

/// The reads a snapshot makes on each parked vCPU's thread
/// ([`crate::state`]): KVM_GET_MP_STATE, KVM_GET_XSAVE, KVM_GET_XCRS,
/// KVM_GET_DEBUGREGS, KVM_GET_LAPIC, KVM_GET_TSC_KHZ, KVM_GET_CPUID2,
/// KVM_GET_MSRS and KVM_GET_VCPU_EVENTS (registers are allowed already).
pub const VCPU_STATE_IOCTLS: [u64; 9] = [
    ioc(IOC_READ, 0x98, std::mem::size_of::<kvm_mp_state>()),
    ioc(IOC_READ, 0xa4, std::mem::size_of::<kvm_xsave>()),
    ioc(IOC_READ, 0xa6, std::mem::size_of::<kvm_xcrs>()),
    ioc(IOC_READ, 0xa1, std::mem::size_of::<kvm_debugregs>()),
    ioc(IOC_READ, 0x8e, std::mem::size_of::<kvm_lapic_state>()),
    ioc(0, 0xa3, 0),
    ioc(IOC_READ | IOC_WRITE, 0x91, std::mem::size_of::<kvm_cpuid2>()),
    ioc(IOC_READ | IOC_WRITE, 0x88, std::mem::size_of::<kvm_msrs>()),
    ioc(IOC_READ, 0x9f, std::mem::size_of::<kvm_vcpu_events>()),
];

/// KVM_GET_IRQCHIP: `_IOWR(KVMIO, 0x62, struct kvm_irqchip)`; a snapshot
/// reads the PICs and the I/O APIC on the event loop's thread.
pub const KVM_GET_IRQCHIP: u64 =
    ioc(IOC_READ | IOC_WRITE, 0x62, std::mem::size_of::<kvm_irqchip>());
/// KVM_GET_PIT2: `_IOR(KVMIO, 0x9f, struct kvm_pit_state2)`; and the PIT.
pub const KVM_GET_PIT2: u64 = ioc(IOC_READ, 0x9f, std::mem::size_of::<kvm_pit_state2>());

/// TUNSETOFFLOAD: `_IOW('T', 208, unsigned int)`. A tap-backed device sets
/// its tap's offloads when the driver activates or resets it, which happens
/// on the vCPU thread that wrote the device's status register.
pub const TUNSETOFFLOAD: u64 = (IOC_WRITE << 30) | (4 << 16) | ((b'T' as u64) << 8) | 208;

/// System calls every VMM thread may make: output, locking, memory
/// allocation, signal return, thread exit.
const COMMON: &[libc::c_long] = &[
    libc::SYS_write,
    libc::SYS_futex,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_close,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Extra system calls of the event-loop (main) thread: reading stdin,
/// eventfds and signals, serving device queues (disk and entropy I/O),
/// kicking and joining vCPU threads.
const VMM_ONLY: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_tgkill,
    libc::SYS_fsync,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    // The event loop and the devices it serves: waiting on descriptors,
    // reading eventfds, a signalfd and the entropy source, disk I/O.
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fdatasync,
    // The vsock device: host programs connecting to its Unix socket, its
    // connections to the host's PATH_<port> sockets, its timeouts, and the
    // removal of its socket file at exit.
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_shutdown,
    libc::SYS_timerfd_settime,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    // A snapshot (control API): creating its directory and files under
    // temporary names, writing and sizing them (a sparse memory file),
    // reading residency (mincore), and renaming them into place.
    libc::SYS_openat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_lseek,
    libc::SYS_mincore,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_rename,
    libc::SYS_fstat,
];

/// Extra system calls of the API thread: accepting a connection on its
/// listening socket (bound before the filter), reading the request with a
/// timeout (SO_RCVTIMEO), writing the answer, closing. Waking the event loop
/// is a write to an eventfd; waiting for its answer is a futex.
const API_ONLY: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_read,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
];

/// A rule matching calls whose argument `index` equals `value` (an ioctl
/// request, a fcntl command, a prctl option).
fn arg_rule(index: u8, value: u64) -> Result<SeccompRule> {
    let condition = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(seccomp_error)?;
    SeccompRule::new(vec![condition]).map_err(seccomp_error)
}

fn seccomp_error(err: impl std::fmt::Display) -> Error {
    Error::Seccomp(err.to_string())
}

/// The ioctl requests a thread kind may make.
pub fn allowed_ioctls(kind: ThreadKind) -> Vec<u64> {
    match kind {
        // TCGETS/TCSETS: a panic hook restores the terminal from any thread.
        ThreadKind::Vcpu => {
            let mut ioctls = vec![
                KVM_RUN,
                KVM_GET_REGS,
                KVM_GET_SREGS,
                KVM_TRANSLATE,
                libc::TCGETS,
                libc::TCSETS,
                TUNSETOFFLOAD,
            ];
            ioctls.extend_from_slice(&VCPU_STATE_IOCTLS);
            ioctls
        }
        // FIONBIO: the vsock device makes accepted Unix streams non-blocking.
        ThreadKind::Vmm => vec![
            libc::TCGETS,
            libc::TCSETS,
            TUNSETOFFLOAD,
            libc::FIONBIO,
            KVM_GET_CLOCK,
            KVM_SET_CLOCK,
            KVM_GET_IRQCHIP,
            KVM_GET_PIT2,
        ],
        // The panic hook's terminal restore only.
        ThreadKind::Api => vec![libc::TCGETS, libc::TCSETS],
    }
}

/// The system calls a thread kind may make without conditions.
pub fn allowed_syscalls(kind: ThreadKind) -> Vec<libc::c_long> {
    let mut calls = COMMON.to_vec();
    match kind {
        ThreadKind::Vmm => calls.extend_from_slice(VMM_ONLY),
        ThreadKind::Api => calls.extend_from_slice(API_ONLY),
        ThreadKind::Vcpu => {}
    }
    calls
}

/// Compiles the filter for a thread kind. A call outside it kills the
/// process.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed_syscalls(kind).into_iter().map(|call| (call, Vec::new())).collect();
    let ioctls = allowed_ioctls(kind)
        .into_iter()
        .map(|request| arg_rule(1, request))
        .collect::<Result<Vec<_>>>()?;
    rules.insert(libc::SYS_ioctl, ioctls);
    // fcntl(fd, F_GETFD) only: the standard library checks a descriptor is
    // open before closing it (in debug builds).
    let mut fcntl = vec![arg_rule(1, libc::F_GETFD as u64)?];
    if kind == ThreadKind::Vmm {
        // prctl(PR_SET_NAME) only: a new thread names itself.
        rules.insert(libc::SYS_prctl, vec![arg_rule(0, libc::PR_SET_NAME as u64)?]);
        // The vsock device's Unix sockets: made non-blocking (F_GETFL,
        // F_SETFL), and only Unix sockets may be made.
        fcntl.push(arg_rule(1, libc::F_GETFL as u64)?);
        fcntl.push(arg_rule(1, libc::F_SETFL as u64)?);
        rules.insert(libc::SYS_socket, vec![arg_rule(0, libc::AF_UNIX as u64)?]);
    }
    rules.insert(libc::SYS_fcntl, fcntl);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(seccomp_error)?;
    filter.try_into().map_err(seccomp_error)
}

/// Most malloc arenas the process uses once filtered.
const MALLOC_ARENAS: libc::c_int = 8;

/// Prepares the process for filters: glibc reads
/// /sys/devices/system/cpu/online when a process first grows past 8 malloc
/// arenas (one per thread), which a filtered thread may not open; a fixed
/// arena limit spares that read. Call before spawning threads.
pub fn prepare_process() {
    // SAFETY: mallopt only sets an allocator parameter; no memory is passed.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
}

/// Installs `program` on the calling thread (and the threads it creates
/// from now on).
pub fn apply(program: &BpfProgram) -> Result<()> {
    seccompiler::apply_filter(program).map_err(seccomp_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers_match_linux() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_TRANSLATE, 0xc018_ae85);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54d0);
        assert_eq!(KVM_GET_CLOCK, 0x8030_ae7c);
        assert_eq!(KVM_SET_CLOCK, 0x4030_ae7b);
        assert_eq!(KVM_GET_IRQCHIP, 0xc208_ae62);
        assert_eq!(KVM_GET_PIT2, 0x8070_ae9f);
        assert_eq!(
            VCPU_STATE_IOCTLS,
            [
                0x8004_ae98, // KVM_GET_MP_STATE
                0x9000_aea4, // KVM_GET_XSAVE
                0x8188_aea6, // KVM_GET_XCRS
                0x8080_aea1, // KVM_GET_DEBUGREGS
                0x8400_ae8e, // KVM_GET_LAPIC
                0xaea3,      // KVM_GET_TSC_KHZ
                0xc008_ae91, // KVM_GET_CPUID2
                0xc008_ae88, // KVM_GET_MSRS
                0x8040_ae9f, // KVM_GET_VCPU_EVENTS
            ]
        );
    }

    #[test]
    fn the_api_thread_may_not_open_files_sockets_or_threads() {
        let calls = allowed_syscalls(ThreadKind::Api);
        assert!(calls.contains(&libc::SYS_accept4));
        for forbidden in [
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_bind,
            libc::SYS_connect,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_execve,
            libc::SYS_tgkill,
        ] {
            assert!(!calls.contains(&forbidden), "{forbidden}");
        }
        assert!(!allowed_ioctls(ThreadKind::Api).contains(&KVM_RUN));
        assert!(!allowed_ioctls(ThreadKind::Api).contains(&KVM_SET_CLOCK));
    }

    #[test]
    fn vcpu_threads_may_not_read_or_signal() {
        let calls = allowed_syscalls(ThreadKind::Vcpu);
        assert!(calls.contains(&libc::SYS_write));
        assert!(!calls.contains(&libc::SYS_read));
        assert!(!calls.contains(&libc::SYS_tgkill));
        assert!(!calls.contains(&libc::SYS_openat));
        // Sockets only as a rule on the address family (Unix only).
        assert!(!allowed_syscalls(ThreadKind::Vmm).contains(&libc::SYS_socket));
        assert!(!allowed_syscalls(ThreadKind::Vcpu).contains(&libc::SYS_connect));
        assert!(!allowed_ioctls(ThreadKind::Vmm).contains(&KVM_RUN));
    }

    #[test]
    fn filters_compile() {
        assert!(!filter(ThreadKind::Vcpu).unwrap().is_empty());
        assert!(!filter(ThreadKind::Vmm).unwrap().is_empty());
        assert!(!filter(ThreadKind::Api).unwrap().is_empty());
    }

    #[test]
    fn a_forbidden_call_kills_the_process() {
        // In a child process, so the test process survives; the filter is
        // compiled before the fork so the child does not allocate.
        let program = filter(ThreadKind::Vcpu).unwrap();
        // SAFETY: fork in a test; the child only makes system calls and exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            if apply(&program).is_err() {
                // SAFETY: _exit ends the child at once.
                unsafe { libc::_exit(2) };
            }
            // SAFETY: socket has no memory arguments; the filter stops it.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            // SAFETY: _exit ends the child without running the test harness's code.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: `child` is our child; `status` is writable.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
