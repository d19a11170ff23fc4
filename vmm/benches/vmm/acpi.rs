//! The ACPI rows: the test kernel's ACPI variant (`vmlinux-acpi`, the same
//! kernel with CONFIG_ACPI and CONFIG_PCI) boots the tiny initrd to its
//! init marker under ours with `--acpi on` and with `--acpi off`, and under
//! QEMU microvm with `acpi=on`, in one run: what the tables cost in
//! emulated kernel time.

use std::process::Command;
use std::time::Duration;

use super::{
    Bench, Cell, INIT_MARKER, LINUX_MIB, Linux, Options, Row, RunOptions, Sample, Target, Vmm,
    check_cmdline, execute, measure,
};

/// The column ours `--acpi off` is measured in (printed as its own row).
const ACPI_OFF: Vmm = Vmm::Floor;

pub(super) fn rows(
    bench: &Bench,
    options: &Options,
    linux: &Result<Linux, String>,
    notes: &mut Vec<String>,
) -> Vec<Row> {
    let labels = [
        format!("Linux ACPI kernel, ours --acpi on: exec to {INIT_MARKER}"),
        format!("Linux ACPI kernel, ours --acpi off: exec to {INIT_MARKER}"),
    ];
    let row = |metric: &String, cells: [Cell; 3]| Row {
        metric: metric.clone(),
        unit: "s",
        decimals: 2,
        cells,
        base: Vmm::Qemu,
        target: Target::MaxTimes(0.9),
    };
    let linux = match linux {
        Ok(linux) if linux.dir.join("vmlinux-acpi").is_file() => linux,
        other => {
            let why = match other {
                Err(why) => why.clone(),
                Ok(linux) => format!("{} has no vmlinux-acpi", linux.dir.display()),
            };
            let cells = [Cell::Failed(why.clone()), Cell::Failed(why.clone()), Cell::Failed(why)];
            return labels.iter().map(|l| row(l, cells.clone())).collect();
        }
    };
    let kernel = linux.dir.join("vmlinux-acpi");
    let initrd = linux.dir.join("initrd-tiny.cpio");
    let vmms = [Vmm::Ours, ACPI_OFF, Vmm::Qemu];
    let cells = measure("Linux ACPI kernel", 1, options.linux_reps, &vmms, |vmm, _| {
        let cmd = match vmm {
            Vmm::Qemu => {
                let mut cmd = bench.qemu_linux_command("acpi=on").map_err(Sample::NotApplicable)?;
                cmd.arg("-kernel").arg(&kernel).arg("-initrd").arg(&initrd);
                cmd.args(["-append", &linux.cmdline]);
                cmd
            }
            _ => {
                let mut cmd = Command::new(&bench.ours);
                cmd.arg("--kernel").arg(&kernel).arg("--initrd").arg(&initrd);
                cmd.args(["--cmdline", &linux.cmdline, "--memory", &LINUX_MIB.to_string()]);
                cmd.args(["--acpi", if vmm == ACPI_OFF { "off" } else { "on" }]);
                cmd
            }
        };
        let run_options = RunOptions {
            markers: &[INIT_MARKER, "ACPI: RSDP"],
            limit: Some(Duration::from_secs(400)),
            ..Default::default()
        };
        let stderr = bench.scratch_file(&format!("acpi-{vmm:?}.stderr"));
        let run = execute(cmd, &stderr, &run_options)?;
        run.expect_status(0)?;
        check_cmdline(&run.stdout, &linux.cmdline)?;
        // The kernel used the tables exactly when it was given them.
        let used_acpi = run.to_marker[1].is_some();
        if used_acpi == (vmm == ACPI_OFF) {
            return Err(Sample::Failed(format!(
                "the kernel {} the RSDP",
                if used_acpi { "found" } else { "found no" }
            )));
        }
        let Some(to_init) = run.to_marker[0] else {
            return Err(Sample::Failed(format!("the console never showed {INIT_MARKER:?}")));
        };
        Ok(vec![to_init.as_secs_f64()])
    });
    let [cells] = <[[Cell; 3]; 1]>::try_from(cells).unwrap();
    let [on, off, qemu] = cells;
    if let (Some(on), Some(off)) = (on.median(), off.median()) {
        notes.push(format!(
            "ACPI costs {:.2} s of the ACPI kernel's boot to init (median --acpi on {on:.2} s, \
             --acpi off {off:.2} s)",
            on - off
        ));
    }
    let none = || Cell::NotApplicable("n/a (boots no Linux)".into());
    vec![row(&labels[0], [on, none(), qemu.clone()]), row(&labels[1], [off, none(), qemu])]
}
