//! The VMM side of the control API, on the event loop's thread: what each
//! [`Endpoint`] does to the machine.
//!
//! **Pause**: the vCPU loops are asked to park ([`vmm_vcpu::pause`]) and
//! each vCPU thread is kicked out of `KVM_RUN`; once every vCPU is parked
//! the event loop stops serving the devices and the guest's kvmclock is
//! read (KVM_GET_CLOCK). **Resume** undoes it in reverse: the clock is set
//! back to the value it had (KVM_SET_CLOCK, so the guest sees no time
//! pass), the devices are served again, the vCPUs leave their wait and
//! enter the guest where they left it. While paused, a vCPU thread can run
//! a request on its vCPU ([`vmm_vcpu::pause::PauseGate::run_on`]): that is
//! where a snapshot reads the vCPU state.
//!
//! **Snapshot** (paused only): each vCPU's state is read on its own thread
//! ([`vmm_vcpu::Vcpu::save_state`] through `run_on`), then the VM's (its
//! clock as the pause found it), the devices', and the snapshot is written
//! ([`crate::snapshot::write`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kvm_bindings::kvm_clock_data;
use serde_json::{Value, json};
use vmm_dispatch::{ExitStats, Outcome, RunControl};
use vmm_vcpu::{Vcpu, Vm};

use super::{ApiError, Endpoint, Reply, SnapshotConfig};
use crate::event_loop::EventLoop;
use crate::machine::SnapshotParts;
use crate::snapshot::MachineState;

/// How long a pause waits for every vCPU to park.
const PARK_TIMEOUT: Duration = Duration::from_secs(5);

/// A device's counters as JSON, read when asked.
pub type CounterSource = Box<dyn Fn() -> Value>;

/// What the API's actions work on.
pub struct Controller<'a> {
    /// The VM, for its clock.
    pub vm: &'a Vm,
    /// The run: its pause gate, and its end (shutdown).
    pub control: &'a RunControl,
    /// Kicks every vCPU thread out of `KVM_RUN`.
    pub kick_all: &'a dyn Fn(),
    /// How many vCPU threads must park.
    pub vcpus: usize,
    /// The configuration, for `vm.info`.
    pub config: Value,
    /// Each device's id and counters.
    pub devices: Vec<(&'a str, &'a CounterSource)>,
    /// Each vCPU's exit statistics.
    pub exit_stats: Vec<Arc<Mutex<ExitStats>>>,
    /// What a snapshot saves besides the VM and vCPUs.
    pub snapshot: Option<&'a SnapshotParts>,
    /// The guest's clock as the pause found it.
    clock: Option<kvm_clock_data>,
}

impl<'a> Controller<'a> {
    /// A controller for a running VM.
    pub fn new(
        vm: &'a Vm,
        control: &'a RunControl,
        kick_all: &'a dyn Fn(),
        vcpus: usize,
        config: Value,
    ) -> Controller<'a> {
        Controller {
            vm,
            control,
            kick_all,
            vcpus,
            config,
            devices: Vec::new(),
            exit_stats: Vec::new(),
            snapshot: None,
            clock: None,
        }
    }

    /// The VM starts paused (restored without `resume=on`), with the
    /// guest's clock at `clock` until it is resumed.
    pub fn start_paused(&mut self, clock: kvm_clock_data) {
        self.clock = Some(clock);
    }

    /// Does what `endpoint` asks and answers it.
    pub fn handle(&mut self, endpoint: Endpoint, event_loop: &mut EventLoop) -> Reply {
        match endpoint {
            Endpoint::Ping => Ok(Some(ping())),
            Endpoint::Info => Ok(Some(json!({
                "state": self.state(),
                "config": self.config,
            }))),
            Endpoint::Pause => self.pause(event_loop),
            Endpoint::Resume => self.resume(event_loop),
            Endpoint::Snapshot(_) if !self.paused() => {
                Err(ApiError::new(409, "the VM must be paused first"))
            }
            Endpoint::Snapshot(config) => self.snapshot(&config),
            Endpoint::Counters => Ok(Some(self.counters())),
            Endpoint::Shutdown => {
                self.control.finish(Outcome::Stopped {
                    reason: "shut down through the API (vmm.shutdown)".into(),
                    status: 0,
                });
                Ok(None)
            }
        }
    }

    fn paused(&self) -> bool {
        self.control.gate().is_paused()
    }

    fn state(&self) -> &'static str {
        if self.paused() { "Paused" } else { "Running" }
    }

    fn pause(&mut self, event_loop: &mut EventLoop) -> Reply {
        let gate = self.control.gate();
        if !gate.request_pause() {
            return Err(ApiError::new(409, "the VM is already paused"));
        }
        (self.kick_all)();
        if !gate.wait_parked(self.vcpus, PARK_TIMEOUT) {
            gate.resume();
            if self.control.should_stop() {
                return Err(ApiError::new(503, "the VM is not running any more"));
            }
            return Err(ApiError::new(500, "the vCPUs did not stop in time; the VM keeps running"));
        }
        event_loop.pause_devices();
        self.clock = match self.vm.clock() {
            Ok(clock) => Some(clock),
            Err(err) => {
                log::warn!("pause: cannot read the guest's clock, it will jump: {err}");
                None
            }
        };
        log::info!("VM paused");
        Ok(None)
    }

    fn resume(&mut self, event_loop: &mut EventLoop) -> Reply {
        if !self.paused() {
            return Err(ApiError::new(409, "the VM is not paused"));
        }
        if let Some(clock) = self.clock.take()
            && let Err(err) = self.vm.set_clock(&clock)
        {
            log::warn!("resume: cannot set the guest's clock back, it jumps: {err}");
        }
        event_loop.resume_devices();
        self.control.gate().resume();
        log::info!("VM resumed");
        Ok(None)
    }

    fn snapshot(&mut self, config: &SnapshotConfig) -> Reply {
        let dir = crate::snapshot::dir_of_url(&config.destination_url)
            .map_err(|err| ApiError::new(400, format!("destination_url: {err}")))?;
        let parts = self.snapshot.ok_or_else(|| ApiError::new(501, "no snapshot support"))?;
        let failed = |err: &dyn std::fmt::Display| {
            ApiError::new(500, format!("snapshot failed, nothing written: {err}"))
        };
        let gate = self.control.gate();
        let mut vcpus = Vec::with_capacity(self.vcpus);
        for index in 0..self.vcpus {
            let index = u8::try_from(index).map_err(|err| failed(&err))?;
            let state = gate
                .run_on(index, PARK_TIMEOUT, |vcpu: &mut Vcpu| vcpu.save_state())
                .ok_or_else(|| failed(&format!("vCPU {index} did not answer")))?
                .map_err(|err| failed(&format!("vCPU {index}: {err}")))?;
            vcpus.push(state);
        }
        let mut vm = self.vm.save_state().map_err(|err| failed(&err))?;
        if let Some(clock) = self.clock {
            // The clock the guest will see: as the pause stopped it.
            vm.clock = clock;
        }
        let state = MachineState { machine: parts.shape, vm, vcpus, devices: parts.devices() };
        let saved = crate::snapshot::write(&dir, &parts.config, &state, self.vm.ram())
            .map_err(|err| failed(&format!("{err:#}")))?;
        log::info!(
            "snapshot written to {}: {} MiB of RAM, {} KiB of it not zero",
            dir.display(),
            saved.size >> 20,
            saved.written >> 10
        );
        Ok(None)
    }

    fn counters(&self) -> Value {
        let devices: serde_json::Map<String, Value> =
            self.devices.iter().map(|(id, counters)| ((*id).to_owned(), counters())).collect();
        let vcpus: Vec<Value> = self
            .exit_stats
            .iter()
            .map(|stats| {
                let report = stats.lock().unwrap_or_else(PoisonError::into_inner).report();
                serde_json::to_value(report).unwrap_or(Value::Null)
            })
            .collect();
        json!({ "devices": devices, "vcpus": vcpus })
    }
}

/// The configuration `vm.info` reports, in the shape of Cloud Hypervisor's
/// `VmConfig` (the parts this VMM has): `cmdline` is the one the guest got,
/// with the virtio devices' entries.
pub fn config_json(cli: &crate::cli::Cli, cmdline: Option<&str>) -> anyhow::Result<Value> {
    use crate::config::{parse_disk, parse_net, parse_rng, parse_vsock};
    let disks = cli
        .disk
        .iter()
        .map(|option| {
            let disk = parse_disk(option)?;
            Ok(json!({ "path": disk.path, "readonly": disk.readonly, "id": disk.id }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let nets = cli
        .net
        .iter()
        .map(|option| {
            let net = parse_net(option)?;
            let mac = net.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            let (ip, mask) = net.host.map(|(ip, mask)| (ip.to_string(), mask.to_string())).unzip();
            Ok(json!({ "tap": net.tap, "mac": mac, "ip": ip, "mask": mask }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let vsock = cli
        .vsock
        .as_deref()
        .map(parse_vsock)
        .transpose()?
        .map(|vsock| json!({ "cid": vsock.cid, "socket": vsock.socket }));
    let rng = cli.rng.as_deref().map(parse_rng).transpose()?.map(|rng| json!({ "src": rng.src }));
    Ok(json!({
        "cpus": { "boot_vcpus": cli.cpus, "max_vcpus": cli.cpus },
        "memory": { "size": cli.memory << 20 },
        "payload": {
            "kernel": cli.kernel,
            "cmdline": cmdline,
            "initrd": cli.initrd,
        },
        "disks": disks,
        "net": nets,
        "vsock": vsock,
        "rng": rng,
    }))
}

/// The version, in Cloud Hypervisor's `VmmPingResponse` shape.
fn ping() -> serde_json::Value {
    let version = env!("CARGO_PKG_VERSION");
    json!({
        "build_version": version,
        "version": version,
        "pid": std::process::id(),
        "features": [],
    })
}
