//! Where a running instance keeps its maps, and how one instance per interface
//! is enforced.
//!
//! Each instance pins its maps under `<root>/<iface>/` on the BPF filesystem
//! (root: `/sys/fs/bpf/dnsteer`, or `$DNSTEER_PIN_ROOT`) and holds an exclusive
//! `flock` on that directory while it runs. The lock dies with the process, so a
//! crashed instance never blocks the next one, and `dnsteer stats` can tell a live
//! instance from pins left behind.
//!
//! A persistent instance (`dnsteer run --persist`) also pins its XDP and TC
//! links there ([`LINK_XDP`], [`LINK_TC`]) and leaves everything pinned when it
//! exits, however it exits: the data path keeps steering, and the next
//! `dnsteer run --persist` adopts the maps and swaps its programs into the links.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs::{self, File},
    io,
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, fs::PermissionsExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Map, MapData, MapInfo},
    programs::{ProgramInfo, SchedClassifier, TcAttachType, loaded_programs},
};
use log::{info, warn};
use xdp_common::names;

use super::{TC_PROGRAM, XDP_PROGRAM};

const DEFAULT_ROOT: &str = "/sys/fs/bpf/dnsteer";
const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin of a persistent instance's XDP link, beside its maps.
pub const LINK_XDP: &str = "link_xdp";
/// The pin of a persistent instance's TC egress link.
pub const LINK_TC: &str = "link_tc";
/// Prefix of the pins of a persistent fast path's reply links, one per
/// interface (`link_tc_in_<iface>`).
pub const LINK_TC_IN: &str = "link_tc_in_";

/// The directory holding one directory per running interface.
pub fn root() -> PathBuf {
    std::env::var_os("DNSTEER_PIN_ROOT").map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from)
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path and a zeroed out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c_path.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Mounts the BPF filesystem on /sys/fs/bpf when the pin root needs it and
/// nothing is mounted; returns whether it did.
fn ensure_bpffs(root: &Path) -> Result<bool> {
    let existing = root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(existing) {
        return Ok(false);
    }
    if !root.starts_with(BPFFS) {
        bail!(
            "{} is not on a BPF filesystem; mount one there (mount -t bpf bpf DIR) or unset DNSTEER_PIN_ROOT",
            root.display()
        );
    }
    let (src, target, fstype) = (c"bpf", CString::new(BPFFS)?, c"bpf");
    // SAFETY: valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .context("mounting the BPF filesystem on /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)");
    }
    info!("mounted the BPF filesystem on {BPFFS}");
    Ok(true)
}

/// Whether this process has a mount namespace of its own (as `ip netns exec`
/// gives it), not its init's: a BPF filesystem it mounts there dies with it.
fn private_mounts() -> bool {
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    ns("self") != ns("1")
}

fn try_lock(dir: &File) -> io::Result<bool> {
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The pins of a running instance: created locked; removed on drop unless
/// the instance persists.
pub struct Pins {
    dir: PathBuf,
    _lock: File,
    /// Leave everything pinned on drop (`--persist`).
    pub persist: bool,
    /// The BPF filesystem holding the pins was mounted by this process in a
    /// mount namespace of its own: the pins cannot outlive it.
    pub ephemeral: bool,
}

impl Pins {
    /// Creates and locks `<root>/<iface>`. Refuses when another live instance
    /// holds the interface. What an earlier instance left is kept: see
    /// [`Pins::persisted`] and [`Pins::clear`].
    pub fn claim(iface: &str) -> Result<Self> {
        let root = root();
        let ephemeral = ensure_bpffs(&root)? && private_mounts();
        let dir = root.join(iface);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to root", dir.display()))?;
        let lock = File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
        if !try_lock(&lock).with_context(|| format!("locking {}", dir.display()))? {
            bail!(
                "dnsteer is already running on {iface} (it holds {}); stop that instance first, or pick another interface",
                dir.display()
            );
        }
        Ok(Pins {
            dir,
            _lock: lock,
            persist: false,
            ephemeral,
        })
    }

    /// Whether a persistent instance left its data path here (its links pinned).
    pub fn persisted(&self) -> bool {
        self.dir.join(LINK_XDP).exists() || self.dir.join(LINK_TC).exists()
    }

    /// The interfaces a persistent fast path's reply links are pinned for.
    pub fn reply_in_links(&self) -> Result<Vec<(String, PathBuf)>> {
        Ok(self
            .entries()?
            .into_iter()
            .filter_map(|path| {
                let name = path.file_name()?.to_str()?;
                let iface = name.strip_prefix(LINK_TC_IN)?.to_owned();
                Some((iface, path))
            })
            .collect())
    }

    /// Removes every pin: maps an instance that did not exit cleanly left, or a
    /// persistent data path (its links detach once no process holds them).
    /// Returns how many there were.
    pub fn clear(&self, why: &str) -> Result<usize> {
        let entries = self.entries()?;
        for stale in &entries {
            info!("removing {} ({why})", stale.display());
            fs::remove_file(stale).with_context(|| format!("removing {}", stale.display()))?;
        }
        Ok(entries.len())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entries(&self) -> Result<Vec<PathBuf>> {
        let read =
            fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))?;
        read.map(|e| Ok(e?.path()))
            .collect::<io::Result<_>>()
            .map_err(Into::into)
    }

    /// Pins every map of `ebpf` under the directory, by map name.
    pub fn pin_maps(&self, ebpf: &Ebpf) -> Result<()> {
        for name in names::ALL {
            let map = ebpf
                .map(name)
                .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
            let path = self.dir.join(name);
            map.pin(&path)
                .with_context(|| format!("pinning {name} at {}", path.display()))?;
        }
        Ok(())
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if self.persist {
            info!(
                "the data path stays attached with its maps and links pinned under {}; `dnsteer stop` removes it",
                self.dir.display()
            );
            return;
        }
        // Unpinning only drops the bpffs names; the maps live on while the
        // programs that use them are attached.
        let cleaned = self.entries().and_then(|entries| {
            for path in entries {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
            fs::remove_dir(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
        });
        match cleaned {
            Ok(()) => info!("unpinned {}", self.dir.display()),
            Err(err) => warn!("{err:#}"),
        }
    }
}

/// Where an instance's maps are found.
enum Source {
    /// Pinned under this directory.
    Pins(PathBuf),
    /// Map ids (by map name) of the programs attached to the interface.
    Attached(BTreeMap<String, u32>),
}

/// A running (or crashed) instance, for `dnsteer stats`.
///
/// Found by its pins when they are visible, else through the programs attached to
/// the interface: `ip netns exec` gives every command its own /sys, so a `stats`
/// started that way cannot see the pins of a `run` started the same way, but it
/// sees the interface and, through it, the programs and their maps.
pub struct Instance {
    pub iface: String,
    /// The pin directory, or how the instance was found without one.
    pub location: String,
    /// False when the pins are left over from an instance that is gone.
    pub live: bool,
    /// Its links are pinned (`--persist`): the data path runs with or without
    /// a loader.
    pub persistent: bool,
    source: Source,
}

impl Instance {
    /// The instance on `iface`, or the only one there is.
    pub fn find(iface: Option<&str>) -> Result<Self> {
        let root = root();
        let iface = match iface {
            Some(iface) => iface.to_owned(),
            None => {
                let mut found: Vec<String> = fs::read_dir(&root)
                    .map(|dir| {
                        dir.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                found.sort();
                match found.as_slice() {
                    [one] => one.clone(),
                    [] => bail!(
                        "no dnsteer instance found (nothing pinned under {}); name the interface with --iface, or start one with `dnsteer run --config FILE`",
                        root.display()
                    ),
                    many => bail!(
                        "dnsteer runs on several interfaces ({}); pick one with --iface",
                        many.join(", ")
                    ),
                }
            }
        };
        let dir = root.join(&iface);
        let Ok(lock) = File::open(&dir) else {
            let maps = attached_maps(&iface).with_context(|| {
                format!(
                    "no dnsteer instance on {iface}: nothing pinned at {} and none attached to it",
                    dir.display()
                )
            })?;
            let location = format!("programs attached to {iface}");
            return Ok(Instance {
                iface,
                location,
                live: true,
                persistent: false,
                source: Source::Attached(maps),
            });
        };
        let live =
            !try_lock(&lock).with_context(|| format!("checking the lock on {}", dir.display()))?;
        Ok(Instance {
            iface,
            location: dir.display().to_string(),
            live,
            persistent: dir.join(LINK_XDP).exists() || dir.join(LINK_TC).exists(),
            source: Source::Pins(dir),
        })
    }

    /// What the kernel says of one of the instance's maps: type, sizes, id, and
    /// through its fd, the memory it holds.
    pub fn map_info(&self, name: &str) -> Result<MapInfo> {
        match &self.source {
            Source::Pins(dir) => {
                let path = dir.join(name);
                MapInfo::from_pin(&path)
                    .with_context(|| format!("reading pinned map {}", path.display()))
            }
            Source::Attached(ids) => {
                let id = ids
                    .get(name)
                    .with_context(|| format!("the attached program uses no map {name}"))?;
                MapInfo::from_id(*id).with_context(|| format!("reading map {name} (id {id})"))
            }
        }
    }

    /// One of the instance's maps, by name.
    pub fn map(&self, name: &str) -> Result<Map> {
        let data = match &self.source {
            Source::Pins(dir) => {
                let path = dir.join(name);
                MapData::from_pin(&path)
                    .with_context(|| format!("opening pinned map {}", path.display()))?
            }
            Source::Attached(ids) => {
                let id = ids
                    .get(name)
                    .with_context(|| format!("the attached program uses no map {name}"))?;
                MapData::from_id(*id).with_context(|| format!("opening map {name} (id {id})"))?
            }
        };
        Map::from_map_data(data).with_context(|| format!("reading map {name}"))
    }
}

/// Whether a dnsteer instance is attached to `iface`, whatever mount namespace
/// (and so whatever pins) it has.
pub fn attached(iface: &str) -> bool {
    attached_maps(iface).is_ok()
}

/// Map name -> id for the maps `prog` uses.
fn map_ids(prog: &ProgramInfo) -> Result<BTreeMap<String, u32>> {
    let ids = prog
        .map_ids()
        .context("listing a program's maps")?
        .unwrap_or_default();
    ids.into_iter()
        .map(|id| {
            let info = MapInfo::from_id(id).with_context(|| format!("reading map {id}"))?;
            Ok((info.name_as_str().unwrap_or_default().to_owned(), id))
        })
        .collect()
}

/// The maps of the dnsteer instance attached to `iface`: its reply program sits
/// on the interface's egress (tcx); the steering program with the same counters
/// map is its twin and uses every map stats reads.
fn attached_maps(iface: &str) -> Result<BTreeMap<String, u32>> {
    let (_, progs) = SchedClassifier::query_tcx(iface, TcAttachType::Egress)
        .with_context(|| format!("listing the programs on the egress of {iface}"))?;
    let reply = progs
        .iter()
        .find(|p| p.name_as_str() == Some(TC_PROGRAM))
        .ok_or_else(|| anyhow!("no {TC_PROGRAM} on the egress of {iface}"))?;
    let tc_maps = map_ids(reply)?;
    let reasons = *tc_maps
        .get(names::REASONS)
        .ok_or_else(|| anyhow!("{TC_PROGRAM} has no {}", names::REASONS))?;
    for prog in loaded_programs() {
        let prog = prog.context("listing loaded programs")?;
        if prog.name_as_str() == Some(XDP_PROGRAM) {
            let maps = map_ids(&prog)?;
            if maps.get(names::REASONS) == Some(&reasons) {
                // Each program names the maps it uses; together, all of them.
                let mut all = tc_maps;
                all.extend(maps);
                all.extend(socket_maps(all.get(names::BACKENDS).copied())?);
                return Ok(all);
            }
        }
    }
    bail!("no {XDP_PROGRAM} shares {TC_PROGRAM}'s counters on {iface}")
}

/// The maps of the socket programs sharing the backend table `backends`
/// (its id): loaded by every instance, attached or not.
fn socket_maps(backends: Option<u32>) -> Result<BTreeMap<String, u32>> {
    let mut found = BTreeMap::new();
    let Some(backends) = backends else {
        return Ok(found);
    };
    for prog in loaded_programs() {
        let prog = prog.context("listing loaded programs")?;
        let ours = prog
            .name_as_str()
            .is_some_and(|name| super::sockets::PROGRAMS.contains(&name));
        if ours {
            let maps = map_ids(&prog)?;
            if maps.get(names::BACKENDS) == Some(&backends) {
                found.extend(maps);
                break;
            }
        }
    }
    Ok(found)
}
