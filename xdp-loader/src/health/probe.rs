//! Health probes: one real DNS query sent straight to a backend, and a verdict on
//! its reply.
//!
//! Messages are built and parsed with hickory-proto; the only bytes written by hand
//! are the two-byte length prefix that frames a message on TCP (RFC 1035 4.2.2).

use std::{
    fmt,
    io::{self, ErrorKind},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use hickory_proto::op::{Message, MessageType, Query};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

use crate::config::{ProbeQuery, Rcode};

/// Which transport a probe uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        })
    }
}

/// One probe's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub query: ProbeQuery,
    pub transport: Transport,
    /// How long to wait for the whole exchange (connect, send, reply).
    pub timeout: Duration,
    /// None: any well-formed reply to our question counts as good (the server is alive).
    pub expect_rcode: Option<Rcode>,
}

/// Why a probe failed; Display is one short line for a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Nothing at all came back in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// An ICMP port unreachable (UDP) or a reset (TCP connect).
    #[error("refused: nothing listens on the backend's port")]
    Refused,
    /// A local socket error, or one the network reported other than a refusal.
    #[error("{0}")]
    Io(String),
    /// A reply that does not parse as a DNS message, or a TCP stream that ended early.
    #[error("malformed reply: {0}")]
    Malformed(String),
    /// A well-formed message that is not the reply to our query: another id, not a
    /// response, or another question.
    #[error("unmatched reply: {0}")]
    Mismatch(String),
    /// The reply to our query, with a response code other than the expected one.
    #[error("rcode {got}, expected {expected}")]
    Rcode { got: Rcode, expected: Rcode },
}

/// What a reply must be to count.
struct Expected {
    id: u16,
    question: Query,
    rcode: Option<Rcode>,
}

/// Sends `probe`'s query to `target` and returns the round trip on success.
///
/// Never takes longer than `probe.timeout`. On UDP, stray datagrams (garbage, another
/// id, another question) do not end the probe; if nothing good follows them in time,
/// the error describes the last one instead of a bare [`ProbeError::Timeout`].
pub async fn probe(target: SocketAddr, probe: &Probe) -> Result<Duration, ProbeError> {
    let question = Query::query(probe.query.name.clone(), probe.query.rtype);
    // Message::query picks a random id (hickory's thread-local RNG).
    let mut request = Message::query();
    // The backend is asked about itself, not to recurse on our behalf.
    request.metadata.recursion_desired = false;
    request.add_query(question.clone());
    let bytes = request
        .to_vec()
        .map_err(|e| ProbeError::Io(format!("encoding the query {}: {e}", probe.query)))?;
    let expected = Expected {
        id: request.metadata.id,
        question,
        rcode: probe.expect_rcode,
    };
    let mut last_bad = None;
    let exchange = async {
        match probe.transport {
            Transport::Udp => udp(target, &bytes, &expected, &mut last_bad).await,
            Transport::Tcp => tcp(target, &bytes, &expected).await,
        }
    };
    let outcome = tokio::time::timeout(probe.timeout, exchange).await;
    match outcome {
        Ok(result) => result,
        Err(_elapsed) => Err(match last_bad {
            Some(ProbeError::Malformed(why)) => {
                ProbeError::Malformed(format!("{why}; no good reply within {:?}", probe.timeout))
            }
            Some(ProbeError::Mismatch(why)) => {
                ProbeError::Mismatch(format!("{why}; no good reply within {:?}", probe.timeout))
            }
            Some(other) => other,
            None => ProbeError::Timeout(probe.timeout),
        }),
    }
}

/// One query from a fresh connected socket: the kernel drops datagrams from anyone
/// but `target` and turns an ICMP port unreachable into ECONNREFUSED.
async fn udp(
    target: SocketAddr,
    bytes: &[u8],
    expected: &Expected,
    last_bad: &mut Option<ProbeError>,
) -> Result<Duration, ProbeError> {
    // A socket of the backend's family: IPv6 backends are probed over IPv6.
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any)
        .await
        .map_err(|e| ProbeError::Io(format!("binding a UDP socket: {e}")))?;
    socket
        .connect(target)
        .await
        .map_err(|e| io_error("connecting a UDP socket to", target, e))?;
    let start = Instant::now();
    socket
        .send(bytes)
        .await
        .map_err(|e| io_error("sending to", target, e))?;
    // The largest datagram; anything shorter would cut a big reply and fail its parse.
    let mut buf = vec![0u8; 65_535];
    loop {
        let len = socket
            .recv(&mut buf)
            .await
            .map_err(|e| io_error("receiving from", target, e))?;
        match check_reply(&buf[..len], expected) {
            Ok(()) => return Ok(start.elapsed()),
            Err(bad @ (ProbeError::Malformed(_) | ProbeError::Mismatch(_))) => {
                *last_bad = Some(bad);
            }
            Err(verdict) => return Err(verdict),
        }
    }
}

/// One query over a fresh connection; the first framed message back is the verdict.
async fn tcp(
    target: SocketAddr,
    bytes: &[u8],
    expected: &Expected,
) -> Result<Duration, ProbeError> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|e| io_error("connecting to", target, e))?;
    // One write of prefix and message, sent at once rather than held back by Nagle.
    stream
        .set_nodelay(true)
        .map_err(|e| io_error("setting TCP_NODELAY towards", target, e))?;
    let len = u16::try_from(bytes.len()).map_err(|_| {
        ProbeError::Io(format!(
            "the query is {} bytes, more than TCP's 65535",
            bytes.len()
        ))
    })?;
    let mut framed = Vec::with_capacity(2 + bytes.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream
        .write_all(&framed)
        .await
        .map_err(|e| io_error("sending to", target, e))?;
    let mut prefix = [0u8; 2];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(|e| eof_or_io(e, target, || "connection closed without a reply".to_owned()))?;
    let len = u16::from_be_bytes(prefix);
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await.map_err(|e| {
        eof_or_io(e, target, || {
            format!("connection closed before the end of a {len}-byte reply")
        })
    })?;
    check_reply(&reply, expected)?;
    Ok(start.elapsed())
}

/// A refusal is [`ProbeError::Refused`]; anything else says what we were doing.
fn io_error(doing: &str, target: SocketAddr, e: io::Error) -> ProbeError {
    if e.kind() == ErrorKind::ConnectionRefused {
        ProbeError::Refused
    } else {
        ProbeError::Io(format!("{doing} {target}: {e}"))
    }
}

/// A stream that ends mid-reply is a malformed reply, not a local failure.
fn eof_or_io(e: io::Error, target: SocketAddr, why: impl FnOnce() -> String) -> ProbeError {
    if e.kind() == ErrorKind::UnexpectedEof {
        ProbeError::Malformed(why())
    } else {
        io_error("receiving from", target, e)
    }
}

/// Ok when `bytes` is the reply to the query `expected` describes.
fn check_reply(bytes: &[u8], expected: &Expected) -> Result<(), ProbeError> {
    let reply = Message::from_vec(bytes).map_err(|e| {
        ProbeError::Malformed(format!("{} bytes that do not parse: {e}", bytes.len()))
    })?;
    let meta = &reply.metadata;
    if meta.message_type != MessageType::Response {
        return Err(ProbeError::Mismatch(format!(
            "a query (QR=0) with id {}, not a response",
            meta.id
        )));
    }
    if meta.id != expected.id {
        return Err(ProbeError::Mismatch(format!(
            "id {}, sent {}",
            meta.id, expected.id
        )));
    }
    if reply.queries.as_slice() != std::slice::from_ref(&expected.question) {
        return Err(ProbeError::Mismatch(format!(
            "question {}, asked {}",
            questions(&reply.queries),
            questions(std::slice::from_ref(&expected.question))
        )));
    }
    // hickory has already merged the EDNS high bits in: this is the full 12-bit code.
    let got = Rcode::from(meta.response_code);
    match expected.rcode {
        Some(want) if want != got => Err(ProbeError::Rcode {
            got,
            expected: want,
        }),
        // TC set is still an answer: the server is up and said so.
        _ => Ok(()),
    }
}

/// `health.example. IN A`, comma-separated, for an error message.
fn questions(queries: &[Query]) -> String {
    if queries.is_empty() {
        return "none".to_owned();
    }
    queries
        .iter()
        .map(|q| format!("{} {} {}", q.name.to_ascii(), q.query_class, q.query_type))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use hickory_proto::{
        op::{Edns, ResponseCode},
        rr::{Name, RData, Record, RecordType, rdata::A},
    };
    use tokio::{net::TcpListener, task::JoinHandle};

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(200);

    fn probe_settings(transport: Transport, expect_rcode: Option<Rcode>) -> Probe {
        Probe {
            query: "health.example. A".parse().unwrap(),
            transport,
            timeout: TIMEOUT,
            expect_rcode,
        }
    }

    /// The reply a correct server sends: our id and question, `rcode`, one A record
    /// when NOERROR.
    fn reply(request: &Message, rcode: ResponseCode) -> Message {
        let mut reply = Message::error_msg(request.metadata.id, request.metadata.op_code, rcode);
        reply.add_queries(request.queries.clone());
        if rcode == ResponseCode::NoError {
            reply.add_answer(Record::from_rdata(
                request.queries[0].name.clone(),
                60,
                RData::A(A(Ipv4Addr::new(10, 0, 0, 2))),
            ));
        }
        reply
    }

    /// A UDP server on 127.0.0.1 that answers one query with the datagrams `respond`
    /// makes (none: silence) and returns that query once the probe is done with it.
    async fn udp_server(
        respond: impl FnOnce(&Message) -> Vec<Vec<u8>> + Send + 'static,
    ) -> (SocketAddr, JoinHandle<Message>) {
        udp_server_on("127.0.0.1:0", respond).await
    }

    /// [`udp_server`] bound to `bind`.
    async fn udp_server_on(
        bind: &str,
        respond: impl FnOnce(&Message) -> Vec<Vec<u8>> + Send + 'static,
    ) -> (SocketAddr, JoinHandle<Message>) {
        let socket = UdpSocket::bind(bind).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            let (len, from) = socket.recv_from(&mut buf).await.unwrap();
            let request = Message::from_vec(&buf[..len]).unwrap();
            for datagram in respond(&request) {
                socket.send_to(&datagram, from).await.unwrap();
            }
            // Stay bound past the probe's end, so silence is not an ICMP refusal.
            tokio::time::sleep(TIMEOUT * 2).await;
            request
        });
        (addr, task)
    }

    fn answer(rcode: ResponseCode) -> impl FnOnce(&Message) -> Vec<Vec<u8>> + Send + 'static {
        move |request| vec![reply(request, rcode).to_vec().unwrap()]
    }

    #[test]
    fn errors_read_as_one_line() {
        let rcode = ProbeError::Rcode {
            got: Rcode(2),
            expected: Rcode(0),
        };
        assert_eq!(rcode.to_string(), "rcode SERVFAIL, expected NOERROR");
        assert_eq!(
            ProbeError::Timeout(Duration::from_millis(500)).to_string(),
            "no reply within 500ms"
        );
    }

    #[tokio::test]
    async fn udp_good_reply_is_ok_and_asks_the_question_without_recursion() {
        let (addr, server) = udp_server(answer(ResponseCode::NoError)).await;
        let settings = probe_settings(Transport::Udp, Some(Rcode(0)));
        let rtt = probe(addr, &settings).await.unwrap();
        assert!(rtt <= TIMEOUT, "{rtt:?}");
        let request = server.await.unwrap();
        assert_eq!(request.metadata.message_type, MessageType::Query);
        assert!(!request.metadata.recursion_desired);
        assert_eq!(
            request.queries,
            [Query::query(settings.query.name, RecordType::A)]
        );
    }

    #[tokio::test]
    async fn udp_other_rcode_than_expected_is_an_rcode_error() {
        let (addr, _server) = udp_server(answer(ResponseCode::NXDomain)).await;
        let err = probe(addr, &probe_settings(Transport::Udp, Some(Rcode(0))))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ProbeError::Rcode {
                got: Rcode(3),
                expected: Rcode(0)
            }
        );
    }

    #[tokio::test]
    async fn udp_any_rcode_is_ok_without_an_expectation() {
        let (addr, _server) = udp_server(answer(ResponseCode::NXDomain)).await;
        probe(addr, &probe_settings(Transport::Udp, None))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn udp_extended_rcode_is_compared_whole() {
        let (addr, _server) = udp_server(|request| {
            let mut reply = reply(request, ResponseCode::BADVERS);
            reply.set_edns(Edns::new());
            vec![reply.to_vec().unwrap()]
        })
        .await;
        let err = probe(addr, &probe_settings(Transport::Udp, Some(Rcode(0))))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ProbeError::Rcode {
                got: Rcode(16),
                expected: Rcode(0)
            }
        );
    }

    #[tokio::test]
    async fn udp_garbage_and_strays_before_the_reply_are_skipped() {
        let (addr, _server) = udp_server(|request| {
            let mut wrong_id = reply(request, ResponseCode::NoError);
            wrong_id.metadata.id = request.metadata.id.wrapping_add(1);
            let mut other_question = reply(request, ResponseCode::NoError);
            other_question.queries[0].name = Name::from_ascii("other.example.").unwrap();
            let mut not_a_response = request.clone();
            not_a_response.metadata.message_type = MessageType::Query;
            vec![
                vec![0xde, 0xad, 0xbe],
                wrong_id.to_vec().unwrap(),
                other_question.to_vec().unwrap(),
                not_a_response.to_vec().unwrap(),
                reply(request, ResponseCode::NoError).to_vec().unwrap(),
            ]
        })
        .await;
        let rtt = probe(addr, &probe_settings(Transport::Udp, Some(Rcode(0))))
            .await
            .unwrap();
        assert!(rtt <= TIMEOUT, "{rtt:?}");
    }

    #[tokio::test]
    async fn udp_only_a_wrong_id_is_a_mismatch_not_a_timeout() {
        let (addr, _server) = udp_server(|request| {
            let mut wrong_id = reply(request, ResponseCode::NoError);
            wrong_id.metadata.id = request.metadata.id.wrapping_add(1);
            vec![wrong_id.to_vec().unwrap()]
        })
        .await;
        let err = probe(addr, &probe_settings(Transport::Udp, None))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProbeError::Mismatch(why) if why.contains("id ")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn udp_only_another_question_is_a_mismatch() {
        let (addr, _server) = udp_server(|request| {
            let mut other = reply(request, ResponseCode::NoError);
            other.queries[0].query_type = RecordType::AAAA;
            vec![other.to_vec().unwrap()]
        })
        .await;
        let err = probe(addr, &probe_settings(Transport::Udp, None))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProbeError::Mismatch(why) if why.contains("AAAA")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn udp_only_garbage_is_malformed() {
        let (addr, _server) = udp_server(|_| vec![vec![1, 2, 3]]).await;
        let err = probe(addr, &probe_settings(Transport::Udp, None))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn udp_silence_is_a_timeout_after_the_timeout() {
        let (addr, _server) = udp_server(|_| Vec::new()).await;
        let start = Instant::now();
        let err = probe(addr, &probe_settings(Transport::Udp, None))
            .await
            .unwrap_err();
        let took = start.elapsed();
        assert_eq!(err, ProbeError::Timeout(TIMEOUT));
        assert!(
            took >= TIMEOUT.mul_f32(0.9) && took <= TIMEOUT * 3,
            "took {took:?}"
        );
    }

    #[tokio::test]
    async fn udp_reply_from_another_port_is_ignored() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            let (len, from) = socket.recv_from(&mut buf).await.unwrap();
            let request = Message::from_vec(&buf[..len]).unwrap();
            let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let bytes = reply(&request, ResponseCode::NoError).to_vec().unwrap();
            other.send_to(&bytes, from).await.unwrap();
            tokio::time::sleep(TIMEOUT * 2).await;
        });
        let err = probe(addr, &probe_settings(Transport::Udp, None))
            .await
            .unwrap_err();
        assert_eq!(err, ProbeError::Timeout(TIMEOUT));
    }

    #[tokio::test]
    async fn udp_closed_port_is_refused() {
        let closed = {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap()
        };
        let err = probe(closed, &probe_settings(Transport::Udp, None))
            .await
            .unwrap_err();
        assert_eq!(err, ProbeError::Refused);
    }

    #[tokio::test]
    async fn udp_truncated_reply_is_ok() {
        let (addr, _server) = udp_server(|request| {
            let mut truncated = reply(request, ResponseCode::NoError);
            truncated.answers.clear();
            truncated.metadata.truncation = true;
            vec![truncated.to_vec().unwrap()]
        })
        .await;
        probe(addr, &probe_settings(Transport::Udp, Some(Rcode(0))))
            .await
            .unwrap();
    }

    /// A TCP server on 127.0.0.1 that reads one framed query and answers it with what
    /// `respond` makes (none: close the connection).
    async fn tcp_server(
        respond: impl FnOnce(&Message) -> Option<Message> + Send + 'static,
    ) -> (SocketAddr, JoinHandle<Message>) {
        tcp_server_on("127.0.0.1:0", respond).await
    }

    /// [`tcp_server`] bound to `bind`.
    async fn tcp_server_on(
        bind: &str,
        respond: impl FnOnce(&Message) -> Option<Message> + Send + 'static,
    ) -> (SocketAddr, JoinHandle<Message>) {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let len = stream.read_u16().await.unwrap();
            let mut buf = vec![0u8; usize::from(len)];
            stream.read_exact(&mut buf).await.unwrap();
            let request = Message::from_vec(&buf).unwrap();
            if let Some(reply) = respond(&request) {
                let bytes = reply.to_vec().unwrap();
                stream
                    .write_u16(u16::try_from(bytes.len()).unwrap())
                    .await
                    .unwrap();
                stream.write_all(&bytes).await.unwrap();
                // Keep the connection open until the client hangs up.
                let _ = stream.read(&mut [0u8; 1]).await;
            }
            request
        });
        (addr, task)
    }

    /// An IPv6 backend is probed over IPv6, on both transports.
    #[tokio::test]
    async fn ipv6_backends_are_probed_over_ipv6() {
        let (addr, server) = udp_server_on("[::1]:0", answer(ResponseCode::NoError)).await;
        assert!(addr.is_ipv6());
        probe(addr, &probe_settings(Transport::Udp, Some(Rcode(0))))
            .await
            .unwrap();
        server.await.unwrap();
        let (addr, server) = tcp_server_on("[::1]:0", |request| {
            Some(reply(request, ResponseCode::NoError))
        })
        .await;
        probe(addr, &probe_settings(Transport::Tcp, Some(Rcode(0))))
            .await
            .unwrap();
        server.await.unwrap();
        let closed = std::net::UdpSocket::bind("[::1]:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = probe(closed, &probe_settings(Transport::Udp, None))
            .await
            .unwrap_err();
        assert_eq!(err, ProbeError::Refused, "an ICMPv6 port unreachable");
    }

    #[tokio::test]
    async fn tcp_good_reply_is_ok() {
        let (addr, server) =
            tcp_server(|request| Some(reply(request, ResponseCode::NoError))).await;
        let settings = probe_settings(Transport::Tcp, Some(Rcode(0)));
        let rtt = probe(addr, &settings).await.unwrap();
        assert!(rtt <= TIMEOUT, "{rtt:?}");
        let request = server.await.unwrap();
        assert_eq!(
            request.queries,
            [Query::query(settings.query.name, RecordType::A)]
        );
    }

    #[tokio::test]
    async fn tcp_other_rcode_than_expected_is_an_rcode_error() {
        let (addr, _server) =
            tcp_server(|request| Some(reply(request, ResponseCode::ServFail))).await;
        let err = probe(addr, &probe_settings(Transport::Tcp, Some(Rcode(0))))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ProbeError::Rcode {
                got: Rcode(2),
                expected: Rcode(0)
            }
        );
    }

    #[tokio::test]
    async fn tcp_wrong_id_is_a_mismatch() {
        let (addr, _server) = tcp_server(|request| {
            let mut wrong_id = reply(request, ResponseCode::NoError);
            wrong_id.metadata.id = request.metadata.id.wrapping_add(1);
            Some(wrong_id)
        })
        .await;
        let err = probe(addr, &probe_settings(Transport::Tcp, None))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Mismatch(_)), "{err}");
    }

    #[tokio::test]
    async fn tcp_closed_port_is_refused() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let err = probe(closed, &probe_settings(Transport::Tcp, None))
            .await
            .unwrap_err();
        assert_eq!(err, ProbeError::Refused);
    }

    #[tokio::test]
    async fn tcp_server_that_closes_after_reading_is_malformed() {
        let (addr, _server) = tcp_server(|_| None).await;
        let err = probe(addr, &probe_settings(Transport::Tcp, None))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProbeError::Malformed(why) if why.contains("without a reply")),
            "{err}"
        );
    }
}
