//! A cgroup v2 directory of the test's own, below the root found in
//! `/proc/self/mounts`: the socket programs attach there, so only the
//! processes a test moves in are steered, never the machine's.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow};

pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Makes `dnsteer-test-<tag>-<pid>` below the cgroup v2 root.
    pub fn new(tag: &str) -> Result<Self> {
        let mounts =
            fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
        let root = mounts
            .lines()
            .find_map(|line| {
                let mut f = line.split(' ');
                let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
                (kind == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
            })
            .ok_or_else(|| anyhow!("no cgroup2 mount in /proc/self/mounts"))?;
        let path = root.join(format!("dnsteer-test-{tag}-{}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory as a process in another mount namespace (`ip netns exec`
    /// remounts /sys) reaches it: through this process's root.
    pub fn path_for_other_mounts(&self) -> PathBuf {
        Path::new(&format!("/proc/{}/root", std::process::id())).join(
            self.path
                .strip_prefix("/")
                .expect("the cgroup path is absolute"),
        )
    }

    /// Makes `cmd`'s process join this cgroup before it execs.
    pub fn enter(&self, cmd: &mut Command) {
        let procs = self.path.join("cgroup.procs");
        // SAFETY: the closure only writes a file, which is safe after fork.
        unsafe {
            cmd.pre_exec(move || fs::write(&procs, "0"));
        }
    }
}

impl Cgroup {
    /// Runs `f` with this whole process inside the cgroup, then moves it back
    /// where it was: a socket `f` creates stays in the cgroup for its life
    /// (a socket's cgroup is its creator's at `socket()`). Other threads move
    /// too for that moment, so `f` should be quick.
    pub fn with_process_in<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        let own = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
        let from = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| anyhow!("no cgroup v2 line in /proc/self/cgroup: {own}"))?;
        let root = self
            .path
            .parent()
            .context("the cgroup has a parent")?
            .to_path_buf();
        let back = root.join(from.trim_start_matches('/')).join("cgroup.procs");
        let me = std::process::id().to_string();
        fs::write(self.path.join("cgroup.procs"), &me)
            .with_context(|| format!("moving this process into {}", self.path.display()))?;
        let out = f();
        fs::write(&back, &me)
            .with_context(|| format!("moving this process back to {}", back.display()))?;
        Ok(out)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once every process the test started has exited.
        let _ = fs::remove_dir(&self.path);
    }
}
