//! Clients that hold resources: free-mode sessions per address and their lifetime, slow
//! TLS handshakes, slow request headers. Each attack comes from its own loopback address
//! (127.0.0.2, or a client named by a trusted proxy) while another client is served.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::TestServer;

fn no_redirect() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `POST /start` (the landing page's "Start a session") as the client a trusted proxy
/// (the test itself, on 127.0.0.1) names.
async fn start_from(server: &TestServer, client: &str) -> reqwest::Response {
    no_redirect()
        .post(server.url("/start"))
        .header("x-forwarded-for", client)
        .send()
        .await
        .unwrap()
}

/// The session id a successful start redirects to.
fn started_id(response: &reqwest::Response) -> String {
    assert_eq!(response.status(), 303, "session started");
    response.headers()["location"]
        .to_str()
        .unwrap()
        .strip_prefix("/s/")
        .expect("redirect to the viewer")
        .to_owned()
}

fn lifetime(session: &Value) -> time::Duration {
    let at = |field: &str| {
        OffsetDateTime::parse(session[field].as_str().unwrap(), &Rfc3339).unwrap()
    };
    at("expires_at") - at("created_at")
}

#[tokio::test]
async fn free_mode_caps_live_sessions_per_address_and_free_sessions_are_short() {
    let args = [
        "--trusted-proxies",
        "127.0.0.1",
        "--max-free-sessions-per-ip",
        "2",
        "--free-session-ttl",
        "600",
    ];
    let server = TestServer::start(&args).await;
    let first = started_id(&start_from(&server, "198.51.100.10").await);
    let second = started_id(&start_from(&server, "198.51.100.10").await);

    // The third live session from one address is refused, with the limit named.
    let refused = start_from(&server, "198.51.100.10").await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "free_session_limit", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("2 free sessions"), "{message}");

    // Another client behind the same proxy still gets one; the proxy's own address is
    // not what counts.
    started_id(&start_from(&server, "198.51.100.11").await);

    // Free sessions get the short lifetime; an admin-created one keeps the default.
    assert_eq!(
        lifetime(&server.get_session(&first).await),
        time::Duration::seconds(600)
    );
    let created = server.create_session(json!({})).await;
    let admin = server.get_session(created["id"].as_str().unwrap()).await;
    assert_eq!(lifetime(&admin), time::Duration::seconds(86_400));

    // Ending a session frees its place.
    server.revoke(&first).await;
    let third = started_id(&start_from(&server, "198.51.100.10").await);
    assert_eq!(start_from(&server, "198.51.100.10").await.status(), 429);

    // The count is kept with the sessions: a restart does not reset it.
    let data = server.stop().await;
    let server = TestServer::start_in(data, &args).await;
    assert_eq!(start_from(&server, "198.51.100.10").await.status(), 429);
    server.revoke(&second).await;
    server.revoke(&third).await;
    started_id(&start_from(&server, "198.51.100.10").await);
    server.stop().await;
}

// ---------------------------------------------------------------- slow TLS handshakes

/// A self-signed certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

/// A TCP connection to `server` from the loopback address `from` (all of 127/8 is local).
async fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .unwrap();
    socket.connect(server).await.unwrap()
}

/// The start of a TLS ClientHello: a handshake record header announcing 512 bytes, and
/// the first bytes of them. The rest never comes.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];

/// Whether the server closed `stream` within `limit` (end of stream, a reset, or any
/// bytes it sent before closing).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A TLS alert or an HTTP error: read on until the close.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn slow_tls_handshakes_from_one_address_do_not_lock_out_another_client() {
    let (cert, key) = self_signed();
    // A handshake timeout far beyond the test: whatever is closed early is closed by the
    // per-address limit.
    let server = TestServer::start_tls(
        &cert,
        &key,
        &["--tls-handshakes-per-ip", "4", "--tls-handshake-timeout", "120"],
    )
    .await;

    // The attacker (127.0.0.2) takes its four places: two connections that send nothing,
    // two that send half a ClientHello.
    let mut held = Vec::new();
    for i in 0..4 {
        let mut stream = connect_from("127.0.0.2", server.addr).await;
        if i % 2 == 1 {
            stream.write_all(PARTIAL_CLIENT_HELLO).await.unwrap();
        }
        held.push(stream);
    }
    // Give the server time to take them all in before the next ones arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Each further connection from it is closed at once rather than waiting its turn.
    let mut extra = Vec::new();
    for _ in 0..60 {
        let mut stream = connect_from("127.0.0.2", server.addr).await;
        let _ = stream.write_all(PARTIAL_CLIENT_HELLO).await;
        extra.push(stream);
    }
    for (i, stream) in extra.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(20)).await,
            "connection {i} over the per-address limit was left open"
        );
    }

    // Meanwhile another client completes TLS requests.
    for _ in 0..3 {
        let health = server.http.get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
    }
    // ...while the attacker still holds its handshakes: they were not freed first.
    for (i, stream) in held.iter_mut().enumerate() {
        assert!(
            !closed_within(stream, Duration::from_millis(200)).await,
            "held handshake {i} was closed: the other client was only served after it"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn an_unfinished_tls_handshake_is_closed_after_the_timeout_and_its_place_freed() {
    let (cert, key) = self_signed();
    let server = TestServer::start_tls(
        &cert,
        &key,
        &["--tls-handshakes-per-ip", "1", "--tls-handshake-timeout", "1"],
    )
    .await;
    let mut silent = connect_from("127.0.0.2", server.addr).await;
    assert!(
        closed_within(&mut silent, Duration::from_secs(30)).await,
        "a connection that never sent a byte stayed open past the handshake timeout"
    );
    let mut partial = connect_from("127.0.0.2", server.addr).await;
    partial.write_all(PARTIAL_CLIENT_HELLO).await.unwrap();
    assert!(
        closed_within(&mut partial, Duration::from_secs(30)).await,
        "a half-sent ClientHello stayed open past the handshake timeout"
    );
    // The places were given back: the same address completes a handshake now.
    let from_attacker = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .tls_certs_only([reqwest::Certificate::from_pem(cert.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let health = from_attacker
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    server.stop().await;
}

// ---------------------------------------------------------------- slow headers

#[tokio::test]
async fn slow_headers_are_cut_after_the_header_timeout_while_another_client_is_served() {
    let server = TestServer::start(&["--header-read-timeout", "1"]).await;
    let mut slow = connect_from("127.0.0.2", server.addr).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let mut silent = connect_from("127.0.0.2", server.addr).await;

    // A byte every 100 ms, for at most 15 s (half hyper's own default timeout): a head
    // that never ends.
    let dripping = tokio::spawn(async move {
        for _ in 0..150 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b"a").await.is_err() {
                return (true, slow);
            }
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (true, slow),
                Ok(Ok(n)) => panic!(
                    "the server answered an unfinished head: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(_) => {}
            }
        }
        (false, slow)
    });

    // Another client is served meanwhile.
    for _ in 0..3 {
        let health = server.http.get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (cut, _slow) = dripping.await.unwrap();
    assert!(cut, "a head sent a byte at a time was never cut off");
    assert!(
        closed_within(&mut silent, Duration::from_secs(15)).await,
        "a connection that sent nothing stayed open"
    );
    // A normal client after all that.
    let health = server.http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    server.stop().await;
}
