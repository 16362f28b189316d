//! The daemon's side of the control socket: one task per client reads its
//! request, answers a read (`list`) from the published view or hands a change
//! to the daemon's event loop, and writes the answer back.

use std::time::Duration;

use log::warn;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::{Request, Response, allowed};
use crate::daemon::view::Published;

/// How long a control client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request and where its answer goes.
pub type Pending = (Request, oneshot::Sender<Response>);

/// Accepts control clients on `listener` until the task is aborted; reads
/// are answered from `view`, every other request goes to `queue`.
pub async fn accept(listener: UnixListener, queue: mpsc::Sender<Pending>, view: Published) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, queue.clone(), view.clone()));
            }
            Err(err) => warn!("control socket: accept failed: {err}"),
        }
    }
}

/// Reads one request from a control client, answers it from `view` (a read)
/// or has the main loop answer it (a change), and writes the answer back.
async fn serve(stream: UnixStream, queue: mpsc::Sender<Pending>, view: Published) {
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(err) => {
            warn!("control socket: cannot tell who connected ({err}); closing");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let response = if !allowed(uid) {
        warn!("control socket: refused uid {uid}");
        Response::error(
            "",
            format!("uid {uid} may not control dnsteer; run as root"),
        )
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new(read);
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
            Err(_) => Response::error("", "no request within 10 s"),
            Ok(Err(err)) => Response::error("", format!("reading the request: {err}")),
            Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                Err(err) => {
                    Response::error("", format!("bad request {:?}: {err}", line.trim_end()))
                }
                Ok(request) => match view.answer(&request) {
                    Some(response) => response,
                    None => {
                        let (tx, rx) = oneshot::channel();
                        if queue.send((request, tx)).await.is_err() {
                            return; // shutting down
                        }
                        match rx.await {
                            Ok(response) => response,
                            Err(_) => return,
                        }
                    }
                },
            },
        }
    };
    let mut out = serde_json::to_string(&response).unwrap_or_default();
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}
