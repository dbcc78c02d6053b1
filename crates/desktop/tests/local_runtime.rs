//! The local runtime against the real Xvnc, openbox and Chromium.

use std::sync::Mutex;
use std::time::Duration;

use livesession_desktop::rfb::RfbClient;
use livesession_desktop::egress::EgressPolicy;
use livesession_desktop::{
    DesktopError, DesktopRuntime, DesktopSpec, LocalRuntime, LocalRuntimeConfig, Piece,
    ResourceLimits, ToolPaths, members,
};

fn config(root: &std::path::Path, tools: ToolPaths) -> LocalRuntimeConfig {
    LocalRuntimeConfig {
        root: root.to_owned(),
        tools,
        start_timeout: Duration::from_secs(60),
        stop_grace: Duration::from_secs(3),
        sandbox: true,
        egress: EgressPolicy::default(),
        host_ports: Vec::new(),
        limits: ResourceLimits::default(),
        uid_base: 2_000_000_000,
    }
}

fn runtime(root: &std::path::Path, tools: ToolPaths) -> LocalRuntime {
    LocalRuntime::new(config(root, tools)).unwrap()
}

fn spec(id: &str, url: &str) -> DesktopSpec {
    DesktopSpec {
        id: id.into(),
        width: 1280,
        height: 720,
        start_url: url.into(),
    }
}

const MAGENTA_PAGE: &str = "data:text/html,<body style='background:rgb(255,0,255)'>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_starts_draws_its_page_and_stops_without_leftovers() {
    let root = tempfile::tempdir().unwrap();
    let rt = runtime(root.path(), ToolPaths::default());
    let steps = Mutex::new(Vec::new());
    let handle = rt
        .start(spec("a1", MAGENTA_PAGE), &|p| steps.lock().unwrap().push(p))
        .await
        .unwrap();
    assert_eq!(
        *steps.lock().unwrap(),
        vec![Piece::Xvnc, Piece::Openbox, Piece::Chromium]
    );
    assert!(handle.vnc_socket.starts_with(root.path().join("a1")));
    assert!(rt.is_alive("a1").await);
    let procs = members(handle.pgid, handle.pidns);
    assert!(
        procs.len() >= 5,
        "bubblewrap, the supervisor, Xvnc, openbox and Chromium: {procs:?}"
    );

    // Read frames until the page's colour covers most of the screen.
    let stream = tokio::net::UnixStream::connect(&handle.vnc_socket)
        .await
        .unwrap();
    let mut rfb = RfbClient::handshake(stream).await.unwrap();
    assert_eq!((rfb.width, rfb.height), (1280, 720));
    rfb.request_update(false).await.unwrap();
    let mut share = 0.0;
    for _ in 0..100 {
        rfb.read_update().await.unwrap();
        share = rfb.share_of_colour((255, 0, 255), 8);
        if share > 0.5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        rfb.request_update(false).await.unwrap();
    }
    assert!(
        share > 0.5,
        "the start page is drawn: {share:.2} of pixels are magenta"
    );
    drop(rfb);

    rt.stop("a1").await;
    assert!(
        members(handle.pgid, handle.pidns).is_empty(),
        "no process of the desktop is left"
    );
    assert!(
        !root.path().join("a1").exists(),
        "the private directory is removed"
    );
    assert!(!rt.is_alive("a1").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_desktops_are_separate() {
    let root = tempfile::tempdir().unwrap();
    let rt = runtime(root.path(), ToolPaths::default());
    let (a, b) = tokio::join!(
        rt.start(spec("c1", "about:blank"), &|_| {}),
        rt.start(spec("c2", "about:blank"), &|_| {})
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.vnc_socket, b.vnc_socket);
    assert_ne!(a.pgid, b.pgid);
    assert_ne!(a.pidns, b.pidns, "each desktop has its own PID namespace");
    rt.stop_all().await;
    assert!(members(a.pgid, a.pidns).is_empty() && members(b.pgid, b.pidns).is_empty());
}

#[tokio::test]
async fn a_missing_piece_is_named() {
    let root = tempfile::tempdir().unwrap();
    let tools = ToolPaths {
        openbox: "/nonexistent/openbox".into(),
        ..ToolPaths::default()
    };
    let rt = runtime(root.path(), tools);
    let err = rt
        .start(spec("m1", "about:blank"), &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DesktopError::MissingBinary {
                piece: Piece::Openbox,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("apt-get install -y openbox"),
        "{err}"
    );
    assert!(!root.path().join("m1").exists());
}

#[tokio::test]
async fn a_piece_that_dies_is_named_with_its_stderr() {
    let root = tempfile::tempdir().unwrap();
    // `false` starts and exits at once, like a broken Chromium build would.
    let tools = ToolPaths {
        chromium: "/bin/false".into(),
        ..ToolPaths::default()
    };
    let rt = runtime(root.path(), tools);
    let err = rt
        .start(spec("d1", "about:blank"), &|_| {})
        .await
        .unwrap_err();
    assert_eq!(err.piece(), Some(Piece::Chromium), "{err:?}");
    assert!(err.to_string().contains("exited early"), "{err}");

    // An Xvnc given a bad argument fails with its own complaint in the error.
    let tools = ToolPaths {
        xvnc: "Xvnc".into(),
        ..ToolPaths::default()
    };
    let rt = runtime(root.path(), tools);
    let err = rt
        .start(
            DesktopSpec {
                width: 0,
                ..spec("d2", "about:blank")
            },
            &|_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(err.piece(), Some(Piece::Xvnc), "{err:?}");
    assert!(err.stderr_tail().is_some_and(|t| !t.is_empty()), "{err:?}");
}
