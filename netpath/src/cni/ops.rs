//! ADD, DEL and CHECK. Each step that changes something is undone when a
//! later one fails, so a failed ADD leaves nothing behind (the IPAM lease
//! included); DEL carries on past what is already gone.

use std::path::Path;

use netpath_common::owner;

use super::{
    config::{Env, NetConf, with_target},
    ipam,
    result::{CniError, CniResult, Interface, IpConfig, Route, code},
    store::{self, Record},
};
use crate::{
    codec, daemon,
    down::{self, DownTarget},
    endpoint::{self, ConnectArgs},
    foreign::{self, Foreign},
    netns,
    plumbing::Netlink,
    publish,
    spec::NetworkSpec,
    up::{self, UpArgs},
};

fn failed(msg: &str) -> impl FnOnce(anyhow::Error) -> CniError + '_ {
    move |e| CniError::with(code::NETPATH, msg, &e)
}

/// The record file of this attachment.
fn record_path(conf: &NetConf, env: &Env) -> Result<std::path::PathBuf, CniError> {
    let host = netns::cookie().map_err(failed("reading this namespace's cookie"))?;
    Ok(store::path(
        host,
        &conf.name,
        &env.container_id,
        &env.ifname,
    ))
}

/// The container's namespace: its cookie, or error 3 when it is not there.
fn container_ns(env: &Env) -> Result<(&Path, u64), CniError> {
    let p = env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is not set"))?;
    let cookie = netns::run_in_path(p, netns::cookie)
        .and_then(|c| c)
        .map_err(|e| {
            CniError::with(
                code::UNKNOWN_CONTAINER,
                format!("network namespace {} not found", p.display()),
                &e,
            )
        })?;
    if cookie == netns::cookie().map_err(failed("reading this namespace's cookie"))? {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_NETNS {} is the namespace netpath manages, not a container's",
                p.display()
            ),
        ));
    }
    Ok((p, cookie))
}

/// Brings the network up as `netpath up` does; returns whether this call
/// created it (then a failure later takes it down again).
async fn network_up(conf: &NetConf, spec: NetworkSpec) -> Result<bool, CniError> {
    let args = UpArgs {
        v6: None,
        spec,
        options: conf.options,
        uplinks: conf.uplinks.clone(),
        cgroup: conf.cgroup.clone(),
        trusted: Vec::new(),
        no_masquerade_to: conf.no_masquerade_to.clone(),
    };
    // A network that is up keeps its options: a config naming the same
    // bridge with others (another CNI network, an edited file) is refused,
    // not applied to every container on the bridge.
    if let Ok((_, maps)) = crate::state::Maps::open_current()
        && maps
            .network_by_bridge(&args.spec.bridge)
            .map_err(failed("reading the networks"))?
            .is_some_and(|(_, info)| NetworkSpec::from_info(&info) == args.spec)
        && !args
            .is_recorded(&maps)
            .map_err(failed("reading the network"))?
    {
        return Err(CniError::new(
            code::NETPATH,
            format!(
                "netpath network {} is up with other options than this config's \
                 (ipMasq, icc, internal, gatewayMode, noMasqueradeTo): \
                 `netpath down --bridge {}` first to change them",
                args.spec.bridge, args.spec.bridge
            ),
        ));
    }
    let what = format!("bringing up netpath network {}", conf.bridge);
    let report = up::up_many(std::slice::from_ref(&args))
        .await
        .map_err(failed(&what))?
        .pop()
        .ok_or_else(|| CniError::new(code::NETPATH, "up gave no result"))?
        .map_err(failed(&what))?;
    // The daemon follows links and sweeps flows; without it the datapath
    // still works, so a failure to start it is said, not fatal.
    if let Err(e) = daemon::ensure_running(None) {
        tracing::warn!("netpath daemon: {e:#}");
    }
    Ok(!report.already_up)
}

/// Takes down a network this ADD created (and the daemon with the last).
async fn network_undo(bridge: &str) {
    match down::down(&DownTarget::Bridge(bridge.to_owned())).await {
        Ok(r) if r.unpinned_all => {
            let _ = daemon::stop();
        }
        Ok(_) => {}
        Err(e) => tracing::error!("while undoing the failed ADD: {e:#}"),
    }
}

/// Removes what a record says this attachment has: its mappings (with
/// their flows) and its lease (with the veth when it is netpath's).
async fn release(r: &Record) -> Result<(), CniError> {
    // No state any more (`netpath down --all`): nothing is published.
    if publish::owned_to(owner::CNI, r.addr).is_ok() {
        publish::sync_owned_to(owner::CNI, r.addr, &[])
            .map_err(failed("removing the container's port mappings"))?;
    }
    let veth = (!r.chained).then_some(r.host_ifname.as_str());
    endpoint::release(&r.bridge, r.addr, owner::CNI, veth)
        .await
        .map_err(failed("releasing the container's address"))?;
    Ok(())
}

pub async fn add(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<CniResult, CniError> {
    let (ns_path, _) = container_ns(env)?;
    let rec = record_path(conf, env)?;
    // An ADD again without a DEL is the runtime's error (the spec forbids
    // it): refused, the attachment left as it is.
    if let Some(old) = store::load(&rec).map_err(failed("reading the record"))? {
        return Err(CniError::new(
            code::NETPATH,
            format!(
                "container {} is attached to network {} already ({} on {}): DEL it first",
                env.container_id, conf.name, old.addr, old.bridge
            ),
        ));
    }
    if conf.chained {
        return add_chained(env, conf, ns_path, &rec).await;
    }
    let kind = conf.ipam_type.as_deref().unwrap_or_default();
    let plugin = ipam::find(env, kind)?;
    let got = ipam::exec(&plugin, "ADD", stdin)?.unwrap_or_default();
    let undo_ipam = || {
        if let Err(e) = ipam::exec(&plugin, "DEL", stdin) {
            tracing::error!("while undoing the failed ADD: IPAM DEL: {e}");
        }
    };
    let out = add_standalone(env, conf, ns_path, &rec, &got).await;
    if out.is_err() {
        undo_ipam();
    }
    out
}

async fn add_standalone(
    env: &Env,
    conf: &NetConf,
    ns_path: &Path,
    rec: &Path,
    got: &CniResult,
) -> Result<CniResult, CniError> {
    let (addr, subnet, gateway, _) = got.ipv4()?;
    let spec = NetworkSpec::new(&conf.bridge, subnet, gateway).map_err(|e| {
        CniError::with(
            code::INVALID_CONFIG,
            "the IPAM result makes no netpath network",
            &e,
        )
    })?;
    let created = network_up(conf, spec.clone()).await?;
    let short: String = env.container_id.chars().take(12).collect();
    let args = ConnectArgs {
        netns: format!("cni-{short}"),
        netns_path: Some(ns_path.to_owned()),
        bridge: conf.bridge.clone(),
        ip: Some(addr),
        ifname: env.ifname.clone(),
        owner: owner::CNI,
        default_route: true,
    };
    let done = async {
        let c = endpoint::connect(&args)
            .await
            .map_err(failed("plugging the container in"))?;
        let record = Record {
            bridge: conf.bridge.clone(),
            addr,
            host_ifname: c.host_ifname.clone(),
            chained: false,
        };
        let finish = async {
            publish::sync_owned_to(owner::CNI, addr, &with_target(&conf.ports, addr))
                .map_err(failed("publishing the port mappings"))?;
            store::save(rec, &record).map_err(failed("writing the record"))
        }
        .await;
        if let Err(e) = finish {
            let _ = release(&record).await;
            return Err(e);
        }
        Ok(c)
    }
    .await;
    let c = match done {
        Ok(c) => c,
        Err(e) => {
            if created {
                network_undo(&conf.bridge).await;
            }
            return Err(e);
        }
    };
    // The plugin's networks always have an IPv4 subnet (`config` refuses
    // others), and `connect` was given the address.
    let (address, prefix_len, gateway) = c.v4.ok_or_else(|| {
        CniError::new(
            code::NETPATH,
            format!("{} gave no IPv4 address", conf.bridge),
        )
    })?;
    let nl = Netlink::new().map_err(failed("netlink"))?;
    let mac_of = async |name: &str| {
        nl.link_by_name(name)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.mac)
            .map(|m| codec::fmt_mac(&m))
            .unwrap_or_default()
    };
    Ok(CniResult {
        cni_version: super::result::VERSION.to_owned(),
        interfaces: vec![
            Interface {
                name: conf.bridge.clone(),
                mac: mac_of(&conf.bridge).await,
                sandbox: None,
            },
            Interface {
                name: c.host_ifname.clone(),
                mac: mac_of(&c.host_ifname).await,
                sandbox: None,
            },
            Interface {
                name: env.ifname.clone(),
                mac: codec::fmt_mac(&c.mac),
                sandbox: Some(ns_path.display().to_string()),
            },
        ],
        ips: vec![IpConfig {
            address: format!("{address}/{prefix_len}"),
            gateway: Some(gateway.to_string()),
            interface: Some(2),
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".to_owned(),
            gw: Some(gateway.to_string()),
        }],
        dns: got.dns.clone(),
    })
}

/// Chained after the reference `bridge` plugin: its prevResult names the
/// bridge, the container's interface and address. The network comes up on
/// that bridge and subnet (no bridge or address of netpath's), the port is
/// bound to the container's address and MAC, the mappings published; the
/// result is prevResult unchanged.
async fn add_chained(
    env: &Env,
    conf: &NetConf,
    ns_path: &Path,
    rec: &Path,
) -> Result<CniResult, CniError> {
    let prev = conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "chained: no prevResult (netpath chained goes after a plugin such as bridge)",
        )
    })?;
    let (addr, subnet, gateway, iface) = prev.ipv4()?;
    let nl = Netlink::new().map_err(failed("netlink"))?;
    let links = nl.links().await.map_err(failed("netlink"))?;
    let bridge = prev
        .interfaces
        .iter()
        .filter(|i| i.sandbox.is_none())
        .find_map(|i| links.iter().find(|l| l.name == i.name && l.is_bridge()))
        .map(|l| l.name.clone())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "chained: prevResult names no bridge of this namespace",
            )
        })?;
    let container = iface
        .and_then(|i| prev.interfaces.get(i))
        .or_else(|| {
            prev.interfaces
                .iter()
                .find(|i| i.name == env.ifname && i.sandbox.is_some())
        })
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "chained: prevResult names no container interface",
            )
        })?;
    let mac = codec::parse_mac(&container.mac).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("chained: MAC {:?} of {}", container.mac, container.name),
        )
    })?;
    let spec = NetworkSpec::new(&bridge, subnet, gateway).map_err(|e| {
        CniError::with(
            code::INVALID_CONFIG,
            "chained: prevResult makes no netpath network",
            &e,
        )
    })?;
    let chained_conf = NetConf {
        bridge: bridge.clone(),
        ..conf.clone()
    };
    let created = network_up(&chained_conf, spec).await?;
    // An address another attachment holds (or a forged prevResult naming
    // one) is refused before anything is bound: undoing this ADD then
    // touches nothing of theirs.
    let held = endpoint::lease_at(&bridge, addr)
        .map_err(failed("reading the leases"))?
        .is_some();
    let mapped = publish::owned_to(owner::CNI, addr).is_ok_and(|m| !m.is_empty());
    if held || mapped {
        if created {
            network_undo(&bridge).await;
        }
        return Err(CniError::new(
            code::NETPATH,
            format!("chained: {addr} is bound to another container on {bridge} already"),
        ));
    }
    let short: String = env.container_id.chars().take(12).collect();
    let record = Record {
        bridge: bridge.clone(),
        addr,
        host_ifname: String::new(),
        chained: true,
    };
    let done = async {
        foreign::bind_one(
            owner::CNI,
            &Foreign {
                bridge: bridge.clone(),
                addr,
                // The CNI plugin publishes and binds IPv4 only (so far).
                addr6: None,
                mac,
                sandbox: ns_path.to_owned(),
                name: format!("cni-{short}"),
            },
        )
        .await
        .map_err(failed("binding the container's port"))?;
        publish::sync_owned_to(owner::CNI, addr, &with_target(&conf.ports, addr))
            .map_err(failed("publishing the port mappings"))?;
        store::save(rec, &record).map_err(failed("writing the record"))
    }
    .await;
    if let Err(e) = done {
        let _ = release(&record).await;
        if created {
            network_undo(&bridge).await;
        }
        return Err(e);
    }
    Ok(CniResult {
        cni_version: super::result::VERSION.to_owned(),
        ..prev
    })
}

pub async fn del(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let rec = record_path(conf, env)?;
    if let Some(r) = store::load(&rec).map_err(failed("reading the record"))? {
        release(&r).await?;
        store::remove(&rec).map_err(failed("removing the record"))?;
    }
    if !conf.chained {
        let kind = conf.ipam_type.as_deref().unwrap_or_default();
        let plugin = ipam::find(env, kind)?;
        ipam::exec(&plugin, "DEL", stdin)?;
    }
    Ok(())
}

pub async fn check(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let bad = |m: String| CniError::new(code::CHECK_FAILED, m);
    container_ns(env)?;
    let rec = record_path(conf, env)?;
    let r = store::load(&rec)
        .map_err(failed("reading the record"))?
        .ok_or_else(|| {
            bad(format!(
                "no attachment of {} {} to {}",
                env.container_id, env.ifname, conf.name
            ))
        })?;
    let lease = endpoint::lease_of(&r.bridge, r.addr, owner::CNI)
        .map_err(|e| {
            CniError::with(
                code::CHECK_FAILED,
                format!("network {} is not up", r.bridge),
                &e,
            )
        })?
        .ok_or_else(|| bad(format!("{} is not bound on {}", r.addr, r.bridge)))?;
    let nl = Netlink::new().map_err(failed("netlink"))?;
    let names = nl.names().await.map_err(failed("netlink"))?;
    let port = names.get(&lease.host_ifindex);
    if port.is_none() || (!r.chained && port != Some(&r.host_ifname)) {
        return Err(bad(format!("the port of {} is gone", r.addr)));
    }
    let mut want = with_target(&conf.ports, r.addr);
    let mut have = publish::owned_to(owner::CNI, r.addr).map_err(failed("reading the mappings"))?;
    want.sort();
    have.sort();
    if want != have {
        return Err(bad(format!(
            "port mappings to {} differ: want [{}], have [{}]",
            r.addr,
            want.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            have.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if !conf.chained {
        let plugin = ipam::find(env, conf.ipam_type.as_deref().unwrap_or_default())?;
        ipam::exec(&plugin, "CHECK", stdin)?;
    }
    Ok(())
}
