//! Attaching the socket hooks (see `netpath-ebpf/src/sock.rs`) to a cgroup
//! v2 directory: the root by default, `--cgroup PATH` (or `NETPATH_CGROUP`)
//! to choose one. One link per hook, pinned as
//! `links/cgroup-<hook>-<build>` so later commands (and newer builds) find
//! them; the hooks act only on sockets of the managed namespace.

use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{CgroupAttachMode, links::FdLink};

use crate::{
    attach::{Datapath, SockHook, build_id},
    state::StateDir,
    sys,
};

/// Where cgroup v2 is mounted (the first `cgroup2` mount).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    for line in mounts.lines() {
        // ... mount-point ... - fstype source options
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2")
            && let Some(point) = left.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(point));
        }
    }
    bail!("no cgroup v2 hierarchy is mounted")
}

fn pin_name(hook: SockHook) -> String {
    format!("cgroup-{}-{}", hook.program(), build_id().replace('.', "_"))
}

/// Pinned socket-hook links of any build.
fn pinned(state: &StateDir) -> Vec<PathBuf> {
    std::fs::read_dir(state.links_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("cgroup-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Detaches every socket hook netpath attached in this namespace.
pub fn detach_all(state: &StateDir) -> Vec<anyhow::Error> {
    pinned(state)
        .into_iter()
        .filter_map(|p| sys::detach_pinned_link(&p).err())
        .collect()
}

/// What [`ensure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hooks {
    Attached,
    Unchanged,
}

/// Makes sure this build's socket hooks are attached to `cgroup` (and only
/// there): a different cgroup or another build's hooks are replaced.
/// Without a cgroup (no `--cgroup`, no `NETPATH_CGROUP`), the hooks stay on
/// the cgroup an earlier command put them on: this build's are kept,
/// another build's (an upgrade) are replaced on that same cgroup; only
/// when there are none (or their cgroup is gone) do they go on the cgroup
/// v2 root (a later `up` without the option must not widen them to every
/// process of the namespace).
pub fn ensure(state: &StateDir, dp: &mut Datapath, cgroup: Option<&Path>) -> Result<Hooks> {
    let mut host = dp.maps.host.get(&0, 0).context("reading NP_HOST")?;
    let ours = SockHook::ALL
        .iter()
        .all(|h| state.links_dir().join(pin_name(*h)).exists());
    let any = !pinned(state).is_empty();
    let cgroup = match where_to(cgroup, ours, any, host.cgroup_id) {
        Target::Keep => return Ok(Hooks::Unchanged),
        Target::Path(c) => c.to_path_buf(),
        Target::Same(id) => {
            let root = cgroup2_root()?;
            match dir_with_inode(&root, id) {
                Some(c) => c,
                None => {
                    tracing::warn!(
                        "the socket hooks' cgroup (inode {id}) is gone: attaching them to {} (give --cgroup to choose)",
                        root.display()
                    );
                    root
                }
            }
        }
        Target::Root => cgroup2_root()?,
    };
    let dir =
        File::open(&cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    let id = dir.metadata()?.ino();
    if ours && host.cgroup_id == id {
        return Ok(Hooks::Unchanged);
    }
    if let Some(e) = detach_all(state).into_iter().next() {
        return Err(e);
    }
    for (hook, prog) in SockHook::ALL.iter().zip(dp.sock.iter_mut()) {
        // A bpf_link attachment (kernel 5.7+) coexists with other programs on
        // the cgroup whatever the mode; link_create takes no mode flags.
        let link_id = prog
            .attach(&dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {} to {}", hook.program(), cgroup.display()))?;
        let link: FdLink = prog.take_link(link_id)?.try_into()?;
        let pin = state.links_dir().join(pin_name(*hook));
        link.pin(&pin)
            .with_context(|| format!("pinning link at {}", pin.display()))?;
    }
    host.cgroup_id = id;
    dp.maps.host.set(0, host, 0).context("writing NP_HOST")?;
    Ok(Hooks::Attached)
}

/// Where [`ensure`] puts the hooks.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    /// Where this build's hooks already are.
    Keep,
    Path(&'a Path),
    /// The cgroup of this inode, where another build's hooks are.
    Same(u64),
    Root,
}

/// The cgroup asked for, else where the hooks are (this build's, `ours`,
/// or any build's, `any`, on the cgroup of inode `attached_id`), else the
/// root. Pure.
fn where_to(asked: Option<&Path>, ours: bool, any: bool, attached_id: u64) -> Target<'_> {
    match asked {
        Some(p) => Target::Path(p),
        None if attached_id == 0 => Target::Root,
        None if ours => Target::Keep,
        None if any => Target::Same(attached_id),
        None => Target::Root,
    }
}

/// The directory under `root` (itself included) whose inode is `ino`: a
/// cgroup v2 directory's inode is its cgroup id, all the pinned state keeps
/// of where the hooks were. Breadth first, symlinks not followed.
fn dir_with_inode(root: &Path, ino: u64) -> Option<PathBuf> {
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    while let Some(dir) = queue.pop_front() {
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.ino() == ino) {
            return Some(dir);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(e.path());
            }
        }
    }
    None
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Checks that `path` is a cgroup v2 directory.
pub fn check_cgroup(path: &Path) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs into a zeroed struct with a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 || !path.is_dir() {
        bail!("cgroup {} does not exist", path.display());
    }
    if st.f_type as i64 != CGROUP2_SUPER_MAGIC {
        bail!("{} is not a cgroup v2 directory", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_up_without_a_cgroup_keeps_the_hooks_where_they_are() {
        let cg = Path::new("/sys/fs/cgroup/test");
        assert_eq!(where_to(Some(cg), true, true, 7), Target::Path(cg));
        assert_eq!(where_to(None, true, true, 7), Target::Keep);
        // Another build's hooks (an upgrade): replaced on the same cgroup.
        assert_eq!(where_to(None, false, true, 7), Target::Same(7));
        // None yet: the documented default.
        assert_eq!(where_to(None, false, false, 7), Target::Root);
        assert_eq!(where_to(None, true, true, 0), Target::Root);
    }

    #[test]
    fn a_cgroup_is_found_by_its_inode() {
        let root = std::env::temp_dir().join(format!("np-ino-{}", std::process::id()));
        let deep = root.join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::create_dir_all(root.join("z")).unwrap();
        let ino = std::fs::metadata(&deep).unwrap().ino();
        assert_eq!(dir_with_inode(&root, ino), Some(deep));
        let top = std::fs::metadata(&root).unwrap().ino();
        assert_eq!(dir_with_inode(&root, top), Some(root.clone()));
        std::fs::remove_dir_all(root.join("a/b/c")).unwrap();
        assert_eq!(dir_with_inode(&root, ino), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
