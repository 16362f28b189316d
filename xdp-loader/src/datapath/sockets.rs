//! The socket programs: found a cgroup v2 directory, attached there, pinned
//! with a persistent data path, and swapped make-before-break on adoption.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use log::info;
use xdp_common::{Endpoint, SockKey, addr_of, names};

use super::{
    attach::{pin_link, program},
    sockdiag::SockDiag,
};
use crate::config::SocketCgroup;

/// The socket programs in `EBPF_OBJECT`, one per hook.
pub const PROGRAMS: [&str; 8] = [
    "dnsteer_conn4",
    "dnsteer_conn6",
    "dnsteer_send4",
    "dnsteer_send6",
    "dnsteer_recv4",
    "dnsteer_recv6",
    "dnsteer_peer4",
    "dnsteer_peer6",
];

/// A persistent data path's socket link for program `name` is pinned as this
/// prefix and the program's name.
pub const LINK_SOCK: &str = "link_sock_";

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_MAGIC: i64 = 0x6367_7270;

/// The directory `setting` names, checked to be a cgroup v2 one; `None` for
/// `off`.
pub fn resolve(setting: &SocketCgroup) -> Result<Option<PathBuf>> {
    let path = match setting {
        SocketCgroup::Off => return Ok(None),
        SocketCgroup::Auto => {
            let mounts = fs::read_to_string("/proc/self/mounts")
                .context("reading /proc/self/mounts to find the cgroup v2 root")?;
            root_in(&mounts).with_context(|| {
                "no cgroup v2 file system is mounted (/proc/self/mounts has no cgroup2 line); mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) or set [sockets] cgroup = \"off\""
            })?
        }
        SocketCgroup::Path(path) => path.clone(),
    };
    if !is_cgroup2(&path)? {
        bail!(
            "[sockets] cgroup: {} is not a cgroup v2 directory (cgroup v1 or another file system); name one under the cgroup2 mount in /proc/self/mounts, or use \"auto\"",
            path.display()
        );
    }
    Ok(Some(path))
}

/// The mount point of the first cgroup2 file system in a mounts table.
fn root_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(unescape(dir)))
    })
}

/// A mounts table's field, with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_cgroup2(path: &Path) -> Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("[sockets] cgroup: {} has a NUL byte", path.display()))?;
    // SAFETY: a zeroed statfs is a valid out parameter; `c` is a C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        let err = std::io::Error::last_os_error();
        bail!("[sockets] cgroup: {}: {err}", path.display());
    }
    Ok(st.f_type as i64 == CGROUP2_MAGIC)
}

/// Loads the socket programs, attached or not: a loaded program names its
/// maps, which is how `stats` finds the socket maps of an instance whose pins
/// it cannot see, as it finds the others through the attached programs.
pub fn load(ebpf: &mut Ebpf) -> Result<()> {
    for name in PROGRAMS {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        prog.load()
            .with_context(|| format!("loading {name} (the verifier's log follows)"))?;
    }
    Ok(())
}

/// Attaches the loaded socket programs to `cgroup`. With `pin_dir`,
/// each link is pinned there; a link already pinned (a persistent data path
/// being adopted) is replaced only after the new one is attached, so sockets
/// are steered throughout.
pub fn attach(ebpf: &mut Ebpf, cgroup: &Path, pin_dir: Option<&Path>) -> Result<()> {
    let dir = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
    for name in PROGRAMS {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        let id = prog
            .attach(&dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
        if let Some(pins) = pin_dir {
            let link = FdLink::try_from(prog.take_link(id)?)
                .with_context(|| format!("{name}: --persist needs cgroup links (bpf_link)"))?;
            let pin = pins.join(format!("{LINK_SOCK}{name}"));
            let fresh = pins.join(format!(".{LINK_SOCK}{name}"));
            let _ = fs::remove_file(&fresh);
            // The link stays attached through its pin once this fd closes.
            drop(pin_link(link, &fresh)?);
            // Atomically replaces an adopted pin, whose link then detaches.
            fs::rename(&fresh, &pin)
                .with_context(|| format!("pinning the link of {name} at {}", pin.display()))?;
        }
    }
    info!(
        "socket programs attached to cgroup {}: its processes' sockets to a service address are steered",
        cgroup.display()
    );
    Ok(())
}

/// Whether a persistent data path pinned socket links in `pin_dir`.
pub fn pinned(pin_dir: &Path) -> bool {
    PROGRAMS
        .iter()
        .any(|name| pin_dir.join(format!("{LINK_SOCK}{name}")).exists())
}

/// Closes the connected UDP sockets (of this network namespace) that the
/// socket programs connected to a backend in `left`: each is disconnected
/// with `ECONNABORTED`, so its owner's next call fails at once and its
/// reconnect draws a live backend. TCP connections are left to drain.
/// Returns how many were closed per backend.
pub fn close_left(ebpf: &Ebpf, left: &BTreeSet<SocketAddr>) -> Result<BTreeMap<SocketAddr, usize>> {
    let mut closed = BTreeMap::new();
    if left.is_empty() {
        return Ok(closed);
    }
    let steered: HashMap<&MapData, SockKey, Endpoint> = HashMap::try_from(
        ebpf.map(names::SOCK_REVERSE)
            .with_context(|| format!("no map {}", names::SOCK_REVERSE))?,
    )?;
    let diag = SockDiag::open().context("opening a sock_diag socket")?;
    let connected = diag
        .connected_udp()
        .context("listing the connected UDP sockets (sock_diag)")?;
    for sock in connected.iter().filter(|s| left.contains(&s.peer)) {
        let key = SockKey::new(
            sock.cookie,
            addr_of(sock.peer.ip()),
            sock.peer.port().to_be_bytes(),
        );
        // Only sockets dnsteer connected: not, say, a probe of its own.
        if steered.get(&key, 0).is_err() {
            continue;
        }
        match diag.destroy(sock) {
            Ok(()) => *closed.entry(sock.peer).or_default() += 1,
            // Closed by its owner meanwhile.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "closing a UDP socket connected to {} (sock_diag SOCK_DESTROY)",
                        sock.peer
                    )
                });
            }
        }
    }
    Ok(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_beside_v1_and_unescapes_it() {
        let hybrid = "sysfs /sys sysfs rw 0 0\n\
            tmpfs /sys/fs/cgroup tmpfs ro 0 0\n\
            cgroup2 /sys/fs/cgroup/unified\\040dir cgroup2 rw,nsdelegate 0 0\n\
            cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        assert_eq!(
            root_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified dir"))
        );
        assert_eq!(root_in("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"), None);
    }

    #[test]
    fn a_non_cgroup_directory_is_refused() {
        let err = resolve(&SocketCgroup::Path("/proc".into())).unwrap_err();
        assert!(format!("{err:#}").contains("/proc is not a cgroup v2 directory"));
        assert_eq!(resolve(&SocketCgroup::Off).unwrap(), None);
    }
}
