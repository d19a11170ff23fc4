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

/// A `--net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap device's name.
    pub tap: String,
    /// The guest's MAC address; default one derived from the tap's name.
    pub mac: [u8; 6],
    /// The host side's address and netmask, set on the tap (and the link
    /// brought up) when given.
    pub host: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
}

/// A stable, locally administered, unicast MAC for `tap`: 06:00 and 32
/// bits of an FNV-1a hash of the name.
fn default_mac(tap: &str) -> [u8; 6] {
    let hash =
        tap.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    let [a, b, c, d] = hash.to_be_bytes();
    [0x06, 0x00, a, b, c, d]
}

fn parse_mac(value: &str) -> anyhow::Result<[u8; 6]> {
    let parts: Vec<&str> = value.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        bail!("mac={value}: expected six hexadecimal bytes like 06:00:ac:10:00:02");
    }
    for (byte, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            bail!("mac={value}: expected six hexadecimal bytes like 06:00:ac:10:00:02");
        }
        *byte = u8::from_str_radix(part, 16)
            .with_context(|| format!("mac={value}: {part:?} is not a hexadecimal byte"))?;
    }
    if mac[0] & 1 != 0 {
        bail!("mac={value}: a multicast address cannot be a guest's address");
    }
    Ok(mac)
}

/// Parses `tap=NAME[,mac=MAC][,ip=ADDR,mask=MASK]`.
pub fn parse_net(value: &str) -> anyhow::Result<NetConfig> {
    let parse = || -> anyhow::Result<NetConfig> {
        let (mut tap, mut mac, mut ip, mut mask) = (None, None, None, None);
        for (key, value) in pairs(value, &["tap", "mac", "ip", "mask"])? {
            let address = |value: &str| {
                value
                    .parse::<std::net::Ipv4Addr>()
                    .with_context(|| format!("{key}={value}: not an IPv4 address"))
            };
            match key {
                "tap" if value.is_empty() || value.len() >= 16 => {
                    bail!("tap={value}: a tap's name has 1 to 15 characters")
                }
                "tap" => tap = Some(value.to_owned()),
                "mac" => mac = Some(parse_mac(value)?),
                "ip" => ip = Some(address(value)?),
                _ => mask = Some(address(value)?),
            }
        }
        let Some(tap) = tap else { bail!("tap=NAME is missing") };
        let host = match (ip, mask) {
            (Some(ip), Some(mask)) => Some((ip, mask)),
            (None, None) => None,
            _ => bail!("ip= and mask= go together"),
        };
        let mac = mac.unwrap_or_else(|| default_mac(&tap));
        Ok(NetConfig { tap, mac, host })
    };
    parse().with_context(|| format!("--net {value}"))
}

/// A `--vsock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 and up: 0-2 are reserved).
    pub cid: u64,
    /// The Unix socket host programs connect to; guest connections to host
    /// port P go to `PATH_P`.
    pub socket: PathBuf,
}

/// Parses `cid=N,socket=PATH`.
pub fn parse_vsock(value: &str) -> anyhow::Result<VsockConfig> {
    let parse = || -> anyhow::Result<VsockConfig> {
        let (mut cid, mut socket) = (None, None);
        for (key, value) in pairs(value, &["cid", "socket"])? {
            match key {
                "cid" => {
                    let parsed: u64 =
                        value.parse().with_context(|| format!("cid={value}: not a number"))?;
                    if !(3..u64::from(u32::MAX)).contains(&parsed) {
                        bail!(
                            "cid={value}: 0, 1 and 2 are reserved (the host is 2); give 3 or more"
                        );
                    }
                    cid = Some(parsed);
                }
                _ if value.is_empty() => bail!("socket= is empty"),
                _ => socket = Some(PathBuf::from(value)),
            }
        }
        let Some(cid) = cid else { bail!("cid=N is missing") };
        let Some(socket) = socket else { bail!("socket=PATH is missing") };
        Ok(VsockConfig { cid, socket })
    };
    parse().with_context(|| format!("--vsock {value}"))
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
    fn nets_take_a_tap_a_mac_and_a_host_address() {
        let net = parse_net("tap=vmm0,mac=06:00:ac:10:00:02,ip=169.254.1.1,mask=255.255.255.252")
            .unwrap();
        assert_eq!(net.tap, "vmm0");
        assert_eq!(net.mac, [6, 0, 0xac, 0x10, 0, 2]);
        assert_eq!(
            net.host,
            Some(("169.254.1.1".parse().unwrap(), "255.255.255.252".parse().unwrap()))
        );
        let default = parse_net("tap=vmm0").unwrap();
        assert_eq!(default.host, None);
        assert_eq!(default.mac, parse_net("tap=vmm0").unwrap().mac, "stable");
        assert_ne!(default.mac, parse_net("tap=vmm1").unwrap().mac);
        assert_eq!(default.mac[0] & 3, 2, "locally administered unicast");
        for bad in [
            "",
            "mac=06:00:00:00:00:01",
            "tap=",
            "tap=0123456789abcdef",
            "tap=t,mac=06:00:00:00:00",
            "tap=t,mac=06:00:00:00:00:zz",
            "tap=t,mac=01:00:00:00:00:01",
            "tap=t,ip=169.254.1.1",
            "tap=t,ip=169.254.1,mask=255.255.255.0",
            "tap=t,speed=10",
        ] {
            assert!(parse_net(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn vsock_takes_a_cid_of_3_or_more_and_a_socket() {
        let vsock = parse_vsock("cid=3,socket=/tmp/v.sock").unwrap();
        assert_eq!(vsock, VsockConfig { cid: 3, socket: "/tmp/v.sock".into() });
        for bad in [
            "",
            "cid=3",
            "socket=/tmp/v",
            "cid=2,socket=/tmp/v",
            "cid=x,socket=/tmp/v",
            "cid=3,socket=",
            "cid=3,socket=/a,port=1",
        ] {
            assert!(parse_vsock(bad).is_err(), "{bad:?} accepted");
        }
        let err = format!("{:#}", parse_vsock("cid=1,socket=/tmp/v").unwrap_err());
        assert!(err.contains("reserved"), "{err}");
    }

    #[test]
    fn rng_source_defaults_to_urandom() {
        assert_eq!(parse_rng("").unwrap().src, PathBuf::from("/dev/urandom"));
        assert_eq!(parse_rng("src=/dev/zero").unwrap().src, PathBuf::from("/dev/zero"));
        assert!(parse_rng("source=/dev/zero").is_err());
        assert!(parse_rng("src=").is_err());
    }
}
