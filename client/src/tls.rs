//! TLS (rustls, no OpenSSL): the client side of a connection to a broker, and loading PEM
//! files, which the broker's listeners share (docs/SECURITY.md "TLS").
//!
//! A client trusts the CAs of `ca_file`, or the system's trusted CAs without one, and checks
//! that the broker's certificate names the host it connected to (a DNS name or an IP address
//! in its subject alternative names). With `cert_file` and `key_file` it presents a
//! certificate of its own (mutual TLS).
//!
//! Also the byte stream both sides write frames to ([`Io`], [`write_all_chunks`]).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a TLS client trusts and presents.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of the CA certificates to trust; `None`: the system's trusted CAs.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain to present (mutual TLS), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// The crypto provider every TLS configuration of Rill uses (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no PEM private key ({e})", path.display()))
}

/// The CAs of a PEM file as a trust store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate ({e})", path.display()))?;
    }
    Ok(roots)
}

/// The system's trusted CAs (those that fail to parse are skipped, as browsers do).
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no CA file given and no trusted CA found on this system ({:?}); give a CA file",
            found.errors
        ));
    }
    Ok(roots)
}

/// A client configuration trusting `roots` and presenting `identity` (mutual TLS), if any.
pub fn client_config_from(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match identity {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("client certificate and key: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

impl TlsOptions {
    /// The rustls configuration these options describe; errors name the file at fault.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let roots = match &self.ca_file {
            Some(path) => load_roots(path)?,
            None => system_roots()?,
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some((load_certs(cert)?, load_key(key)?)),
            (None, None) => None,
            _ => {
                return Err(
                    "a client certificate needs both its certificate and its key file".into(),
                )
            }
        };
        client_config_from(roots, identity)
    }
}

/// A connection's byte stream: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Io for T {}

/// Writes every chunk with vectored writes (at most 64 slices a call), handling partial
/// writes, then flushes: TLS may hold the end of a write in its buffer until flushed (tokio-rustls
/// returns a partial write once the socket would block, with its record already sealed).
/// Clients write requests and brokers responses through it: a frame's record batches go to
/// the socket from where they already are (a producer's batch, a segment mapping), uncopied.
pub async fn write_all_chunks<W: AsyncWrite + Unpin + ?Sized>(
    socket: &mut W,
    chunks: &mut [Bytes],
) -> std::io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let slices: Vec<std::io::IoSlice<'_>> = chunks[first..]
            .iter()
            .take(64)
            .map(|c| std::io::IoSlice::new(c))
            .collect();
        let mut written = socket.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 && first < chunks.len() {
            let len = chunks[first].len();
            if written >= len {
                written -= len;
                first += 1;
            } else {
                chunks[first].advance(written);
                written = 0;
            }
        }
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
    }
    socket.flush().await
}

/// Connects to `address` (`host:port`), with TLS when `tls` is given. Certificate and TLS
/// protocol failures are `InvalidData` errors (retrying will not help); others are the
/// network's.
pub async fn open(
    address: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> std::io::Result<Box<dyn Io>> {
    let socket = TcpStream::connect(address).await?;
    let _ = socket.set_nodelay(true);
    let socket = NoSigPipe(socket);
    Ok(match tls {
        Some(config) => Box::new(connect(socket, address, config).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("TLS handshake with {address}: {e}"))
        })?),
        None => Box::new(socket),
    })
}

/// Opens TLS over `socket` to `address` (`host:port`; the host is the name the broker's
/// certificate must carry).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    socket: S,
    address: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<S>> {
    let name = server_name(address)?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, socket)
        .await
}

/// A client's TCP stream whose writes never raise SIGPIPE. A vectored write on a tokio
/// `TcpStream` is a `writev`, and `writev` on a connection the broker has reset raises SIGPIPE,
/// which kills a process that has not ignored it (the `rill` CLI takes SIGPIPE's default action
/// so that `rill consume | head` ends quietly; it was killed by signal 13 when a broker went
/// away in the middle of a write). Vectored writes go out as `sendmsg` with `MSG_NOSIGNAL`
/// instead, which fails with `EPIPE` like any other broken connection; plain writes already
/// do (std's `send` sets the flag).
pub struct NoSigPipe(pub TcpStream);

impl AsyncRead for NoSigPipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for NoSigPipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            let fd = self.0.as_raw_fd();
            // A `WouldBlock` from the closure clears the readiness: the next poll waits.
            match self
                .0
                .try_io(tokio::io::Interest::WRITABLE, || send_vectored(fd, bufs))
            {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// `sendmsg(fd, bufs, MSG_NOSIGNAL)`: a `writev` that reports a broken connection as `EPIPE`
/// without raising SIGPIPE.
fn send_vectored(fd: std::os::fd::RawFd, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no address, no control data); `IoSlice` is
    // guaranteed ABI-compatible with `iovec` on Unix, and `bufs` outlives the call, which
    // only reads from it.
    let sent = unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        message.msg_iovlen = bufs.len().min(1024) as _;
        libc::sendmsg(fd, &message, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// The TLS server name of `host:port` (brackets of an IPv6 address removed).
pub fn server_name(address: &str) -> std::io::Result<ServerName<'static>> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{host:?} is not a TLS server name: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host() {
        assert_eq!(
            server_name("broker-1.example.com:9292").unwrap(),
            ServerName::try_from("broker-1.example.com").unwrap()
        );
        assert!(matches!(
            server_name("127.0.0.1:9292").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:9292").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(server_name("bad name:1").is_err());
    }

    /// Writes to a connection the peer closed, with SIGPIPE's default action (as the `rill`
    /// CLI sets it), in a child process: the parent checks that the child was not killed.
    #[test]
    fn writes_to_a_closed_connection_fail_without_sigpipe() {
        const NAME: &str = "tls::tests::writes_to_a_closed_connection_fail_without_sigpipe";
        if std::env::var_os("RILL_TEST_SIGPIPE_CHILD").is_none() {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
                .env("RILL_TEST_SIGPIPE_CHILD", "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{:?}: {stdout}", output.status);
            assert!(
                stdout.contains("1 passed"),
                "the child ran the test: {stdout}"
            );
            return;
        }
        // SAFETY: sets how this child process handles SIGPIPE; it runs this one test only.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let mut client = open(&address, None).await.unwrap();
            drop(listener.accept().await.unwrap());
            // The first writes may still be taken; once the peer's reset is back every write
            // fails, and a writev would raise SIGPIPE.
            let mut failures = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while failures.len() < 3 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "writes kept succeeding"
                );
                let mut chunks = vec![Bytes::from(vec![7u8; 4096]); 4];
                if let Err(e) = write_all_chunks(&mut client, &mut chunks).await {
                    failures.push(e.kind());
                }
            }
            assert!(
                failures.contains(&std::io::ErrorKind::BrokenPipe),
                "{failures:?}"
            );
        });
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = std::env::temp_dir().join(format!("rill-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = load_certs(&empty).unwrap_err();
        assert!(err.contains("empty.pem"), "{err}");
        let err = load_key(&dir.join("missing.pem")).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        let half = TlsOptions {
            ca_file: Some(empty.clone()),
            cert_file: Some(empty),
            key_file: None,
        };
        assert!(half.client_config().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
