//! Hostile clients cannot stall or misuse the Open Inference Protocol servers
//! (`uminfer serve --grpc --http`): a flood of idle connections, beyond the
//! connection bound and beyond the process's descriptor limit (1 024, what a
//! systemd service gets), neither spins the server on a core nor keeps a new
//! client out for long (the idle timeout closes the flood); HTTP/1 headers
//! and bodies trickled byte by byte are cut off after their timeouts, and an
//! idle connection is closed after the idle timeout. Refusals echo long
//! client input cut short; REST JSON values outside their datatype are
//! refused; shared memory registration is for loopback peers only; Triton's
//! restricted APIs need their header.

mod common;

use common::server::Server;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Opens `n` TCP connections to `at` that send nothing (some may fail: a full queue).
fn flood(at: SocketAddr, n: usize) -> Vec<TcpStream> {
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || (t..n).step_by(8).filter_map(|_| TcpStream::connect_timeout(&at, Duration::from_millis(100)).ok()).collect::<Vec<_>>())
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().expect("a flood thread")).collect()
}

/// `GET /v2/health/live` over a fresh connection: whether it answered 200.
fn rest_live(at: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&at, Duration::from_secs(1)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200")
}

/// `ServerLive` over a fresh gRPC channel: whether it answered live.
fn grpc_live(rt: &tokio::runtime::Runtime, at: SocketAddr) -> bool {
    use uminfer::oip::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    rt.block_on(async {
        let call = async {
            let mut c = GrpcInferenceServiceClient::connect(format!("http://{at}")).await.ok()?;
            c.server_live(uminfer::oip::proto::ServerLiveRequest {}).await.ok().map(|r| r.into_inner().live)
        };
        tokio::time::timeout(Duration::from_secs(3), call).await.ok().flatten() == Some(true)
    })
}

/// Under a 1 024-descriptor limit, 1 100 idle gRPC connections and 200 idle
/// REST ones: once with the default bound of 512 connections (the server
/// closes the rest at once) and once with a bound over the descriptor limit
/// (the accept loop runs out of descriptors and backs off). Either way the
/// server uses little CPU while flooded and serves a new client over gRPC and
/// REST within a minute (the idle timeout closes the flood). The idle timeout
/// (15 s) outlasts the flood's opening: a shorter one closes the first
/// connections while the last are opened, on a slow machine the server then
/// never holds enough of them to run out of descriptors.
#[test]
fn a_flood_of_idle_connections_neither_spins_the_server_nor_keeps_new_clients_out() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    for (tag, bound, said) in [("bound", "512", "connections are open, the bound"), ("descriptors", "4000", "cannot accept connections")] {
        let mut server = Server::start(tag, 1024, &["--idle-timeout-s", "15", "--max-connections", bound]);
        assert!(grpc_live(&rt, server.grpc) && rest_live(server.http), "{tag}: not serving before the flood:\n{}", server.log());
        let start = Instant::now();
        let mut held = flood(server.grpc, 1100);
        held.extend(flood(server.http, 200));
        let opened = start.elapsed();
        let cpu_before = common::cpu_seconds(server.pid());
        std::thread::sleep(Duration::from_secs(3));
        let cpu = common::cpu_seconds(server.pid()) - cpu_before;
        let _ = writeln!(std::io::stderr(), "{tag}: {} flood connections open in {opened:?}; the server used {cpu:.3} s of CPU in the next 3 s", held.len());
        assert!(opened < Duration::from_secs(12), "{tag}: opening the flood took {opened:?}, near the 15 s idle timeout");
        assert!(held.len() > 1024, "{tag}: only {} flood connections opened", held.len());
        assert!(cpu < 0.6, "{tag}: the flooded server used {cpu:.3} s of CPU in 3 s (over 20%):\n{}", server.log());
        let served = loop {
            if grpc_live(&rt, server.grpc) && rest_live(server.http) {
                break Some(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(60) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let _ = writeln!(std::io::stderr(), "{tag}: a new client was served {served:?} after the flood began");
        assert!(served.is_some(), "{tag}: no new client served within 60 s of the flood:\n{}", server.log());
        server.assert_running();
        let log = server.log();
        assert!(log.contains(said), "{tag}: the log does not say {said:?}:\n{log}");
        assert!(log.matches(said).count() <= 1 + start.elapsed().as_secs() as usize * 2, "{tag}: {said:?} logged more than once a second:\n{log}");
        drop(held);
    }
}

/// Sends `head`, then one more byte every 300 ms (`trickle`) until the
/// server answers or closes the connection; what it sent back and when.
fn trickle(at: SocketAddr, head: &[u8], trickle: &[u8], give_up: Duration) -> (Vec<u8>, Duration) {
    let mut s = TcpStream::connect(at).expect("connecting");
    s.set_read_timeout(Some(Duration::from_millis(300))).expect("a read timeout");
    s.write_all(head).expect("sending the head");
    let start = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    for byte in trickle.iter().cycle() {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        if !answer.is_empty() && answer.windows(4).any(|w| w == b"\r\n\r\n") || start.elapsed() > give_up || s.write_all(std::slice::from_ref(byte)).is_err() {
            break;
        }
    }
    (answer, start.elapsed())
}

/// HTTP/1 headers trickled a byte at a time are cut off after the header
/// timeout (2 s here), a body trickled likewise is answered 408 after the
/// body timeout, and a connection that sends nothing is closed after the
/// idle timeout (4 s here; REST: the header timeout may come first).
#[test]
fn slow_headers_slow_bodies_and_idle_connections_are_cut_off() {
    let mut server = Server::start("slow", 1024, &["--header-timeout-s", "2", "--body-timeout-s", "2", "--idle-timeout-s", "4"]);
    let give_up = Duration::from_secs(12);

    let (answer, took) = trickle(server.http, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n", b"X-Slow: y\r\n", give_up);
    let _ = writeln!(std::io::stderr(), "trickled headers: cut off after {took:?}, answer {:?}", String::from_utf8_lossy(&answer));
    assert!(took < Duration::from_secs(4), "trickled headers held the connection {took:?} (header timeout 2 s)");

    let (answer, took) = trickle(server.http, b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", b"{", give_up);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let _ = writeln!(std::io::stderr(), "trickled body: answered after {took:?}: {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "a trickled body got {answer:?} after {took:?}");
    assert!(took < Duration::from_secs(4), "a trickled body held the connection {took:?} (body timeout 2 s)");

    for (what, at) in [("gRPC", server.grpc), ("REST", server.http)] {
        let mut s = TcpStream::connect(at).expect("connecting");
        s.set_read_timeout(Some(give_up)).expect("a read timeout");
        let start = Instant::now();
        // Read (the server's HTTP/2 SETTINGS, say) until the server closes.
        let mut buf = [0u8; 256];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) if start.elapsed() < give_up => {}
                Ok(_) => break false,
                Err(e) => break !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            }
        };
        let took = start.elapsed();
        let _ = writeln!(std::io::stderr(), "{what}: an idle connection was closed after {took:?}");
        assert!(closed, "{what}: an idle connection stayed open {took:?} (idle timeout 4 s)");
        // REST: the header timeout (2 s) may close it first.
        assert!(took > Duration::from_millis(1500), "{what}: an idle connection was closed after {took:?}, before its timeouts");
    }
    server.assert_running();
}

/// A JSON request over a fresh HTTP/1 connection: the status and the body.
fn rest(at: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(at).expect("connecting");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("a read timeout");
    let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).and_then(|_| s.write_all(body)).expect("sending the request");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    (code, answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// A 100 KB model name, tensor name or datatype, a 2 000-dimension shape,
/// 2 000 inputs: each refusal keeps its code (a default client reads it, not
/// `RESOURCE_EXHAUSTED` for an oversized header) and a short message that
/// says where it cut the echoed value.
#[test]
fn refusals_echo_long_client_input_cut_short() {
    use uminfer::oip::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    use uminfer::oip::proto::model_infer_request::InferInputTensor;
    use uminfer::oip::proto::{ModelInferRequest, ModelMetadataRequest};
    let mut server = Server::start("echo", 1024, &[]);
    let long = "m".repeat(102_400);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let input = |name: &str, datatype: &str, shape: Vec<i64>| InferInputTensor { name: name.into(), datatype: datatype.into(), shape, ..Default::default() };
    let infer = |inputs: Vec<InferInputTensor>| ModelInferRequest { model_name: "tiny".into(), inputs, ..Default::default() };
    let calls: Vec<(&str, tonic::Code, &str)> = vec![("model name", tonic::Code::NotFound, "(cut, 102400 bytes)"), ("input name", tonic::Code::InvalidArgument, "(cut, 102400 bytes)"), ("datatype", tonic::Code::InvalidArgument, "(cut, 102400 bytes)"), ("shape", tonic::Code::InvalidArgument, "(cut, "), ("2000 inputs", tonic::Code::InvalidArgument, "")];
    rt.block_on(async {
        let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", server.grpc)).await.expect("connecting");
        for (what, code, says) in calls {
            let status = match what {
                "model name" => c.model_metadata(ModelMetadataRequest { name: long.clone(), version: String::new() }).await.map(|_| ()),
                "input name" => c.model_infer(infer(vec![input(&long, "FP32", vec![1, 3, 128, 128])])).await.map(|_| ()),
                "datatype" => c.model_infer(infer(vec![input("x", &long, vec![1, 3, 128, 128])])).await.map(|_| ()),
                "shape" => c.model_infer(infer(vec![input("x", "FP32", vec![7; 2000])])).await.map(|_| ()),
                _ => c.model_infer(infer((0..2000).map(|i| input(&format!("{i}{}", "n".repeat(50)), "FP32", vec![1])).collect())).await.map(|_| ()),
            }
            .expect_err(what);
            let m = status.message();
            let _ = writeln!(std::io::stderr(), "{what}: {:?}, {} bytes: {}…", status.code(), m.len(), m.chars().take(120).collect::<String>());
            assert_eq!(status.code(), code, "{what}: {}", &m[..m.len().min(300)]);
            assert!(m.len() <= uminfer::oip::status::MESSAGE_BYTES, "{what}: a {}-byte message", m.len());
            assert!(m.contains(says), "{what}: the message does not say {says:?}: {m}");
        }
    });
    let (code, body) = rest(server.http, "GET", &format!("/v2/models/{}", &long[..8000]), b""); // hyper refuses longer URIs (414)
    assert_eq!(code, 404, "{}", &body[..body.len().min(300)]);
    assert!(body.len() < 4096 && body.contains("(cut, 8000 bytes)"), "REST: a {}-byte answer", body.len());
    let json = format!(r#"{{"inputs":[{{"name":"{long}","datatype":"FP32","shape":[1],"data":[1]}}]}}"#);
    let (code, body) = rest(server.http, "POST", "/v2/models/tiny/infer", json.as_bytes());
    assert_eq!(code, 400, "{}", &body[..body.len().min(300)]);
    assert!(body.len() < 4096 && body.contains("(cut, 102400 bytes)"), "REST: a {}-byte answer", body.len());
    server.assert_running();
}

/// REST JSON values outside the input's datatype are refused with 400,
/// naming the tensor, the value and the range, not made infinite.
#[test]
fn rest_json_values_outside_the_datatypes_range_are_refused() {
    let mut server = Server::start("range", 1024, &[]);
    let mut data = vec!["0".to_string(); 3 * 128 * 128];
    data[5] = "1e39".into();
    let json = format!(r#"{{"inputs":[{{"name":"x","datatype":"FP32","shape":[1,3,128,128],"data":[{}]}}]}}"#, data.join(","));
    let (code, body) = rest(server.http, "POST", "/v2/models/tiny/infer", json.as_bytes());
    assert_eq!(code, 400, "1e39 as FP32 was answered {code}: {}", &body[..body.len().min(300)]);
    assert!(body.contains(r#"input \"x\": value 1e+39 at 5 is out of range: FP32 takes numbers from -3.4028235e38 to 3.4028235e38"#), "{body}");
    server.assert_running();
}

/// A non-loopback IPv4 address of this machine, if it has one.
fn non_loopback_ipv4() -> Option<std::net::Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs(3) fills `list`, freed below with freeifaddrs(3).
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is an entry of the list getifaddrs returned, alive until freeifaddrs.
        let entry = unsafe { &*at };
        if !entry.ifa_addr.is_null() && i32::from(unsafe { (*entry.ifa_addr).sa_family }) == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            if !ip.is_loopback() {
                found = Some(ip);
                break;
            }
        }
        at = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// System shared memory registration (gRPC and REST) is refused
/// (`PERMISSION_DENIED`, 403) for a peer beyond loopback, whatever the key,
/// and accepted from loopback; `--shm-from-any-peer` accepts it from any peer.
#[test]
fn shared_memory_registration_is_refused_beyond_loopback_unless_allowed() {
    use uminfer::oip::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    use uminfer::oip::proto::{SystemSharedMemoryRegisterRequest, SystemSharedMemoryUnregisterRequest};
    let Some(ip) = non_loopback_ipv4() else {
        let _ = writeln!(std::io::stderr(), "SKIPPED: this machine has no non-loopback IPv4 address");
        return;
    };
    let key = format!("/uminfer-peer-test-{}", std::process::id());
    let path = format!("/dev/shm{key}");
    std::fs::write(&path, [0u8; 4096]).expect("creating a shared memory object");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    for any in [false, true] {
        let args: &[&str] = if any { &["--shm-from-any-peer"] } else { &[] };
        let mut server = Server::start_on(if any { "peer-any" } else { "peer" }, "0.0.0.0", 1024, args);
        let at = |ip: std::net::IpAddr, port: u16| SocketAddr::new(ip, port);
        let (local, remote) = (std::net::IpAddr::from([127, 0, 0, 1]), std::net::IpAddr::from(ip));
        for (peer, from) in [("loopback", local), ("remote", remote)] {
            let refused = !any && peer == "remote";
            let name = format!("{peer}-{any}");
            let code = rt.block_on(async {
                let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", at(from, server.grpc.port()))).await.expect("connecting");
                let r = c.system_shared_memory_register(SystemSharedMemoryRegisterRequest { name: name.clone(), key: key.clone(), offset: 0, byte_size: 64 }).await;
                let code = r.as_ref().err().map(|s| s.code());
                if let Err(s) = &r {
                    assert!(s.message().contains("--shm-from-any-peer") && s.message().contains(&ip.to_string()), "{}", s.message());
                }
                let u = c.system_shared_memory_unregister(SystemSharedMemoryUnregisterRequest { name: name.clone() }).await;
                assert_eq!(u.is_err(), refused, "{peer}, --shm-from-any-peer {any}: unregister {u:?}");
                code
            });
            let _ = writeln!(std::io::stderr(), "gRPC from {peer} (--shm-from-any-peer {any}): {code:?}");
            assert_eq!(code, refused.then_some(tonic::Code::PermissionDenied), "gRPC from {peer}, --shm-from-any-peer {any}");
            let body = format!(r#"{{"key":"{key}","offset":0,"byte_size":64}}"#);
            let (status, answer) = rest(at(from, server.http.port()), "POST", &format!("/v2/systemsharedmemory/region/{name}-rest/register"), body.as_bytes());
            let _ = writeln!(std::io::stderr(), "REST from {peer} (--shm-from-any-peer {any}): {status} {answer}");
            assert_eq!(status, if refused { 403 } else { 200 }, "REST from {peer}, --shm-from-any-peer {any}: {answer}");
        }
        server.assert_running();
    }
    let _ = std::fs::remove_file(&path);
}

/// Triton's restricted APIs: with `--grpc-restricted-protocol
/// shared-memory,statistics:admin-key=s3cret` a statistics call without that
/// metadata is `UNAVAILABLE`, with it answered, and unrestricted calls are
/// answered; with `--http-restricted-api inference:admin-key=s3cret` a REST
/// inference without the header is 403.
#[test]
fn restricted_apis_need_their_header() {
    use uminfer::oip::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    use uminfer::oip::proto::{ModelStatisticsRequest, ServerLiveRequest};
    let mut server = Server::start("restricted", 1024, &["--grpc-restricted-protocol", "shared-memory,statistics:admin-key=s3cret", "--http-restricted-api", "inference:Admin-Key=s3cret"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    rt.block_on(async {
        let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", server.grpc)).await.expect("connecting");
        let stats = |key: Option<&str>| {
            let mut r = tonic::Request::new(ModelStatisticsRequest::default());
            if let Some(k) = key {
                r.metadata_mut().insert("admin-key", k.parse().expect("a metadata value"));
            }
            r
        };
        let refused = c.model_statistics(stats(None)).await.expect_err("statistics without the key");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("\"admin-key\""), "{}", refused.message());
        assert_eq!(c.model_statistics(stats(Some("wrong"))).await.expect_err("a wrong key").code(), tonic::Code::Unavailable);
        c.model_statistics(stats(Some("s3cret"))).await.expect("statistics with the key");
        c.server_live(ServerLiveRequest {}).await.expect("health is not restricted");
    });
    let json = br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}"#;
    let (code, body) = rest(server.http, "POST", "/v2/models/tiny/infer", json);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("restricted"), "{body}");
    assert_eq!(rest(server.http, "GET", "/v2/health/live", b"").0, 200);
    let mut s = TcpStream::connect(server.http).expect("connecting");
    let head = format!("POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\nadmin-key: s3cret\r\nContent-Length: {}\r\n\r\n", json.len());
    s.write_all(head.as_bytes()).and_then(|_| s.write_all(json)).expect("sending");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "with the header: the request reaches the model (and its shape is refused): {answer}");
    server.assert_running();
}
