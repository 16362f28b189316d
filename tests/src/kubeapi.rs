//! A Kubernetes API server double for EndpointSlices and Services: the real
//! list and watch protocol over plain HTTP/1.1, JSON in the real
//! `discovery.k8s.io/v1` and `v1` shapes (the `k8s-openapi` types serialized),
//! one resourceVersion counter for everything, bookmarks, `410 Gone` for a
//! watch from a compacted resourceVersion, watch timeouts, and a server that
//! goes away (every connection cut, the port closed) and comes back, all
//! driven by the test. kube-rs reaches it through a kubeconfig file
//! ([`ApiServer::write_kubeconfig`]) like any cluster.
//!
//! Writes over HTTP (create, replace, delete; namespaces only created and
//! deleted) are there for the real-cluster test's scenario to run against it.
//! Not a real API server: no validation, no pagination (a list returns
//! everything, without `continue`), selectors only of the `key=value` form.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::{
    Resource as _,
    api::{core::v1::Service, discovery::v1::EndpointSlice},
};
use serde_json::{Value, json};

/// The kinds the double serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    EndpointSlice,
    Service,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => EndpointSlice::API_VERSION,
            Kind::Service => Service::API_VERSION,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::EndpointSlice => EndpointSlice::KIND,
            Kind::Service => Service::KIND,
        }
    }

    /// `/apis/discovery.k8s.io/v1/namespaces/NS/endpointslices[/NAME]`,
    /// `/api/v1/namespaces/NS/services[/NAME]`: the kind, namespace and name.
    fn from_path(path: &str) -> Option<(Kind, String, Option<String>)> {
        let (prefix, kind) =
            if let Some(rest) = path.strip_prefix("/apis/discovery.k8s.io/v1/namespaces/") {
                (rest, Kind::EndpointSlice)
            } else if let Some(rest) = path.strip_prefix("/api/v1/namespaces/") {
                (rest, Kind::Service)
            } else {
                return None;
            };
        let mut parts = prefix.split('/');
        let (ns, resource, name) = (parts.next()?, parts.next()?, parts.next());
        let want = match kind {
            Kind::EndpointSlice => "endpointslices",
            Kind::Service => "services",
        };
        (resource == want && parts.next().is_none())
            .then(|| (kind, ns.to_owned(), name.map(str::to_owned)))
    }
}

/// One request as the double saw it, for assertions on what the client asked.
#[derive(Clone, Debug)]
pub struct Request {
    pub kind: Option<Kind>,
    pub watch: bool,
    /// The query, decoded.
    pub params: BTreeMap<String, String>,
    pub at: Instant,
}

impl Request {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }
}

/// A change the double announced on its watches.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: Kind,
    namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    what: &'static str,
    object: Value,
}

struct State {
    rv: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    changes: Vec<Change>,
    /// A watch from a resourceVersion below this gets `410 Gone`.
    compacted: u64,
    /// Bumped to end every open watch (server stop, or expiry with 410).
    epoch: u64,
    /// Open watches get `410 Gone` when the epoch moves while this is set.
    expire: bool,
    up: bool,
    bookmark_every: Option<Duration>,
    /// The server ends a watch after this, whatever the client asked.
    watch_cap: Option<Duration>,
    requests: Vec<Request>,
    /// Open connections, cut when the server goes away.
    conns: Vec<TcpStream>,
    open_watches: usize,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `object` (created or replaced) under a new resourceVersion and
    /// announces it; returns the resourceVersion.
    fn apply(&self, kind: Kind, mut object: Value) -> u64 {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let meta = &mut object["metadata"];
        let namespace = meta["namespace"].as_str().unwrap_or("default").to_owned();
        let name = meta["name"]
            .as_str()
            .expect("objects have a name")
            .to_owned();
        meta["namespace"] = json!(namespace);
        meta["resourceVersion"] = json!(rv.to_string());
        let key = (kind, namespace.clone(), name.clone());
        let uid = match st.objects.get(&key) {
            Some(old) => old["metadata"]["uid"].clone(),
            None => json!(format!("{namespace}-{name}-{rv}")),
        };
        object["metadata"]["uid"] = uid;
        let what = if st.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.insert(key, object.clone());
        st.changes.push(Change {
            rv,
            kind,
            namespace,
            what,
            object,
        });
        self.changed.notify_all();
        rv
    }

    /// Deletes an object and announces it; its last state and resourceVersion.
    fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<(u64, Value)> {
        let mut st = self.lock();
        let mut object = st
            .objects
            .remove(&(kind, namespace.to_owned(), name.to_owned()))?;
        st.rv += 1;
        let rv = st.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.changes.push(Change {
            rv,
            kind,
            namespace: namespace.to_owned(),
            what: "DELETED",
            object: object.clone(),
        });
        self.changed.notify_all();
        Some((rv, object))
    }

    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .cloned()
    }
}

/// The running double. Dropping it stops it.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    netns: Option<PathBuf>,
    accepting: Option<(Arc<AtomicBool>, thread::JoinHandle<()>)>,
}

impl ApiServer {
    /// Listens on `addr` (port 0: any) in this process's namespace.
    pub fn start(addr: SocketAddr) -> Result<Self> {
        Self::start_in(None, addr)
    }

    /// Listens on `addr` inside the network namespace at `netns`
    /// (`NetNs::path()`), where dnsteer runs.
    pub fn start_in(netns: Option<&Path>, addr: SocketAddr) -> Result<Self> {
        let listener = bind_in(netns, addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1000,
                objects: BTreeMap::new(),
                changes: Vec::new(),
                compacted: 0,
                epoch: 0,
                expire: false,
                up: true,
                bookmark_every: Some(Duration::from_secs(1)),
                watch_cap: None,
                requests: Vec::new(),
                conns: Vec::new(),
                open_watches: 0,
            }),
            changed: Condvar::new(),
        });
        let mut server = Self {
            shared,
            addr,
            netns: netns.map(Path::to_path_buf),
            accepting: None,
        };
        server.accept(listener);
        Ok(server)
    }

    fn accept(&mut self, listener: TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, flag) = (self.shared.clone(), stop.clone());
        let handle = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let shared = shared.clone();
                        if let Ok(clone) = conn.try_clone() {
                            shared.lock().conns.push(clone);
                        }
                        thread::spawn(move || serve(&shared, conn));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        self.accepting = Some((stop, handle));
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context is this server, namespace `namespace`.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: double\n    namespace: {namespace}\ncurrent-context: double\nusers:\n- name: double\n  user: {{}}\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> Result<()> {
        std::fs::write(path, self.kubeconfig(namespace))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Creates or replaces an EndpointSlice; returns its new resourceVersion.
    pub fn apply_slice(&self, slice: &EndpointSlice) -> u64 {
        self.apply(
            Kind::EndpointSlice,
            serde_json::to_value(slice).expect("slice as JSON"),
        )
    }

    pub fn delete_slice(&self, namespace: &str, name: &str) -> Option<u64> {
        self.delete(Kind::EndpointSlice, namespace, name)
    }

    pub fn apply_service(&self, service: &Service) -> u64 {
        self.apply(
            Kind::Service,
            serde_json::to_value(service).expect("service as JSON"),
        )
    }

    pub fn delete_service(&self, namespace: &str, name: &str) -> Option<u64> {
        self.delete(Kind::Service, namespace, name)
    }

    fn apply(&self, kind: Kind, object: Value) -> u64 {
        self.shared.apply(kind, object)
    }

    fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<u64> {
        self.shared.delete(kind, namespace, name).map(|(rv, _)| rv)
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Forgets the history up to now, as etcd compaction does: a watch from an
    /// older resourceVersion gets `410 Gone`. With `cut_watches`, the open
    /// watches get it too (and end), as when the watch cache falls behind.
    pub fn compact(&self, cut_watches: bool) {
        let mut st = self.shared.lock();
        st.compacted = st.rv;
        st.changes.clear();
        if cut_watches {
            st.expire = true;
            st.epoch += 1;
        }
        self.shared.changed.notify_all();
    }

    /// Ends every open watch cleanly, as the API server does at a watch's
    /// timeout; clients watch again from the last resourceVersion they saw.
    pub fn end_watches(&self) {
        let mut st = self.shared.lock();
        st.expire = false;
        st.epoch += 1;
        self.shared.changed.notify_all();
    }

    /// Bookmarks on open watches every `every` (None: none).
    pub fn set_bookmarks(&self, every: Option<Duration>) {
        self.shared.lock().bookmark_every = every;
    }

    /// Ends every watch after `cap` (None: when the client's timeoutSeconds says).
    pub fn set_watch_cap(&self, cap: Option<Duration>) {
        self.shared.lock().watch_cap = cap;
        self.shared.changed.notify_all();
    }

    /// Goes away: the port closes and every open connection is cut.
    pub fn stop(&mut self) {
        if let Some((stop, handle)) = self.accepting.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
        let mut st = self.shared.lock();
        st.up = false;
        st.expire = false;
        st.epoch += 1;
        for conn in st.conns.drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
        self.shared.changed.notify_all();
    }

    /// Comes back on the same address, with the same objects and history.
    pub fn restart(&mut self) -> Result<()> {
        if self.accepting.is_some() {
            bail!("the API server double is already up");
        }
        let listener = bind_in(self.netns.as_deref(), self.addr)?;
        self.shared.lock().up = true;
        self.accept(listener);
        Ok(())
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    pub fn open_watches(&self) -> usize {
        self.shared.lock().open_watches
    }

    /// Waits until `pred(requests)` holds; false on timeout.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Request]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if pred(&st.requests) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds on a fresh thread that joined `netns` first, so the socket lives there.
fn bind_in(netns: Option<&Path>, addr: SocketAddr) -> Result<TcpListener> {
    let netns = netns.map(Path::to_path_buf);
    thread::spawn(move || -> Result<TcpListener> {
        if let Some(path) = &netns {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: a valid fd; this thread is ours and ends right after.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("setns into {}", path.display()));
            }
        }
        TcpListener::bind(addr).with_context(|| format!("API server double: binding {addr}"))
    })
    .join()
    .expect("bind thread")
}

/// `%XX` and `+` decoded.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `object` matches the request's `labelSelector` and `fieldSelector`
/// (comma-separated `key=value` / `key==value` terms).
fn selected(object: &Value, params: &BTreeMap<String, String>) -> bool {
    let terms = |key: &str| -> Vec<(String, String)> {
        params
            .get(key)
            .map(|s| {
                s.split(',')
                    .filter(|t| !t.is_empty())
                    .filter_map(|t| {
                        let (k, v) = t.split_once("==").or_else(|| t.split_once('='))?;
                        Some((k.trim().to_owned(), v.trim().to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let labels = &object["metadata"]["labels"];
    let by_label = terms("labelSelector")
        .iter()
        .all(|(k, v)| labels[k.as_str()].as_str() == Some(v.as_str()));
    let by_field = terms("fieldSelector")
        .iter()
        .all(|(k, v)| match k.as_str() {
            "metadata.name" => object["metadata"]["name"].as_str() == Some(v.as_str()),
            "metadata.namespace" => object["metadata"]["namespace"].as_str() == Some(v.as_str()),
            _ => false,
        });
    by_label && by_field
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn respond(conn: &mut TcpStream, code: u16, text: &str, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        conn,
        "HTTP/1.1 {code} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

fn chunk(conn: &mut TcpStream, line: &Value) -> std::io::Result<()> {
    let mut data = line.to_string();
    data.push('\n');
    write!(conn, "{:x}\r\n{data}\r\n", data.len())?;
    conn.flush()
}

/// One connection: one request (`Connection: close`).
fn serve(shared: &Shared, mut conn: TcpStream) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Headers, up to the blank line; a body only with Content-Length.
    let mut length = 0;
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return,
            Ok(_) if header == "\r\n" || header == "\n" => break,
            Ok(_) => {
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
    }
    let mut body = vec![0; length];
    if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect();
    let watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    let found = Kind::from_path(path);
    {
        let mut st = shared.lock();
        st.requests.push(Request {
            kind: found.as_ref().map(|(k, _, _)| *k),
            watch,
            params: params.clone(),
            at: Instant::now(),
        });
        shared.changed.notify_all();
    }
    if let Some(namespace) = path.strip_prefix("/api/v1/namespaces")
        && write_namespace(shared, &mut conn, method, namespace, &body)
    {
        return;
    }
    let not_found = |conn: &mut TcpStream, what: &str| {
        let message = format!("{what} {method} {path}");
        let _ = respond(conn, 404, "Not Found", &status(404, "NotFound", &message));
    };
    let Some((kind, namespace, name)) = found else {
        not_found(&mut conn, "the double does not serve");
        return;
    };
    if method != "GET" || name.is_some() {
        write_object(
            shared,
            &mut conn,
            method,
            kind,
            &namespace,
            name.as_deref(),
            &body,
        );
        return;
    }
    if watch {
        serve_watch(shared, conn, kind, &namespace, &params);
        return;
    }
    let (rv, items) = {
        let st = shared.lock();
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|((k, ns, _), o)| *k == kind && *ns == namespace && selected(o, &params))
            .map(|(_, o)| o.clone())
            .collect();
        (st.rv, items)
    };
    let list = json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.name()),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    });
    let _ = respond(&mut conn, 200, "OK", &list);
}

/// Creating and deleting namespaces (`/api/v1/namespaces[/NAME]`); deleting
/// one deletes what is in it. False when the path is not a namespace's.
fn write_namespace(
    shared: &Shared,
    conn: &mut TcpStream,
    method: &str,
    rest: &str,
    body: &[u8],
) -> bool {
    match (method, rest.strip_prefix('/')) {
        ("POST", None) | ("POST", Some("")) => {
            let object: Value = serde_json::from_slice(body).unwrap_or_default();
            let _ = respond(conn, 201, "Created", &object);
            true
        }
        ("DELETE", Some(name)) if !name.contains('/') => {
            let doomed: Vec<(Kind, String)> = shared
                .lock()
                .objects
                .keys()
                .filter(|(_, ns, _)| ns == name)
                .map(|(k, _, n)| (*k, n.clone()))
                .collect();
            for (kind, object) in doomed {
                shared.delete(kind, name, &object);
            }
            let gone = json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name}, "status": {"phase": "Terminating"}});
            let _ = respond(conn, 200, "OK", &gone);
            true
        }
        _ => false,
    }
}

/// GET, POST, PUT and DELETE of one object, as kube-apiserver answers them
/// (409 for a create of an existing name or a replace from a stale
/// resourceVersion).
fn write_object(
    shared: &Shared,
    conn: &mut TcpStream,
    method: &str,
    kind: Kind,
    namespace: &str,
    name: Option<&str>,
    body: &[u8],
) {
    let object: Value = serde_json::from_slice(body).unwrap_or_default();
    let named = |object: &Value| object["metadata"]["name"].as_str().map(str::to_owned);
    let reply = |conn: &mut TcpStream, code: u16, text: &str, value: &Value| {
        let _ = respond(conn, code, text, value);
    };
    match (method, name) {
        ("GET", Some(name)) => match shared.get(kind, namespace, name) {
            Some(object) => reply(conn, 200, "OK", &object),
            None => reply(
                conn,
                404,
                "Not Found",
                &status(
                    404,
                    "NotFound",
                    &format!("{} {name:?} not found", kind.name()),
                ),
            ),
        },
        ("POST", None) => {
            let Some(name) = named(&object) else {
                return reply(
                    conn,
                    422,
                    "Unprocessable Entity",
                    &status(422, "Invalid", "metadata.name is required"),
                );
            };
            if shared.get(kind, namespace, &name).is_some() {
                return reply(
                    conn,
                    409,
                    "Conflict",
                    &status(
                        409,
                        "AlreadyExists",
                        &format!("{} {name:?} already exists", kind.name()),
                    ),
                );
            }
            let mut object = object;
            object["metadata"]["namespace"] = json!(namespace);
            shared.apply(kind, object);
            let stored = shared.get(kind, namespace, &name).unwrap_or_default();
            reply(conn, 201, "Created", &stored);
        }
        ("PUT", Some(name)) => {
            let Some(current) = shared.get(kind, namespace, name) else {
                return reply(
                    conn,
                    404,
                    "Not Found",
                    &status(
                        404,
                        "NotFound",
                        &format!("{} {name:?} not found", kind.name()),
                    ),
                );
            };
            let given = object["metadata"]["resourceVersion"].as_str();
            if given.is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str()) {
                return reply(
                    conn,
                    409,
                    "Conflict",
                    &status(
                        409,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest version and try again",
                    ),
                );
            }
            let mut object = object;
            object["metadata"]["namespace"] = json!(namespace);
            shared.apply(kind, object);
            let stored = shared.get(kind, namespace, name).unwrap_or_default();
            reply(conn, 200, "OK", &stored);
        }
        ("DELETE", Some(name)) => match shared.delete(kind, namespace, name) {
            Some((_, object)) => reply(conn, 200, "OK", &object),
            None => reply(
                conn,
                404,
                "Not Found",
                &status(
                    404,
                    "NotFound",
                    &format!("{} {name:?} not found", kind.name()),
                ),
            ),
        },
        _ => reply(
            conn,
            405,
            "Method Not Allowed",
            &status(
                405,
                "MethodNotAllowed",
                &format!("{method} is not served here"),
            ),
        ),
    }
}

fn serve_watch(
    shared: &Shared,
    mut conn: TcpStream,
    kind: Kind,
    namespace: &str,
    params: &BTreeMap<String, String>,
) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let start = Instant::now();
    let mut st = shared.lock();
    let mut from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v != 0)
        .unwrap_or(st.rv);
    if from < st.compacted {
        drop(st);
        let _ = chunk(
            &mut conn,
            &json!({"type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {from}"))}),
        );
        let _ = conn.write_all(b"0\r\n\r\n");
        return;
    }
    let asked = params
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let bookmarks = matches!(
        params.get("allowWatchBookmarks").map(String::as_str),
        Some("true")
    );
    let epoch = st.epoch;
    st.open_watches += 1;
    let mut last_bookmark = Instant::now();
    loop {
        if st.epoch != epoch || !st.up {
            if st.expire && st.up {
                drop(st);
                let _ = chunk(
                    &mut conn,
                    &json!({"type": "ERROR", "object": status(410, "Expired", "the watch cache fell behind")}),
                );
                st = shared.lock();
            }
            break;
        }
        let pending: Vec<Change> = st
            .changes
            .iter()
            .filter(|c| {
                c.rv > from
                    && c.kind == kind
                    && c.namespace == namespace
                    && selected(&c.object, params)
            })
            .cloned()
            .collect();
        // Changes to other objects move the resourceVersion on too.
        let now_rv = st.rv;
        let cap = st.watch_cap.map_or(asked, |cap| cap.min(asked));
        let every = st.bookmark_every.filter(|_| bookmarks);
        drop(st);
        let mut ok = true;
        for c in &pending {
            ok &= chunk(&mut conn, &json!({"type": c.what, "object": c.object})).is_ok();
        }
        from = from.max(pending.last().map_or(from, |c| c.rv));
        if let Some(every) = every
            && last_bookmark.elapsed() >= every
        {
            let mark = json!({
                "type": "BOOKMARK",
                "object": {"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": {"resourceVersion": now_rv.to_string()}},
            });
            ok &= chunk(&mut conn, &mark).is_ok();
            from = from.max(now_rv);
            last_bookmark = Instant::now();
        }
        let elapsed = start.elapsed();
        if !ok || elapsed >= cap {
            st = shared.lock();
            break;
        }
        st = shared.lock();
        let mut wait = cap - elapsed;
        if let Some(every) = every {
            wait = wait.min(
                every
                    .saturating_sub(last_bookmark.elapsed())
                    .max(Duration::from_millis(1)),
            );
        }
        if st.rv == now_rv && st.epoch == epoch {
            st = shared
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    st.open_watches -= 1;
    drop(st);
    shared.changed.notify_all();
    // The end of the chunked body: the watch closed cleanly (a timeout).
    let _ = conn.write_all(b"0\r\n\r\n");
    let _ = conn.shutdown(Shutdown::Both);
}

/// An endpoint's conditions as the EndpointSlice controller sets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    /// ready (written out as `true`, as the controller does).
    Ready,
    /// Not ready yet (readiness probe failing): not a backend.
    NotReady,
    /// Pod deleted, still serving: terminating, serving, not ready.
    Terminating,
    /// Pod deleted and no longer serving.
    TerminatingNotServing,
}

/// An EndpointSlice of Service `service`, one port, the given endpoints.
pub fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    port: (&str, u16, &str),
    endpoints: &[(std::net::IpAddr, Cond)],
) -> EndpointSlice {
    use k8s_openapi::{
        api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };
    let family = match endpoints.first().map(|(ip, _)| ip) {
        Some(std::net::IpAddr::V6(_)) => "IPv6",
        _ => "IPv4",
    };
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/service-name".to_owned(), service.to_owned()),
                (
                    "endpointslice.kubernetes.io/managed-by".to_owned(),
                    "endpointslice-controller.k8s.io".to_owned(),
                ),
            ])),
            ..Default::default()
        },
        address_type: family.to_owned(),
        ports: Some(vec![EndpointPort {
            name: Some(port.0.to_owned()),
            port: Some(i32::from(port.1)),
            protocol: Some(port.2.to_owned()),
            ..Default::default()
        }]),
        endpoints: endpoints
            .iter()
            .map(|(ip, cond)| {
                let (ready, serving, terminating) = match cond {
                    Cond::Ready => (true, true, false),
                    Cond::NotReady => (false, false, false),
                    Cond::Terminating => (false, true, true),
                    Cond::TerminatingNotServing => (false, false, true),
                };
                Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    }),
                    node_name: Some("node-1".to_owned()),
                    ..Default::default()
                }
            })
            .collect(),
    }
}

/// A Service with one port and these external IPs.
pub fn service(
    namespace: &str,
    name: &str,
    port: (&str, u16, &str),
    external_ips: &[std::net::IpAddr],
) -> Service {
    use k8s_openapi::{
        api::core::v1::{ServicePort, ServiceSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "service.kubernetes.io/service-proxy-name".to_owned(),
                "dnsteer".to_owned(),
            )])),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            external_ips: Some(external_ips.iter().map(ToString::to_string).collect()),
            ports: Some(vec![ServicePort {
                name: Some(port.0.to_owned()),
                port: i32::from(port.1),
                protocol: Some(port.2.to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
