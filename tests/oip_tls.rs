//! TLS on the Open Inference Protocol listeners (`uminfer serve --grpc
//! --http --tls-cert PATH --tls-key PATH`), with a self-signed certificate
//! made at test time (rcgen): Triton's Python clients over TLS get ServerLive
//! and `tiny`'s answer equal to PyTorch's (gRPC needs ALPN `h2`, REST
//! verifies the certificate); a rustls client gets `/v2/health/live` and the
//! ALPN protocol of each listener; plain-text gRPC and HTTP/1 clients get no
//! answer and their connection closed while TLS clients are still served; a
//! connection that never finishes its handshake is closed after the header
//! timeout and gives its place under `--max-connections` back; flags given
//! alone, unreadable files, files that are not PEM and a key that is not the
//! certificate's make the server exit at once with an error naming the flag
//! and the file.

mod common;

use common::server::Server;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_rustls::rustls;

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as PEM files.
struct Cert {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl Cert {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("uminfer-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the certificate directory");
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("generating a certificate");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).expect("writing cert.pem");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("writing key.pem");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 600 key.pem");
        Self { dir, cert, key, der: made.cert.der().clone() }
    }

    /// `--tls-cert CERT --tls-key KEY`.
    fn args(&self) -> [&str; 4] {
        ["--tls-cert", self.cert.to_str().expect("a UTF-8 path"), "--tls-key", self.key.to_str().expect("a UTF-8 path")]
    }

    /// A rustls client configuration trusting only this certificate, offering `alpn`.
    fn client(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("the certificate as a root");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring's protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS connection to `at` offering `alpn`, its handshake finished:
/// the negotiated ALPN protocol, or the error.
fn handshake(cert: &Cert, at: SocketAddr, alpn: &[u8]) -> Result<(rustls::ClientConnection, TcpStream), String> {
    let mut conn = rustls::ClientConnection::new(cert.client(alpn), "localhost".try_into().expect("a DNS name")).map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect_timeout(&at, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    Ok((conn, sock))
}

/// `GET /v2/health/live` over TLS (ALPN http/1.1): the answer's status line, or the error.
fn tls_live(cert: &Cert, at: SocketAddr) -> Result<String, String> {
    let (mut conn, mut sock) = handshake(cert, at, b"http/1.1")?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    // The server may close without a close_notify once it has answered: keep what arrived.
    let _ = tls.read_to_end(&mut answer);
    Ok(String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_string())
}

/// Sends `bytes` in plain text to `at`: what came back before the server
/// closed the connection, or `None` when it kept it open past `within`.
fn plain(at: SocketAddr, bytes: &[u8], within: Duration) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&at, Duration::from_secs(2)).expect("connecting");
    s.set_read_timeout(Some(within)).expect("a read timeout");
    let _ = s.write_all(bytes);
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) => Some(answer),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(answer),
        Err(_) => None,
    }
}

/// `ServerLive` over a plain-text gRPC channel: whether anything answered.
fn plain_grpc_live(at: SocketAddr) -> bool {
    use uminfer::oip::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    rt.block_on(async {
        let call = async {
            let mut c = GrpcInferenceServiceClient::connect(format!("http://{at}")).await.ok()?;
            c.server_live(uminfer::oip::proto::ServerLiveRequest {}).await.ok().map(|r| r.into_inner().live)
        };
        tokio::time::timeout(Duration::from_secs(5), call).await.ok().flatten().is_some()
    })
}

/// The venv's python, or `None` in a GPU bundle (which carries no venv).
fn python() -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(std::env::var_os("UMINFER_BIN").is_some(), "{} missing: run `bash ci/setup` (it installs tritonclient[grpc,http])", python.display());
    None
}

#[test]
fn tls_clients_are_served_and_plain_text_clients_are_refused() {
    let cert = Cert::new("serve");
    let mut server = Server::start("tls", 1024, &cert.args());

    // A rustls client: REST answers; each listener negotiates its own protocol.
    assert_eq!(tls_live(&cert, server.http).as_deref(), Ok("HTTP/1.1 200 OK"), "log:\n{}", server.log());
    let (conn, _) = handshake(&cert, server.grpc, b"h2").expect("a TLS handshake with the gRPC listener");
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]), "the gRPC listener negotiates h2");
    let (conn, _) = handshake(&cert, server.http, b"http/1.1").expect("a TLS handshake with the REST listener");
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]), "the REST listener negotiates http/1.1");
    let wrong = handshake(&cert, server.grpc, b"http/1.1").err().unwrap_or_default();
    assert!(wrong.contains("NoApplicationProtocol") || wrong.contains("no_application_protocol"), "a client offering only http/1.1 to gRPC: {wrong:?}");

    // Triton's clients over TLS: health and a checked inference, gRPC and REST.
    if let Some(python) = python() {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oip_tls_client.py");
        let child = Command::new(python)
            .arg(script)
            .args([&server.grpc.to_string(), &server.http.to_string()])
            .arg(&cert.cert)
            .arg(common::model_path("tiny.pt").parent().expect("models/"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tests/oip_tls_client.py");
        let out = common::finish(child, Duration::from_secs(180));
        assert!(
            out.status.success() && common::text(&out.stdout).trim() == "ok",
            "tests/oip_tls_client.py: {}\n{}\nserver log:\n{}",
            common::text(&out.stdout),
            common::text(&out.stderr),
            server.log()
        );
    } else {
        let _ = writeln!(std::io::stderr(), "SKIPPED (no project venv in this bundle): Triton's Python clients over TLS");
    }

    // Plain-text clients: no answer, the connection closed.
    assert!(!plain_grpc_live(server.grpc), "a plain-text gRPC client got an answer from a TLS listener");
    let answer = plain(server.http, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(5)).expect("the REST listener closes a plain-text connection");
    assert!(!answer.starts_with(b"HTTP/"), "a plain HTTP/1 request got an HTTP answer: {:?}", String::from_utf8_lossy(&answer));
    let answer = plain(server.grpc, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Duration::from_secs(5)).expect("the gRPC listener closes a plain-text connection");
    assert!(!answer.windows(4).any(|w| w == b"HTTP"), "a plain HTTP/2 preface got an HTTP answer");

    // TLS clients are still served.
    server.assert_running();
    assert_eq!(tls_live(&cert, server.http).as_deref(), Ok("HTTP/1.1 200 OK"), "log:\n{}", server.log());
    handshake(&cert, server.grpc, b"h2").expect("a TLS handshake with the gRPC listener after plain-text clients");
}

#[test]
fn a_handshake_that_never_finishes_is_closed_after_the_header_timeout() {
    let cert = Cert::new("slow");
    let mut args = vec!["--header-timeout-s", "1", "--max-connections", "2"];
    args.extend(cert.args());
    let mut server = Server::start("tls-slow", 1024, &args);
    // Two connections that open TCP and never send a ClientHello hold both places.
    let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(server.http).expect("connecting")).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(tls_live(&cert, server.http).is_err(), "a third connection was served beyond --max-connections 2");
    let start = Instant::now();
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
        let mut rest = Vec::new();
        let end = s.read_to_end(&mut rest);
        let closed = end.is_ok() || end.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
        assert!(closed && rest.is_empty(), "a silent connection was not closed within 10 s ({end:?}, got {rest:?})");
    }
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(5), "silent connections closed after {waited:?}, the header timeout is 1 s");
    // Their places are free again.
    server.assert_running();
    assert_eq!(tls_live(&cert, server.http).as_deref(), Ok("HTTP/1.1 200 OK"), "log:\n{}", server.log());
}

/// `uminfer serve --grpc 127.0.0.1:0 --model tiny=… ARGS`, which must exit
/// non-zero at once: its stderr.
fn refused_start(args: &[&str]) -> String {
    let tiny = format!("tiny={}", common::model_path("tiny.pt").display());
    let child = Command::new(common::uminfer_bin())
        .args(["serve", "--grpc", "127.0.0.1:0", "--model", &tiny])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting `uminfer serve`");
    let out = common::finish(child, Duration::from_secs(60));
    let stderr = common::text(&out.stderr);
    assert!(!out.status.success(), "`serve {}` started: stdout {:?}, stderr {stderr}", args.join(" "), common::text(&out.stdout));
    stderr
}

#[test]
fn wrong_tls_flags_and_files_are_refused_at_start_naming_the_file() {
    let cert = Cert::new("flags");
    let other = Cert::new("flags-other");
    let (c, k) = (cert.cert.to_str().expect("UTF-8"), cert.key.to_str().expect("UTF-8"));
    let not_pem = cert.dir.join("not.pem");
    std::fs::write(&not_pem, "this is not a PEM file\n").expect("writing not.pem");
    let not_pem = not_pem.to_str().expect("UTF-8");

    let e = refused_start(&["--tls-cert", c]);
    assert!(e.contains("--tls-key"), "--tls-cert alone: {e}");
    let e = refused_start(&["--tls-key", k]);
    assert!(e.contains("--tls-cert"), "--tls-key alone: {e}");
    let e = refused_start(&["--tls-cert", "/nonexistent/cert.pem", "--tls-key", k]);
    assert!(e.contains("--tls-cert /nonexistent/cert.pem: cannot read it"), "a missing certificate: {e}");
    let e = refused_start(&["--tls-cert", c, "--tls-key", "/nonexistent/key.pem"]);
    assert!(e.contains("--tls-key /nonexistent/key.pem: cannot read it"), "a missing key: {e}");
    let e = refused_start(&["--tls-cert", not_pem, "--tls-key", k]);
    assert!(e.contains(&format!("--tls-cert {not_pem}: no certificate")), "a certificate file that is not PEM: {e}");
    let e = refused_start(&["--tls-cert", c, "--tls-key", not_pem]);
    assert!(e.contains(&format!("--tls-key {not_pem}: no private key")), "a key file that is not PEM: {e}");
    let e = refused_start(&["--tls-cert", c, "--tls-key", c]);
    assert!(e.contains(&format!("--tls-key {c}: no private key")), "a certificate given as the key: {e}");
    let e = refused_start(&["--tls-cert", c, "--tls-key", other.key.to_str().expect("UTF-8")]);
    assert!(e.contains(&format!("--tls-cert {c} and --tls-key")) && e.contains("expected the private key"), "another certificate's key: {e}");
}
