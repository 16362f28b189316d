//! HTTPS in front of the API server double, as a cluster's API server is
//! reached in cluster: a certificate signed by a CA of the test's own (made
//! with `openssl`), and a bearer token required on every request (`401
//! Unauthorized` without one the test accepts). Each connection's request is
//! checked, then passed over plain TCP to the double and its answer (a watch
//! stream too) relayed back, so the double itself is unchanged.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use rustls::{
    ServerConfig, ServerConnection, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};

/// A CA and a server certificate it signed, as PEM files in `dir`.
pub struct Pki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Pki {
    /// A CA named `name` and, signed by it, a certificate for `ip` (as the
    /// API server's is for the Service's cluster IP), under `dir/name-*`.
    pub fn new(dir: &Path, name: &str, ip: std::net::IpAddr) -> Result<Self> {
        let file = |what: &str| format!("{name}-{what}");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-nodes",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-keyout",
                &file("ca.key"),
                "-out",
                &file("ca.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={name} test CA"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-nodes",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-keyout",
                &file("server.key"),
                "-out",
                &file("server.csr"),
                "-subj",
                "/CN=kube-apiserver",
            ],
        )?;
        std::fs::write(
            dir.join(file("ext.cnf")),
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:{ip}\n"
            ),
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &file("server.csr"),
                "-CA",
                &file("ca.crt"),
                "-CAkey",
                &file("ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &file("ext.cnf"),
                "-out",
                &file("server.crt"),
            ],
        )?;
        Ok(Self {
            ca_cert: dir.join(file("ca.crt")),
            server_cert: dir.join(file("server.crt")),
            server_key: dir.join(file("server.key")),
        })
    }
}

/// The tokens the front accepts and the ones it was shown.
#[derive(Default)]
struct Tokens {
    accepted: Vec<String>,
    /// Each request's bearer token (empty: none), in order.
    seen: Vec<String>,
    /// Requests refused for their token.
    refused: usize,
}

/// The HTTPS front. Dropping it closes the port.
pub struct TlsFront {
    addr: SocketAddr,
    tokens: Arc<Mutex<Tokens>>,
    stop: Arc<AtomicBool>,
    accepting: Option<thread::JoinHandle<()>>,
}

impl TlsFront {
    /// Listens on `addr` inside the network namespace at `netns`, with the
    /// certificate and key of `pki`, relaying to the double at `backend`
    /// (reached from that namespace), accepting `token`.
    pub fn start_in(
        netns: &Path,
        addr: SocketAddr,
        pki: &Pki,
        backend: SocketAddr,
        token: &str,
    ) -> Result<Self> {
        let certs = CertificateDer::pem_file_iter(&pki.server_cert)
            .context("reading the server certificate")?
            .collect::<Result<Vec<_>, _>>()?;
        let key =
            PrivateKeyDer::from_pem_file(&pki.server_key).context("reading the server key")?;
        let config = Arc::new(
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)?,
        );
        let tokens = Arc::new(Mutex::new(Tokens {
            accepted: vec![token.to_owned()],
            ..Tokens::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (listener_tx, listener_rx) = std::sync::mpsc::channel();
        let netns = netns.to_path_buf();
        let (flag, shared) = (stop.clone(), tokens.clone());
        // One thread in the namespace accepts; the connections it makes to
        // the double, and its relay threads, are in it too.
        let accepting = thread::spawn(move || {
            let joined = std::fs::File::open(&netns).map(|file| {
                use std::os::fd::AsRawFd as _;
                // SAFETY: a valid fd; this thread is ours.
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }
            });
            if !matches!(joined, Ok(0)) {
                let _ = listener_tx.send(Err(anyhow::anyhow!("setns into {}", netns.display())));
                return;
            }
            let listener = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = listener_tx.send(Err(e.into()));
                    return;
                }
            };
            let _ = listener.set_nonblocking(true);
            let _ = listener_tx.send(Ok(listener.local_addr()));
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        let (config, shared) = (config.clone(), shared.clone());
                        thread::spawn(move || relay(tcp, config, backend, &shared));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let addr = listener_rx.recv().context("the TLS front's thread")???;
        Ok(Self {
            addr,
            tokens,
            stop,
            accepting: Some(accepting),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on only `token` is accepted (the old one is revoked).
    pub fn accept_only(&self, token: &str) {
        self.tokens.lock().unwrap().accepted = vec![token.to_owned()];
    }

    /// Accepts `token` as well (a rotation's overlap).
    pub fn accept_also(&self, token: &str) {
        self.tokens.lock().unwrap().accepted.push(token.to_owned());
    }

    /// Every request's bearer token so far ("" for none).
    pub fn seen(&self) -> Vec<String> {
        self.tokens.lock().unwrap().seen.clone()
    }

    /// Requests refused with 401.
    pub fn refused(&self) -> usize {
        self.tokens.lock().unwrap().refused
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.accepting.take() {
            let _ = handle.join();
        }
    }
}

/// One connection: the TLS handshake, the request head (and a body of
/// Content-Length), the token check, then the double's answer relayed.
fn relay(tcp: TcpStream, config: Arc<ServerConfig>, backend: SocketAddr, tokens: &Mutex<Tokens>) {
    let _ = tcp.set_nonblocking(false);
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(conn, tcp);
    let mut head = Vec::new();
    let mut byte = [0u8; 4096];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tls.read(&mut byte) {
            // A handshake the client gave up on (a CA it does not trust) ends here.
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&byte[..n]),
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let header = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let token = header("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
        .unwrap_or_default();
    let ok = {
        let mut t = tokens.lock().unwrap();
        t.seen.push(token.clone());
        let ok = t.accepted.contains(&token);
        if !ok {
            t.refused += 1;
        }
        ok
    };
    if !ok {
        let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
        let _ = write!(
            tls,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tls.flush();
        tls.conn.send_close_notify();
        let _ = tls.flush();
        return;
    }
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut request = head;
    while request.len() < end + length {
        match tls.read(&mut byte) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&byte[..n]),
        }
    }
    let Ok(mut plain) = TcpStream::connect(backend) else {
        return;
    };
    if plain.write_all(&request).is_err() {
        return;
    }
    loop {
        match plain.read(&mut byte) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tls
                    .write_all(&byte[..n])
                    .and_then(|()| tls.flush())
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
}
