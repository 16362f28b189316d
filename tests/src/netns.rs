//! Named network namespaces (`ip netns`) that delete themselves on drop.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::{Context, Result, bail};

use crate::tools::{run_command, tool_path};

/// Where `ip netns add` bind-mounts the namespace files (iproute2's NETNS_RUN_DIR).
const NETNS_RUN_DIR: &str = "/var/run/netns";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace created with `ip netns add` and removed with `ip netns del` on drop.
///
/// Names are `dnst-<tag>-<pid>-<n>`: unique within the process by the counter and across
/// concurrently running test binaries by the pid.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace and brings its loopback up.
    pub fn new(tag: &str) -> Result<Self> {
        if tag.is_empty()
            || !tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("namespace tag {tag:?} must be non-empty and use only [A-Za-z0-9_-]");
        }
        let name = loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("dnst-{tag}-{}-{n}", std::process::id());
            // A leftover of a killed run with a recycled pid is not ours: skip its name.
            if !Path::new(NETNS_RUN_DIR).join(&name).exists() {
                break name;
            }
        };
        run_command(Command::new(tool_path("ip")).args(["netns", "add", &name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        // From here on, drop deletes the namespace even if setup below fails.
        let ns = Self { name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, for `setns` or `ip link set ... netns <path>`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    /// `ip netns exec <name> <program>`; `program` is resolved with the sbin fallbacks.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(tool_path("ip"));
        cmd.args(["netns", "exec", &self.name])
            .arg(tool_path(program));
        cmd
    }

    /// Runs `args[0]` with `args[1..]` in the namespace to completion; `Ok(stdout)`, or an
    /// error with the command line and stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let Some((program, rest)) = args.split_first() else {
            bail!("NetNs::run in {} needs a program", self.name);
        };
        run_command(self.command(program).args(rest))
    }

    /// Sets a sysctl inside this namespace only (net.* sysctls are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Runs `f` on a scoped thread that has joined this namespace, so sockets `f` creates
    /// live here. A panic in `f` is re-raised in the caller.
    ///
    /// # Panics
    /// If the thread cannot join the namespace (only possible if it was deleted).
    pub fn enter<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> R {
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                self.setns_current_thread()
                    .unwrap_or_else(|e| panic!("{e:#}"));
                f()
            });
            match handle.join() {
                Ok(r) => r,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    /// Moves the calling thread into this namespace. Only for threads we own and end
    /// afterwards: a thread is never moved back.
    pub(crate) fn setns_current_thread(&self) -> Result<()> {
        let path = self.path();
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the fd is valid for the duration of the call; setns only changes this
        // thread's network namespace (CLONE_NEWNET is allowed in multithreaded processes).
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setns into {}", path.display()));
        }
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting removes the bind mount; the namespace (and its veths) go away with the
        // last process or fd inside it, which is why Topology stops named first.
        if let Err(e) =
            run_command(Command::new(tool_path("ip")).args(["netns", "del", &self.name]))
        {
            eprintln!("testbed: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::MetadataExt, panic::AssertUnwindSafe};

    use super::*;

    fn require_root() {
        crate::require_root_tools(&["ip", "sysctl"]).unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn listed(name: &str) -> bool {
        let out = run_command(Command::new(tool_path("ip")).args(["netns", "list"])).unwrap();
        out.lines()
            .any(|line| line.split_whitespace().next() == Some(name))
    }

    #[test]
    fn names_are_unique_and_prefixed() {
        require_root();
        let a = NetNs::new("unit").unwrap();
        let b = NetNs::new("unit").unwrap();
        assert_ne!(a.name(), b.name());
        let prefix = format!("dnst-unit-{}-", std::process::id());
        assert!(a.name().starts_with(&prefix), "{}", a.name());
        assert!(listed(a.name()) && listed(b.name()));
    }

    #[test]
    fn bad_tag_is_rejected_without_creating_anything() {
        assert!(NetNs::new("a b").is_err());
        assert!(NetNs::new("").is_err());
    }

    #[test]
    fn enter_runs_in_the_namespace() {
        require_root();
        let ns = NetNs::new("unit").unwrap();
        let want = std::fs::metadata(ns.path()).unwrap().ino();
        let inside = ns.enter(|| std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino());
        let outside = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        assert_eq!(inside, want);
        assert_ne!(outside, want);
        assert!(
            ns.run(&["ip", "-o", "link", "show", "lo"])
                .unwrap()
                .contains("UP")
        );
    }

    #[test]
    fn removed_on_drop_even_when_the_closure_panics() {
        require_root();
        let mut name = String::new();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let ns = NetNs::new("unit").unwrap();
            name = ns.name().to_owned();
            assert!(listed(&name));
            ns.enter(|| panic!("boom inside the namespace"));
        }));
        assert!(result.is_err(), "the panic must reach the caller");
        assert!(!name.is_empty());
        assert!(!listed(&name), "{name} survived the panic");
        assert!(!Path::new(NETNS_RUN_DIR).join(&name).exists());
    }

    #[test]
    fn run_error_names_command_and_stderr() {
        require_root();
        let ns = NetNs::new("unit").unwrap();
        let err = ns
            .run(&["ip", "link", "set", "nosuchdev", "up"])
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("ip link set nosuchdev up") && msg.contains("nosuchdev"),
            "{msg}"
        );
    }
}
