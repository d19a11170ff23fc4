//! The command-line flags behind library errors.
//!
//! The crates' errors talk about values (guest RAM, a command line, seccomp
//! filters) and know nothing of this binary's flags; the user set those
//! values with flags, so the errors the binary reports name the flag that
//! changes the value at fault.

use vmm_loader::{LoadOption, SegmentProblem};

/// The flag that sets a load option.
fn load_option_flag(option: LoadOption) -> &'static str {
    match option {
        LoadOption::LoadAddr => "--load-addr",
        LoadOption::Entry => "--entry",
        LoadOption::Cmdline => "--cmdline",
        LoadOption::Initrd => "--initrd",
    }
}

/// Whether more guest RAM would have avoided a loader error.
fn needs_more_memory(err: &vmm_loader::Error) -> bool {
    use vmm_loader::Error;
    match err {
        Error::LargerThanRam { .. }
        | Error::KernelDoesNotFit { .. }
        | Error::InitrdDoesNotFit { .. }
        | Error::ModuleDoesNotFit { .. } => true,
        Error::BadSegment { reason, .. } | Error::BadLoadRange { reason, .. } => matches!(
            reason,
            SegmentProblem::DoesNotFitInRam { .. } | SegmentProblem::OutsideRam { .. }
        ),
        _ => false,
    }
}

/// A loader error as the user sees it: a load option that does not apply is
/// named by its flag, and a guest too small for the image says to give more
/// `--memory`. The library error stays in the chain (for `downcast_ref`)
/// wherever its text is part of the message.
pub fn loader_error(err: vmm_loader::Error) -> anyhow::Error {
    if let vmm_loader::Error::OptionNotForFormat { option, format } = err {
        // The flag replaces the library's name of the option.
        return anyhow::anyhow!("{} does not apply to {format} images", load_option_flag(option));
    }
    if needs_more_memory(&err) {
        let message = format!("{err}; give more --memory");
        return anyhow::Error::new(err).context(message);
    }
    err.into()
}

/// A VM set-up error (from `vmm_vcpu`, or a context around one) as the user
/// sees it: a seccomp filter that cannot be built or installed says how to
/// run without filters.
pub fn vcpu_error(err: impl Into<anyhow::Error>) -> anyhow::Error {
    let err = err.into();
    if let Some(vmm_vcpu::Error::Seccomp(_)) = err.downcast_ref::<vmm_vcpu::Error>() {
        let message = format!("{err} (--seccomp off runs without filters)");
        return err.context(message);
    }
    err
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    // What `main` prints.
    use crate::one_line;

    #[test]
    fn options_that_do_not_apply_are_named_by_their_flags() {
        use vmm_loader::Error;
        for (option, flag) in [
            (LoadOption::LoadAddr, "--load-addr"),
            (LoadOption::Entry, "--entry"),
            (LoadOption::Cmdline, "--cmdline"),
            (LoadOption::Initrd, "--initrd"),
        ] {
            let err = loader_error(Error::OptionNotForFormat { option, format: "raw" });
            assert_eq!(one_line(&err), format!("{flag} does not apply to raw images"));
        }
    }

    #[test]
    fn a_guest_too_small_for_the_image_is_told_to_give_more_memory() {
        use vmm_loader::Error;
        let path = PathBuf::from("big.img");
        let segment = |reason| Error::BadSegment { index: 0, addr: 0x10_0000, size: 1, reason };
        for err in [
            Error::LargerThanRam { path: path.clone(), size: 2 << 20, ram: 1 << 20 },
            Error::KernelDoesNotFit { needed: 0x20_0000, ram: 0x10_0000 },
            Error::InitrdDoesNotFit { path: path.clone(), size: 2, from: 0x10_0000, to: 1 },
            Error::ModuleDoesNotFit { path: path.clone(), size: 2, from: 0x10_0000, to: 1 },
            segment(SegmentProblem::DoesNotFitInRam { ram: 1 << 20 }),
            Error::BadLoadRange {
                addr: 0x4000_0000,
                size: 0x20,
                reason: SegmentProblem::OutsideRam { ram: 1 << 20 },
            },
        ] {
            let library = err.to_string();
            let err = loader_error(err);
            assert_eq!(one_line(&err), format!("{library}; give more --memory"));
            assert!(err.downcast_ref::<Error>().is_some(), "{err}");
        }
        let err = loader_error(Error::KernelDoesNotFit { needed: 0x20_0000, ram: 0x10_0000 });
        assert_eq!(
            one_line(&err),
            "the kernel needs guest RAM up to 0x200000, but low RAM ends at 0x100000; give more \
             --memory"
        );
        // Other problems are not about the RAM size.
        let err = loader_error(segment(SegmentProblem::OverlapsSegment(1)));
        assert_eq!(
            one_line(&err),
            "ELF segment 0 (0x1 bytes at physical 0x100000) overlaps segment 1"
        );
        let err = loader_error(Error::Empty(path));
        assert_eq!(one_line(&err), "image big.img is empty");
    }

    #[test]
    fn seccomp_errors_say_how_to_run_without_filters() {
        let err = vcpu_error(vmm_vcpu::Error::Seccomp("no BPF".into()));
        assert_eq!(one_line(&err), "seccomp filter: no BPF (--seccomp off runs without filters)");
        // Through the anyhow::Error the sandbox's set-up returns, too.
        let err = vcpu_error(anyhow::Error::from(vmm_vcpu::Error::Seccomp("no BPF".into())));
        assert_eq!(one_line(&err), "seccomp filter: no BPF (--seccomp off runs without filters)");
        let err = vcpu_error(vmm_vcpu::Error::NotKvm("/dev/null".into()));
        assert_eq!(one_line(&err), "/dev/null is not a KVM device (KVM_GET_API_VERSION failed)");
    }
}
