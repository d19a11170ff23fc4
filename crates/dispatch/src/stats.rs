//! Per-vCPU exit statistics (`--exit-stats`): how many exits of each
//! reason, which ports and MMIO addresses cause them, and how the time
//! splits between the guest (KVM_RUN) and the VMM (handling exits).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use kvm_ioctls::VcpuExit;
use serde::Serialize;

/// How many ports and MMIO addresses the reports list.
const TOP_ADDRESSES: usize = 5;

/// The exit reasons counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitReason {
    /// Port read.
    IoIn,
    /// Port write.
    IoOut,
    /// MMIO read.
    MmioRead,
    /// MMIO write.
    MmioWrite,
    /// HLT.
    Hlt,
    /// Triple fault.
    Shutdown,
    /// KVM system event.
    SystemEvent,
    /// KVM could not enter the guest.
    FailEntry,
    /// KVM internal error.
    InternalError,
    /// KVM_RUN interrupted by a signal (a kick) or woken to retry.
    Interrupted,
    /// Any other exit.
    Other,
}

impl ExitReason {
    /// Every reason, in report order.
    const ALL: [ExitReason; 11] = [
        ExitReason::IoIn,
        ExitReason::IoOut,
        ExitReason::MmioRead,
        ExitReason::MmioWrite,
        ExitReason::Hlt,
        ExitReason::Shutdown,
        ExitReason::SystemEvent,
        ExitReason::FailEntry,
        ExitReason::InternalError,
        ExitReason::Interrupted,
        ExitReason::Other,
    ];

    /// The reason's name in reports and JSON keys.
    fn name(self) -> &'static str {
        match self {
            ExitReason::IoIn => "io_in",
            ExitReason::IoOut => "io_out",
            ExitReason::MmioRead => "mmio_read",
            ExitReason::MmioWrite => "mmio_write",
            ExitReason::Hlt => "hlt",
            ExitReason::Shutdown => "shutdown",
            ExitReason::SystemEvent => "system_event",
            ExitReason::FailEntry => "fail_entry",
            ExitReason::InternalError => "internal_error",
            ExitReason::Interrupted => "interrupted",
            ExitReason::Other => "other",
        }
    }
}

/// Which exit, and at which port or address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Classified {
    Port(ExitReason, u16),
    Mmio(ExitReason, u64),
    Plain(ExitReason),
}

impl Classified {
    pub(crate) fn of(exit: &VcpuExit<'_>) -> Classified {
        match exit {
            VcpuExit::IoIn(port, _) => Classified::Port(ExitReason::IoIn, *port),
            VcpuExit::IoOut(port, _) => Classified::Port(ExitReason::IoOut, *port),
            VcpuExit::MmioRead(addr, _) => Classified::Mmio(ExitReason::MmioRead, *addr),
            VcpuExit::MmioWrite(addr, _) => Classified::Mmio(ExitReason::MmioWrite, *addr),
            VcpuExit::Hlt => Classified::Plain(ExitReason::Hlt),
            VcpuExit::Shutdown => Classified::Plain(ExitReason::Shutdown),
            VcpuExit::SystemEvent(..) => Classified::Plain(ExitReason::SystemEvent),
            VcpuExit::FailEntry(..) => Classified::Plain(ExitReason::FailEntry),
            VcpuExit::InternalError => Classified::Plain(ExitReason::InternalError),
            VcpuExit::Intr => Classified::Plain(ExitReason::Interrupted),
            _ => Classified::Plain(ExitReason::Other),
        }
    }
}

/// One vCPU's exit statistics, filled by [`Dispatcher::run`](crate::Dispatcher::run).
#[derive(Debug, Default)]
pub struct ExitStats {
    /// The vCPU.
    vcpu: u8,
    counts: HashMap<&'static str, u64>,
    ports: HashMap<u16, u64>,
    mmio: HashMap<u64, u64>,
    /// Time spent inside KVM_RUN (running the guest, and KVM's own work).
    pub(crate) run_time: Duration,
    /// Time spent in the VMM handling exits.
    pub(crate) handle_time: Duration,
}

impl ExitStats {
    /// Empty statistics for vCPU `vcpu`.
    pub fn new(vcpu: u8) -> Self {
        ExitStats { vcpu, ..Default::default() }
    }

    pub(crate) fn record(&mut self, exit: Classified) {
        let reason = match exit {
            Classified::Port(reason, port) => {
                *self.ports.entry(port).or_default() += 1;
                reason
            }
            Classified::Mmio(reason, addr) => {
                *self.mmio.entry(addr).or_default() += 1;
                reason
            }
            Classified::Plain(reason) => reason,
        };
        *self.counts.entry(reason.name()).or_default() += 1;
    }

    /// Exits of `reason`.
    fn count(&self, reason: ExitReason) -> u64 {
        self.counts.get(reason.name()).copied().unwrap_or(0)
    }

    /// All exits.
    fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The ports with the most exits, most first (ties by port).
    fn top_ports(&self) -> Vec<(u16, u64)> {
        top(&self.ports)
    }

    /// The MMIO addresses with the most exits, most first.
    fn top_mmio(&self) -> Vec<(u64, u64)> {
        top(&self.mmio)
    }

    /// A human-readable report.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "vCPU {}: {} exits, {:.6} s in KVM_RUN, {:.6} s handling exits\n",
            self.vcpu,
            self.total(),
            self.run_time.as_secs_f64(),
            self.handle_time.as_secs_f64()
        );
        for reason in ExitReason::ALL {
            let count = self.count(reason);
            if count > 0 {
                let _ = writeln!(text, "  {:<15} {count}", reason.name());
            }
        }
        let list =
            |items: Vec<String>| if items.is_empty() { "none".into() } else { items.join(", ") };
        let ports = self.top_ports().iter().map(|(p, n)| format!("{p:#x} ({n})")).collect();
        let mmio = self.top_mmio().iter().map(|(a, n)| format!("{a:#x} ({n})")).collect();
        let _ = writeln!(text, "  top ports: {}", list(ports));
        let _ = writeln!(text, "  top MMIO:  {}", list(mmio));
        text
    }

    /// The statistics as a plain serde value (what `--exit-stats=PATH`
    /// writes per vCPU, and the control API's `vm.counters` gives).
    pub fn report(&self) -> ExitReport {
        ExitReport {
            vcpu: self.vcpu,
            total: self.total(),
            exits: ExitReason::ALL.iter().map(|r| (r.name(), self.count(*r))).collect(),
            top_ports: self
                .top_ports()
                .into_iter()
                .map(|(port, count)| PortCount { port, count })
                .collect(),
            top_mmio: self
                .top_mmio()
                .into_iter()
                .map(|(address, count)| MmioCount { address, count })
                .collect(),
            run_ns: self.run_time.as_nanos(),
            handle_ns: self.handle_time.as_nanos(),
        }
    }
}

/// One vCPU's exit statistics, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExitReport {
    /// The vCPU.
    pub vcpu: u8,
    /// All exits.
    pub total: u64,
    /// Exits by reason, every reason in report order.
    #[serde(serialize_with = "ordered_map")]
    pub exits: Vec<(&'static str, u64)>,
    /// The ports with the most exits, most first.
    pub top_ports: Vec<PortCount>,
    /// The MMIO addresses with the most exits, most first.
    pub top_mmio: Vec<MmioCount>,
    /// Nanoseconds inside KVM_RUN.
    pub run_ns: u128,
    /// Nanoseconds handling exits.
    pub handle_ns: u128,
}

/// Exits at one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PortCount {
    /// The port.
    pub port: u16,
    /// Its exits.
    pub count: u64,
}

/// Exits at one MMIO address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MmioCount {
    /// The guest-physical address.
    pub address: u64,
    /// Its exits.
    pub count: u64,
}

/// `(key, value)` pairs as a JSON object, in their order.
fn ordered_map<S: serde::Serializer>(
    pairs: &[(&'static str, u64)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(pairs.len()))?;
    for (key, value) in pairs {
        map.serialize_entry(key, value)?;
    }
    map.end()
}

/// The reports of all vCPUs, as one document: `{"vcpus": [...]}`.
#[derive(Debug, Serialize)]
struct StatsDocument {
    vcpus: Vec<ExitReport>,
}

/// serde_json's compact output with a space after each `:` and `,`: the
/// `--exit-stats` file's layout since it was written by hand, which scripts
/// may match.
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// All vCPUs' statistics as one JSON document (serde_json), ending in a
/// newline.
pub fn stats_json(stats: &[ExitStats]) -> String {
    let document = StatsDocument { vcpus: stats.iter().map(ExitStats::report).collect() };
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Spaced);
    // Serializing plain structs of numbers and strings into a Vec cannot fail.
    if document.serialize(&mut serializer).is_err() {
        return "{\"vcpus\": []}\n".to_owned();
    }
    out.push(b'\n');
    String::from_utf8(out).unwrap_or_default()
}

fn top<K: Copy + Ord>(counts: &HashMap<K, u64>) -> Vec<(K, u64)> {
    let mut sorted: Vec<(K, u64)> = counts.iter().map(|(k, n)| (*k, *n)).collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    sorted.truncate(TOP_ADDRESSES);
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ExitStats {
        let mut stats = ExitStats::new(1);
        for _ in 0..3 {
            stats.record(Classified::of(&VcpuExit::IoOut(0x3f8, &[0])));
        }
        let mut data = [0u8; 4];
        stats.record(Classified::of(&VcpuExit::IoIn(0x3fd, &mut data)));
        stats.record(Classified::of(&VcpuExit::MmioWrite(0xd000_0000, &[1])));
        stats.record(Classified::of(&VcpuExit::Hlt));
        stats.run_time = Duration::from_millis(2);
        stats
    }

    #[test]
    fn counts_by_reason_and_address() {
        let stats = sample();
        assert_eq!(stats.total(), 6);
        assert_eq!(stats.count(ExitReason::IoOut), 3);
        assert_eq!(stats.count(ExitReason::IoIn), 1);
        assert_eq!(stats.count(ExitReason::Hlt), 1);
        assert_eq!(stats.top_ports(), vec![(0x3f8, 3), (0x3fd, 1)]);
        assert_eq!(stats.top_mmio(), vec![(0xd000_0000, 1)]);
    }

    #[test]
    fn text_and_json_reports() {
        let stats = sample();
        let text = stats.to_text();
        assert!(text.starts_with("vCPU 1: 6 exits, 0.002000 s in KVM_RUN"), "{text}");
        assert!(text.contains("  io_out          3\n"), "{text}");
        assert!(text.contains("top ports: 0x3f8 (3), 0x3fd (1)"), "{text}");
        let json = stats_json(&[stats]);
        assert!(json.starts_with(
            "{\"vcpus\": [{\"vcpu\": 1, \"total\": 6, \"exits\": {\"io_in\": 1, \"io_out\": 3,"
        ));
        assert!(json.contains(
            "\"top_ports\": [{\"port\": 1016, \"count\": 3}, {\"port\": 1021, \"count\": 1}]"
        ));
        assert!(json.contains("\"run_ns\": 2000000"));
        assert!(json.ends_with("\"handle_ns\": 0}]}\n"), "{json}");
        // Valid JSON, read back with serde_json.
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["vcpus"][0]["exits"]["hlt"], 1);
        assert_eq!(value["vcpus"][0]["top_mmio"][0]["address"], 0xd000_0000u64);
    }

    #[test]
    fn top_lists_are_bounded() {
        let mut stats = ExitStats::new(0);
        for port in 0..20u16 {
            stats.record(Classified::Port(ExitReason::IoOut, port));
        }
        assert_eq!(stats.top_ports().len(), TOP_ADDRESSES);
    }
}
