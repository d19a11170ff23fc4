//! Composition: the VM, its devices and vCPUs, from the command line.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use anyhow::{Context, bail};
use seccompiler::BpfProgram;
use vmm_devices::console::{self, RawTerminal};
use vmm_devices::serial::{COM1_IRQ, COM1_PORT, SerialPort};
use vmm_devices::{EventFdTrigger, ExitRequest};
use vmm_dispatch::{
    BlockedSignals, Dispatcher, ExitStats, Outcome, ResetCause, RunControl, stats_json,
};
use vmm_loader::acpi::AcpiMachine;
use vmm_loader::{BootProtocol, EntryPoint, LoadOptions, mptable};
use vmm_memory::GuestRam;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_vcpu::seccomp::{self, ThreadKind};
use vmm_vcpu::thread::{VcpuThread, WaitingThread};
use vmm_vcpu::{CpuTopology, Vm};
use vmm_virtio::block::Block;
use vmm_virtio::net::Net;
use vmm_virtio::rng::Rng;
use vmm_virtio::tap::Tap;
use vmm_virtio::vsock::Vsock;

use crate::api::control::Controller;
use crate::api::http::VmmLink;
use crate::api::{ApiError, ApiSocket};
use crate::cli::{Boot, Cli, SerialTarget};
use crate::config::{parse_disk, parse_net, parse_rng, parse_vsock};
use crate::devices::{DeviceManager, LegacyDevices, add_acpi_pm, legacy_bus};
use crate::event_loop::EventLoop;
use crate::snapshot::{DevicesState, MachineShape, MachineState, Snapshot};

/// The guest's COM1, shared by the port bus (vCPU threads) and the
/// console input (the event loop).
pub type Serial = Mutex<SerialPort<Box<dyn Write + Send>>>;

/// The signals that stop the run.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Turns device requests (debug exit, reset) into the run's outcome.
#[derive(Clone)]
pub struct DeviceRequests(Arc<RunControl>, Arc<EventFd>);

impl DeviceRequests {
    fn finish(&self, outcome: Outcome) {
        self.0.finish(outcome);
        let _ = self.1.write(1);
    }
}

impl ExitRequest for DeviceRequests {
    fn debug_exit(&self, value: u32) {
        self.finish(Outcome::DebugExit { value });
    }

    fn reset(&self) {
        self.finish(Outcome::Reset { vcpu: 0, cause: ResetCause::Device });
    }

    fn power_off(&self) {
        self.finish(Outcome::DevicePowerOff);
    }
}

/// Wakes the event loop when a vCPU thread ends, however it ends (its
/// outcome is already reported to the run's control, or it panicked).
struct WakeOnExit(Arc<EventFd>);

impl Drop for WakeOnExit {
    fn drop(&mut self) {
        let _ = self.0.write(1);
    }
}

fn serial_output(target: &SerialTarget) -> anyhow::Result<Box<dyn Write + Send>> {
    Ok(match target {
        SerialTarget::Stdout => Box::new(std::io::stdout()),
        SerialTarget::None => Box::new(std::io::sink()),
        SerialTarget::File(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create serial output file {}", path.display()))?,
        ),
    })
}

fn boot_protocol(boot: Boot) -> BootProtocol {
    match boot {
        Boot::Auto => BootProtocol::Auto,
        Boot::Bare => BootProtocol::Bare,
        Boot::Pvh => BootProtocol::Pvh,
        Boot::Linux64 => BootProtocol::Linux64,
        Boot::Multiboot => BootProtocol::Multiboot,
    }
}

/// The seccomp filters of the run, if on, and the test hook that breaks them.
#[derive(Clone)]
struct Sandbox {
    vcpu: Option<BpfProgram>,
    vmm: Option<BpfProgram>,
    /// The API thread's, compiled only with `--api-socket`.
    api: Option<BpfProgram>,
    /// `VMM_TEST_SECCOMP_VIOLATION=vcpu|main|api`: make a forbidden system call
    /// in that thread once its filter is on, to prove the filter works.
    violation: Option<String>,
}

impl Sandbox {
    fn new(enabled: bool, api: bool) -> anyhow::Result<Sandbox> {
        if enabled {
            seccomp::prepare_process();
        }
        let compile = |kind| seccomp::filter(kind).map(Some);
        Ok(Sandbox {
            vcpu: if enabled { compile(ThreadKind::Vcpu)? } else { None },
            vmm: if enabled { compile(ThreadKind::Vmm)? } else { None },
            api: if enabled && api { compile(ThreadKind::Api)? } else { None },
            violation: std::env::var("VMM_TEST_SECCOMP_VIOLATION").ok(),
        })
    }

    /// Installs the filter of `kind` on the calling thread (`name` for the
    /// test hook and errors).
    fn enter(&self, kind: ThreadKind, name: &str) -> Result<(), String> {
        let program = match kind {
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Vmm => &self.vmm,
            ThreadKind::Api => &self.api,
        };
        if let Some(program) = program {
            seccomp::apply(program)
                .map_err(|err| format!("{name} thread: {}", crate::flag_hints::vcpu_error(err)))?;
        }
        if self.violation.as_deref() == Some(name) {
            // SAFETY: socket takes no pointers; with the filter on it never
            // returns (the event loop may make Unix sockets, no thread may
            // make an Internet one).
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        }
        Ok(())
    }

    /// Like `enter`, but a failure ends the run.
    fn enter_or_stop(&self, kind: ThreadKind, name: &str, control: &RunControl) -> bool {
        match self.enter(kind, name) {
            Ok(()) => true,
            Err(error) => {
                control.finish(Outcome::VmmError { error });
                false
            }
        }
    }
}

/// Where `--exit-stats` goes: stderr as text, or a file as JSON. The file
/// is created before the guest runs, so a bad path fails early.
enum StatsSink {
    Stderr,
    File(std::path::PathBuf, std::fs::File),
}

impl StatsSink {
    fn open(path: &std::path::Path) -> anyhow::Result<StatsSink> {
        if path.as_os_str() == "-" {
            return Ok(StatsSink::Stderr);
        }
        let file = std::fs::File::create(path).with_context(|| {
            format!("cannot create the exit statistics file {}", path.display())
        })?;
        Ok(StatsSink::File(path.to_owned(), file))
    }

    fn write(self, stats: &[ExitStats]) -> anyhow::Result<()> {
        match self {
            StatsSink::Stderr => {
                let mut stderr = std::io::stderr().lock();
                for vcpu in stats {
                    stderr.write_all(vcpu.to_text().as_bytes())?;
                }
                Ok(())
            }
            StatsSink::File(path, mut file) => file
                .write_all(stats_json(stats).as_bytes())
                .with_context(|| format!("cannot write the exit statistics to {}", path.display())),
        }
    }
}

/// Opens every `--disk`, `--net`, `--vsock` and `--rng` and places them in `devices`; returns
/// the kernel command-line entries that announce them.
fn add_virtio_devices(
    cli: &Cli,
    ram: &GuestRam,
    devices: &mut DeviceManager,
) -> anyhow::Result<Vec<String>> {
    let mut entries = Vec::new();
    let mut opened: Vec<(u64, u64, std::path::PathBuf)> = Vec::new();
    for (index, option) in cli.disk.iter().enumerate() {
        let disk = parse_disk(option)?;
        let context = || format!("--disk {option}");
        // The same file twice would be two devices writing one image.
        if let Ok(meta) = std::fs::metadata(&disk.path) {
            let key = (meta.dev(), meta.ino());
            if let Some((_, _, first)) = opened.iter().find(|(dev, ino, _)| (*dev, *ino) == key) {
                bail!(
                    "--disk {option}: {} is already a disk ({})",
                    disk.path.display(),
                    first.display()
                );
            }
            opened.push((key.0, key.1, disk.path.clone()));
        }
        let block =
            Block::open(&disk.path, disk.readonly, disk.id.as_deref()).with_context(context)?;
        let name = format!("virtio-blk {} (/dev/vd{})", disk.path.display(), disk_letter(index));
        entries.push(devices.add_virtio(&name, &format!("disk{index}"), block, ram.memory())?);
    }
    for (index, option) in cli.net.iter().enumerate() {
        let net = parse_net(option)?;
        let tap = Tap::open(&net.tap).with_context(|| format!("--net {option}"))?;
        if let Some((ip, mask)) = net.host {
            // The host side gets a MAC of the configuration's, so a tap a
            // restore makes again has the one the guest's neighbour table
            // holds.
            tap.set_host_mac(host_mac(net.mac))
                .and_then(|()| tap.set_ipv4(ip, mask))
                .and_then(|()| tap.set_up())
                .with_context(|| format!("--net {option}"))?;
        }
        let name = format!("virtio-net {}", tap.name());
        let device = Net::new(tap, net.mac)
            .with_context(|| format!("--net {option}: cannot set up the device"))?;
        entries.push(devices.add_virtio(&name, &format!("net{index}"), device, ram.memory())?);
    }
    if let Some(option) = &cli.vsock {
        let vsock = parse_vsock(option)?;
        let device =
            Vsock::new(vsock.cid, &vsock.socket).with_context(|| format!("--vsock {option}"))?;
        entries.push(devices.add_virtio("virtio-vsock", "vsock", device, ram.memory())?);
    }
    if let Some(option) = &cli.rng {
        let rng = parse_rng(option)?;
        let source = std::fs::File::open(&rng.src).with_context(|| {
            format!("--rng {option}: cannot open the entropy source {}", rng.src.display())
        })?;
        entries.push(devices.add_virtio("virtio-rng", "rng", Rng::new(source), ram.memory())?);
    }
    Ok(entries)
}

/// The kernel command line: `--cmdline` (or the default, when virtio
/// devices must be named) with the virtio devices' entries.
fn guest_cmdline(cli: &Cli, entries: &[String]) -> Option<String> {
    if entries.is_empty() {
        return cli.cmdline.clone();
    }
    let base = cli.cmdline.as_deref().unwrap_or(vmm_loader::DEFAULT_CMDLINE);
    Some(format!("{base} {}", entries.join(" ")))
}

/// Loads the image the command line names into `ram` with the boot data
/// its protocol needs (MP table, ACPI tables); returns the machine's shape,
/// the entry point and the command line the guest got.
fn load(
    cli: &Cli,
    ram: &GuestRam,
    devices: &DeviceManager,
    entries: &[String],
) -> anyhow::Result<(MachineShape, EntryPoint, Option<String>)> {
    let kernel = cli.kernel.as_deref().context("--kernel is missing")?;
    let acpi = cli.acpi.as_deref() != Some("off");
    let cmdline = guest_cmdline(cli, entries);
    let options = LoadOptions {
        load_addr: cli.load_addr,
        entry: cli.entry,
        boot: boot_protocol(cli.boot),
        cmdline,
        initrd: cli.initrd.clone(),
        unpack_bzimage: cli.unpack_bzimage,
        acpi_rsdp: acpi.then_some(vmm_memory::layout::ACPI_TABLES_START),
    };
    let image =
        vmm_loader::load_image(ram, kernel, &options).map_err(crate::flag_hints::loader_error)?;
    let pc = image.protocol.wants_pc_machine();
    let irqchip = pc || cli.irqchip;
    if cli.cpus > 1 && !irqchip {
        bail!(
            "--cpus {} needs the in-kernel irqchip: boot a Linux or multiboot kernel, or add --irqchip",
            cli.cpus
        );
    }
    if !devices.virtio.is_empty() && !irqchip {
        bail!(
            "virtio devices (--disk, --rng) need the in-kernel irqchip: boot a Linux or multiboot kernel, or add --irqchip"
        );
    }
    if pc {
        mptable::write(ram, cli.cpus, &devices.gsis())?;
    }
    let linux = matches!(image.protocol, BootProtocol::Pvh | BootProtocol::Linux64);
    if cli.acpi.as_deref() == Some("on") && !linux {
        bail!("--acpi on applies to Linux kernels only; this image boots as {:?}", image.protocol);
    }
    let acpi = acpi && linux;
    if acpi {
        let machine = AcpiMachine {
            cpus: cli.cpus,
            serial: Some((COM1_PORT, COM1_IRQ)),
            virtio: devices.virtio.iter().map(|slot| (slot.addr, slot.gsi)).collect(),
        };
        vmm_loader::acpi::write(ram, &machine)?;
    }
    // Linux resets with a triple fault on purpose (reboot=t); a bare
    // image that triple-faults has crashed.
    let report_triple_faults = matches!(image.protocol, BootProtocol::Bare);
    let shape = MachineShape { irqchip, acpi, report_triple_faults };
    Ok((shape, image.entry, options.cmdline))
}

/// The host side's MAC for a guest with `guest` (the VMM configures the
/// host side): locally administered, unicast, differing from the guest's
/// in its second byte, and the same on every start of the same machine.
fn host_mac(guest: [u8; 6]) -> [u8; 6] {
    let mut mac = guest;
    mac[0] = (guest[0] | 0x02) & !0x01;
    mac[1] ^= 0x80;
    mac
}

/// The letter of the guest's n-th virtio disk (vda, vdb, ...).
fn disk_letter(index: usize) -> char {
    char::from(b'a' + (index % 26) as u8)
}

/// The machine: the VM with its RAM, the vCPUs (created and set up, not
/// yet running), the device manager and the event loop that serves the
/// devices while the vCPUs run.
pub struct Machine {
    vm: Vm,
    vcpus: Vec<vmm_vcpu::Vcpu>,
    /// One started thread per vCPU, filtered, waiting for its vCPU.
    vcpu_threads: Vec<WaitingThread<()>>,
    devices: DeviceManager,
    dispatcher: Arc<Dispatcher>,
    serial: Arc<Serial>,
    serial_room: EventFd,
    control: Arc<RunControl>,
    /// Signalled when the run ends, to wake the event loop.
    finished: Arc<EventFd>,
    sandbox: Sandbox,
    stats_sink: Option<StatsSink>,
    exit_stats: bool,
    /// The control API's socket and the configuration it reports, with
    /// `--api-socket`.
    api: Option<(ApiSocket, serde_json::Value)>,
    /// What a snapshot needs besides the VM and vCPUs.
    snapshot: SnapshotParts,
    /// Restored and not resumed: the vCPUs start parked, the devices
    /// unserved, with the guest's clock as it was saved.
    start_paused: Option<kvm_bindings::kvm_clock_data>,
}

/// The legacy devices a snapshot saves, as the machine holds them.
pub type Legacy = LegacyDevices<DeviceRequests>;

/// What a snapshot reads besides the VM and the vCPUs.
pub struct SnapshotParts {
    /// The configuration the machine was built from (`config.json`).
    pub config: Cli,
    /// The machine's shape.
    pub shape: MachineShape,
    /// The serial port.
    pub serial: Arc<Serial>,
    /// The i8042, fw_cfg and PCI host.
    pub legacy: Legacy,
    /// The virtio-mmio transports, in slot order.
    pub virtio: Vec<Arc<Mutex<dyn vmm_virtio::TransportPersist>>>,
}

impl SnapshotParts {
    /// The devices' state.
    pub fn devices(&self) -> DevicesState {
        DevicesState {
            serial: self.serial.lock().unwrap_or_else(PoisonError::into_inner).state(),
            i8042: self.legacy.i8042.lock().unwrap_or_else(PoisonError::into_inner).state(),
            fw_cfg: self.legacy.fw_cfg.lock().unwrap_or_else(PoisonError::into_inner).state(),
            pci_host: self
                .legacy
                .pci_host
                .as_ref()
                .map(|pci| pci.lock().unwrap_or_else(PoisonError::into_inner).state()),
            virtio: self
                .virtio
                .iter()
                .map(|t| t.lock().unwrap_or_else(PoisonError::into_inner).save_state())
                .collect(),
        }
    }

    fn restore(&self, devices: &DevicesState) -> anyhow::Result<()> {
        self.legacy.i8042.lock().unwrap_or_else(PoisonError::into_inner).restore(&devices.i8042)?;
        self.legacy.fw_cfg.lock().unwrap_or_else(PoisonError::into_inner).restore(&devices.fw_cfg);
        match (&self.legacy.pci_host, devices.pci_host) {
            (Some(pci), Some(address)) => {
                pci.lock().unwrap_or_else(PoisonError::into_inner).restore(address)
            }
            (None, None) => {}
            _ => bail!("the snapshot's PCI host does not match its configuration"),
        }
        if devices.virtio.len() != self.virtio.len() {
            bail!(
                "the snapshot's state has {} virtio devices, its configuration {}",
                devices.virtio.len(),
                self.virtio.len()
            );
        }
        for (transport, state) in self.virtio.iter().zip(&devices.virtio) {
            transport.lock().unwrap_or_else(PoisonError::into_inner).restore_state(state)?;
        }
        Ok(())
    }
}

/// A snapshot being restored into the machine being built.
struct Restoring {
    state: MachineState,
    memory: std::fs::File,
    resume: bool,
}

impl Machine {
    /// Builds the machine the command line describes: user input first
    /// (RAM size, devices, image), so mistakes are reported even where KVM
    /// is unusable, then KVM.
    pub fn build(cli: &Cli) -> anyhow::Result<Machine> {
        Machine::build_from(cli, None)
    }

    /// Builds the machine a snapshot holds (`--restore`): its configuration,
    /// with the run options of `cli` (API socket, serial, seccomp, exit
    /// statistics, logging, KVM device), its memory, VM, vCPU and device
    /// state. Everything is read and checked before anything is built.
    pub fn restore(cli: &Cli, option: &str) -> anyhow::Result<Machine> {
        let option = crate::snapshot::parse_restore(option)?;
        let Snapshot { config, state, memory } = crate::snapshot::read(&option.dir)
            .with_context(|| format!("cannot restore {}", option.dir.display()))?;
        let cli = Cli {
            api_socket: cli.api_socket.clone(),
            serial: cli.serial.clone(),
            seccomp: cli.seccomp.clone(),
            exit_stats: cli.exit_stats.clone(),
            log_level: cli.log_level.clone(),
            kvm_device: cli.kvm_device.clone(),
            restore: None,
            ..config
        };
        Machine::build_from(&cli, Some(Restoring { state, memory, resume: option.resume }))
            .with_context(|| format!("cannot restore {}", option.dir.display()))
    }

    fn build_from(cli: &Cli, restoring: Option<Restoring>) -> anyhow::Result<Machine> {
        let control = Arc::new(RunControl::new());
        let sandbox = Sandbox::new(cli.seccomp == "on", cli.api_socket.is_some())
            .map_err(crate::flag_hints::vcpu_error)?;
        // Blocked before any other thread exists, so that every thread
        // inherits the mask; the event loop takes them through a signalfd.
        let _blocked =
            BlockedSignals::block(&STOP_SIGNALS).context("cannot block the stop signals")?;
        let finished = Arc::new(EventFd::new(EFD_NONBLOCK).context("cannot create an eventfd")?);
        // The vCPU threads start now and put their seccomp filters on (the
        // kernel compiles each, ~0.1-0.3 ms here) while this thread builds
        // the VM; `run` hands each its vCPU.
        let vcpu_threads = (0..cli.cpus)
            .map(|index| {
                let (sandbox, control) = (sandbox.clone(), control.clone());
                vmm_vcpu::thread::spawn_waiting(index, move || {
                    sandbox.enter_or_stop(ThreadKind::Vcpu, "vcpu", &control)
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .context("cannot start a vCPU thread")?;

        let ram = match &restoring {
            Some(restoring) => GuestRam::from_file(cli.memory, &restoring.memory)?,
            None => GuestRam::new(cli.memory)?,
        };
        let mut devices = DeviceManager::new()?;
        let entries = add_virtio_devices(cli, &ram, &mut devices)?;
        let (shape, entry, cmdline) = match &restoring {
            // The command line the guest booted with, for vm.info.
            Some(restoring) => (restoring.state.machine, None, guest_cmdline(cli, &entries)),
            None => {
                let (shape, entry, cmdline) = load(cli, &ram, &devices, &entries)?;
                (shape, Some(entry), cmdline)
            }
        };
        let MachineShape { irqchip, acpi, report_triple_faults } = shape;

        // The last of the user's input: the socket exists from here until
        // the VMM exits (or this fails further on).
        let api = match &cli.api_socket {
            Some(option) => Some((
                ApiSocket::bind(option)?,
                crate::api::control::config_json(cli, cmdline.as_deref())?,
            )),
            None => None,
        };

        let kvm = vmm_vcpu::kvm::open(&cli.kvm_device)?;
        let max_cpus = kvm.get_max_vcpus();
        if usize::from(cli.cpus) > max_cpus {
            bail!("--cpus {} is more than KVM allows here ({max_cpus})", cli.cpus);
        }
        let ram_size = ram.size_bytes();
        let vm = Vm::new(&kvm, ram)?;
        if irqchip {
            vm.create_irqchip()?;
        }

        let stats_sink = cli.exit_stats.as_deref().map(StatsSink::open).transpose()?;
        let serial_room = EventFd::new(EFD_NONBLOCK).context("cannot create an eventfd")?;
        let serial = match &restoring {
            Some(restoring) => SerialPort::from_state(
                &restoring.state.devices.serial,
                EventFdTrigger::new()?,
                Some(serial_room.try_clone()?),
                serial_output(&cli.serial)?,
            )?,
            None => SerialPort::with_input_room(
                EventFdTrigger::new()?,
                serial_room.try_clone()?,
                serial_output(&cli.serial)?,
            ),
        };
        if irqchip {
            vm.fd()
                .register_irqfd(serial.interrupt().event_fd(), COM1_IRQ)
                .context("cannot connect the serial port's interrupt (KVM_IRQFD)")?;
        }
        let serial: Arc<Serial> = Arc::new(Mutex::new(serial));
        let requests = DeviceRequests(control.clone(), finished.clone());
        let (mut bus, mut legacy) =
            legacy_bus(serial.clone(), requests.clone(), ram_size, cli.cpus)?;
        if acpi {
            legacy.pci_host = Some(add_acpi_pm(&mut bus, requests)?);
        }
        devices.attach(vm.fd(), &mut bus)?;
        let dispatcher =
            Arc::new(Dispatcher::new(Arc::new(bus)).report_triple_faults(report_triple_faults));

        let topology = CpuTopology { count: cli.cpus, pv_ipi: cli.kvm_pv_ipi };
        // Every vCPU exists and is set up before any runs: a guest may send
        // INIT/SIPI to the others as soon as it starts, and an IPI to a vCPU
        // not created yet is lost.
        let mut vcpus = Vec::new();
        for index in 0..cli.cpus {
            let mut vcpu = vm.create_vcpu(&kvm, index, topology)?;
            if let Some(restoring) = &restoring {
                vcpu.restore_state(&restoring.state.vcpus[usize::from(index)])
                    .with_context(|| format!("cannot restore vCPU {index}"))?;
                vcpus.push(vcpu);
                continue;
            }
            vcpu.setup_platform(irqchip)?;
            // Secondary CPUs wait for INIT/SIPI from the guest (in-kernel LAPIC).
            if index == 0
                && let Some(entry) = entry
            {
                match entry {
                    EntryPoint::RealMode { segment, ip } => vcpu.setup_real_mode(segment, ip)?,
                    EntryPoint::ProtectedMode { eip, ebx, eax } => {
                        vcpu.setup_protected_mode(eip, ebx, eax)?
                    }
                    EntryPoint::LongMode { rip, rsi } => vcpu.setup_long_mode(rip, rsi)?,
                }
            }
            vcpus.push(vcpu);
        }
        let snapshot = SnapshotParts {
            config: cli.clone(),
            shape,
            serial: serial.clone(),
            legacy,
            virtio: devices.virtio.iter().map(|slot| slot.persist.clone()).collect(),
        };
        let mut start_paused = None;
        if let Some(restoring) = &restoring {
            vm.restore_state(&restoring.state.vm).context("cannot restore the VM's state")?;
            snapshot.restore(&restoring.state.devices)?;
            if !restoring.resume {
                start_paused = Some(restoring.state.vm.clock);
            }
        }
        Ok(Machine {
            vm,
            vcpus,
            vcpu_threads,
            devices,
            dispatcher,
            serial,
            serial_room,
            control,
            finished,
            sandbox,
            stats_sink,
            exit_stats: cli.exit_stats.is_some(),
            api,
            snapshot,
            start_paused,
        })
    }

    /// Starts the vCPUs, serves the devices on this thread until the run
    /// ends, and returns how it ended.
    pub fn run(self) -> anyhow::Result<Outcome> {
        let Machine {
            vm,
            vcpus,
            vcpu_threads,
            devices,
            dispatcher,
            serial,
            serial_room,
            control,
            finished,
            sandbox,
            stats_sink,
            exit_stats,
            mut api,
            snapshot,
            start_paused,
        } = self;
        let mut event_loop = EventLoop::new(control.clone(), finished.try_clone()?)?;
        for slot in &devices.virtio {
            let notifiers =
                slot.notifiers.iter().map(EventFd::try_clone).collect::<std::io::Result<_>>()?;
            event_loop.add_queues(slot.transport(), notifiers);
        }
        event_loop.add_stop_signals(&STOP_SIGNALS)?;
        let terminal = RawTerminal::enable();
        if !console::stdin_is_null() {
            event_loop.add_console_input(serial.clone(), serial_room, terminal.is_some());
        }

        // A restored machine starts paused unless told to resume: the vCPUs
        // park before their first KVM_RUN and the devices wait.
        if start_paused.is_some() {
            control.gate().request_pause();
            event_loop.pause_devices();
            log::info!("restored paused: resume through the API (vm.resume)");
        }

        // Exit statistics are kept for --exit-stats, and for the API's
        // vm.counters.
        let keep_stats = exit_stats || api.is_some();
        let mut all_stats: Vec<Arc<Mutex<ExitStats>>> = Vec::new();
        let mut threads: Vec<VcpuThread<Option<()>>> = Vec::new();
        for (vcpu, waiting) in vcpus.into_iter().zip(vcpu_threads) {
            let (dispatcher, control) = (dispatcher.clone(), control.clone());
            let stats = keep_stats.then(|| Arc::new(Mutex::new(ExitStats::new(vcpu.index()))));
            all_stats.extend(stats.clone());
            // Dropped unrun if the thread's filter failed: the loop wakes.
            let wake = WakeOnExit(finished.clone());
            threads.push(waiting.start(vcpu, move |vcpu| {
                let _wake = wake;
                dispatcher.run(vcpu, &control, stats.as_deref());
            }));
        }
        let kick_all = || {
            for thread in &threads {
                thread.kick();
            }
        };
        let mut controller = match &mut api {
            Some((socket, config)) => {
                let (requests, received) = mpsc::channel();
                let wake = EventFd::new(EFD_NONBLOCK).context("cannot create an eventfd")?;
                event_loop.add_api(received, wake.try_clone()?);
                let link = VmmLink::new(requests, wake);
                let listener = socket.take_listener().context("the API socket is gone")?;
                let (sandbox, api_control) = (sandbox.clone(), control.clone());
                // Wakes the event loop if the thread ends (its filter failed).
                let wake = WakeOnExit(finished.clone());
                std::thread::Builder::new()
                    .name("api".into())
                    .spawn(move || {
                        let _wake = wake;
                        // Its filter before it serves anything.
                        if sandbox.enter_or_stop(ThreadKind::Api, "api", &api_control) {
                            crate::api::http::serve(&listener, &link);
                        }
                    })
                    .context("cannot spawn the API thread")?;
                let mut controller =
                    Controller::new(&vm, &control, &kick_all, threads.len(), config.clone());
                controller.snapshot = Some(&snapshot);
                if let Some(clock) = start_paused {
                    controller.start_paused(clock);
                }
                controller.devices =
                    devices.virtio.iter().map(|slot| (slot.id.as_str(), &slot.counters)).collect();
                controller.exit_stats = all_stats.clone();
                Some(controller)
            }
            None => None,
        };

        // The event loop's filter goes on once every thread is started.
        if sandbox.enter_or_stop(ThreadKind::Vmm, "main", &control)
            && let Err(err) = event_loop.run(|action, event_loop| match controller.as_mut() {
                Some(controller) => controller.handle(action, event_loop),
                None => Err(ApiError::new(503, "no control API")),
            })
        {
            control.finish(Outcome::VmmError { error: format!("{err:#}") });
        }
        drop(controller);
        let outcome = control.wait();
        kick_all();
        for thread in threads {
            if thread.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
        let stats: Vec<ExitStats> = all_stats
            .into_iter()
            .map(|stats| match Arc::try_unwrap(stats) {
                Ok(stats) => stats.into_inner().unwrap_or_else(PoisonError::into_inner),
                Err(shared) => {
                    std::mem::take(&mut *shared.lock().unwrap_or_else(PoisonError::into_inner))
                }
            })
            .collect();
        drop(terminal);
        if let Err(err) = serial.lock().unwrap_or_else(PoisonError::into_inner).flush() {
            log::warn!("cannot flush the serial output: {err}");
        }
        let unclaimed = dispatcher.stats();
        log::debug!(
            "unclaimed accesses: {} port, {} MMIO",
            unclaimed.unclaimed_pio.load(Ordering::Relaxed),
            unclaimed.unclaimed_mmio.load(Ordering::Relaxed)
        );
        if let Some(sink) = stats_sink {
            sink.write(&stats)?;
        }
        drop(devices);
        // The process ends now: the kernel tears the VM down at exit, and
        // faster there, after the address space is gone (by ~0.14 ms of
        // the hello guest's start-up here) than a close before the unmap.
        std::mem::forget(vm);
        // Removes the API socket.
        drop(api);
        Ok(outcome)
    }
}

/// Builds the machine the command line describes, runs it to its end and
/// returns how it ended.
pub fn run(cli: &Cli) -> anyhow::Result<Outcome> {
    match &cli.restore {
        Some(option) => Machine::restore(cli, option)?.run(),
        None => Machine::build(cli)?.run(),
    }
}
