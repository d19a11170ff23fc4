//! `vmm`: composes the workspace's crates into a virtual machine monitor.
//!
//! Parse the command line, map RAM, load the image, create the VM, put the
//! devices on the bus, start the vCPU on its thread, wait for the outcome and
//! turn it into the process exit status. Everything else lives in the crates.

mod cli;

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use clap::Parser;
use vm_device::bus::{PioAddress, PioRange};
use vm_device::device_manager::{IoManager, PioManager};
use vmm_devices::debug_exit::{DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN, DebugExit};
use vmm_devices::serial::{COM1_PORT, SERIAL_PORT_LEN, SerialPort};
use vmm_devices::{EventFdTrigger, ExitRequest};
use vmm_dispatch::{Dispatcher, EXIT_VMM_ERROR, Outcome, RunControl};
use vmm_loader::{EntryPoint, LoadOptions};
use vmm_memory::GuestRam;
use vmm_vcpu::Vm;

use cli::{Cli, SerialTarget};

type Serial = Mutex<SerialPort<Box<dyn Write + Send>>>;

/// Ends the run when the guest writes to the debug-exit port.
struct DebugExitToControl(Arc<RunControl>);

impl ExitRequest for DebugExitToControl {
    fn debug_exit(&self, value: u32) {
        self.0.finish(Outcome::DebugExit { value });
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

/// The legacy devices on the port I/O bus.
fn build_bus(serial: Arc<Serial>, control: Arc<RunControl>) -> anyhow::Result<IoManager> {
    let mut bus = IoManager::new();
    bus.register_pio(
        PioRange::new(PioAddress(COM1_PORT), SERIAL_PORT_LEN)?,
        serial,
    )
    .context("cannot register the serial port")?;
    let debug_exit = Arc::new(Mutex::new(DebugExit::new(DebugExitToControl(control))));
    bus.register_pio(
        PioRange::new(PioAddress(DEBUG_EXIT_PORT), DEBUG_EXIT_PORT_LEN)?,
        debug_exit,
    )
    .context("cannot register the debug-exit port")?;
    Ok(bus)
}

fn run(cli: &Cli) -> anyhow::Result<Outcome> {
    // User input first (RAM size, image), so mistakes are reported even
    // where KVM is unusable.
    let ram = GuestRam::new(cli.memory)?;
    let options = LoadOptions {
        load_addr: cli.load_addr,
        entry: cli.entry,
    };
    let image = vmm_loader::load_image(&ram, &cli.kernel, &options)?;

    let kvm = vmm_vcpu::kvm::open(&cli.kvm_device)?;
    let vm = Vm::new(&kvm, ram)?;
    let control = Arc::new(RunControl::new());
    let serial: Arc<Serial> = Arc::new(Mutex::new(SerialPort::new(
        EventFdTrigger::new()?,
        serial_output(&cli.serial)?,
    )));
    let dispatcher = Arc::new(Dispatcher::new(Arc::new(build_bus(
        serial.clone(),
        control.clone(),
    )?)));

    let mut vcpu = vm.create_vcpu(&kvm, 0)?;
    match image.entry {
        EntryPoint::RealMode { segment, ip } => vcpu.setup_real_mode(segment, ip)?,
        EntryPoint::LongMode { rip } => vcpu.setup_long_mode(rip, 0)?,
    }
    let thread = {
        let (dispatcher, control) = (dispatcher.clone(), control.clone());
        vmm_vcpu::thread::spawn(vcpu, move |vcpu| dispatcher.run(vcpu, &control))?
    };

    let outcome = control.wait();
    thread.kick();
    if thread.join().is_err() {
        log::error!("the vCPU thread panicked");
    }
    let flushed = serial
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .flush();
    if let Err(err) = flushed {
        log::warn!("cannot flush the serial output: {err}");
    }
    let stats = dispatcher.stats();
    log::debug!(
        "unclaimed accesses: {} port, {} MMIO",
        stats
            .unclaimed_pio
            .load(std::sync::atomic::Ordering::Relaxed),
        stats
            .unclaimed_mmio
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(outcome)
}

/// The error and its causes on one line, leaving out causes whose text the
/// message already includes (crate errors quote their source).
fn one_line(err: &anyhow::Error) -> String {
    let mut message = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}

fn init_logging(level: Option<&str>) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    if let Some(level) = level {
        builder.parse_filters(level);
    }
    builder.init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    match run(&cli) {
        Ok(outcome) => {
            if outcome.is_clean() {
                log::info!("{outcome}");
            } else {
                eprintln!("vmm: {outcome}");
            }
            ExitCode::from(outcome.exit_status())
        }
        Err(err) => {
            eprintln!("vmm: error: {}", one_line(&err));
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}
