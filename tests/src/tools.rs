//! Finding and running the external programs the test bed drives (ip, named, kdig, sysctl).

use std::{
    ffi::OsStr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// Searched after `$PATH`: CI and `sudo` environments often drop the sbin directories,
/// where `ip`, `named` and `sysctl` live on Debian.
const FALLBACK_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Checks that the process runs as root and that every tool in `tools` can be found.
///
/// The error names all missing tools with the Debian package that provides them, so a
/// test that fails here says what to install.
pub fn require_root_tools(tools: &[&str]) -> Result<()> {
    let mut problems = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        problems.push(
            "must run as root (network namespaces, veths and named need CAP_SYS_ADMIN and CAP_NET_ADMIN)"
                .to_owned(),
        );
    }
    let missing: Vec<String> = tools
        .iter()
        .filter(|tool| find_tool(tool).is_none())
        .map(|tool| match debian_package(tool) {
            Some(package) => format!("{tool} (apt-get install {package})"),
            None => (*tool).to_owned(),
        })
        .collect();
    if !missing.is_empty() {
        problems.push(format!("missing tools: {}", missing.join(", ")));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("the test bed cannot run: {}", problems.join("; "))
    }
}

fn debian_package(tool: &str) -> Option<&'static str> {
    Some(match tool {
        "ip" => "iproute2",
        "named" => "bind9",
        "kdig" => "knot-dnsutils",
        "sysctl" => "procps",
        "ethtool" => "ethtool",
        _ => return None,
    })
}

/// Resolves `name` like a shell would, plus the sbin fallbacks.
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable(&path).then_some(path);
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The absolute path of `name`, or `name` itself so the spawn error names it.
pub(crate) fn tool_path(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `cmd` to completion; `Ok(stdout)`, or an error with the command line, status and stderr.
pub(crate) fn run_command(cmd: &mut Command) -> Result<String> {
    let line = command_line(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "`{line}` failed ({}): {}{}",
            output.status,
            stderr.trim(),
            if stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", stdout.trim())
            }
        );
    }
    Ok(stdout)
}

pub(crate) fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_not_nonsense() {
        assert!(find_tool("sh").is_some());
        assert!(find_tool("dnsteer-no-such-tool").is_none());
    }

    #[test]
    fn missing_tool_error_names_the_tool() {
        let err = require_root_tools(&["dnsteer-no-such-tool"]).unwrap_err();
        assert!(format!("{err}").contains("dnsteer-no-such-tool"), "{err}");
    }

    #[test]
    fn failing_command_reports_line_and_stderr() {
        let err =
            run_command(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let msg = format!("{err}");
        assert!(msg.contains("sh -c") && msg.contains("oops"), "{msg}");
    }
}
