//! Composition: the VM, its devices and vCPUs, from the command line.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, bail};
use seccompiler::BpfProgram;
use vm_device::bus::{PioAddress, PioRange};
use vm_device::device_manager::{IoManager, PioManager};
use vmm_devices::console::{self, PumpEnd, RawTerminal};
use vmm_devices::debug_exit::{DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN, DebugExit};
use vmm_devices::fw_cfg::{FW_CFG_PORT, FW_CFG_PORT_LEN, FwCfg};
use vmm_devices::i8042::{I8042, I8042_COMMAND_PORT, I8042_DATA_PORT};
use vmm_devices::serial::{COM1_IRQ, COM1_PORT, SERIAL_PORT_LEN, SerialPort};
use vmm_devices::{EventFdTrigger, ExitRequest};
use vmm_dispatch::{
    BlockedSignals, Dispatcher, ExitStats, Outcome, ResetCause, RunControl, stats_json,
};
use vmm_loader::{BootProtocol, EntryPoint, LoadOptions, mptable};
use vmm_memory::GuestRam;
use vmm_vcpu::seccomp::{self, ThreadKind};
use vmm_vcpu::{CpuTopology, Vm};

use crate::cli::{Boot, Cli, SerialTarget};

type Serial = Mutex<SerialPort<Box<dyn Write + Send>>>;

/// Turns device requests (debug exit, reset) into the run's outcome.
struct DeviceRequests(Arc<RunControl>);

impl ExitRequest for DeviceRequests {
    fn debug_exit(&self, value: u32) {
        self.0.finish(Outcome::DebugExit { value });
    }

    fn reset(&self) {
        self.0.finish(Outcome::Reset { vcpu: 0, cause: ResetCause::Device });
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

/// The legacy devices on the port I/O bus; fw_cfg tells the guest the RAM
/// size and CPU count.
fn build_bus(
    serial: Arc<Serial>,
    control: &Arc<RunControl>,
    ram_size: u64,
    cpus: u8,
) -> anyhow::Result<IoManager> {
    let mut bus = IoManager::new();
    bus.register_pio(PioRange::new(PioAddress(COM1_PORT), SERIAL_PORT_LEN)?, serial)
        .context("cannot register the serial port")?;
    let debug_exit = Arc::new(Mutex::new(DebugExit::new(DeviceRequests(control.clone()))));
    bus.register_pio(PioRange::new(PioAddress(DEBUG_EXIT_PORT), DEBUG_EXIT_PORT_LEN)?, debug_exit)
        .context("cannot register the debug-exit port")?;
    let i8042 = Arc::new(Mutex::new(I8042::new(DeviceRequests(control.clone()))));
    for port in [I8042_DATA_PORT, I8042_COMMAND_PORT] {
        bus.register_pio(PioRange::new(PioAddress(port), 1)?, i8042.clone())
            .context("cannot register the i8042 controller")?;
    }
    let fw_cfg = Arc::new(Mutex::new(FwCfg::new(ram_size, u16::from(cpus))));
    bus.register_pio(PioRange::new(PioAddress(FW_CFG_PORT), FW_CFG_PORT_LEN)?, fw_cfg)
        .context("cannot register fw_cfg")?;
    Ok(bus)
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
    /// `VMM_TEST_SECCOMP_VIOLATION=vcpu|main`: make a forbidden system call
    /// in that thread once its filter is on, to prove the filter works.
    violation: Option<String>,
}

impl Sandbox {
    fn new(enabled: bool) -> anyhow::Result<Sandbox> {
        if enabled {
            seccomp::prepare_process();
        }
        let compile = |kind| seccomp::filter(kind).map(Some);
        Ok(Sandbox {
            vcpu: if enabled { compile(ThreadKind::Vcpu)? } else { None },
            vmm: if enabled { compile(ThreadKind::Vmm)? } else { None },
            violation: std::env::var("VMM_TEST_SECCOMP_VIOLATION").ok(),
        })
    }

    /// Installs the filter of `kind` on the calling thread (`name` for the
    /// test hook and errors).
    fn enter(&self, kind: ThreadKind, name: &str) -> Result<(), String> {
        let program = match kind {
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Vmm => &self.vmm,
        };
        if let Some(program) = program {
            seccomp::apply(program).map_err(|err| format!("{name} thread: {err}"))?;
        }
        if self.violation.as_deref() == Some(name) {
            // SAFETY: socket takes no pointers; with the filter on it never returns.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
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

/// Feeds host stdin to the guest's UART on its own thread, in raw mode when
/// stdin is a terminal (Ctrl-A x then leaves).
fn start_console_input(
    serial: Arc<Serial>,
    control: Arc<RunControl>,
    escape: bool,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            let push = |bytes: &[u8]| {
                serial.lock().unwrap_or_else(PoisonError::into_inner).enqueue_input(bytes)
            };
            let end = console::pump_input(std::io::stdin().lock(), push, escape, || {
                control.should_stop()
            });
            match end {
                PumpEnd::Quit => {
                    control.finish(Outcome::Stopped {
                        reason: "console escape (Ctrl-A x)".into(),
                        status: 0,
                    });
                }
                PumpEnd::Error(kind) => log::warn!("console input stopped: {kind}"),
                PumpEnd::EndOfInput | PumpEnd::Stopped => {
                    log::debug!("console input ended: {end:?}")
                }
            }
        })
        .context("cannot start the console input thread")?;
    Ok(())
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

/// Builds the machine the command line describes, runs it to its end and
/// returns how it ended.
pub fn run(cli: &Cli) -> anyhow::Result<Outcome> {
    let control = Arc::new(RunControl::new());
    let sandbox = Sandbox::new(cli.seccomp == "on")?;
    // Blocked before any other thread exists, so that every thread inherits
    // the mask; the signal thread that takes them starts once the guest runs.
    let signals = BlockedSignals::block(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
        .context("cannot block the stop signals")?;

    // User input first (RAM size, image), so mistakes are reported even
    // where KVM is unusable.
    let ram = GuestRam::new(cli.memory)?;
    let options = LoadOptions {
        load_addr: cli.load_addr,
        entry: cli.entry,
        boot: boot_protocol(cli.boot),
        cmdline: cli.cmdline.clone(),
        initrd: cli.initrd.clone(),
        unpack_bzimage: cli.unpack_bzimage,
    };
    let image = vmm_loader::load_image(&ram, &cli.kernel, &options)?;
    let pc = image.protocol.wants_pc_machine();
    let irqchip = pc || cli.irqchip;
    if cli.cpus > 1 && !irqchip {
        bail!(
            "--cpus {} needs the in-kernel irqchip: boot a Linux or multiboot kernel, or add --irqchip",
            cli.cpus
        );
    }
    if pc {
        mptable::write(&ram, cli.cpus)?;
    }

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
    let serial = SerialPort::new(EventFdTrigger::new()?, serial_output(&cli.serial)?);
    if irqchip {
        vm.fd()
            .register_irqfd(serial.interrupt().event_fd(), COM1_IRQ)
            .context("cannot connect the serial port's interrupt (KVM_IRQFD)")?;
    }
    let serial: Arc<Serial> = Arc::new(Mutex::new(serial));
    let bus = build_bus(serial.clone(), &control, ram_size, cli.cpus)?;
    let dispatcher = Arc::new(Dispatcher::new(Arc::new(bus)));

    let topology = CpuTopology { count: cli.cpus, pv_ipi: cli.kvm_pv_ipi };
    // Every vCPU exists and is set up before any runs: a guest may send
    // INIT/SIPI to the others as soon as it starts, and an IPI to a vCPU
    // not created yet is lost.
    let mut vcpus = Vec::new();
    for index in 0..cli.cpus {
        let mut vcpu = vm.create_vcpu(&kvm, index, topology)?;
        vcpu.setup_platform(irqchip)?;
        // Secondary CPUs wait for INIT/SIPI from the guest (in-kernel LAPIC).
        if index == 0 {
            match image.entry {
                EntryPoint::RealMode { segment, ip } => vcpu.setup_real_mode(segment, ip)?,
                EntryPoint::ProtectedMode { eip, ebx, eax } => {
                    vcpu.setup_protected_mode(eip, ebx, eax)?
                }
                EntryPoint::LongMode { rip, rsi } => vcpu.setup_long_mode(rip, rsi)?,
            }
        }
        vcpus.push(vcpu);
    }
    let mut threads = Vec::new();
    for vcpu in vcpus {
        let (dispatcher, control) = (dispatcher.clone(), control.clone());
        let mut stats = cli.exit_stats.is_some().then(|| ExitStats::new(vcpu.index()));
        let sandbox = sandbox.clone();
        threads.push(vmm_vcpu::thread::spawn(vcpu, move |vcpu| {
            if sandbox.enter_or_stop(ThreadKind::Vcpu, "vcpu", &control) {
                dispatcher.run(vcpu, &control, stats.as_mut());
            }
            stats
        })?);
    }

    // The main thread's filter goes on before the signal and console
    // threads start: they inherit it.
    let terminal = RawTerminal::enable();
    let pump_stdin = !console::stdin_is_null();
    sandbox.enter_or_stop(ThreadKind::Vmm, "main", &control);
    signals.stop_run_on_them(control.clone()).context("cannot start the signal thread")?;
    if pump_stdin {
        start_console_input(serial.clone(), control.clone(), terminal.is_some())?;
    }

    let outcome = control.wait();
    for thread in &threads {
        thread.kick();
    }
    let mut stats = Vec::new();
    for thread in threads {
        match thread.join() {
            Ok(vcpu_stats) => stats.extend(vcpu_stats),
            Err(_) => log::error!("a vCPU thread panicked"),
        }
    }
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
    Ok(outcome)
}
