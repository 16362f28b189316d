//! A real BIND 9 authoritative server per backend: config, zone, start, stop, readiness.

use std::{
    fmt::Write as _,
    fs::OpenOptions,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{dns, netns::NetNs, tempdir::TempDir, tools::command_line};

/// The port every backend's named listens on.
pub const DNS_PORT: u16 = 53;
/// The zone each backend serves.
pub const ZONE: &str = "example.";
/// `A` and `AAAA` = the answering backend's own addresses, so an answer names the
/// backend (the `A` one also when asked over IPv6).
pub const WHOAMI_NAME: &str = "whoami.example.";
/// `A 127.0.0.1` on every backend: a fixed answer for health probes.
pub const HEALTH_NAME: &str = "health.example.";
/// `TXT` records totalling more than [`BIG_TXT_MIN_BYTES`], so a UDP answer is truncated.
pub const BIG_NAME: &str = "big.example.";
/// BIND 9.18's default `max-udp-size`/`edns-udp-size` (the DNS Flag Day 2020 value).
pub const BIG_TXT_MIN_BYTES: usize = 1232;

pub const BIG_TXT_RECORDS: usize = 8;
/// One TXT record of [`HUGE_TXT_BYTES`] bytes of text: a UDP answer larger than the
/// 1500-byte MTU, which leaves fragmented when named may send it
/// ([`crate::TopologyConfig::dns_max_udp_size`]) and the client's EDNS buffer allows.
pub const HUGE_NAME: &str = "huge.example.";
/// The text of [`HUGE_NAME`]'s TXT record, its character-strings joined.
pub const HUGE_TXT_BYTES: usize = HUGE_TXT_STRINGS * HUGE_TXT_STRING_LEN;
const HUGE_TXT_STRINGS: usize = 9;
const HUGE_TXT_STRING_LEN: usize = 250;
const BIG_TXT_LEN: usize = 200;
const STOP_GRACE: Duration = Duration::from_secs(5);
const LOG_FILE: &str = "named.stderr";

/// One backend's named: its private directory (config, zone, pid and key files, log)
/// lives as long as this value, so it can be stopped and started again.
pub(crate) struct BindServer {
    child: Option<Child>,
    addr: Ipv4Addr,
    addr6: Ipv6Addr,
    dir: TempDir,
}

impl BindServer {
    /// Writes the config and zone for a server answering on `addr` and `addr6`, with
    /// `max_udp_size` as its `max-udp-size` and `edns-udp-size` (None: BIND's default);
    /// does not start it.
    pub(crate) fn prepare(
        addr: Ipv4Addr,
        addr6: Ipv6Addr,
        label: &str,
        max_udp_size: Option<u16>,
    ) -> Result<Self> {
        let dir = TempDir::new(&format!("named-{label}"))?;
        let zone_path = dir.path().join("example.zone");
        std::fs::write(&zone_path, zone_file(addr, addr6, label))
            .with_context(|| format!("writing {}", zone_path.display()))?;
        let conf_path = dir.path().join("named.conf");
        let mut conf = named_conf(dir.path(), addr, addr6, DNS_PORT);
        if let Some(size) = max_udp_size {
            conf = with_udp_size(&conf, size);
        }
        std::fs::write(&conf_path, conf)
            .with_context(|| format!("writing {}", conf_path.display()))?;
        Ok(Self {
            child: None,
            addr,
            addr6,
            dir,
        })
    }

    pub(crate) fn target(&self) -> SocketAddr {
        SocketAddr::from((self.addr, DNS_PORT))
    }

    pub(crate) fn target6(&self) -> SocketAddr {
        SocketAddr::from((self.addr6, DNS_PORT))
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts `named -g -n 1 -c <conf>` in `ns`; a no-op if it is already running.
    pub(crate) fn start(&mut self, ns: &NetNs) -> Result<()> {
        if self.child.is_some() {
            self.check_running()?;
            return Ok(());
        }
        let log_path = self.dir.path().join(LOG_FILE);
        // Append: a restart keeps the earlier run's log for error messages.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let conf = self.dir.path().join("named.conf");
        let mut cmd = ns.command("named");
        // -g: foreground, log to stderr; -n 1: one worker, we need no throughput from BIND.
        cmd.args(["-g", "-n", "1", "-c"])
            .arg(&conf)
            // Anything named writes before reading `directory` (a core file) stays private.
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // `ip netns exec` execs named in place, so this pid is named's own.
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", command_line(&cmd)))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM, then SIGKILL after a grace period; always reaps the process.
    pub(crate) fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        // SAFETY: the child is not yet reaped (try_wait above), so the pid is still ours.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().ok();
        child.wait().context("reaping named")?;
        Ok(())
    }

    /// Err with named's log if it was started and has exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            bail!(
                "named for {} exited ({status}); its stderr:\n{}",
                self.addr,
                self.log()
            );
        }
        Ok(())
    }

    /// Polls [`HEALTH_NAME`] from `from`, over IPv4 and then IPv6, until named answers
    /// both or `timeout` passes.
    pub(crate) fn wait_ready(&mut self, from: &NetNs, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        let mut targets = vec![self.target(), self.target6()];
        while Instant::now() < deadline {
            self.check_running()?;
            let Some(&target) = targets.first() else {
                return Ok(());
            };
            match dns::query_once(from, target, HEALTH_NAME, Duration::from_millis(300)) {
                Ok(Some(_)) => {
                    targets.remove(0);
                }
                Ok(None) => last = format!("no answer from {target}"),
                Err(e) => {
                    last = format!("{e:#}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        if targets.is_empty() {
            return Ok(());
        }
        bail!(
            "named for {} and {} did not answer {HEALTH_NAME} from {} within {timeout:?} (last: {last}); its stderr:\n{}",
            self.addr,
            self.addr6,
            from.name(),
            self.log()
        )
    }

    /// named's stderr so far (all runs).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(LOG_FILE))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

impl Drop for BindServer {
    fn drop(&mut self) {
        // Must run before the TempDir goes (named writes into it) and before the namespace.
        if let Err(e) = self.stop() {
            eprintln!("testbed: stopping named for {}: {e:#}", self.addr);
        }
    }
}

/// Everything named would otherwise write under /var/cache/bind or /run/named goes to
/// `dir`, so servers run side by side and leave nothing behind.
fn named_conf(dir: &Path, addr: Ipv4Addr, addr6: Ipv6Addr, port: u16) -> String {
    let dir = dir.display();
    format!(
        r#"options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    managed-keys-directory "{dir}";
    listen-on port {port} {{ {addr}; }};
    listen-on-v6 port {port} {{ {addr6}; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};

// No control channel: nothing may reach rndc, and no rndc.key is needed.
controls {{ }};

zone "{ZONE}" {{
    type primary;
    file "{dir}/example.zone";
}};
"#
    )
}

/// `conf` with `max-udp-size` and `edns-udp-size` set in its options.
fn with_udp_size(conf: &str, size: u16) -> String {
    conf.replacen(
        "    recursion no;\n",
        &format!("    recursion no;\n    max-udp-size {size};\n    edns-udp-size {size};\n"),
        1,
    )
}

/// The TXT text of [`HUGE_NAME`], as kdig prints it (character-strings joined).
pub fn huge_txt() -> String {
    (0..HUGE_TXT_STRINGS).map(huge_string).collect()
}

fn huge_string(i: usize) -> String {
    format!("{i:02}-{}", "y".repeat(HUGE_TXT_STRING_LEN - 3))
}

fn zone_file(addr: Ipv4Addr, addr6: Ipv6Addr, label: &str) -> String {
    let mut zone = format!(
        "$ORIGIN {ZONE}\n\
         $TTL 60\n\
         @       IN SOA ns hostmaster 1 3600 600 86400 60\n\
         @       IN NS  ns\n\
         ns      IN A   {addr}\n\
         ns      IN AAAA {addr6}\n\
         whoami  IN A   {addr}\n\
         whoami  IN AAAA {addr6}\n\
         whoami  IN TXT \"{label}\"\n\
         health  IN A   127.0.0.1\n"
    );
    for i in 0..BIG_TXT_RECORDS {
        // Distinct strings: identical RDATA would be merged into one record.
        let text = format!("{i:02}-{}", "x".repeat(BIG_TXT_LEN - 3));
        writeln!(zone, "big     IN TXT \"{text}\"").expect("writing to a String");
    }
    let strings: Vec<String> = (0..HUGE_TXT_STRINGS)
        .map(|i| format!("\"{}\"", huge_string(i)))
        .collect();
    writeln!(zone, "huge    IN TXT {}", strings.join(" ")).expect("writing to a String");
    zone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_txt_exceeds_the_udp_limit() {
        let zone = zone_file(
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
            "backend-0",
        );
        assert!(zone.contains("whoami  IN AAAA 2001:db8::2\n"), "{zone}");
        assert!(zone.contains("whoami  IN A   10.0.0.2\n"), "{zone}");
        let bytes: usize = zone
            .lines()
            .filter(|l| l.starts_with("big "))
            .map(|l| l.split('"').nth(1).unwrap().len() + 1)
            .sum();
        assert!(bytes > BIG_TXT_MIN_BYTES, "{bytes}");
    }

    #[test]
    fn a_named_that_dies_is_reported_with_its_stderr() {
        crate::require_root_tools(&["ip", "named"]).unwrap_or_else(|e| panic!("{e:#}"));
        let ns = NetNs::new("unit").unwrap();
        let mut server =
            BindServer::prepare(Ipv4Addr::LOCALHOST, Ipv6Addr::LOCALHOST, "broken", None).unwrap();
        let dir = server.dir.path().to_owned();
        std::fs::write(
            dir.join("named.conf"),
            "options { this is not bind syntax };\n",
        )
        .unwrap();
        server.start(&ns).unwrap();
        let err = server
            .wait_ready(&ns, Duration::from_secs(10))
            .expect_err("a broken config must not become ready");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("exited") && msg.contains("named.conf"),
            "{msg}"
        );
        assert_eq!(server.pid(), None);
        drop(server);
        assert!(!dir.exists(), "temp dir left behind");
    }

    #[test]
    fn config_keeps_state_in_the_private_dir() {
        let conf = named_conf(
            Path::new("/tmp/x"),
            Ipv4Addr::new(10, 0, 0, 2),
            "2001:db8::2".parse().unwrap(),
            53,
        );
        assert!(conf.contains("listen-on port 53 { 10.0.0.2; };"));
        assert!(conf.contains("listen-on-v6 port 53 { 2001:db8::2; };"));
        assert!(conf.contains("pid-file \"/tmp/x/named.pid\""));
        assert!(conf.contains("recursion no;"));
        assert!(!conf.contains("max-udp-size"));
        let conf = with_udp_size(&conf, 4096);
        assert!(conf.contains("    max-udp-size 4096;\n    edns-udp-size 4096;\n"));
    }

    #[test]
    fn huge_txt_is_one_record_over_the_mtu() {
        let zone = zone_file(Ipv4Addr::LOCALHOST, Ipv6Addr::LOCALHOST, "b");
        let line = zone.lines().find(|l| l.starts_with("huge ")).unwrap();
        let text: String = line.split('"').skip(1).step_by(2).collect();
        assert_eq!(text, huge_txt());
        assert_eq!(text.len(), HUGE_TXT_BYTES);
        const { assert!(HUGE_TXT_BYTES > 2000) };
    }
}
