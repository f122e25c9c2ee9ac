//! `connect` / `disconnect`: plugging a network namespace (a container) into
//! a managed network with a veth pair, an address from the network's
//! allocator (`NP_LEASES4`, which also skips addresses that containers
//! plugged in by others were seen using), a default route via the gateway,
//! and the port bound to that address and MAC for anti-spoofing.

use std::{
    collections::BTreeSet,
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use netpath_common::{IFNAMSIZ, IfaceRole, Lease, LeaseKey};

use crate::{
    codec, netns, plan,
    plumbing::{self, Netlink},
    reconcile,
    spec::{self, NetworkSpec},
    state::{self, Maps, StateDir},
};

/// `bpf_map_update_elem` flag: only insert a new key.
pub(crate) const BPF_NOEXIST: u64 = 1;

/// Arguments of `netpath connect` (and of the CNI plugin's ADD, which
/// names the namespace by path and brings its own address).
#[derive(Clone, Debug)]
pub struct ConnectArgs {
    /// The namespace's name under /run/netns, or (with `netns_path`) the
    /// name the lease shows.
    pub netns: String,
    /// The namespace's file when it is not /run/netns/`netns` (CNI_NETNS).
    pub netns_path: Option<PathBuf>,
    pub bridge: String,
    pub ip: Option<Ipv4Addr>,
    pub ifname: String,
    /// Who the lease belongs to ([`netpath_common::owner`]).
    pub owner: u16,
    /// Add a default route via the gateway (CNI: `isGateway`).
    pub default_route: bool,
}

impl ConnectArgs {
    /// `netpath connect NETNS --bridge BRIDGE`: by name, the user's lease,
    /// a default route.
    pub fn named(netns: String, bridge: String, ip: Option<Ipv4Addr>, ifname: String) -> Self {
        Self {
            netns,
            netns_path: None,
            bridge,
            ip,
            ifname,
            owner: netpath_common::owner::USER,
            default_route: true,
        }
    }

    fn path(&self) -> PathBuf {
        self.netns_path
            .clone()
            .unwrap_or_else(|| netns::path_of(&self.netns))
    }
}

/// What `connect` set up.
#[derive(Clone, Debug)]
pub struct Connected {
    /// The IPv4 address, prefix length and gateway (none on an IPv6-only
    /// network).
    pub v4: Option<(Ipv4Addr, u8, Ipv4Addr)>,
    pub mac: [u8; 6],
    pub host_ifname: String,
    /// On a dual-stack network: the IPv6 address, prefix length and gateway.
    pub v6: Option<(Ipv6Addr, u8, Ipv6Addr)>,
}

/// The IPv4 side of a container end, for [`configure_inside`].
#[derive(Clone, Copy)]
struct Inside4 {
    addr: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
}

/// The IPv6 side of a container end, for [`configure_inside`].
#[derive(Clone, Copy)]
struct Inside6 {
    addr: Ipv6Addr,
    prefix_len: u8,
    gateway: Option<Ipv6Addr>,
}

pub(crate) fn lease_name(name: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    let n = name.len().min(out.len());
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

/// The state, the maps and the network on `bridge`, or a clear error.
pub(crate) fn open_network(bridge: &str) -> Result<(StateDir, Maps, u32, NetworkSpec)> {
    let (state, maps) =
        Maps::open_current().map_err(|e| e.context(format!("no network on bridge {bridge}")))?;
    let (id, info) = maps
        .network_by_bridge(bridge)?
        .with_context(|| format!("no network on bridge {bridge}"))?;
    Ok((state, maps, id, NetworkSpec::from_info(&info)))
}

/// The cookie of the named namespace (which must exist).
fn netns_cookie(name: &str) -> Result<u64> {
    if name.is_empty() || name.contains('/') {
        bail!("invalid network namespace name {name:?}");
    }
    if !netns::path_of(name).exists() {
        bail!("network namespace {name} not found");
    }
    netns::run_in(name, netns::cookie)?
}

/// Configures the container end inside its namespace: the name, the
/// addresses (one per family the network has), up, and a default route
/// via the gateway (per family) unless one exists.
fn configure_inside(
    ns_path: &Path,
    tmp_name: String,
    ifname: String,
    v4: Option<Inside4>,
    v6: Option<Inside6>,
) -> Result<()> {
    let ns_path = ns_path.to_owned();
    std::thread::spawn(move || -> Result<()> {
        netns::enter_path(&ns_path)?;
        let ns = ns_path.display();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let nl = Netlink::new()?;
            if nl.link_by_name(&ifname).await?.is_some() {
                bail!("{ifname} already exists in network namespace {ns}");
            }
            let index = nl
                .link_by_name(&tmp_name)
                .await?
                .map(|l| l.index)
                .with_context(|| format!("{tmp_name} did not arrive in {ns}"))?;
            nl.rename_up(index, &ifname).await?;
            if let Some(v4) = v4 {
                nl.add_addr(index, v4.addr, v4.prefix_len).await?;
            }
            if let Some(v6) = v6 {
                nl.add_addr(index, v6.addr, v6.prefix_len).await?;
            }
            if let Some(lo) = nl.links().await?.into_iter().find(|l| l.is_loopback()) {
                nl.set_up(lo.index).await?;
            }
            let routes = v4
                .and_then(|v| v.gateway)
                .map(IpAddr::V4)
                .into_iter()
                .chain(v6.and_then(|v| v.gateway).map(IpAddr::V6));
            for gateway in routes {
                match nl.add_default_route(gateway).await {
                    Ok(()) => {}
                    // Connected to another network first: its default route stays (as in Docker).
                    Err(e) if plumbing::errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("configuring {} panicked", "the container end"))?
}

pub async fn connect(args: &ConnectArgs) -> Result<Connected> {
    spec::validate_ifname(&args.ifname)?;
    let _lock = state::lock(false)?;
    let (state, mut maps, net_id, spec) = open_network(&args.bridge)?;
    let cookie = match &args.netns_path {
        None => netns_cookie(&args.netns)?,
        Some(p) => netns::run_in_path(p, netns::cookie)
            .and_then(|c| c)
            .with_context(|| format!("network namespace {} not found", p.display()))?,
    };
    if cookie == netns::cookie()? {
        bail!(
            "network namespace {} is the one netpath manages, not a container",
            args.netns
        );
    }
    let leases = maps.leases()?;
    if let Some(h) = held(&maps, &leases, net_id, cookie)? {
        bail!(
            "network namespace {} is already connected to {} ({})",
            args.netns,
            args.bridge,
            h.addr
        );
    }
    // Taken: what connect handed out, and what containers plugged in by
    // others were seen to use (their ports' learnt addresses).
    let mut used: BTreeSet<Ipv4Addr> = leases
        .iter()
        .filter(|(k, _)| k.net_id == net_id)
        .map(|(k, _)| codec::from_be(k.addr_be))
        .collect();
    used.extend(
        maps.ifaces()?
            .values()
            .filter(|i| i.role == IfaceRole::Port as u32 && i.net_id == net_id && i.ipv4_be != 0)
            .map(|i| codec::from_be(i.ipv4_be)),
    );
    // An IPv6-only network gives no IPv4 address (and `--ip` is refused).
    let addr = match (spec.v4, args.ip) {
        (None, None) => None,
        _ => Some(plan::choose_address(&spec, args.ip, &used)?),
    };
    let spec6 = maps.v6.spec(net_id)?;
    let addr6 = match &spec6 {
        Some(s6) => Some(maps.v6.free_address(net_id, s6, None)?),
        None => None,
    };
    let mac = match (addr, addr6) {
        (Some(a), _) => plan::container_mac(a),
        (None, Some(a)) => plan::container_mac6(a),
        (None, None) => bail!("{} has no subnet to give an address from", spec.bridge),
    };
    let host = plan::host_veth_name(cookie, net_id);
    let tmp = format!("npt{}", &host[2..]);
    debug_assert!(tmp.len() < IFNAMSIZ);
    let nl = Netlink::new()?;
    let bridge = nl
        .link_by_name(&spec.bridge)
        .await?
        .with_context(|| format!("bridge {} is missing (run `netpath up` again)", spec.bridge))?;
    if nl.link_by_name(&host).await?.is_some() {
        bail!("{host} already exists in this namespace");
    }
    let ns_path = args.path();
    let ns_file = File::open(&ns_path)
        .with_context(|| format!("network namespace {} not found", ns_path.display()))?;

    let key = addr.map(|a| LeaseKey {
        net_id,
        addr_be: codec::be(a),
    });
    let v4 = spec.v4.zip(addr).map(|(v4, a)| Inside4 {
        addr: a,
        prefix_len: v4.subnet.prefix_len(),
        gateway: args.default_route.then_some(v4.gateway),
    });
    let mut host_index = None;
    let result: Result<()> = async {
        let index = nl
            .create_veth_into(&host, &tmp, mac, ns_file.as_raw_fd())
            .await?;
        host_index = Some(index);
        configure_inside(
            &ns_path,
            tmp.clone(),
            args.ifname.clone(),
            v4,
            spec6.zip(addr6).map(|(s6, a)| Inside6 {
                addr: a,
                prefix_len: s6.subnet.prefix_len(),
                gateway: args.default_route.then_some(s6.gateway),
            }),
        )?;
        let lease = Lease {
            netns_cookie: cookie,
            host_ifindex: index,
            flags: u32::from(args.owner),
            mac,
            _pad: [0; 2],
            netns_name: lease_name(&args.netns),
        };
        if let Some(key) = key {
            maps.leases4
                .insert(key, lease, 0)
                .context("recording the lease")?;
        }
        if let Some(a) = addr6 {
            maps.v6.bind(net_id, index, a, mac, lease)?;
        }
        nl.enslave_up(index, bridge.index).await?;
        reconcile::reapply(&nl, &state).await?;
        Ok(())
    }
    .await;
    if let Err(err) = result {
        // Deleting the host end takes the container end with it.
        if let Some(i) = host_index {
            let _ = nl.delete_link(i).await;
        }
        if let Some(key) = key {
            let _ = maps.leases4.remove(&key);
        }
        let _ = maps.v6.release(net_id, cookie);
        let _ = reconcile::reapply(&nl, &state).await;
        return Err(err);
    }
    Ok(Connected {
        v4: spec
            .v4
            .zip(addr)
            .map(|(v4, a)| (a, v4.subnet.prefix_len(), v4.gateway)),
        mac,
        host_ifname: host,
        v6: spec6
            .zip(addr6)
            .map(|(s6, a)| (a, s6.subnet.prefix_len(), s6.gateway)),
    })
}

/// Undoes `connect`: the veth pair goes, the addresses are free again.
/// Returns the address that was freed (the IPv4 one on a network that has
/// one).
pub async fn disconnect(netns_name: &str, bridge: &str) -> Result<IpAddr> {
    let _lock = state::lock(false)?;
    let (state, mut maps, net_id, _) = open_network(bridge)?;
    let cookie = netns_cookie(netns_name)?;
    let h = held(&maps, &maps.leases()?, net_id, cookie)?
        .with_context(|| format!("network namespace {netns_name} is not connected to {bridge}"))?;
    let ifindex = h.lease.host_ifindex;
    let nl = Netlink::new()?;
    if nl.names().await?.contains_key(&ifindex) {
        nl.delete_link(ifindex).await?;
    }
    if let Some(key) = h.key4 {
        maps.leases4.remove(&key).context("forgetting the lease")?;
    }
    maps.v6.release(net_id, cookie)?;
    reconcile::reapply(&nl, &state).await?;
    Ok(h.addr)
}

/// What a namespace holds on a network: the address to name (its IPv4
/// one, or its IPv6 one on an IPv6-only network) and the lease, with its
/// `NP_LEASES4` key when it has one.
struct Held {
    addr: IpAddr,
    lease: Lease,
    key4: Option<LeaseKey>,
}

/// The lease the namespace with `cookie` holds on network `net_id`
/// (`leases`: `NP_LEASES4`'s entries), if it is connected.
fn held(
    maps: &Maps,
    leases: &[(LeaseKey, Lease)],
    net_id: u32,
    cookie: u64,
) -> Result<Option<Held>> {
    if let Some((k, l)) = leases
        .iter()
        .find(|(k, l)| k.net_id == net_id && l.netns_cookie == cookie)
    {
        return Ok(Some(Held {
            addr: IpAddr::V4(codec::from_be(k.addr_be)),
            lease: *l,
            key4: Some(*k),
        }));
    }
    Ok(maps.v6.lease_of(net_id, cookie)?.map(|(a, lease)| Held {
        addr: IpAddr::V6(a),
        lease,
        key4: None,
    }))
}

/// The lease of `addr` on the network of `bridge`, whoever holds it.
pub fn lease_at(bridge: &str, addr: Ipv4Addr) -> Result<Option<Lease>> {
    let (_, maps, net_id, _) = open_network(bridge)?;
    Ok(maps
        .leases()?
        .into_iter()
        .find(|(k, _)| k.net_id == net_id && k.addr_be == codec::be(addr))
        .map(|(_, l)| l))
}

/// `owner`'s lease of `addr` on the network of `bridge`, if there is one.
pub fn lease_of(bridge: &str, addr: Ipv4Addr, owner: u16) -> Result<Option<Lease>> {
    Ok(lease_at(bridge, addr)?.filter(|l| l.flags == u32::from(owner)))
}

/// Releases `owner`'s lease of `addr` on the network of `bridge` (the CNI
/// plugin's DEL): the host end of its veth goes too when `delete_veth`
/// names it (the veth was netpath's) and it is still the lease's link (an
/// ifindex of a veth gone with its namespace may be reused). Nothing to release (no
/// network, no state, no lease) is not an error: DEL is idempotent.
/// Returns whether a lease went.
pub async fn release(
    bridge: &str,
    addr: Ipv4Addr,
    owner: u16,
    delete_veth: Option<&str>,
) -> Result<bool> {
    let _lock = state::lock(false)?;
    let Ok((state, mut maps, net_id, _)) = open_network(bridge) else {
        return Ok(false);
    };
    let key = LeaseKey {
        net_id,
        addr_be: codec::be(addr),
    };
    let lease = match maps.leases4.get(&key, 0) {
        Ok(l) if l.flags == u32::from(owner) => l,
        _ => return Ok(false),
    };
    let nl = Netlink::new()?;
    if let Some(name) = delete_veth
        && nl
            .names()
            .await?
            .get(&lease.host_ifindex)
            .map(String::as_str)
            == Some(name)
    {
        nl.delete_link(lease.host_ifindex).await?;
    }
    maps.leases4.remove(&key).context("forgetting the lease")?;
    reconcile::reapply(&nl, &state).await?;
    Ok(true)
}
