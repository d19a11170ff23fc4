//! Opening KVM and checking that it can run this VMM's guests.

use std::ffi::CString;

use kvm_ioctls::{Cap, Kvm};

use crate::{Error, Result};

/// The usual KVM device.
pub const DEFAULT_DEVICE: &str = "/dev/kvm";
/// The only stable KVM API version.
pub const API_VERSION: i32 = 12;

/// Capabilities the VMM cannot do without, with their names for errors.
pub const REQUIRED_CAPABILITIES: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Checks an API version reported by KVM.
pub fn check_api_version(path: &str, version: i32) -> Result<()> {
    match version {
        API_VERSION => Ok(()),
        v if v < 0 => Err(Error::NotKvm(path.to_owned())),
        v => Err(Error::ApiVersion(v)),
    }
}

/// Checks that every required capability is present, according to `has`.
pub fn check_capabilities(has: impl Fn(Cap) -> bool) -> Result<()> {
    match REQUIRED_CAPABILITIES.iter().find(|(cap, _)| !has(*cap)) {
        Some((_, name)) => Err(Error::MissingCapability(name)),
        None => Ok(()),
    }
}

fn open_hint(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => " (KVM is not available: load the kvm module or enable virtualization)",
        libc::EACCES | libc::EPERM => {
            " (permission denied: add the user to the group that owns it, usually 'kvm')"
        }
        _ => "",
    }
}

/// Opens the KVM device at `path` and checks its API version and capabilities.
pub fn open(path: &str) -> Result<Kvm> {
    let c_path = CString::new(path).map_err(|_| Error::NotKvm(path.to_owned()))?;
    let kvm = Kvm::new_with_path(&c_path).map_err(|source| Error::OpenKvm {
        path: path.to_owned(),
        hint: open_hint(source.errno()),
        source,
    })?;
    check_api_version(path, kvm.get_api_version())?;
    check_capabilities(|cap| kvm.check_extension(cap))?;
    log::debug!("{path}: KVM API {API_VERSION}, max {} vCPUs", kvm.get_max_vcpus());
    Ok(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_api_version_12_is_accepted() {
        assert!(check_api_version("/dev/kvm", 12).is_ok());
        let err = check_api_version("/dev/kvm", 11).unwrap_err();
        assert_eq!(err.to_string(), "KVM API version is 11, but this VMM needs version 12");
        assert!(matches!(check_api_version("/dev/null", -1), Err(Error::NotKvm(_))));
    }

    #[test]
    fn a_missing_capability_is_named() {
        let err = check_capabilities(|cap| cap != Cap::ImmediateExit).unwrap_err();
        assert_eq!(
            err.to_string(),
            "KVM lacks the capability KVM_CAP_IMMEDIATE_EXIT, which this VMM needs"
        );
        assert!(check_capabilities(|_| true).is_ok());
    }

    #[test]
    fn missing_device_says_kvm_is_unavailable() {
        let err = open("/nonexistent/kvm").unwrap_err();
        assert!(err.to_string().contains("KVM is not available"), "{err}");
    }

    #[test]
    fn a_non_kvm_file_is_refused() {
        let err = open("/dev/null").unwrap_err();
        assert!(matches!(err, Error::NotKvm(_)), "{err}");
    }
}
