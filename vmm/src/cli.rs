//! The command line.

use std::path::PathBuf;

use clap::Parser;

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SerialTarget {
    /// The VMM's standard output.
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
    /// Discarded.
    None,
}

fn parse_serial(value: &str) -> Result<SerialTarget, String> {
    match value {
        "stdout" => Ok(SerialTarget::Stdout),
        "none" => Ok(SerialTarget::None),
        _ => match value.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SerialTarget::File(path.into())),
            _ => Err(format!("'{value}' is not one of stdout, file:PATH, none")),
        },
    }
}

/// Parses a number in decimal or, with a 0x prefix, hexadecimal.
fn parse_number(value: &str) -> Result<u64, String> {
    let parsed = match value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => value.replace('_', "").parse(),
    };
    parsed.map_err(|err| format!("'{value}' is not a number: {err}"))
}

/// How to boot the image, as given on the command line.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum Boot {
    /// From the image: multiboot if it has a multiboot header (an ELF64
    /// only with the a.out kludge and no Linux note), PVH if the ELF has the
    /// note, the Linux 64-bit protocol for a bzImage or a vmlinux without
    /// it, else bare.
    Auto,
    /// No boot protocol (raw images in real mode, ELF in long mode).
    Bare,
    /// PVH (ELF vmlinux with a XEN_ELFNOTE_PHYS32_ENTRY note).
    Pvh,
    /// The Linux 64-bit boot protocol (bzImage, or a vmlinux ELF).
    Linux64,
    /// Multiboot v1 (an image with a multiboot header).
    Multiboot,
}

/// Runs a guest image (raw real-mode binary, 64-bit ELF, a Linux vmlinux or
/// bzImage, or a multiboot kernel) under KVM.
#[derive(Clone, Debug, Parser, serde::Serialize, serde::Deserialize)]
#[command(version, about)]
pub struct Cli {
    /// Guest image; its format is recognised from its content.
    #[arg(long, value_name = "IMG", required_unless_present = "restore")]
    pub kernel: Option<PathBuf>,

    /// Guest RAM in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 128, value_parser = parse_number)]
    pub memory: u64,

    /// Load address of a raw image [default: 0x1000].
    #[arg(long, value_name = "ADDR", value_parser = parse_number)]
    pub load_addr: Option<u64>,

    /// Entry point, overriding the image's own (raw: the load address).
    #[arg(long, value_name = "ADDR", value_parser = parse_number)]
    pub entry: Option<u64>,

    /// Boot protocol.
    #[arg(long, value_enum, default_value_t = Boot::Auto)]
    pub boot: Boot,

    /// Kernel command line (Linux and multiboot boots) [default: Linux
    /// "console=ttyS0 reboot=k panic=1", multiboot empty].
    #[arg(long, value_name = "ARGS")]
    pub cmdline: Option<String>,

    /// Initial RAM disk (Linux boots), or module 0 (multiboot).
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,

    /// Unpack an LZ4 bzImage's kernel on the host and boot it as a vmlinux
    /// (64-bit protocol), sparing the guest its decompressor: seconds where
    /// guest kernel code is emulated.
    #[arg(long)]
    pub unpack_bzimage: bool,

    /// Number of vCPUs (more than one needs the in-kernel irqchip).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,

    /// Use KVM's in-kernel interrupt controllers and PIT for a bare image
    /// too (Linux boots always have them).
    #[arg(long)]
    pub irqchip: bool,

    /// Offer the guest KVM's PV IPI and PV sched-yield features, hidden by
    /// default because their hypercall hangs SMP guests on some nested hosts.
    #[arg(long)]
    pub kvm_pv_ipi: bool,

    /// At exit, report each vCPU's exits by reason, the busiest ports and
    /// MMIO addresses, and the time in KVM_RUN vs handling exits: to stderr,
    /// or as JSON to PATH with --exit-stats=PATH.
    #[arg(long, value_name = "PATH", num_args = 0..=1, require_equals = true, default_missing_value = "-")]
    pub exit_stats: Option<PathBuf>,

    /// Seccomp filters on the VMM's threads while the guest runs (off only
    /// for debugging).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = ["on", "off"])]
    pub seccomp: String,

    /// Serial console (COM1) output: stdout, file:PATH or none.
    #[arg(long, value_name = "TARGET", default_value = "stdout", value_parser = parse_serial)]
    pub serial: SerialTarget,

    /// A virtio-blk disk, `path=FILE[,readonly=on|off][,id=NAME]` (Cloud
    /// Hypervisor's syntax); repeatable: /dev/vda, /dev/vdb, ...
    #[arg(long, value_name = "path=FILE[,readonly=on|off][,id=NAME]")]
    pub disk: Vec<String>,

    /// A virtio-net device on a tap, `tap=NAME[,mac=MAC][,ip=ADDR,mask=MASK]`
    /// (Cloud Hypervisor's syntax); repeatable. The tap is created if missing;
    /// with ip= and mask= the VMM sets the host side's address and brings it up.
    #[arg(long, value_name = "tap=NAME[,mac=MAC][,ip=ADDR,mask=MASK]")]
    pub net: Vec<String>,

    /// A virtio-vsock device, `cid=N,socket=PATH` (Cloud Hypervisor's syntax)
    /// with Firecracker's hybrid vsock: host programs connect to the Unix
    /// socket PATH and write `CONNECT <port>`; guest connections to host port
    /// P go to the Unix socket `PATH_P`.
    #[arg(long, value_name = "cid=N,socket=PATH")]
    pub vsock: Option<String>,

    /// A virtio-rng entropy device, optionally `src=PATH` [default source: /dev/urandom].
    #[arg(long, value_name = "src=PATH", num_args = 0..=1, default_missing_value = "")]
    pub rng: Option<String>,

    /// ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) for a Linux kernel [default: on for Linux boots; bare and multiboot images get none].
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    pub acpi: Option<String>,

    /// The control API: HTTP/1.1 on the Unix socket PATH (also `path=PATH`),
    /// with Cloud Hypervisor's /api/v1/ paths (vmm.ping, vm.info, vm.pause,
    /// vm.resume, vm.counters, vmm.shutdown).
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<String>,

    /// Restore a snapshot instead of booting: `source_url=file:///DIR`
    /// (written by the API's vm.snapshot), `resume=on` to run at once
    /// (default off: paused, for the API's vm.resume). The machine comes
    /// from the snapshot's configuration: only --api-socket, --serial,
    /// --seccomp, --exit-stats, --log-level and --kvm-device may go beside it.
    #[arg(
        long,
        value_name = "source_url=file:///DIR[,resume=on|off]",
        conflicts_with_all = [
            "kernel", "memory", "load_addr", "entry", "boot", "cmdline", "initrd",
            "unpack_bzimage", "cpus", "irqchip", "kvm_pv_ipi", "disk", "net", "vsock",
            "rng", "acpi",
        ]
    )]
    #[serde(skip)]
    pub restore: Option<String>,

    /// Log level: off, error, warn, info, debug or trace [default: RUST_LOG, else warn].
    #[arg(long, value_name = "LEVEL", value_parser = ["off", "error", "warn", "info", "debug", "trace"])]
    pub log_level: Option<String>,

    /// KVM device to use.
    #[arg(long, value_name = "PATH", default_value = "/dev/kvm")]
    pub kvm_device: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_take_decimal_and_hex() {
        assert_eq!(parse_number("4096"), Ok(4096));
        assert_eq!(parse_number("0x1000"), Ok(4096));
        assert_eq!(parse_number("0x10_0000"), Ok(0x10_0000));
        assert!(parse_number("12k").is_err());
        assert!(parse_number("-1").is_err());
    }

    #[test]
    fn serial_targets() {
        assert_eq!(parse_serial("stdout"), Ok(SerialTarget::Stdout));
        assert_eq!(parse_serial("none"), Ok(SerialTarget::None));
        assert_eq!(parse_serial("file:/tmp/x"), Ok(SerialTarget::File("/tmp/x".into())));
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tty").is_err());
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["vmm", "--kernel", "k"]).unwrap();
        assert_eq!(cli.memory, 128);
        assert_eq!(cli.serial, SerialTarget::Stdout);
        assert_eq!(cli.kvm_device, "/dev/kvm");
        assert_eq!((cli.cpus, cli.boot, cli.irqchip), (1, Boot::Auto, false));
        assert!(Cli::try_parse_from(["vmm"]).is_err());
    }

    #[test]
    fn exit_stats_go_to_stderr_or_a_file() {
        let cli = Cli::try_parse_from(["vmm", "--kernel", "k", "--exit-stats"]).unwrap();
        assert_eq!(cli.exit_stats, Some("-".into()));
        let cli =
            Cli::try_parse_from(["vmm", "--kernel", "k", "--exit-stats=/tmp/s.json"]).unwrap();
        assert_eq!(cli.exit_stats, Some("/tmp/s.json".into()));
        let cli = Cli::try_parse_from(["vmm", "--kernel", "k"]).unwrap();
        assert_eq!(cli.exit_stats, None);
    }

    #[test]
    fn disks_repeat_and_rng_takes_an_optional_source() {
        let cli = Cli::try_parse_from([
            "vmm",
            "--kernel",
            "k",
            "--disk",
            "path=a",
            "--rng",
            "--disk",
            "path=b,readonly=on",
        ])
        .unwrap();
        assert_eq!(cli.disk, ["path=a", "path=b,readonly=on"]);
        assert_eq!(cli.rng.as_deref(), Some(""));
        let cli = Cli::try_parse_from(["vmm", "--kernel", "k", "--rng", "src=/dev/zero"]).unwrap();
        assert_eq!(cli.rng.as_deref(), Some("src=/dev/zero"));
        assert_eq!(Cli::try_parse_from(["vmm", "--kernel", "k"]).unwrap().rng, None);
    }

    #[test]
    fn cpu_count_is_bounded() {
        assert!(Cli::try_parse_from(["vmm", "--kernel", "k", "--cpus", "0"]).is_err());
        assert!(Cli::try_parse_from(["vmm", "--kernel", "k", "--cpus", "255"]).is_err());
        assert_eq!(Cli::try_parse_from(["vmm", "--kernel", "k", "--cpus", "2"]).unwrap().cpus, 2);
    }
}
