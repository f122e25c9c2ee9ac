//! The shared configuration (`NP_CONFIG`): the NAT port range and the
//! conntrack timeouts, with nf_conntrack's defaults.

/// Conntrack timeout classes, indexes into [`Config::timeouts_s`].
pub mod timeout {
    pub const TCP_SYN_SENT: usize = 0;
    pub const TCP_SYN_RECV: usize = 1;
    pub const TCP_ESTABLISHED: usize = 2;
    pub const TCP_FIN_WAIT: usize = 3;
    pub const TCP_TIME_WAIT: usize = 4;
    pub const TCP_CLOSE: usize = 5;
    pub const UDP: usize = 6;
    pub const UDP_STREAM: usize = 7;
    pub const ICMP: usize = 8;
    pub const OTHER: usize = 9;
    /// A TCP flow picked up mid-stream (no handshake seen) and not answered
    /// yet (nf_conntrack's `nf_conntrack_tcp_timeout_unacknowledged`).
    pub const TCP_UNACK: usize = 10;
    /// Number of classes in use (the array has room for more).
    pub const COUNT: usize = 11;
    /// Names as `netpath conntrack config` spells them.
    pub const NAMES: [&str; COUNT] = [
        "tcp-syn-sent",
        "tcp-syn-recv",
        "tcp-established",
        "tcp-fin-wait",
        "tcp-time-wait",
        "tcp-close",
        "udp",
        "udp-stream",
        "icmp",
        "other",
        "tcp-unacknowledged",
    ];
    /// nf_conntrack's defaults, in seconds (`net.netfilter.nf_conntrack_*_timeout*`).
    pub const DEFAULTS: [u32; COUNT] = [120, 60, 432_000, 120, 120, 10, 30, 120, 30, 600, 300];
}

/// Value of the one-element `NP_CONFIG` array: settings the datapath and the
/// sweeper share. All-zero means "not written yet" (the loader writes defaults).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Config {
    /// Source ports masquerade may pick when the container's own port is
    /// taken, inclusive, host byte order.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    pub flags: u32,
    /// Conntrack timeouts in seconds, indexed by [`timeout`] class; unused
    /// slots are zero.
    pub timeouts_s: [u32; 16],
}

impl Config {
    /// Like Linux's MASQUERADE for unprivileged source ports.
    pub const DEFAULT_PORT_MIN: u16 = 1024;
    pub const DEFAULT_PORT_MAX: u16 = 65535;

    pub const fn defaults() -> Self {
        let mut timeouts_s = [0u32; 16];
        let mut i = 0;
        while i < timeout::COUNT {
            timeouts_s[i] = timeout::DEFAULTS[i];
            i += 1;
        }
        Self {
            nat_port_min: Self::DEFAULT_PORT_MIN,
            nat_port_max: Self::DEFAULT_PORT_MAX,
            flags: 0,
            timeouts_s,
        }
    }

    /// Whether this is the zero value of a freshly created map.
    pub const fn is_unset(&self) -> bool {
        self.nat_port_min == 0 && self.nat_port_max == 0
    }
}
