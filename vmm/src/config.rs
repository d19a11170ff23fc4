//! Device options in Cloud Hypervisor's `key=value,key=value` syntax.

use std::path::PathBuf;

use anyhow::{Context, bail};

/// A `--disk`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The image file or block device.
    pub path: PathBuf,
    /// The guest sees a read-only disk.
    pub readonly: bool,
    /// The serial (GET_ID); default the file's name.
    pub id: Option<String>,
}

/// A `--rng`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RngConfig {
    /// Where the bytes come from.
    pub src: PathBuf,
}

/// The `key=value` pairs of an option, each key known and given once.
fn pairs<'a>(value: &'a str, keys: &[&str]) -> anyhow::Result<Vec<(&'a str, &'a str)>> {
    let mut seen = Vec::new();
    for item in value.split(',').filter(|item| !item.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            bail!("'{item}' is not key=value (keys: {})", keys.join(", "));
        };
        if !keys.contains(&key) {
            bail!("unknown key '{key}' (keys: {})", keys.join(", "));
        }
        if seen.iter().any(|(k, _)| *k == key) {
            bail!("'{key}' given twice");
        }
        seen.push((key, value));
    }
    Ok(seen)
}

fn on_off(key: &str, value: &str) -> anyhow::Result<bool> {
    match value {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => bail!("{key}={value}: expected on or off"),
    }
}

/// Parses `path=FILE[,readonly=on|off][,id=NAME]`.
pub fn parse_disk(value: &str) -> anyhow::Result<DiskConfig> {
    let parse = || -> anyhow::Result<DiskConfig> {
        let mut disk = DiskConfig { path: PathBuf::new(), readonly: false, id: None };
        for (key, value) in pairs(value, &["path", "readonly", "id"])? {
            match key {
                "path" if value.is_empty() => bail!("path= is empty"),
                "path" => disk.path = value.into(),
                "readonly" => disk.readonly = on_off(key, value)?,
                _ => disk.id = Some(value.to_owned()),
            }
        }
        if disk.path.as_os_str().is_empty() {
            bail!("path=FILE is missing");
        }
        Ok(disk)
    };
    parse().with_context(|| format!("--disk {value}"))
}

/// Parses `[src=PATH]`.
pub fn parse_rng(value: &str) -> anyhow::Result<RngConfig> {
    let parse = || -> anyhow::Result<RngConfig> {
        let mut rng = RngConfig { src: "/dev/urandom".into() };
        for (_, value) in pairs(value, &["src"])? {
            if value.is_empty() {
                bail!("src= is empty");
            }
            rng.src = value.into();
        }
        Ok(rng)
    };
    parse().with_context(|| format!("--rng {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_take_path_readonly_and_id() {
        let disk = parse_disk("path=/a.img,readonly=on,id=root").unwrap();
        assert_eq!(
            disk,
            DiskConfig { path: "/a.img".into(), readonly: true, id: Some("root".into()) }
        );
        assert!(!parse_disk("path=/a.img").unwrap().readonly);
        for bad in [
            "",
            "readonly=on",
            "path=",
            "path=a,size=1",
            "path=a,readonly=yes",
            "a.img",
            "path=a,path=b",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad:?} accepted");
        }
        let err = format!("{:#}", parse_disk("path=a,size=1").unwrap_err());
        assert_eq!(err, "--disk path=a,size=1: unknown key 'size' (keys: path, readonly, id)");
    }

    #[test]
    fn rng_source_defaults_to_urandom() {
        assert_eq!(parse_rng("").unwrap().src, PathBuf::from("/dev/urandom"));
        assert_eq!(parse_rng("src=/dev/zero").unwrap().src, PathBuf::from("/dev/zero"));
        assert!(parse_rng("source=/dev/zero").is_err());
        assert!(parse_rng("src=").is_err());
    }
}
