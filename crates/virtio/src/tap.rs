//! Linux tap devices for virtio-net: a [`Tap`] opened through
//! `/dev/net/tun` with a virtio-net header on every frame, the
//! [`TapIo`] trait the network device works through, and
//! [`SocketTap`], a tap stand-in on a datagram socket pair for tests,
//! fuzzing or a user-space network.

use std::ffi::c_char;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;

/// The tun/tap clone device.
pub const TUN_PATH: &str = "/dev/net/tun";
/// The size of the virtio-net header on every frame (`struct
/// virtio_net_hdr_v1`, with `num_buffers`, which VERSION_1 requires).
pub const VNET_HDR_LEN: usize = 12;

/// Offload flags of `TUNSETOFFLOAD`: what the kernel may hand the reader
/// (checksum left to do, TCP segments larger than the MTU).
pub use libc::{TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6};

/// Errors of opening and configuring a tap device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name cannot be an interface name.
    #[error("tap name {name:?} is not a valid interface name: {why}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {TUN_PATH} for tap {name:?}: {source}{}", open_hint(source))]
    OpenTun {
        /// The tap.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// TUNSETIFF failed: the tap could be neither created nor attached.
    #[error("cannot create or attach tap {name:?}: {source}{}", attach_hint(source))]
    Attach {
        /// The tap.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// TUNSETVNETHDRSZ failed.
    #[error(
        "tap {name:?}: cannot set its virtio-net header size to {VNET_HDR_LEN} bytes: {source}"
    )]
    VnetHeader {
        /// The tap.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// TUNSETOFFLOAD failed.
    #[error("tap {name:?}: cannot set offloads {flags:#x} ({}): {source}", offload_names(*flags))]
    Offload {
        /// The tap.
        name: String,
        /// The `TUN_F_*` flags.
        flags: u32,
        /// The OS error.
        source: io::Error,
    },
    /// The socket through which interfaces are configured could not be made.
    #[error("tap {name:?}: cannot open a socket to configure it: {source}")]
    Socket {
        /// The tap.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// SIOCSIFADDR failed.
    #[error("tap {name:?}: cannot set its IPv4 address to {addr}: {source}")]
    Address {
        /// The tap.
        name: String,
        /// The address.
        addr: Ipv4Addr,
        /// The OS error.
        source: io::Error,
    },
    /// The netmask is not a run of ones followed by zeros.
    #[error("tap {name:?}: {mask} is not a netmask (ones, then zeros, like 255.255.255.0)")]
    InvalidNetmask {
        /// The tap.
        name: String,
        /// The mask.
        mask: Ipv4Addr,
    },
    /// SIOCSIFNETMASK failed.
    #[error("tap {name:?}: cannot set its netmask to {mask}: {source}")]
    Netmask {
        /// The tap.
        name: String,
        /// The mask.
        mask: Ipv4Addr,
        /// The OS error.
        source: io::Error,
    },
    /// SIOCGIFFLAGS or SIOCSIFFLAGS failed.
    #[error("tap {name:?}: cannot bring the link up: {source}")]
    LinkUp {
        /// The tap.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// SIOCSIFHWADDR failed.
    #[error("tap {name:?}: cannot set the host side's MAC address: {source}")]
    HostMac {
        /// The tap.
        name: String,
        /// The OS error.
        source: io::Error,
    },
}

fn open_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ENOENT | libc::ENODEV) => " (is the tun module loaded?)",
        Some(libc::EACCES | libc::EPERM) => " (no permission to use tun/tap devices)",
        _ => "",
    }
}

fn attach_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EPERM) => {
            " (creating a tap needs CAP_NET_ADMIN; an existing persistent tap must belong to this \
             user or group)"
        }
        Some(libc::EBUSY) => " (another process has it open)",
        Some(libc::EINVAL) => {
            " (a network interface of that name exists and is not a single-queue tap device)"
        }
        _ => "",
    }
}

/// The names of `TUN_F_*` offload flags, for messages.
pub fn offload_names(flags: u32) -> String {
    const NAMES: [(u32, &str); 4] = [
        (TUN_F_CSUM, "checksum"),
        (TUN_F_TSO4, "TSO4"),
        (TUN_F_TSO6, "TSO6"),
        (TUN_F_TSO_ECN, "TSO ECN"),
    ];
    let mut names: Vec<String> = NAMES
        .iter()
        .filter(|(flag, _)| flags & flag != 0)
        .map(|(_, name)| name.to_string())
        .collect();
    let known = NAMES.iter().fold(0, |all, (flag, _)| all | flag);
    if flags & !known != 0 {
        names.push(format!("unknown {:#x}", flags & !known));
    }
    if names.is_empty() { "none".to_string() } else { names.join(", ") }
}

/// What a virtio-net device needs of its host side: frames in and out,
/// each with its 12-byte virtio-net header, the offloads the guest agreed
/// to, and a descriptor ([`AsRawFd`]) that becomes readable when a frame
/// can be read.
pub trait TapIo: AsRawFd + Send {
    /// Reads one frame (header included) into `buf` without blocking:
    /// `ErrorKind::WouldBlock` when there is none.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one frame (header included).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;

    /// Sets the offloads (`TUN_F_*`) of frames this side may hand
    /// [`TapIo::read`]: checksums left to do, segments larger than the MTU.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
}

/// A tap device: an Ethernet interface of the host whose frames this
/// process sends and receives, each with a virtio-net header.
///
/// It is not persistent: a tap this creates disappears when it is
/// dropped; a persistent one (made with `ip tuntap add NAME mode tap`)
/// stays.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// An all-zero `ifreq` naming `name` (at most 15 bytes, checked by the
/// caller).
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is a C struct of a byte array and a union of integers,
    // arrays, sockaddrs and a pointer; all zeroes is a valid value of each.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, &byte) in request.ifr_name.iter_mut().zip(name.as_bytes()) {
        *slot = byte as c_char;
    }
    request
}

fn check_name(name: &str) -> Result<(), Error> {
    let invalid = |why| Err(Error::InvalidName { name: name.to_string(), why });
    if name.is_empty() {
        invalid("it is empty")
    } else if name.len() >= libc::IFNAMSIZ {
        invalid("it is longer than 15 bytes")
    } else if name.bytes().any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace()) {
        invalid("it contains a NUL byte, a slash or white space")
    } else {
        Ok(())
    }
}

impl Tap {
    /// Creates the tap `name`, or attaches to the persistent tap of that
    /// name: Ethernet frames without packet information, each with a
    /// 12-byte virtio-net header, non-blocking, no offloads yet. A `%d` in
    /// the name lets the kernel pick a free number (see [`Tap::name`]).
    pub fn open(name: &str) -> Result<Tap, Error> {
        check_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_PATH)
            .map_err(|source| Error::OpenTun { name: name.to_string(), source })?;
        let mut request = ifreq(name);
        request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which lives for the
        // whole call; the descriptor is the tun device we just opened.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) } < 0 {
            return Err(Error::Attach {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        // The kernel's name for it (a `%d` replaced), NUL-terminated.
        let bytes: Vec<u8> =
            request.ifr_name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        let name = String::from_utf8_lossy(&bytes).into_owned();
        let header_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at a live local; the descriptor is our tap.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) } < 0 {
            return Err(Error::VnetHeader { name, source: io::Error::last_os_error() });
        }
        let tap = Tap { file, name };
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// The interface's name (as the kernel completed it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the offloads (`TUN_F_*`) of the frames the kernel hands this
    /// tap's reader. Without TUN_F_CSUM every frame comes fully
    /// checksummed and no larger than the MTU.
    pub fn set_offload(&self, flags: u32) -> Result<(), Error> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
        // passed. The descriptor is our tap.
        let done = unsafe {
            libc::ioctl(self.file.as_raw_fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags))
        };
        if done < 0 {
            return Err(Error::Offload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn socket(&self) -> Result<OwnedFd, Error> {
        // SAFETY: socket() takes no pointers; a valid descriptor it returns
        // is owned by nobody else.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(Error::Socket {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Runs a SIOCSIF* `request` carrying an IPv4 address.
    fn set_inet(&self, socket: &OwnedFd, request: libc::c_ulong, addr: Ipv4Addr) -> io::Result<()> {
        let mut ifr = ifreq(&self.name);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
            sin_zero: [0; 8],
        };
        const _: () = assert!(size_of::<libc::sockaddr_in>() == size_of::<libc::sockaddr>());
        // SAFETY: sockaddr_in and sockaddr have the same size (checked
        // above) and both are plain C data; the union field is overwritten
        // whole.
        ifr.ifr_ifru.ifru_addr =
            unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) };
        // SAFETY: the request reads one ifreq, a live local, for the call.
        if unsafe { libc::ioctl(socket.as_raw_fd(), request, &ifr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Gives the host side of the link the IPv4 address `addr` with
    /// netmask `mask` (the route to the guest's subnet comes with it).
    pub fn set_ipv4(&self, addr: Ipv4Addr, mask: Ipv4Addr) -> Result<(), Error> {
        let bits = u32::from(mask);
        if bits.leading_ones() + bits.trailing_zeros() != 32 {
            return Err(Error::InvalidNetmask { name: self.name.clone(), mask });
        }
        let socket = self.socket()?;
        self.set_inet(&socket, libc::SIOCSIFADDR, addr).map_err(|source| Error::Address {
            name: self.name.clone(),
            addr,
            source,
        })?;
        self.set_inet(&socket, libc::SIOCSIFNETMASK, mask).map_err(|source| Error::Netmask {
            name: self.name.clone(),
            mask,
            source,
        })
    }

    /// Sets the host side's MAC address (a tap made again, as by a
    /// snapshot's restore, then keeps the one the guest knows).
    pub fn set_host_mac(&self, mac: [u8; 6]) -> Result<(), Error> {
        let socket = self.socket()?;
        let mut ifr = ifreq(&self.name);
        let mut data = [0 as libc::c_char; 14];
        for (to, from) in data.iter_mut().zip(mac) {
            *to = from as libc::c_char;
        }
        ifr.ifr_ifru.ifru_hwaddr =
            libc::sockaddr { sa_family: libc::ARPHRD_ETHER as libc::sa_family_t, sa_data: data };
        // SAFETY: SIOCSIFHWADDR reads the ifreq, a live local, for the call.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFHWADDR, &ifr) } < 0 {
            return Err(Error::HostMac {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Brings the link up (without it the kernel takes no frames from the
    /// tap and sends none to it).
    pub fn set_up(&self) -> Result<(), Error> {
        let socket = self.socket()?;
        let error = |source| Error::LinkUp { name: self.name.clone(), source };
        let mut ifr = ifreq(&self.name);
        // SAFETY: SIOCGIFFLAGS writes the flags into the ifreq, a live
        // local, and reads its name.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
            return Err(error(io::Error::last_os_error()));
        }
        // SAFETY: SIOCGIFFLAGS just set the flags member of the union.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as i16;
        // SAFETY: SIOCSIFFLAGS reads the ifreq, a live local.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
            return Err(error(io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl TapIo for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        Tap::set_offload(self, flags).map_err(|err| {
            let kind = match &err {
                Error::Offload { source, .. } => source.kind(),
                _ => io::ErrorKind::Other,
            };
            io::Error::new(kind, err.to_string())
        })
    }
}

/// A tap stand-in: one end of a Unix datagram socket pair, one frame
/// (virtio-net header first) per datagram. Offloads are only recorded;
/// whoever holds the other end must honour [`SocketTap::offloads`].
#[derive(Debug)]
pub struct SocketTap {
    socket: UnixDatagram,
    offloads: u32,
    offload_calls: usize,
}

impl SocketTap {
    /// A connected pair: the device's end and the network's end, both
    /// non-blocking.
    pub fn pair() -> io::Result<(SocketTap, UnixDatagram)> {
        let (device, network) = UnixDatagram::pair()?;
        device.set_nonblocking(true)?;
        network.set_nonblocking(true)?;
        Ok((SocketTap { socket: device, offloads: 0, offload_calls: 0 }, network))
    }

    /// The offloads last set.
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    /// How often offloads were set.
    pub fn offload_calls(&self) -> usize {
        self.offload_calls
    }
}

impl TapIo for SocketTap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.recv(buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.send(buf)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.offloads = flags;
        self.offload_calls += 1;
        Ok(())
    }
}

impl AsRawFd for SocketTap {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// Host-side helpers for tests on real taps: a fresh network namespace,
/// a packet socket, interface queries.
#[cfg(test)]
pub(crate) mod test_host {
    use super::*;

    /// Runs `f` on a thread of its own in a new network namespace (where
    /// taps and addresses touch nothing of the host's); None, with a
    /// note, when this process may not make one (not root).
    pub fn in_new_netns<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare takes flags only; it moves this thread (only)
            // to a new network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "skipped: cannot make a network namespace: {}",
                    io::Error::last_os_error()
                );
                return None;
            }
            if !std::path::Path::new(TUN_PATH).exists() {
                eprintln!("skipped: no {TUN_PATH}");
                return None;
            }
            Some(f())
        });
        thread.join().unwrap()
    }

    fn inet_socket() -> OwnedFd {
        // SAFETY: socket() takes no pointers; the new descriptor is ours.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: fd is a new descriptor nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// The interface's index; 0 when there is none of that name.
    pub fn ifindex(name: &str) -> u32 {
        let name = std::ffi::CString::new(name).unwrap();
        // SAFETY: if_nametoindex reads the NUL-terminated name, alive for the call.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    }

    /// One SIOCGIF* query of an IPv4 address (SIOCGIFADDR, SIOCGIFNETMASK).
    pub fn inet(name: &str, request: libc::c_ulong) -> Ipv4Addr {
        let socket = inet_socket();
        let mut ifr = ifreq(name);
        // SAFETY: the request fills the ifreq, a live local.
        let done = unsafe { libc::ioctl(socket.as_raw_fd(), request, &mut ifr) };
        assert_eq!(done, 0, "query of {name}: {}", io::Error::last_os_error());
        // SAFETY: the query set the address member, a sockaddr_in in
        // sockaddr's clothes (same size).
        let sin = unsafe {
            std::mem::transmute::<libc::sockaddr, libc::sockaddr_in>(ifr.ifr_ifru.ifru_addr)
        };
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
    }

    /// The interface's flags (IFF_UP, ...).
    pub fn flags(name: &str) -> i32 {
        let socket = inet_socket();
        let mut ifr = ifreq(name);
        // SAFETY: SIOCGIFFLAGS fills the ifreq, a live local.
        let done = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) };
        assert_eq!(done, 0, "flags of {name}: {}", io::Error::last_os_error());
        // SAFETY: SIOCGIFFLAGS set the flags member.
        i32::from(unsafe { ifr.ifr_ifru.ifru_flags })
    }

    /// ethtool's "get TX checksumming" command.
    pub const ETHTOOL_GTXCSUM: u32 = 0x16;
    /// ethtool's "get TSO" command.
    pub const ETHTOOL_GTSO: u32 = 0x1e;

    /// One ethtool "get" of a feature (1 on, 0 off).
    pub fn ethtool(name: &str, command: u32) -> u32 {
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        let mut value = EthtoolValue { cmd: command, data: 0 };
        let socket = inet_socket();
        let mut ifr = ifreq(name);
        ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
        // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_value it
        // points at and writes the latter; both live for the call.
        let done = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
        assert_eq!(done, 0, "ethtool {command:#x} on {name}: {}", io::Error::last_os_error());
        value.data
    }

    /// A raw packet socket on one interface: the other end of a tap.
    #[derive(Debug)]
    pub struct PacketSocket(OwnedFd);

    impl PacketSocket {
        /// A non-blocking packet socket for every protocol on `ifindex`.
        pub fn bind(ifindex: u32) -> PacketSocket {
            let protocol = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: socket() takes no pointers; the new descriptor is ours.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    i32::from(protocol),
                )
            };
            assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
            // SAFETY: fd is a new descriptor nothing else owns.
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: all zeroes is a valid sockaddr_ll (plain integers).
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = protocol;
            addr.sll_ifindex = ifindex as i32;
            // SAFETY: bind reads `size_of::<sockaddr_ll>()` bytes of addr, a
            // live local of that type.
            let done = unsafe {
                libc::bind(
                    socket.as_raw_fd(),
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(done, 0, "bind to interface {ifindex}: {}", io::Error::last_os_error());
            PacketSocket(socket)
        }

        /// Sends one Ethernet frame out of the interface (into the tap).
        pub fn send(&self, frame: &[u8]) {
            // SAFETY: send reads frame.len() bytes of frame, alive for the call.
            let sent =
                unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            assert_eq!(sent, frame.len() as isize, "send: {}", io::Error::last_os_error());
        }

        /// Receives the next frame the interface saw, if one is there.
        pub fn recv(&self, buf: &mut [u8]) -> Option<usize> {
            // SAFETY: recv writes at most buf.len() bytes into buf.
            let got =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            usize::try_from(got).ok()
        }
    }

    /// Waits up to two seconds for `fd` to become readable.
    pub fn wait_readable(fd: RawFd) -> bool {
        let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: poll reads and writes one pollfd, a live local.
        unsafe { libc::poll(&mut poll, 1, 2000) == 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_the_kernel_sees_them() {
        for (name, why) in [
            ("", "empty"),
            ("a-very-long-name", "longer than 15"),
            ("a/b", "slash"),
            ("a b", "white space"),
            ("a\0b", "NUL"),
        ] {
            let err = Tap::open(name).unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{name:?}: {err}");
            let message = err.to_string();
            assert!(message.contains(why) && message.contains(&format!("{name:?}")), "{message}");
        }
    }

    #[test]
    fn offload_names_in_messages() {
        assert_eq!(offload_names(0), "none");
        assert_eq!(offload_names(TUN_F_CSUM | TUN_F_TSO6), "checksum, TSO6");
        assert_eq!(offload_names(0x101), "checksum, unknown 0x100");
        let err = Error::Offload {
            name: "tap0".into(),
            flags: TUN_F_CSUM | TUN_F_TSO4,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert_eq!(
            err.to_string(),
            "tap \"tap0\": cannot set offloads 0x3 (checksum, TSO4): Invalid argument (os error 22)"
        );
        let err = Error::Attach {
            name: "tap0".into(),
            source: io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert!(err.to_string().contains("another process has it open"), "{err}");
    }

    #[test]
    fn a_real_tap_is_created_configured_and_gone_when_dropped() {
        test_host::in_new_netns(|| {
            let tap = Tap::open("vmmt%d").unwrap();
            let name = tap.name().to_string();
            assert!(name.starts_with("vmmt") && !name.contains('%'), "{name}");
            assert_ne!(test_host::ifindex(&name), 0);
            // The kernel takes every combination the device asks for.
            for flags in [
                TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
                TUN_F_CSUM | TUN_F_TSO6,
                TUN_F_CSUM,
            ] {
                tap.set_offload(flags).unwrap();
            }
            assert_eq!(test_host::ethtool(&name, test_host::ETHTOOL_GTXCSUM), 1);
            assert_eq!(test_host::ethtool(&name, test_host::ETHTOOL_GTSO), 0);
            // Segmentation without checksum offload is refused.
            let err = tap.set_offload(TUN_F_TSO4).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "tap {name:?}: cannot set offloads 0x2 (TSO4): Invalid argument (os error 22)"
                )
            );
            let (addr, mask) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(255, 255, 255, 252));
            tap.set_ipv4(addr, mask).unwrap();
            assert_eq!(test_host::inet(&name, libc::SIOCGIFADDR), addr);
            assert_eq!(test_host::inet(&name, libc::SIOCGIFNETMASK), mask);
            assert_eq!(test_host::flags(&name) & libc::IFF_UP, 0);
            tap.set_up().unwrap();
            assert_ne!(test_host::flags(&name) & libc::IFF_UP, 0);
            let err = tap.set_ipv4(addr, Ipv4Addr::new(255, 0, 255, 0)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "tap {name:?}: 255.0.255.0 is not a netmask (ones, then zeros, like \
                     255.255.255.0)"
                )
            );
            // Only one user at a time.
            let err = Tap::open(&name).unwrap_err();
            assert!(matches!(&err, Error::Attach { .. }), "{err}");
            assert!(err.to_string().contains("another process has it open"), "{err}");
            // Not persistent: gone with its descriptor.
            drop(tap);
            assert_eq!(test_host::ifindex(&name), 0);
            // Something that is not a tap.
            let err = Tap::open("lo").unwrap_err();
            assert!(err.to_string().contains("is not a single-queue tap"), "{err}");
        });
    }

    #[test]
    fn socket_tap_carries_datagrams_and_records_offloads() {
        let (mut tap, network) = SocketTap::pair().unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(tap.read(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        network.send(b"frame one").unwrap();
        network.send(b"two").unwrap();
        assert_eq!(tap.read(&mut buf).unwrap(), 9);
        assert_eq!(tap.read(&mut buf).unwrap(), 3);
        tap.write(b"out").unwrap();
        assert_eq!(network.recv(&mut buf).unwrap(), 3);
        TapIo::set_offload(&mut tap, TUN_F_CSUM).unwrap();
        assert_eq!((tap.offloads(), tap.offload_calls()), (TUN_F_CSUM, 1));
    }
}
