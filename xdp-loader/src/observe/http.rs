//! `/metrics`, `/healthz` and `/readyz` over HTTP/1.1, served by hyper: one
//! request per connection, then close. Each scrape asks the run loop for the
//! exposition text; the health endpoints answer from here, without the loop.

use std::{convert::Infallible, io, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONNECTION, CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
    task::JoinSet,
    time::timeout,
};

use super::{
    metrics::{CONTENT_TYPE, Scrape},
    ready::Readiness,
};

/// How long a client gets to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head read; Prometheus sends a few hundred bytes (and
/// hyper reads at least this much).
const MAX_HEAD: usize = 8 * 1024;
/// How long a scrape waits for the run loop (Prometheus gives up after 10 s by default).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves GET /metrics, /healthz and /readyz on `listener` until the task is
/// dropped/aborted; each scrape sends a `Scrape` on `scrapes` and waits for
/// the answer, the health endpoints read `ready`.
pub async fn serve(listener: TcpListener, scrapes: mpsc::Sender<Scrape>, ready: Readiness) {
    serve_with(listener, scrapes, ready, HEAD_TIMEOUT).await;
}

/// `serve` with the head time limit as a parameter, so a test need not wait 5 s.
async fn serve_with(
    listener: TcpListener,
    scrapes: mpsc::Sender<Scrape>,
    ready: Readiness,
    head_timeout: Duration,
) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "the metrics address".to_owned(), |a| a.to_string());
    // Connections live in the set so that dropping `serve` ends them too.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (scrapes, ready) = (scrapes.clone(), ready.clone());
                let service = service_fn(move |request| {
                    let (scrapes, ready) = (scrapes.clone(), ready.clone());
                    async move { Ok::<_, Infallible>(answer(&request, &scrapes, &ready).await) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(head_timeout)
                    .max_buf_size(MAX_HEAD)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                connections.spawn(async move {
                    if let Err(err) = connection.await {
                        log::debug!("metrics: a request from {peer}: {err}");
                    }
                });
            }
            Err(err) if out_of_resources(&err) => {
                log::warn!(
                    "metrics: accepting a connection on {addr} failed: {err}; retrying in 100 ms (raise the open-files limit, `ulimit -n`, if this repeats)"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => log::warn!("metrics: accepting a connection on {addr} failed: {err}"),
        }
    }
}

/// Accept errors that last until something else frees resources; retrying at once would spin.
fn out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The answer to one request. hyper answers what does not parse as HTTP/1
/// (400, or 431 for a head over `MAX_HEAD`) before it gets here.
async fn answer(
    request: &Request<Incoming>,
    scrapes: &mpsc::Sender<Scrape>,
    ready: &Readiness,
) -> Response<Full<Bytes>> {
    let uri = request.uri();
    // The origin form (`/metrics`) or, as servers must accept (RFC 9112 §3.2.2), the absolute form.
    let target_ok = uri.scheme().is_some()
        || uri
            .path_and_query()
            .is_some_and(|p| p.as_str().starts_with('/'));
    if !target_ok {
        return text(
            StatusCode::BAD_REQUEST,
            "expected an HTTP request line such as `GET /metrics HTTP/1.1`",
        );
    }
    let path = uri.path();
    if !["/metrics", "/healthz", "/readyz"].contains(&path) {
        return text(
            StatusCode::NOT_FOUND,
            "dnsteer serves /metrics, /healthz and /readyz only",
        );
    }
    match *request.method() {
        // hyper leaves the body out of a HEAD response and keeps its length.
        Method::GET | Method::HEAD => match path {
            "/metrics" => scrape(scrapes).await,
            // The process answers: it is alive.
            "/healthz" => text(StatusCode::OK, "ok"),
            _ => match ready.waiting_for() {
                None => text(StatusCode::OK, "ready"),
                Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
            },
        },
        _ => {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} answers GET and HEAD"),
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
    }
}

/// Asks the run loop for the exposition text.
async fn scrape(scrapes: &mpsc::Sender<Scrape>) -> Response<Full<Bytes>> {
    let (answer, answered) = oneshot::channel();
    let asked = timeout(SCRAPE_TIMEOUT, async {
        scrapes.send(answer).await.ok()?;
        answered.await.ok()
    })
    .await;
    match asked {
        Ok(Some(Ok(body))) => respond(StatusCode::OK, CONTENT_TYPE, body),
        Ok(Some(Err(message))) => text(StatusCode::INTERNAL_SERVER_ERROR, message),
        Ok(None) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "dnsteer is shutting down and no longer reads its stats",
        ),
        Err(_) => {
            log::warn!(
                "metrics: the run loop did not answer a scrape within {SCRAPE_TIMEOUT:?}; is it stuck on a map operation?"
            );
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("dnsteer did not read its stats within {SCRAPE_TIMEOUT:?}; see its log"),
            )
        }
    }
}

/// A plain-text answer, ending in a newline.
fn text(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    let mut body = message.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    respond(status, "text/plain; charset=utf-8", body)
}

/// A response after which the connection closes.
fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::SocketAddr, time::Instant};

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;

    /// A body as the run loop would give it.
    const BODY: &str =
        "# HELP dnsteer_up dnsteer is running.\n# TYPE dnsteer_up gauge\ndnsteer_up 1\n# EOF\n";

    /// Where the blank line ending a head starts.
    fn head_end(bytes: &[u8]) -> Option<usize> {
        bytes.windows(4).position(|w| w == b"\r\n\r\n")
    }

    /// A parsed HTTP response.
    #[derive(Debug)]
    struct Answer {
        status: u16,
        headers: BTreeMap<String, String>,
        body: Vec<u8>,
    }

    /// Sends `request` and reads the answer.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
        let mut stream = TcpStream::connect(addr)
            .await
            .expect("connecting to the metrics server");
        stream
            .write_all(request)
            .await
            .expect("sending the request");
        let mut raw = Vec::new();
        timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
            .await
            .expect("an answer within 5 s")
            .expect("reading the answer");
        let end = head_end(&raw)
            .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&raw)));
        let head = std::str::from_utf8(&raw[..end]).expect("an ASCII head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("a status line");
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            // An HTTP/1.0 request is answered in HTTP/1.0.
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|l| {
                let (k, v) = l
                    .split_once(": ")
                    .unwrap_or_else(|| panic!("bad header {l:?}"));
                (k.to_ascii_lowercase(), v.to_owned())
            })
            .collect();
        Answer {
            status,
            headers,
            body: raw[end + 4..].to_vec(),
        }
    }

    /// Starts `serve` with a fake run loop that answers every scrape with `answer`,
    /// or with no run loop at all for `None`.
    async fn start(answer: Option<Result<String, String>>) -> SocketAddr {
        start_with(answer, Readiness::default()).await
    }

    /// `start` with the readiness flags the health endpoints read.
    async fn start_with(answer: Option<Result<String, String>>, ready: Readiness) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("the bound address");
        let (scrapes, mut asked) = mpsc::channel::<Scrape>(1);
        match answer {
            Some(answer) => {
                tokio::spawn(async move {
                    while let Some(scrape) = asked.recv().await {
                        let _ = scrape.send(answer.clone());
                    }
                });
            }
            None => drop(asked),
        }
        tokio::spawn(serve(listener, scrapes, ready));
        addr
    }

    #[tokio::test]
    async fn healthz_answers_without_the_run_loop_and_readyz_follows_the_flags() {
        let ready = Readiness::default();
        // No run loop at all: /metrics fails, the health endpoints still answer.
        let addr = start_with(None, ready.clone()).await;
        let body = |a: &Answer| String::from_utf8_lossy(&a.body).into_owned();
        let healthz = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert_eq!((healthz.status, body(&healthz).as_str()), (200, "ok\n"));

        let readyz = exchange(addr, b"GET /readyz HTTP/1.1\r\n\r\n").await;
        assert_eq!(readyz.status, 503);
        assert!(body(&readyz).contains("not attached"), "{readyz:?}");

        ready.set_attached();
        let readyz = exchange(addr, b"GET /readyz HTTP/1.1\r\n\r\n").await;
        assert_eq!(readyz.status, 503);
        assert!(body(&readyz).contains("Kubernetes"), "{readyz:?}");

        ready.set_synced(true);
        let readyz = exchange(addr, b"GET /readyz HTTP/1.1\r\n\r\n").await;
        assert_eq!((readyz.status, body(&readyz).as_str()), (200, "ready\n"));
        let head = exchange(addr, b"HEAD /readyz HTTP/1.1\r\n\r\n").await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());

        // A reload that adds a Kubernetes source not listed yet.
        ready.set_synced(false);
        assert_eq!(
            exchange(addr, b"GET /readyz HTTP/1.1\r\n\r\n").await.status,
            503
        );
        let post = exchange(addr, b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(post.status, 405);
        assert_eq!(post.headers["allow"], "GET, HEAD");
    }

    #[tokio::test]
    async fn serve_answers_get_with_the_run_loops_body() {
        let body = BODY.to_owned();
        let addr = start(Some(Ok(body.clone()))).await;
        for request in [
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
            "GET /metrics HTTP/1.0\r\n\r\n",
            "GET /metrics?name[]=up HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "GET http://localhost:9153/metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "GET /metrics HTTP/1.1\nHost: localhost\n\n",
        ] {
            let answer = exchange(addr, request.as_bytes()).await;
            assert_eq!(answer.status, 200, "{request:?}");
            assert_eq!(
                answer.headers["content-type"],
                "text/plain; version=0.0.4; charset=utf-8"
            );
            assert_eq!(answer.headers["content-length"], body.len().to_string());
            assert_eq!(answer.headers["connection"], "close");
            assert_eq!(
                String::from_utf8(answer.body).expect("UTF-8"),
                body,
                "{request:?}"
            );
        }
    }

    #[tokio::test]
    async fn serve_head_has_headers_and_no_body() {
        let body = BODY.to_owned();
        let addr = start(Some(Ok(body.clone()))).await;
        let answer = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers["content-type"], CONTENT_TYPE);
        assert_eq!(answer.headers["content-length"], body.len().to_string());
        assert!(answer.body.is_empty(), "HEAD got a body: {:?}", answer.body);
    }

    #[tokio::test]
    async fn serve_rejects_other_paths_methods_and_garbage() {
        let addr = start(Some(Ok("unused\n".to_owned()))).await;

        let answer = exchange(addr, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(answer.status, 404);
        assert!(
            String::from_utf8_lossy(&answer.body).contains("/metrics"),
            "{answer:?}"
        );
        assert_eq!(
            answer.headers["content-length"],
            answer.body.len().to_string()
        );
        assert_eq!(
            exchange(addr, b"GET /metricsx HTTP/1.1\r\n\r\n")
                .await
                .status,
            404
        );

        let answer = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        )
        .await;
        assert_eq!(answer.status, 405);
        assert_eq!(answer.headers["allow"], "GET, HEAD");
        assert_eq!(answer.headers["connection"], "close");

        for garbage in [
            &b"garbage\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics FTP/1.0\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"G\xffT /metrics HTTP/1.1\r\n\r\n",
        ] {
            let answer = exchange(addr, garbage).await;
            assert_eq!(answer.status, 400, "{:?}", String::from_utf8_lossy(garbage));
        }
        // The client stopped sending before the blank line: hyper closes
        // without an answer (there is no request to answer).
        let mut stream = TcpStream::connect(addr).await.expect("connecting");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .expect("sending part of a head");
        stream.shutdown().await.expect("closing the sending side");
        let mut rest = Vec::new();
        timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("the server closes within 5 s")
            .expect("a clean close");
        assert!(
            rest.is_empty() || rest.starts_with(b"HTTP/1.1 400"),
            "{rest:?}"
        );
        // Only HTTP/1.x is spoken; any other version is a request line that does not parse.
        assert_eq!(
            exchange(addr, b"GET /metrics HTTP/2.0\r\n\r\n")
                .await
                .status,
            400
        );
    }

    #[tokio::test]
    async fn serve_turns_run_loop_errors_into_500() {
        let addr = start(Some(Err(
            "reading BACKEND_STATS: Operation not permitted".to_owned()
        )))
        .await;
        let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(answer.status, 500);
        assert_eq!(
            answer.body,
            b"reading BACKEND_STATS: Operation not permitted\n"
        );
        assert_eq!(answer.headers["content-type"], "text/plain; charset=utf-8");

        let addr = start(None).await;
        let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(answer.status, 500);
        assert!(
            String::from_utf8_lossy(&answer.body).contains("shutting down"),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn serve_survives_an_oversized_head() {
        let addr = start(Some(Ok("x 1\n".to_owned()))).await;
        let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2 * MAX_HEAD));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(exchange(addr, &big).await.status, 431);

        let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, b"x 1\n");
    }

    #[tokio::test]
    async fn serve_closes_a_silent_connection() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("the bound address");
        let (scrapes, mut asked) = mpsc::channel::<Scrape>(1);
        tokio::spawn(async move {
            while let Some(scrape) = asked.recv().await {
                let _ = scrape.send(Ok("x 1\n".to_owned()));
            }
        });
        tokio::spawn(serve_with(
            listener,
            scrapes,
            Readiness::default(),
            Duration::from_millis(300),
        ));

        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.expect("connecting");
        stream
            .write_all(b"GET /metr")
            .await
            .expect("sending half a request line");
        let mut rest = Vec::new();
        let n = timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("the server closes within 5 s")
            .expect("a clean close");
        assert_eq!(n, 0, "got {:?}", String::from_utf8_lossy(&rest));
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "closed after {:?}",
            started.elapsed()
        );

        assert_eq!(
            exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")
                .await
                .status,
            200
        );
    }
}
