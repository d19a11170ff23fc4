//! Snapshots on disk: a directory holding `config.json` (the machine's
//! configuration, the command line it was built from), `state` (the
//! [`MachineState`] in vmm-snapshot's versioned, checksummed blob) and
//! `memory` (guest RAM, sparse: only non-zero pages are written).
//!
//! Writing never leaves a half-written snapshot that looks whole: each
//! file is written under a temporary name and renamed into place, the old
//! `state` is removed first and the new one renamed last, so a directory
//! with a `state` file holds the three files of one snapshot. Reading
//! checks all three (the state's header and checksum, the memory file's
//! size, the configuration) before anything is built.

pub mod state;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use vmm_memory::GuestRam;
use vmm_memory::snapshot::SavedMemory;

pub use state::{DevicesState, MachineShape, MachineState};

use crate::cli::Cli;

/// The configuration's file name.
pub const CONFIG_FILE: &str = "config.json";
/// The machine state's file name.
pub const STATE_FILE: &str = "state";
/// Guest memory's file name.
pub const MEMORY_FILE: &str = "memory";

/// The directory a `file:///DIR` URL names.
pub fn dir_of_url(url: &str) -> anyhow::Result<PathBuf> {
    match url.strip_prefix("file://") {
        Some(path) if path.starts_with('/') && path.len() > 1 => Ok(PathBuf::from(path)),
        _ => bail!("'{url}' is not a file:///DIR URL (an absolute directory)"),
    }
}

/// `--restore source_url=file:///DIR[,resume=on|off]`.
#[derive(Debug, PartialEq, Eq)]
pub struct RestoreOption {
    /// The snapshot's directory.
    pub dir: PathBuf,
    /// Run at once (`resume=on`) rather than start paused.
    pub resume: bool,
}

/// Parses `--restore`'s value.
pub fn parse_restore(value: &str) -> anyhow::Result<RestoreOption> {
    let mut dir = None;
    let mut resume = false;
    for part in value.split(',') {
        match part.split_once('=') {
            Some(("source_url", url)) => dir = Some(dir_of_url(url)?),
            Some(("resume", "on")) => resume = true,
            Some(("resume", "off")) => resume = false,
            Some(("resume", other)) => bail!("resume={other}: expected on or off"),
            _ => {
                bail!("unknown --restore option '{part}' (source_url=file:///DIR[,resume=on|off])")
            }
        }
    }
    let dir = dir.context("--restore needs source_url=file:///DIR")?;
    Ok(RestoreOption { dir, resume })
}

/// Removes the temporary files of a write that failed.
struct Temporaries(Vec<PathBuf>);

impl Drop for Temporaries {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn create(path: &Path) -> anyhow::Result<File> {
    File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Writes a snapshot of a paused machine into `dir` (created if missing).
pub fn write(
    dir: &Path,
    config: &Cli,
    state: &MachineState,
    ram: &GuestRam,
) -> anyhow::Result<SavedMemory> {
    if !dir.is_dir() {
        std::fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let blob = vmm_snapshot::encode(state)?;
    let config = serde_json::to_vec_pretty(config).context("cannot encode the configuration")?;
    let temp = |name: &str| dir.join(format!(".{name}.tmp"));
    let mut temporaries = Temporaries(Vec::new());
    let mut put = |name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let path = temp(name);
        let mut file = create(&path)?;
        temporaries.0.push(path.clone());
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))
    };
    put(CONFIG_FILE, &config)?;
    put(STATE_FILE, &blob)?;
    let memory_path = temp(MEMORY_FILE);
    let memory = create(&memory_path)?;
    temporaries.0.push(memory_path.clone());
    let saved = ram.save_to(&memory)?;
    memory.sync_all().with_context(|| format!("cannot write {}", memory_path.display()))?;
    // The old snapshot stops being one, then the new one's files take their
    // names, the state last.
    match std::fs::remove_file(dir.join(STATE_FILE)) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).context(format!("cannot replace {}", dir.join(STATE_FILE).display()));
        }
        _ => {}
    }
    for name in [CONFIG_FILE, MEMORY_FILE, STATE_FILE] {
        std::fs::rename(temp(name), dir.join(name))
            .with_context(|| format!("cannot rename {} into place", temp(name).display()))?;
    }
    temporaries.0.clear();
    Ok(saved)
}

/// A snapshot read back, checked, ready to build a machine from.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration it was taken with.
    pub config: Cli,
    /// The machine state.
    pub state: MachineState,
    /// The memory file, opened read-only, its size checked.
    pub memory: File,
}

/// Reads and checks the snapshot in `dir`.
pub fn read(dir: &Path) -> anyhow::Result<Snapshot> {
    let in_dir = |name: &str| dir.join(name);
    let read = |name: &str| {
        std::fs::read(in_dir(name))
            .with_context(|| format!("cannot read {}", in_dir(name).display()))
    };
    let state_bytes = read(STATE_FILE)?;
    let state: MachineState = vmm_snapshot::decode(&state_bytes).with_context(|| {
        format!("{} is not a usable machine state", in_dir(STATE_FILE).display())
    })?;
    let config: Cli = serde_json::from_slice(&read(CONFIG_FILE)?).with_context(|| {
        format!("{} is not a usable configuration", in_dir(CONFIG_FILE).display())
    })?;
    if state.vcpus.len() != usize::from(config.cpus) {
        bail!(
            "the snapshot's state has {} vCPUs, its configuration {}",
            state.vcpus.len(),
            config.cpus
        );
    }
    let memory_path = in_dir(MEMORY_FILE);
    let memory = File::open(&memory_path)
        .with_context(|| format!("cannot open {}", memory_path.display()))?;
    let found =
        memory.metadata().with_context(|| format!("cannot stat {}", memory_path.display()))?;
    let expected = config.memory.saturating_mul(1 << 20);
    if found.len() != expected {
        bail!(
            "{} holds {} bytes, but the snapshot's guest has {expected} bytes of RAM",
            memory_path.display(),
            found.len()
        );
    }
    Ok(Snapshot { config, state, memory })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_options_take_cloud_hypervisors_syntax() {
        let option = parse_restore("source_url=file:///tmp/snap").unwrap();
        assert_eq!(option, RestoreOption { dir: "/tmp/snap".into(), resume: false });
        let option = parse_restore("source_url=file:///tmp/snap,resume=on").unwrap();
        assert!(option.resume);
        assert!(parse_restore("resume=on").is_err());
        assert!(parse_restore("source_url=/tmp/snap").is_err());
        assert!(parse_restore("source_url=file://relative").is_err());
        assert!(parse_restore("source_url=file:///tmp/s,resume=yes").is_err());
        assert!(parse_restore("source_url=file:///tmp/s,prefault=on").is_err());
    }
}
