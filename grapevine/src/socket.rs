//! Multicast socket setup: pinned to one interface, loopback by default.
//!
//! This module creates the UDP sockets the drivers read and write. It does no
//! I/O itself: [`bind_receiver`] and [`bind_sender`] return a configured
//! [`MulticastSocket`] that wraps a plain (blocking) [`std::net::UdpSocket`].
//!
//! Every socket made here has its multicast interface set (`IP_MULTICAST_IF` /
//! `IPV6_MULTICAST_IF`) to the configured [`Interface`]. A multicast socket
//! without one follows the default route out of the real network card, so
//! there is no way to get such a socket from this module. The default
//! interface is loopback with a TTL of 0: nothing leaves the host unless the
//! user names a real interface **and** raises the TTL.
//!
//! # Sending and receiving on loopback
//!
//! ```
//! use std::time::Duration;
//! use grapevine::socket::{bind_receiver, bind_sender, MulticastConfig};
//!
//! let mut config = MulticastConfig::default();
//! config.group("239.255.28.1".parse()?).port(28001);
//!
//! // Subscribers: any number of them may share the group and port.
//! let receiver = bind_receiver(&config)?;
//! // Publisher: bound to 127.0.0.1 with an ephemeral port.
//! let sender = bind_sender(&config)?;
//!
//! sender.socket().send_to(b"hello", config.group_addr())?;
//!
//! let mut buf = [0u8; 64];
//! receiver.socket().set_read_timeout(Some(Duration::from_secs(5)))?;
//! let (n, from) = receiver.socket().recv_from(&mut buf)?;
//! assert_eq!(&buf[..n], b"hello");
//! // The source is the publisher's unicast address: NAKs can go back there.
//! assert_eq!(from, sender.local_addr()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Choosing an interface
//!
//! [`Interface::Loopback`] (the default) keeps all traffic on this host.
//! Reaching other hosts is an explicit choice: name the interface and raise
//! the TTL, which is 0 by default so the kernel never puts a datagram on a
//! wire even if the interface is a real one.
//!
//! ```
//! use grapevine::socket::{Interface, MulticastConfig};
//!
//! let mut config = MulticastConfig::default();
//! config.interface(Interface::name("eth0")).ttl(1);
//! // Nothing is resolved until a socket is bound; `validate` checks the rest.
//! config.validate()?;
//! # Ok::<(), grapevine::socket::SocketError>(())
//! ```
//!
//! # What was verified on Linux (kernel 6.18)
//!
//! * **IPv4 over `lo`** works with TTL 0 and TTL 1 alike, and on `lo` even
//!   with `IP_MULTICAST_LOOP` off. TTL 0 is the default because it also makes
//!   the kernel drop the on-the-wire copy on a real interface, keeping only
//!   the local loop copy.
//! * **IPv6 over `lo` does not work.** `lo` has no `MULTICAST` flag and no
//!   `ff00::/8` route, so a send fails with `ENETUNREACH`; adding the route
//!   by hand (as root) does not help either, the datagram is dropped on
//!   output; nor does setting the flag (`ip link set lo multicast on`):
//!   checked again on 2026-11-30 in a network namespace, the publisher sent
//!   114 datagrams with both and the subscriber heard none. Binding an IPv6
//!   group on a loopback interface, or on any without the `MULTICAST` flag,
//!   is therefore refused with
//!   [`SocketError::Ipv6MulticastUnsupported`]. IPv6 multicast works on a
//!   multicast-capable interface, such as a veth pair inside a network
//!   namespace, with hop limit 0 or an interface-local `ff01::/16` group: both
//!   make the kernel deliver only the local loop copy.
//!
//! # Buffers
//!
//! [`MulticastConfig::recv_buffer`] and [`MulticastConfig::send_buffer`] are
//! requests. The kernel caps them (`net.core.rmem_max` / `wmem_max` on Linux)
//! and Linux reports twice the granted size to account for bookkeeping.
//! [`MulticastSocket::recv_buffer`] and [`MulticastSocket::send_buffer`]
//! report what was granted.
//!
//! # Tokio
//!
//! With the `runtime-tokio` feature (on by default),
//! [`MulticastSocket::into_tokio`] turns a socket into a nonblocking
//! [`tokio::net::UdpSocket`].

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};

use nix::ifaddrs::getifaddrs;
use nix::net::if_::{if_indextoname, if_nametoindex, InterfaceFlags};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The default multicast group: `239.255.77.77`, in the IPv4 organisation-local
/// scope (239.255.0.0/16).
pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 77);

/// The default UDP port: 7777.
pub const DEFAULT_PORT: u16 = 7777;

/// The default receive buffer request: 4 MiB, room for a burst of a few
/// thousand datagrams while the reader is descheduled.
pub const DEFAULT_RECV_BUFFER: usize = 4 * 1024 * 1024;

/// The default send buffer request: 1 MiB.
pub const DEFAULT_SEND_BUFFER: usize = 1024 * 1024;

/// The default multicast TTL (IPv4) / hop limit (IPv6): 0, so that no
/// datagram ever leaves this host.
pub const DEFAULT_TTL: u32 = 0;

/// The network interface a multicast socket is pinned to.
///
/// The interface is resolved when a socket is bound, with `getifaddrs` and
/// `if_nametoindex`. An IPv4 group needs an interface with an IPv4 address
/// (used for `IP_ADD_MEMBERSHIP` and `IP_MULTICAST_IF`); an IPv6 group uses
/// the interface index.
///
/// ```
/// use grapevine::socket::Interface;
///
/// assert_eq!(Interface::default(), Interface::Loopback);
/// assert_eq!(Interface::name("eth0"), Interface::Name("eth0".to_owned()));
/// assert_eq!(Interface::from(std::net::Ipv4Addr::LOCALHOST).to_string(), "127.0.0.1");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Interface {
    /// The host's loopback interface (`lo` on Linux): traffic stays on this
    /// host. IPv4 uses its address (127.0.0.1), IPv6 its index.
    #[default]
    Loopback,
    /// An interface by name, such as `"lo"` or `"eth0"`.
    Name(String),
    /// The interface that has this IPv4 address. IPv4 groups only.
    Ipv4(Ipv4Addr),
    /// An interface by index, as in `ip link` or an IPv6 scope id.
    Index(u32),
}

impl Interface {
    /// An interface by name: shorthand for [`Interface::Name`].
    ///
    /// ```
    /// use grapevine::socket::Interface;
    /// assert_eq!(Interface::name("lo").to_string(), "lo");
    /// ```
    pub fn name(name: impl Into<String>) -> Self {
        Self::Name(name.into())
    }
}

impl From<Ipv4Addr> for Interface {
    fn from(addr: Ipv4Addr) -> Self {
        Self::Ipv4(addr)
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Loopback => f.write_str("loopback"),
            Self::Name(name) => f.write_str(name),
            Self::Ipv4(addr) => write!(f, "{addr}"),
            Self::Index(index) => write!(f, "#{index}"),
        }
    }
}

/// Where and how to send and receive multicast datagrams.
///
/// Build it from [`Default`] and the chaining setters, which are named after
/// the fields. Nothing is checked until [`validate`](Self::validate) or a
/// bind; the interface is only resolved when a socket is bound.
///
/// | field | default |
/// |---|---|
/// | `group` | [`DEFAULT_GROUP`] (239.255.77.77) |
/// | `port` | [`DEFAULT_PORT`] (7777) |
/// | `interface` | [`Interface::Loopback`] |
/// | `ttl` | [`DEFAULT_TTL`] (0: never leaves the host) |
/// | `recv_buffer` | [`DEFAULT_RECV_BUFFER`] (4 MiB) |
/// | `send_buffer` | [`DEFAULT_SEND_BUFFER`] (1 MiB) |
/// | `loopback` | `true` |
///
/// ```
/// use grapevine::socket::MulticastConfig;
///
/// let mut config = MulticastConfig::default();
/// config.group("ff15::7777".parse()?).port(7000).ttl(0).recv_buffer(1 << 20);
/// assert_eq!(config.group_addr(), "[ff15::7777]:7000".parse()?);
/// assert_eq!(config.recv_buffer, 1 << 20);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MulticastConfig {
    /// The multicast group: 224.0.0.0/4 or ff00::/8.
    pub group: IpAddr,
    /// The UDP port of the group. Not 0: publishers and subscribers must agree
    /// on it.
    pub port: u16,
    /// The interface every socket is pinned to.
    pub interface: Interface,
    /// Multicast TTL (IPv4) or hop limit (IPv6), 0..=255. 0 keeps datagrams
    /// on this host; 1 reaches the local link.
    pub ttl: u32,
    /// Receive buffer size to request (`SO_RCVBUF`) on receivers.
    pub recv_buffer: usize,
    /// Send buffer size to request (`SO_SNDBUF`) on senders and receivers.
    pub send_buffer: usize,
    /// Whether this host's own subscribers receive what it sends
    /// (`IP_MULTICAST_LOOP` / `IPV6_MULTICAST_LOOP`). Needed for same-host
    /// subscribers on a real interface. On Linux `lo` it makes no difference:
    /// the loopback device itself delivers to same-host subscribers.
    pub loopback: bool,
}

impl Default for MulticastConfig {
    fn default() -> Self {
        Self {
            group: IpAddr::V4(DEFAULT_GROUP),
            port: DEFAULT_PORT,
            interface: Interface::Loopback,
            ttl: DEFAULT_TTL,
            recv_buffer: DEFAULT_RECV_BUFFER,
            send_buffer: DEFAULT_SEND_BUFFER,
            loopback: true,
        }
    }
}

impl MulticastConfig {
    /// Sets the multicast group.
    pub fn group(&mut self, group: IpAddr) -> &mut Self {
        self.group = group;
        self
    }

    /// Sets the UDP port.
    pub fn port(&mut self, port: u16) -> &mut Self {
        self.port = port;
        self
    }

    /// Sets the interface every socket is pinned to.
    pub fn interface(&mut self, interface: Interface) -> &mut Self {
        self.interface = interface;
        self
    }

    /// Sets the multicast TTL / hop limit (0..=255). Unicast datagrams (a
    /// subscriber's NAKs) get the same, but at least 1.
    pub fn ttl(&mut self, ttl: u32) -> &mut Self {
        self.ttl = ttl;
        self
    }

    /// Sets the receive buffer size to request.
    pub fn recv_buffer(&mut self, bytes: usize) -> &mut Self {
        self.recv_buffer = bytes;
        self
    }

    /// Sets the send buffer size to request.
    pub fn send_buffer(&mut self, bytes: usize) -> &mut Self {
        self.send_buffer = bytes;
        self
    }

    /// Sets whether same-host subscribers receive this host's datagrams.
    pub fn loopback(&mut self, on: bool) -> &mut Self {
        self.loopback = on;
        self
    }

    /// The address datagrams are sent to: `group:port`.
    ///
    /// For IPv6 the scope id is 0: the socket's `IPV6_MULTICAST_IF` picks the
    /// interface. [`MulticastSocket::group_addr`] carries the resolved index.
    ///
    /// ```
    /// use grapevine::socket::MulticastConfig;
    /// let config = MulticastConfig::default();
    /// assert_eq!(config.group_addr(), "239.255.77.77:7777".parse()?);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    pub fn group_addr(&self) -> SocketAddr {
        SocketAddr::new(self.group, self.port)
    }

    /// Checks the settings that need no lookup: the group is multicast, the
    /// port is not 0, the TTL fits, and an explicit IPv4 interface address
    /// is not paired with an IPv6 group. The interface itself is resolved when
    /// a socket is bound.
    ///
    /// ```
    /// use grapevine::socket::{MulticastConfig, SocketError};
    ///
    /// let mut config = MulticastConfig::default();
    /// assert!(config.validate().is_ok());
    /// config.group("192.168.1.1".parse()?);
    /// let err = config.validate().unwrap_err();
    /// assert!(matches!(err, SocketError::NotMulticast { .. }));
    /// assert!(err.to_string().starts_with("192.168.1.1 is not a multicast group"));
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    pub fn validate(&self) -> Result<(), SocketError> {
        if !self.group.is_multicast() {
            return Err(SocketError::NotMulticast { group: self.group });
        }
        if self.port == 0 {
            return Err(SocketError::PortZero);
        }
        if self.ttl > 255 {
            return Err(SocketError::TtlOutOfRange { ttl: self.ttl });
        }
        if let (IpAddr::V6(_), Interface::Ipv4(_)) = (self.group, &self.interface) {
            return Err(SocketError::FamilyMismatch {
                group: self.group,
                interface: self.interface.clone(),
            });
        }
        Ok(())
    }
}

/// Why a multicast socket could not be set up.
///
/// Each message says what is wrong and how to fix it. Wrapped OS errors are
/// available through [`std::error::Error::source`].
///
/// ```
/// use grapevine::socket::{bind_receiver, Interface, MulticastConfig, SocketError};
///
/// let mut config = MulticastConfig::default();
/// config.interface(Interface::name("no-such-if0")).port(28002);
/// match bind_receiver(&config) {
///     Err(SocketError::UnknownInterface { interface }) => {
///         assert_eq!(interface, Interface::name("no-such-if0"))
///     }
///     other => panic!("unexpected: {other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// The configured group is not a multicast address.
    #[error(
        "{group} is not a multicast group: use 224.0.0.0/4 or ff00::/8, \
         e.g. 239.255.77.77 (IPv4) or ff15::7777 (IPv6)"
    )]
    NotMulticast {
        /// The offending address.
        group: IpAddr,
    },

    /// The configured port is 0.
    #[error(
        "port 0 cannot carry a multicast group: publishers and subscribers \
         must agree on a fixed port, e.g. 7777"
    )]
    PortZero,

    /// The TTL / hop limit does not fit in 0..=255.
    #[error(
        "multicast TTL {ttl} is out of range: use 0..=255 (0 keeps datagrams \
         on this host, 1 reaches the local link)"
    )]
    TtlOutOfRange {
        /// The configured value.
        ttl: u32,
    },

    /// No network interface matches the configured [`Interface`].
    #[error(
        "no network interface matches {}: list them with `ip addr` and pick \
         one by name (e.g. eth0), index or IPv4 address, or the loopback \
         interface (`lo`, the default)",
        describe(.interface)
    )]
    UnknownInterface {
        /// The interface as configured.
        interface: Interface,
    },

    /// An explicit IPv4 interface address was given for an IPv6 group.
    #[error(
        "group {group} is IPv6 but interface {interface} is an IPv4 address: \
         give an IPv6 group an interface by name or index, or use an IPv4 group"
    )]
    FamilyMismatch {
        /// The IPv6 group.
        group: IpAddr,
        /// The IPv4 interface address.
        interface: Interface,
    },

    /// The interface exists but has no address of the group's family, which
    /// the socket needs (IPv4: to join and send; IPv6: to send from).
    #[error(
        "interface {name} has no {family} address, which group {group} needs: \
         assign one to {name}, or pick another interface or a group of the \
         other family"
    )]
    MissingAddress {
        /// The resolved interface name.
        name: String,
        /// `"IPv4"` or `"IPv6"`.
        family: &'static str,
        /// The group that needs it.
        group: IpAddr,
    },

    /// IPv6 multicast was asked for on a loopback interface, or on one
    /// without the `MULTICAST` flag: Linux does not deliver IPv6 multicast
    /// over loopback, even with the flag set by hand.
    #[error(
        "interface {name} cannot carry IPv6 multicast (a loopback interface, or \
         no MULTICAST flag; Linux never delivers IPv6 multicast over `lo`, even \
         with the flag set): use an IPv4 group on loopback, \
         or a multicast-capable interface such as a veth pair in a network \
         namespace, with ttl 0 or an ff01:: group so nothing leaves the host"
    )]
    Ipv6MulticastUnsupported {
        /// The resolved interface name.
        name: String,
    },

    /// The socket could not be bound to its local address.
    #[error("cannot bind {addr}: {}", bind_hint(.source))]
    Bind {
        /// The address the socket was to be bound to.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Joining the group on the interface failed.
    #[error("cannot join {group} on interface {name}: {}", join_hint(.source))]
    Join {
        /// The group.
        group: IpAddr,
        /// The resolved interface name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Creating the socket, setting one of its options, or listing the
    /// interfaces failed.
    #[error("multicast socket setup failed while {step}")]
    Setup {
        /// What was being done, e.g. "setting IP_MULTICAST_IF".
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl From<SocketError> for io::Error {
    fn from(err: SocketError) -> Self {
        let kind = match &err {
            SocketError::Bind { source, .. }
            | SocketError::Join { source, .. }
            | SocketError::Setup { source, .. } => source.kind(),
            SocketError::UnknownInterface { .. } => io::ErrorKind::NotFound,
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, err)
    }
}

fn describe(interface: &Interface) -> String {
    match interface {
        Interface::Loopback => "the loopback interface (none has the LOOPBACK flag)".to_owned(),
        Interface::Name(name) => format!("name {name:?}"),
        Interface::Ipv4(addr) => format!("address {addr} (no interface has it)"),
        Interface::Index(index) => format!("index {index}"),
    }
}

fn bind_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::AddrInUse => {
            "the port is held by a socket without SO_REUSEADDR/SO_REUSEPORT \
             (`ss -uanp` shows which); stop it or pick another port"
        }
        io::ErrorKind::AddrNotAvailable => {
            "the address is not available on this host; check the interface"
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied; ports below 1024 need privileges, pick a higher port"
        }
        _ => "see the OS error below",
    }
}

fn join_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error().map(nix::errno::Errno::from_raw) {
        Some(nix::errno::Errno::ENODEV) => "the interface is gone or has no such address",
        Some(nix::errno::Errno::ENOBUFS) => {
            "too many memberships on this socket (net.ipv4.igmp_max_memberships)"
        }
        Some(nix::errno::Errno::EADDRINUSE) => "this socket already joined the group",
        _ => "see the OS error below",
    }
}

/// A UDP socket pinned to a multicast group's interface, with what the kernel
/// granted.
///
/// Returned by [`bind_receiver`] and [`bind_sender`]. The socket is in
/// blocking mode; use [`into_tokio`](Self::into_tokio) for async I/O or
/// [`into_std`](Self::into_std) to hand it to another I/O layer.
///
/// ```
/// use grapevine::socket::{bind_sender, MulticastConfig};
///
/// let mut config = MulticastConfig::default();
/// config.group("239.255.28.3".parse()?).port(28003);
/// let sender = bind_sender(&config)?;
/// assert_eq!(sender.group_addr(), config.group_addr());
/// assert_eq!(sender.interface_name(), "lo");
/// assert!(sender.send_buffer() > 0);
/// let std_socket: std::net::UdpSocket = sender.into_std();
/// assert!(std_socket.local_addr()?.ip().is_loopback());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct MulticastSocket {
    socket: UdpSocket,
    group: SocketAddr,
    interface_name: String,
    interface_index: u32,
    recv_buffer: usize,
    send_buffer: usize,
}

impl MulticastSocket {
    /// The socket, for `send_to` / `recv_from` and options.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// The socket, consuming the wrapper.
    pub fn into_std(self) -> UdpSocket {
        self.socket
    }

    /// Converts into a nonblocking [`tokio::net::UdpSocket`].
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime with I/O enabled, as
    /// [`tokio::net::UdpSocket::from_std`] does.
    ///
    /// ```
    /// use grapevine::socket::{bind_receiver, bind_sender, MulticastConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut config = MulticastConfig::default();
    /// config.group("239.255.28.4".parse()?).port(28004);
    /// let receiver = bind_receiver(&config)?.into_tokio()?;
    /// let sender = bind_sender(&config)?.into_tokio()?;
    /// sender.send_to(b"hi", config.group_addr()).await?;
    /// let mut buf = [0u8; 16];
    /// let (n, _) = tokio::time::timeout(
    ///     std::time::Duration::from_secs(5),
    ///     receiver.recv_from(&mut buf),
    /// )
    /// .await??;
    /// assert_eq!(&buf[..n], b"hi");
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "runtime-tokio")]
    pub fn into_tokio(self) -> io::Result<tokio::net::UdpSocket> {
        self.socket.set_nonblocking(true)?;
        tokio::net::UdpSocket::from_std(self.socket)
    }

    /// The address to send to: the group and port, and for IPv6 the
    /// interface index as scope id.
    pub fn group_addr(&self) -> SocketAddr {
        self.group
    }

    /// The socket's local address. For a sender this is the source address
    /// subscribers see, so unicast replies (NAKs) can be sent to it.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The name of the interface the socket is pinned to, e.g. `"lo"`.
    pub fn interface_name(&self) -> &str {
        &self.interface_name
    }

    /// The index of the interface the socket is pinned to.
    pub fn interface_index(&self) -> u32 {
        self.interface_index
    }

    /// The receive buffer size the kernel granted, as `SO_RCVBUF` reports it
    /// (Linux reports twice the usable size). Compare it with
    /// [`MulticastConfig::recv_buffer`] to see whether the request was capped
    /// by `net.core.rmem_max`.
    pub fn recv_buffer(&self) -> usize {
        self.recv_buffer
    }

    /// The send buffer size the kernel granted, as `SO_SNDBUF` reports it.
    pub fn send_buffer(&self) -> usize {
        self.send_buffer
    }
}

impl From<MulticastSocket> for UdpSocket {
    fn from(socket: MulticastSocket) -> Self {
        socket.socket
    }
}

/// Binds a subscriber socket: joined to the group on the configured interface
/// only, and receiving only that group's datagrams.
///
/// The socket has `SO_REUSEADDR` (and `SO_REUSEPORT` on Unix) so that several
/// subscribers on one host share the port, each getting a copy of every
/// datagram. It is bound to the **group address** rather than the wildcard,
/// and on Linux `IP_MULTICAST_ALL` is off, so groups other sockets joined on
/// the same port are not delivered to it. The receive buffer is requested as
/// configured; its multicast interface, TTL and loop are set too, in case it
/// is ever used to send.
///
/// # Errors
///
/// Any [`SocketError`]: an invalid config, an interface that cannot be
/// resolved, a port already held by a socket without address reuse
/// ([`SocketError::Bind`]), or a failed join ([`SocketError::Join`]).
///
/// ```
/// use grapevine::socket::{bind_receiver, MulticastConfig};
///
/// let mut config = MulticastConfig::default();
/// config.group("239.255.28.5".parse()?).port(28005);
/// let first = bind_receiver(&config)?;
/// let second = bind_receiver(&config)?; // shares the port
/// assert_eq!(first.local_addr()?, config.group_addr());
/// assert!(second.recv_buffer() > 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn bind_receiver(config: &MulticastConfig) -> Result<MulticastSocket, SocketError> {
    let plan = Plan::new(config, Role::Receiver)?;
    let socket = plan.new_socket()?;
    step(socket.set_reuse_address(true), "setting SO_REUSEADDR")?;
    #[cfg(not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin")))]
    step(socket.set_reuse_port(true), "setting SO_REUSEPORT")?;
    step(
        socket.set_recv_buffer_size(config.recv_buffer),
        "setting SO_RCVBUF",
    )?;
    match plan.target {
        Target::V4 { group, interface } => {
            #[cfg(target_os = "linux")]
            step(
                socket.set_multicast_all_v4(false),
                "clearing IP_MULTICAST_ALL",
            )?;
            let addr = SocketAddr::V4(SocketAddrV4::new(group, config.port));
            bind(&socket, addr)?;
            socket
                .join_multicast_v4(&group, &interface)
                .map_err(|source| plan.join_error(source))?;
        }
        Target::V6 { group, .. } => {
            #[cfg(target_os = "linux")]
            clear_multicast_all_v6(&socket)?;
            // The scope id is required to bind ff01::/ff02:: groups and
            // ignored for wider scopes.
            let addr = SocketAddr::V6(SocketAddrV6::new(group, config.port, 0, plan.index));
            bind(&socket, addr)?;
            socket
                .join_multicast_v6(&group, plan.index)
                .map_err(|source| plan.join_error(source))?;
        }
    }
    plan.pin_outgoing(&socket, config)?;
    plan.finish(socket, config)
}

/// Binds a publisher socket: on the interface's address with an ephemeral
/// port, with its multicast interface, TTL / hop limit and loop set.
///
/// The socket is not connected: send each datagram to
/// [`MulticastSocket::group_addr`] (or [`MulticastConfig::group_addr`]).
/// Subscribers see its [`local_addr`](MulticastSocket::local_addr) as the
/// source, so they can send unicast repair requests back to it. The send
/// buffer is requested as configured.
///
/// # Errors
///
/// Any [`SocketError`]: an invalid config, an interface that cannot be
/// resolved or has no address of the group's family, or a failed option.
///
/// ```
/// use grapevine::socket::{bind_sender, MulticastConfig};
///
/// let mut config = MulticastConfig::default();
/// config.group("239.255.28.6".parse()?).port(28006);
/// let sender = bind_sender(&config)?;
/// assert_eq!(sender.local_addr()?.ip(), std::net::Ipv4Addr::LOCALHOST);
/// assert_ne!(sender.local_addr()?.port(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn bind_sender(config: &MulticastConfig) -> Result<MulticastSocket, SocketError> {
    let plan = Plan::new(config, Role::Sender)?;
    let socket = plan.new_socket()?;
    match plan.target {
        Target::V4 { interface, .. } => {
            bind(&socket, SocketAddr::V4(SocketAddrV4::new(interface, 0)))?;
        }
        Target::V6 { local, .. } => {
            // `Plan::new` guarantees a local address for senders.
            let local = local.unwrap_or(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
            bind(&socket, SocketAddr::V6(local))?;
        }
    }
    plan.pin_outgoing(&socket, config)?;
    plan.finish(socket, config)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Receiver,
    Sender,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    V4 {
        group: Ipv4Addr,
        interface: Ipv4Addr,
    },
    V6 {
        group: Ipv6Addr,
        /// The sender's local address (port 0), scope id set when link-local.
        local: Option<SocketAddrV6>,
    },
}

/// A validated config with its interface resolved.
#[derive(Debug)]
struct Plan {
    target: Target,
    name: String,
    index: u32,
    group: SocketAddr,
}

impl Plan {
    fn new(config: &MulticastConfig, role: Role) -> Result<Self, SocketError> {
        config.validate()?;
        let found = ResolvedInterface::find(&config.interface)?;
        let missing = |family| SocketError::MissingAddress {
            name: found.name.clone(),
            family,
            group: config.group,
        };
        let (target, group) = match config.group {
            IpAddr::V4(group) => {
                let interface = found.ipv4.ok_or_else(|| missing("IPv4"))?;
                let target = Target::V4 { group, interface };
                (
                    target,
                    SocketAddr::V4(SocketAddrV4::new(group, config.port)),
                )
            }
            IpAddr::V6(group) => {
                if !found.flags.contains(InterfaceFlags::IFF_MULTICAST)
                    || found.flags.contains(InterfaceFlags::IFF_LOOPBACK)
                {
                    return Err(SocketError::Ipv6MulticastUnsupported {
                        name: found.name.clone(),
                    });
                }
                let local = found.ipv6;
                if role == Role::Sender && local.is_none() {
                    return Err(missing("IPv6"));
                }
                let addr = SocketAddrV6::new(group, config.port, 0, found.index);
                (Target::V6 { group, local }, SocketAddr::V6(addr))
            }
        };
        Ok(Self {
            target,
            name: found.name,
            index: found.index,
            group,
        })
    }

    fn new_socket(&self) -> Result<Socket, SocketError> {
        let domain = match self.target {
            Target::V4 { .. } => Domain::IPV4,
            Target::V6 { .. } => Domain::IPV6,
        };
        let socket = step(
            Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)),
            "creating the UDP socket",
        )?;
        if let Target::V6 { .. } = self.target {
            step(socket.set_only_v6(true), "setting IPV6_V6ONLY")?;
        }
        Ok(socket)
    }

    /// Pins outgoing multicast to the interface; sets TTL and loop. The
    /// unicast TTL (of a subscriber's NAKs) follows the multicast one, but
    /// is at least 1, the least a unicast datagram can have: with TTL 0 or
    /// 1, NAKs do not cross a router either.
    fn pin_outgoing(&self, socket: &Socket, config: &MulticastConfig) -> Result<(), SocketError> {
        let unicast = config.ttl.max(1);
        match self.target {
            Target::V4 { interface, .. } => {
                step(socket.set_ttl_v4(unicast), "setting IP_TTL")?;
                step(
                    socket.set_multicast_if_v4(&interface),
                    "setting IP_MULTICAST_IF",
                )?;
                step(
                    socket.set_multicast_ttl_v4(config.ttl),
                    "setting IP_MULTICAST_TTL",
                )?;
                step(
                    socket.set_multicast_loop_v4(config.loopback),
                    "setting IP_MULTICAST_LOOP",
                )?;
            }
            Target::V6 { .. } => {
                step(
                    socket.set_unicast_hops_v6(unicast),
                    "setting IPV6_UNICAST_HOPS",
                )?;
                step(
                    socket.set_multicast_if_v6(self.index),
                    "setting IPV6_MULTICAST_IF",
                )?;
                step(
                    socket.set_multicast_hops_v6(config.ttl),
                    "setting IPV6_MULTICAST_HOPS",
                )?;
                step(
                    socket.set_multicast_loop_v6(config.loopback),
                    "setting IPV6_MULTICAST_LOOP",
                )?;
            }
        }
        Ok(())
    }

    fn finish(
        self,
        socket: Socket,
        config: &MulticastConfig,
    ) -> Result<MulticastSocket, SocketError> {
        step(
            socket.set_send_buffer_size(config.send_buffer),
            "setting SO_SNDBUF",
        )?;
        let recv_buffer = step(socket.recv_buffer_size(), "reading SO_RCVBUF")?;
        let send_buffer = step(socket.send_buffer_size(), "reading SO_SNDBUF")?;
        Ok(MulticastSocket {
            socket: socket.into(),
            group: self.group,
            interface_name: self.name,
            interface_index: self.index,
            recv_buffer,
            send_buffer,
        })
    }

    fn join_error(&self, source: io::Error) -> SocketError {
        SocketError::Join {
            group: self.group.ip(),
            name: self.name.clone(),
            source,
        }
    }
}

/// Clears `IPV6_MULTICAST_ALL` (Linux 4.20+). Older kernels lack the option;
/// binding to the group address still filters there.
#[cfg(target_os = "linux")]
fn clear_multicast_all_v6(socket: &Socket) -> Result<(), SocketError> {
    match socket.set_multicast_all_v6(false) {
        Err(err) if err.raw_os_error() == Some(nix::errno::Errno::ENOPROTOOPT as i32) => Ok(()),
        other => step(other, "clearing IPV6_MULTICAST_ALL"),
    }
}

fn step<T>(result: io::Result<T>, step: &'static str) -> Result<T, SocketError> {
    result.map_err(|source| SocketError::Setup { step, source })
}

fn bind(socket: &Socket, addr: SocketAddr) -> Result<(), SocketError> {
    socket
        .bind(&SockAddr::from(addr))
        .map_err(|source| SocketError::Bind { addr, source })
}

/// An interface as found by `getifaddrs`.
#[derive(Debug)]
struct ResolvedInterface {
    name: String,
    index: u32,
    flags: InterfaceFlags,
    ipv4: Option<Ipv4Addr>,
    /// Preferably not link-local; a link-local one carries its scope id.
    ipv6: Option<SocketAddrV6>,
}

impl ResolvedInterface {
    fn find(interface: &Interface) -> Result<Self, SocketError> {
        let unknown = || SocketError::UnknownInterface {
            interface: interface.clone(),
        };
        let addrs: Vec<_> = step(
            getifaddrs().map_err(io::Error::from),
            "listing network interfaces (getifaddrs)",
        )?
        .collect();
        let ipv4_of = |entry: &nix::ifaddrs::InterfaceAddress| {
            entry
                .address
                .as_ref()
                .and_then(|a| a.as_sockaddr_in())
                .map(|a| a.ip())
        };
        let name = match interface {
            Interface::Loopback => addrs
                .iter()
                .find(|a| a.flags.contains(InterfaceFlags::IFF_LOOPBACK))
                .map(|a| a.interface_name.clone()),
            Interface::Name(name) => addrs
                .iter()
                .find(|a| &a.interface_name == name)
                .map(|a| a.interface_name.clone()),
            Interface::Ipv4(addr) => addrs
                .iter()
                .find(|a| ipv4_of(a) == Some(*addr))
                .map(|a| a.interface_name.clone()),
            Interface::Index(index) => if_indextoname(*index)
                .ok()
                .and_then(|name| name.into_string().ok()),
        }
        .ok_or_else(unknown)?;
        let index = if_nametoindex(name.as_str()).map_err(|_| unknown())?;

        let mine = || addrs.iter().filter(|a| a.interface_name == name);
        let flags = mine().fold(InterfaceFlags::empty(), |f, a| f | a.flags);
        let ipv4 = match interface {
            Interface::Ipv4(addr) => Some(*addr),
            _ => mine().find_map(ipv4_of),
        };
        let ipv6s: Vec<Ipv6Addr> = mine()
            .filter_map(|a| a.address.as_ref()?.as_sockaddr_in6().map(|a| a.ip()))
            .collect();
        let ipv6 = ipv6s
            .iter()
            .find(|ip| !is_unicast_link_local(ip))
            .map(|ip| SocketAddrV6::new(*ip, 0, 0, 0))
            .or_else(|| ipv6s.first().map(|ip| SocketAddrV6::new(*ip, 0, 0, index)));
        Ok(Self {
            name,
            index,
            flags,
            ipv4,
            ipv6,
        })
    }
}

fn is_unicast_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}
