//! Host loopback ports made reachable inside a sandboxed desktop. Inside, socat listens
//! on the port of the desktop's own loopback and connects to a Unix socket in its gate
//! directory (the server's, read-only inside); here the server accepts on that socket and connects to the same port of the
//! host's loopback. Only the ports the operator listed exist; nothing else of the host's
//! loopback is reachable.

use std::path::Path;

use tokio::net::{TcpStream, UnixListener};
use tokio::task::JoinHandle;

/// `socket` is in the desktop's `gate/` directory, which belongs to the server: the desktop
/// can connect to it but not replace it, so the path is safe to bind and chown.
pub(crate) fn host_port(socket: &Path, port: u16, uid: Option<u32>) -> std::io::Result<JoinHandle<()>> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    if let Some(uid) = uid {
        // Never follows a link, should one ever be there.
        std::os::unix::fs::lchown(socket, Some(uid), Some(uid))?;
    }
    Ok(tokio::spawn(async move {
        while let Ok((mut inside, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut host) = TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inside, &mut host).await;
                }
            });
        }
    }))
}
