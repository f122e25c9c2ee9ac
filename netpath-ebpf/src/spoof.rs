//! Anti-spoofing at container ports (Docker has none): a port only lets its
//! container send with its own MAC, its own IPv4 source and matching ARP
//! sender fields. A port that is not bound yet learns them from its
//! container's first ARP or IPv4 packet from an address of its subnet
//! (trust on first use), but never the gateway, the network or broadcast
//! address, or an address another port is bound to or learned; and before
//! that it may not send from another port's (or a bridge's) MAC, which
//! would move that MAC to it in the bridge's forwarding table. A container
//! that speaks IPv6 first has its MAC pinned by its first IPv6 packet that
//! passed (`pin_mac`), and learns its IPv4 address later with that MAC.

use aya_ebpf::{
    bindings::{BPF_EXIST, TC_ACT_SHOT},
    programs::TcContext,
};
use netpath_common::{DropReason, Endpoint, IfaceInfo, MacKey, NetworkInfo, iface_flags};

use crate::{
    TCX_NEXT,
    lookup::{drop, same_mac},
    maps::{Handed, NP_ENDPOINTS4, NP_HANDED, NP_IFACES, NP_LEARN4, NP_MACS},
    parse::ETH_HLEN,
};

/// Whether a port (`ifindex`) that is not bound yet may take `addr` for its
/// container: in the subnet, not the gateway, the network or the broadcast
/// address, and not bound to or learned by another port.
#[inline(always)]
fn claimable(net: &NetworkInfo, ifindex: u32, addr: u32) -> bool {
    if !net.contains_be(addr)
        || addr == net.gateway_be
        || addr == net.subnet_be
        || addr == (net.subnet_be | !net.mask_be)
    {
        return false;
    }
    // SAFETY: the value is read at once.
    match unsafe { NP_ENDPOINTS4.get(addr) } {
        Some(ep) => ep.ifindex == ifindex,
        None => true,
    }
}

/// Whether `mac` belongs to another port or to a bridge.
#[inline(always)]
pub fn mac_of_another(ifindex: u32, mac: &[u8; 6]) -> bool {
    let key = MacKey {
        mac: *mac,
        _pad: [0; 2],
    };
    // SAFETY: the value is read at once.
    unsafe { NP_MACS.get(key) }.is_some_and(|owner| *owner != ifindex)
}

/// Records what an unbound port's container uses (trust on first use).
#[inline(always)]
fn learn(ifindex: u32, iface: &IfaceInfo, addr: u32, mac: [u8; 6]) {
    record(ifindex, &learnt(iface, addr, mac, iface_flags::LEARNED));
}

/// What port `iface` is to record: its MAC (and IPv4 address, 0 for none
/// yet) fixed with `flag`.
#[inline(always)]
fn learnt(iface: &IfaceInfo, addr: u32, mac: [u8; 6], flag: u32) -> IfaceInfo {
    IfaceInfo {
        ipv4_be: addr,
        mac,
        flags: iface.flags | flag,
        ..*iface
    }
}

/// Records `info` for port `ifindex`, its MAC made its own in `NP_MACS`
/// and its IPv4 address, if any, in `NP_ENDPOINTS4`. Only while the port
/// is still managed (BPF_EXIST).
#[inline(always)]
fn record(ifindex: u32, info: &IfaceInfo) {
    if NP_IFACES.insert(ifindex, info, BPF_EXIST as u64).is_err() {
        return;
    }
    let key = MacKey {
        mac: info.mac,
        _pad: [0; 2],
    };
    let _ = NP_MACS.insert(key, ifindex, 0);
    if info.ipv4_be != 0 {
        let ep = Endpoint {
            ifindex,
            net_id: info.net_id,
            mac: info.mac,
            _pad: [0; 2],
        };
        let _ = NP_ENDPOINTS4.insert(info.ipv4_be, ep, 0);
    }
}

/// Ends what [`Sender::stage_ipv4`] staged: recorded when the packet
/// passed (`verdict`), forgotten either way. Nothing is kept live across
/// the policy but this CPU's slot (the port program's stack is full).
#[inline(always)]
pub fn finish_staged(verdict: i32) {
    let Some(slot) = NP_LEARN4.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, used by one program run at a time.
    let staged = unsafe { &mut *slot };
    if staged.ifindex == 0 {
        return;
    }
    if verdict != TC_ACT_SHOT {
        record(staged.ifindex, &staged.info);
    }
    staged.ifindex = 0;
}

/// Hands a container's packet that its port's first checks passed to the
/// checks its program's top runs (this CPU's `NP_HANDED` slot): global
/// functions, which take no pointer but to plain memory, and whose frames
/// would add to the port's if it called them. `false`: no slot.
#[inline(always)]
pub fn hand(sender: &Sender, daddr_be: u32) -> bool {
    let Some(slot) = NP_HANDED.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, used by one program run at a time.
    unsafe {
        *slot = Handed {
            iface: *sender.iface,
            net: *sender.net,
            ifindex: sender.ifindex,
            daddr_be,
            mac: sender.mac,
        };
    }
    true
}

/// What [`hand`] left in this program run.
#[inline(always)]
pub fn handed() -> Option<&'static Handed> {
    // SAFETY: this CPU's slot, written by `hand` in this program run.
    NP_HANDED.get_ptr(0).map(|h| unsafe { &*h })
}

/// The sender of a frame at a container port.
pub struct Sender<'a> {
    pub ifindex: u32,
    pub iface: &'a IfaceInfo,
    pub net: &'a NetworkInfo,
    /// The frame's source MAC.
    pub mac: [u8; 6],
}

impl<'a> Sender<'a> {
    /// The sender [`hand`] handed over.
    #[inline(always)]
    pub fn of(h: &'a Handed) -> Self {
        Sender {
            ifindex: h.ifindex,
            iface: &h.iface,
            net: &h.net,
            mac: h.mac,
        }
    }

    #[inline(always)]
    fn bound(&self) -> bool {
        self.iface.flags & (iface_flags::BOUND | iface_flags::LEARNED) != 0
    }

    /// A bound port's frames (or a port's whose MAC IPv6 pinned) carry its
    /// MAC; an unbound port's no MAC of another port or a bridge.
    #[inline(always)]
    pub fn mac_ok(&self) -> bool {
        if self.iface.flags & iface_flags::MAC_FIXED != 0 {
            same_mac(&self.mac, &self.iface.mac)
        } else {
            !mac_of_another(self.ifindex, &self.mac)
        }
    }

    /// Pins the MAC of a port with none fixed yet to the one its container
    /// sends from (its first IPv6 packet that passed; IPv4 learns MAC and
    /// address together).
    #[inline(always)]
    pub fn pin_mac(&self) {
        if self.iface.flags & iface_flags::MAC_FIXED == 0 {
            let info = learnt(self.iface, 0, self.mac, iface_flags::MAC_PINNED);
            record(self.ifindex, &info);
        }
    }

    /// Stages `saddr` (checked claimable) as what the port learns if its
    /// packet passes ([`finish_staged`]).
    #[inline(always)]
    pub fn stage_ipv4(&self, saddr: u32) {
        if let Some(slot) = NP_LEARN4.get_ptr_mut(0) {
            // SAFETY: this CPU's slot, used by one program run at a time.
            let staged = unsafe { &mut *slot };
            staged.info = learnt(self.iface, saddr, self.mac, iface_flags::LEARNED);
            staged.ifindex = self.ifindex;
        }
    }

    /// [`Self::mac_ok`], counting the drop.
    #[inline(always)]
    pub fn check_mac(&self, ctx: &TcContext) -> Result<(), i32> {
        if self.mac_ok() {
            Ok(())
        } else {
            Err(drop(ctx, self.iface.net_id, DropReason::SpoofedMac))
        }
    }

    /// An IPv4 packet's source: the port's own address, or (unbound) one it
    /// may claim; 0.0.0.0 passes unlearnt towards the limited broadcast
    /// only (DHCP). Ok(true): the port is to learn the source
    /// ([`Self::stage_ipv4`]) once the packet passed the rest of the
    /// policy, so a dropped packet teaches nothing.
    #[inline(always)]
    pub fn check_ipv4(&self, ctx: &TcContext, saddr: u32, daddr: u32) -> Result<bool, i32> {
        self.check_mac(ctx)?;
        if self.bound() {
            if saddr == self.iface.ipv4_be {
                return Ok(false);
            }
        } else if claimable(self.net, self.ifindex, saddr) {
            return Ok(true);
        } else if saddr == 0 && daddr == 0xffff_ffff {
            return Ok(false);
        }
        Err(drop(ctx, self.iface.net_id, DropReason::SpoofedSource))
    }

    /// An Ethernet/IPv4 ARP packet: the sender MAC is the frame's (and the
    /// port's), the sender address the port's own or one it may claim
    /// (learnt); 0.0.0.0 is an address probe (RFC 5227), not a claim.
    #[inline(always)]
    pub fn check_arp(&self, ctx: &TcContext) -> i32 {
        if let Err(v) = self.check_mac(ctx) {
            return v;
        }
        let net_id = self.iface.net_id;
        // Sender MAC at 8, sender IP at 14.
        let Ok(arp) = ctx.load::<[u8; 28]>(ETH_HLEN) else {
            return drop(ctx, net_id, DropReason::Malformed);
        };
        let sha = [arp[8], arp[9], arp[10], arp[11], arp[12], arp[13]];
        let spa = u32::from_ne_bytes([arp[14], arp[15], arp[16], arp[17]]);
        if !same_mac(&sha, &self.mac) {
            return drop(ctx, net_id, DropReason::SpoofedMac);
        }
        if spa == 0 {
            return TCX_NEXT;
        }
        if self.bound() {
            if spa != self.iface.ipv4_be {
                return drop(ctx, net_id, DropReason::SpoofedSource);
            }
        } else if claimable(self.net, self.ifindex, spa) {
            learn(self.ifindex, self.iface, spa, self.mac);
        } else {
            return drop(ctx, net_id, DropReason::SpoofedSource);
        }
        TCX_NEXT
    }
}
