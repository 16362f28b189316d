//! A `dnsteer run` process inside a namespace, for the demo and the end-to-end tests.
//!
//! Each instance gets a pin root of its own on the BPF filesystem
//! (`DNSTEER_PIN_ROOT`), so tests using the same interface name in different
//! namespaces never see each other's pins.

use std::{
    fs,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{netns::NetNs, tempdir::TempDir};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// What `dnsteer run` logs when it is steering.
const READY_LINE: &str = "running; stop with";
/// How long `dnsteer run` gets to say so, unless the caller says otherwise.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The `dnsteer` binary: `$DNSTEER_BIN` (set by `cargo xtask test`), else
/// `target/debug/dnsteer` beside the running test executable.
pub fn binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("DNSTEER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/debug/deps/<test> -> target/debug/dnsteer
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("dnsteer"));
    match bin {
        Some(bin) if bin.exists() => Ok(bin),
        _ => bail!(
            "no dnsteer binary: run `cargo xtask test`, or `cargo build -p xdp-loader` and set DNSTEER_BIN"
        ),
    }
}

/// How the dnsteer processes enter the node's network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    /// `ip netns exec`, as an operator would: every command also gets a mount
    /// namespace (and BPF filesystem) of its own, so `stats` cannot see `run`'s
    /// pins and finds the instance through the interface.
    IpNetnsExec,
    /// `setns(CLONE_NEWNET)` only: `run` and `stats` share this process's mounts,
    /// so `stats` reads the pins.
    SharedMounts,
}

pub struct Dnsteer {
    child: Option<Child>,
    bin: PathBuf,
    ns: PathBuf,
    launch: Launch,
    iface: String,
    pin_root: PathBuf,
    run_args: Vec<String>,
    ready_timeout: Duration,
    in_cluster: Option<InCluster>,
    dir: TempDir,
}

/// How a pod reaches its API server: `KUBERNETES_SERVICE_HOST`/`PORT`, and
/// the service account's token, CA and namespace mounted at
/// `/var/run/secrets/kubernetes.io/serviceaccount`, with no kubeconfig.
#[derive(Debug, Clone)]
pub struct InCluster {
    /// Holds `token`, `ca.crt` and `namespace`; bind-mounted in place in a
    /// mount namespace of dnsteer's own.
    pub service_account: PathBuf,
    pub api: std::net::SocketAddr,
}

/// Where a pod finds its service account.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl Dnsteer {
    /// Starts `dnsteer run` with `config` (TOML text) in `ns`, and waits until its
    /// maps are pinned (it is steering then).
    pub fn start(ns: &NetNs, bin: &Path, iface: &str, config: &str) -> Result<Self> {
        Self::start_with(Launch::IpNetnsExec, ns, bin, iface, config)
    }

    pub fn start_with(
        launch: Launch,
        ns: &NetNs,
        bin: &Path,
        iface: &str,
        config: &str,
    ) -> Result<Self> {
        Self::start_with_args(launch, ns, bin, iface, config, &[])
    }

    /// [`Self::start_with`], with more `dnsteer run` arguments (`--metrics-listen ...`).
    pub fn start_with_args(
        launch: Launch,
        ns: &NetNs,
        bin: &Path,
        iface: &str,
        config: &str,
        run_args: &[&str],
    ) -> Result<Self> {
        Self::start_with_timeout(launch, ns, bin, iface, config, run_args, READY_TIMEOUT)
    }

    /// [`Self::start_with_args`], waiting up to `ready_timeout` for it to steer
    /// (a config with thousands of services takes longer than the default 20 s).
    pub fn start_with_timeout(
        launch: Launch,
        ns: &NetNs,
        bin: &Path,
        iface: &str,
        config: &str,
        run_args: &[&str],
        ready_timeout: Duration,
    ) -> Result<Self> {
        let args = (launch, ns, bin, iface, config, run_args);
        Self::launch(args, ready_timeout, None)
    }

    /// Starts `dnsteer run` as in a pod ([`InCluster`]): in the network
    /// namespace (`nsenter --net`), then a private mount namespace where a tmpfs on `/run` (`/var/run`) gets
    /// the service account directory bind-mounted at its real path; no
    /// KUBECONFIG and a HOME without `.kube`.
    pub fn start_in_cluster(
        ns: &NetNs,
        bin: &Path,
        iface: &str,
        config: &str,
        run_args: &[&str],
        in_cluster: InCluster,
    ) -> Result<Self> {
        let args = (Launch::SharedMounts, ns, bin, iface, config, run_args);
        Self::launch(args, READY_TIMEOUT, Some(in_cluster))
    }

    /// Writes the config, picks a pin root of its own, and starts it.
    fn launch(
        (launch, ns, bin, iface, config, run_args): (Launch, &NetNs, &Path, &str, &str, &[&str]),
        ready_timeout: Duration,
        in_cluster: Option<InCluster>,
    ) -> Result<Self> {
        let dir = TempDir::new("dnsteer")?;
        fs::write(dir.path().join("dnsteer.toml"), config).context("writing the config")?;
        let pin_root = PathBuf::from(format!(
            "/sys/fs/bpf/dnsteer-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut me = Self {
            child: None,
            bin: bin.to_owned(),
            ns: ns.path(),
            launch,
            iface: iface.to_owned(),
            pin_root,
            run_args: run_args.iter().map(|a| a.to_string()).collect(),
            ready_timeout,
            in_cluster,
            dir,
        };
        me.spawn()?;
        Ok(me)
    }

    /// Starts `dnsteer run` again after [`Self::stop`] or [`Self::kill`], with the
    /// same config, arguments and pin root, and waits until it is steering.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("dnsteer run is still running; stop or kill it first");
        }
        self.spawn()
    }

    /// Runs `dnsteer run`, its output appended to the log, and waits until it
    /// says it is steering and `stats` answers.
    fn spawn(&mut self) -> Result<()> {
        let path = self.dir.path().join("dnsteer.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .context("opening the log")?;
        let from = self.log().len();
        let mut cmd = match &self.in_cluster {
            None => command(self.launch, &self.ns, &self.bin),
            Some(pod) => {
                let home = self.dir.path().join("home");
                fs::create_dir_all(&home).context("creating a HOME without .kube")?;
                // nsenter, unshare and sh exec in place: the child's pid stays
                // dnsteer's. The host's BPF filesystem stays visible, so
                // --persist pins outlive the mount namespace.
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", self.ns.display()))
                    .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
                    .arg(format!(
                        "mount -t tmpfs dnsteer-test /run && mkdir -p {SERVICE_ACCOUNT_DIR} && mount --bind \"$0\" {SERVICE_ACCOUNT_DIR} && exec \"$@\""
                    ))
                    .arg(&pod.service_account)
                    .arg(&self.bin)
                    .env_remove("KUBECONFIG")
                    .env("HOME", home)
                    .env("KUBERNETES_SERVICE_HOST", pod.api.ip().to_string())
                    .env("KUBERNETES_SERVICE_PORT", pod.api.port().to_string());
                cmd
            }
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(self.config_path())
            .args(&self.run_args)
            .env("DNSTEER_PIN_ROOT", &self.pin_root)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dnsteer run")?;
        self.child = Some(child);
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().transpose())
                .transpose()?
            {
                self.child = None;
                bail!(
                    "dnsteer run exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            // `run` logs this line once it is attached and pinned; stats answering
            // alone could come from another instance on the same interface.
            let log = self.log();
            if log.get(from..).is_some_and(|l| l.contains(READY_LINE))
                && self.stats(&["--json"]).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "dnsteer run was not ready after {:?}:\n{log}",
                    self.ready_timeout
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills `dnsteer run` with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Runs `dnsteer stop --iface IF` in the node namespace; Ok(stdout).
    pub fn stop_command(&self) -> Result<String> {
        let mut cmd = command(self.launch, &self.ns, &self.bin);
        cmd.args(["stop", "--iface", &self.iface])
            .env("DNSTEER_PIN_ROOT", &self.pin_root);
        stdout_of(&mut cmd, "stop", &[])
    }

    /// The `dnsteer stats` command for this instance, in the node namespace,
    /// ready for more arguments.
    pub fn stats_command(&self) -> Command {
        let mut cmd = command(self.launch, &self.ns, &self.bin);
        cmd.args(["stats", "--iface", &self.iface])
            .env("DNSTEER_PIN_ROOT", &self.pin_root);
        cmd
    }

    /// Runs `dnsteer stats --iface IF <args>`; Ok(stdout).
    pub fn stats(&self, args: &[&str]) -> Result<String> {
        stdout_of(self.stats_command().args(args), "stats", args)
    }

    /// Runs `dnsteer backends --iface IF <args>` in the node namespace; Ok(stdout),
    /// Err with stderr when the command fails.
    pub fn backends(&self, args: &[&str]) -> Result<String> {
        let mut cmd = command(self.launch, &self.ns, &self.bin);
        cmd.args(["backends", "--iface", &self.iface]).args(args);
        stdout_of(&mut cmd, "backends", args)
    }

    /// The config file `run` was started with (and watches).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("dnsteer.toml")
    }

    /// Replaces the config file the way an editor does: a new file renamed over it.
    pub fn write_config(&self, text: &str) -> Result<()> {
        let tmp = self.dir.path().join("dnsteer.toml.new");
        fs::write(&tmp, text).context("writing the new config")?;
        fs::rename(&tmp, self.config_path()).context("renaming the new config into place")
    }

    /// Sends SIGHUP (reload).
    pub fn reload(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGHUP);
        }
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dnsteer.log")).unwrap_or_default()
    }

    /// The pin directory of this instance (gone after a clean stop).
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_root.join(&self.iface)
    }

    /// Sends SIGTERM and waits for a clean exit; Err with the log otherwise.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("dnsteer run ignored SIGTERM for 10 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            bail!("dnsteer run exited with {status}:\n{}", self.log());
        }
        Ok(())
    }
}

/// Runs a `dnsteer <what>` command: its stdout, or an error carrying its stderr.
fn stdout_of(cmd: &mut Command, what: &str, args: &[&str]) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running dnsteer {what}"))?;
    if !out.status.success() {
        bail!(
            "dnsteer {what} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `bin` to be run in the network namespace at `ns` (a /var/run/netns path).
fn command(launch: Launch, ns: &Path, bin: &Path) -> Command {
    match launch {
        Launch::IpNetnsExec => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec"])
                .arg(ns.file_name().unwrap_or_default())
                .arg(bin);
            cmd
        }
        Launch::SharedMounts => {
            let mut cmd = Command::new(bin);
            let ns = ns.to_owned();
            // SAFETY: between fork and exec only async-signal-safe calls: open,
            // setns and close (via OwnedFd's drop).
            unsafe {
                cmd.pre_exec(move || {
                    let file = fs::File::open(&ns)?;
                    if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            cmd
        }
    }
}

/// `ip netns exec` execs the program in place, so the child's pid is dnsteer's.
fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling a child we own and have not reaped.
    unsafe { libc::kill(child.id() as i32, sig) };
}

impl Drop for Dnsteer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A test failed mid-run: SIGTERM lets it detach and unpin.
            signal(&child, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // The instance removes its own directory; the root is ours.
        let _ = fs::remove_dir_all(&self.pin_root);
    }
}

/// A one-service config: `listen` and `backends` as `ADDR:PORT`, `select` nth or random.
pub fn service_config(
    iface: &str,
    select: &str,
    listen: &[std::net::SocketAddr],
    backends: &[std::net::SocketAddr],
) -> String {
    let quoted = |addrs: &[std::net::SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "interface = \"{iface}\"\n\n[[service]]\nname = \"dns\"\nlisten = [{}]\nprotocol = \"udp\"\nselect = \"{select}\"\nbackends = [{}]\n",
        quoted(listen),
        quoted(backends)
    )
}
