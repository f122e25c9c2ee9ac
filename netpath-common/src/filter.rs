//! Filter rules (`netpath filter`), netpath's DOCKER-USER: allow or deny new
//! inbound flows (published ports, and routed networks' container ports)
//! by client address, host port, container and network.
//!
//! Rules live in one longest-prefix-match trie. A rule's key is the set of
//! selectors it names (its *group*), their values, and the client's CIDR
//! last, so one trie lookup per group finds the group's rule with the
//! longest matching client prefix. The datapath looks up every group that
//! has rules (at most [`GROUPS`]), whatever the number of rules, and the
//! most specific match wins ([`specificity`]).

/// Selector bits of a rule's group ([`FilterData::group`]).
pub mod sel {
    /// `--network`: the flow's network.
    pub const NETWORK: u8 = 1 << 0;
    /// `--port`: the host port (and protocol) of a published port.
    pub const HOST_PORT: u8 = 1 << 1;
    /// `--to IP`: the container's address.
    pub const TO: u8 = 1 << 2;
    /// `--to IP:PORT`: also the container's port (needs [`TO`]).
    pub const TO_PORT: u8 = 1 << 3;
}

/// Number of possible groups (each a combination of [`sel`] bits).
pub const GROUPS: usize = 16;

/// Whether `group` is a combination a rule can have (a container port
/// needs a container address).
#[inline(always)]
pub const fn valid_group(group: u8) -> bool {
    (group as usize) < GROUPS && (group & sel::TO_PORT == 0 || group & sel::TO != 0)
}

/// How specific a rule is, to pick between matches: the longer client
/// prefix wins; on the same prefix, naming the container's address beats
/// not naming it, then its port, then the host port, then the network.
#[inline(always)]
pub const fn specificity(src_prefix: u8, group: u8) -> u32 {
    let mut dest = 0;
    if group & sel::TO != 0 {
        dest |= 8;
    }
    if group & sel::TO_PORT != 0 {
        dest |= 4;
    }
    if group & sel::HOST_PORT != 0 {
        dest |= 2;
    }
    if group & sel::NETWORK != 0 {
        dest |= 1;
    }
    (src_prefix as u32) << 4 | dest
}

/// The data part of an `NP_FILTER4` key (the LPM trie's prefix length
/// comes before it): the exact selectors, then the client address.
/// Selectors a rule does not name are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FilterData {
    /// Which selectors the rule names ([`sel`] bits).
    pub group: u8,
    /// With [`sel::HOST_PORT`]: 6 (TCP) or 17 (UDP).
    pub proto: u8,
    pub host_port_be: u16,
    pub net_id: u32,
    pub to_be: u32,
    pub to_port_be: u16,
    pub _pad: u16,
    /// The client address (the part the prefix covers partly).
    pub src_be: u32,
}

/// Bits of [`FilterData`] before the client address: every rule's prefix
/// covers them all, so a lookup only finds rules of the same group and
/// selector values.
pub const EXACT_BITS: u32 = 16 * 8;

/// Value of `NP_FILTER4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FilterRule {
    /// [`verdict`].
    pub verdict: u8,
    /// Prefix length of the client CIDR (0 to 32).
    pub src_prefix: u8,
    /// Who made the rule (`crate::owner`); the datapath ignores it.
    pub owner: u16,
    /// Counter id (scope `counter_scope::FILTER`).
    pub id: u32,
}

/// [`FilterRule::verdict`] values.
pub mod verdict {
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
}

/// Value of the one-element `NP_FILTER_INFO` array, kept by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FilterInfo {
    /// Bit `g` is set when group `g` has at least one rule: the groups the
    /// datapath looks up.
    pub groups: u32,
    /// The id the next rule gets.
    pub next_id: u32,
    /// Rules per group.
    pub counts: [u32; GROUPS],
}

/// Maximum filter rules per namespace.
pub const MAX_FILTERS: u32 = 65536;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_specificity() {
        assert!(valid_group(0));
        assert!(valid_group(sel::TO | sel::TO_PORT));
        assert!(!valid_group(sel::TO_PORT));
        assert!(!valid_group(16));
        // The client prefix decides first.
        assert!(specificity(8, 0) > specificity(0, sel::TO | sel::TO_PORT | sel::NETWORK));
        // Then the container, its port, the host port, the network.
        assert!(specificity(8, sel::TO) > specificity(8, sel::HOST_PORT | sel::NETWORK));
        assert!(specificity(8, sel::TO | sel::TO_PORT) > specificity(8, sel::TO | sel::HOST_PORT));
        assert!(specificity(8, sel::HOST_PORT) > specificity(8, sel::NETWORK));
        assert_eq!(core::mem::size_of::<FilterData>(), 20);
        assert_eq!(
            EXACT_BITS as usize,
            (core::mem::size_of::<FilterData>() - 4) * 8
        );
    }
}
