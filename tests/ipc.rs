//! Shared-memory IPC: round trips, validation, lifecycle, security, load, idle CPU.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uminfer::doctor::{self, probe::ProbeOptions};
use uminfer::ipc::header::{RequestHeader, MAGIC};
use uminfer::ipc::{Client, ServeOptions, Server};
use uminfer::{Error, Runtime};

const SHAPE: [i64; 4] = [1, 3, 128, 128];
const N: usize = 3 * 128 * 128;

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("test-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn runtime() -> Runtime {
    Runtime::from_report(doctor::diagnose(ProbeOptions { smoke_tests: false }))
}

fn npy(name: &str) -> Vec<f32> {
    Vec::<f32>::try_from(tch::Tensor::read_npy(common::model_path(name)).unwrap().flatten(0, -1)).unwrap()
}


/// A `uminfer serve` child process, stopped (SIGKILL unless stopped before) on drop.
struct ServerProcess {
    child: Child,
    log: PathBuf,
    out: PathBuf,
}

impl ServerProcess {
    fn start(name: &str, model: &str, extra: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let out = std::env::temp_dir().join(format!("{name}.out"));
        let child = Command::new(common::uminfer_bin())
            .args(["serve", "--name", name, "--model"])
            .arg(common::model_path(model))
            .args(extra)
            .stdout(std::fs::File::create(&out).expect("server stdout file"))
            .stderr(std::fs::File::create(&log).expect("server log file"))
            .spawn()
            .expect("starting uminfer serve");
        Self { child, log, out }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// CPU seconds (user + system) used so far, from /proc/PID/stat.
    fn cpu_seconds(&self) -> f64 {
        common::cpu_seconds(self.child.id())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(name: &str) -> Client {
    Client::connect(name, Duration::from_secs(30)).unwrap_or_else(|e| panic!("connecting to {name}: {e}"))
}

/// Runs an in-process server for `model` while `body` runs; returns what `body` returns.
fn with_server<R>(model: &str, workers: usize, body: impl FnOnce(&str, &Server) -> R) -> R {
    let rt = runtime();
    let name = unique(model.trim_end_matches(".pt"));
    let mut opts = ServeOptions::new(&name, common::model_path(model));
    opts.workers = workers;
    let server = Server::new(&rt, opts).expect("server");
    /// Stops the server also when `body` panics (else the scope would wait forever).
    struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Release);
        }
    }
    std::thread::scope(|sc| {
        let h = sc.spawn(|| server.run());
        let stop = StopOnDrop(server.stop_handle());
        let r = body(&name, &server);
        drop(stop);
        h.join().expect("server thread").expect("server run");
        r
    })
}

#[test]
fn round_trip_matches_pytorch_and_in_place_form_reads_in_place() {
    with_server("tiny.pt", 1, |name, server| {
        let mut c = connect(name);
        let input = npy("tiny.input.npy");
        let expected = npy("tiny.expected.npy");
        let (shape, out) = c.infer(&SHAPE, &input).unwrap();
        assert_eq!(shape, vec![1, 10]);
        assert!(common::max_abs_diff(&out, &expected) <= 1e-5, "{out:?} vs {expected:?}");
        let diff = c
            .infer_in_place(&SHAPE, |buf| buf.copy_from_slice(&input), |r| common::max_abs_diff(r.data, &expected))
            .unwrap();
        assert!(diff <= 1e-5);
        assert_eq!(server.stats().served.load(std::sync::atomic::Ordering::Relaxed), 2);
    });
}

#[test]
fn loaned_requests_are_filled_ahead_and_sent_by_their_own_client() {
    with_server("tiny.pt", 1, |name, _| {
        let (mut c, mut other) = (connect(name), connect(name));
        let input = npy("tiny.input.npy");
        let expected = npy("tiny.expected.npy");
        let mut zeros = c.loan(&SHAPE).unwrap();
        let mut real = c.loan(&SHAPE).unwrap();
        assert!(zeros.data().iter().all(|&v| v == 0.0), "a loaned request starts zeroed");
        real.data_mut().copy_from_slice(&input);
        // Two loans are the most a client may hold; a third is an error, not a hang.
        let third = c.loan(&SHAPE);
        assert!(matches!(third, Err(Error::Ipc(_))), "{:?}", third.err());
        // Sent in the other order than loaned: each gets its own answer.
        let diff = c.send(real, |r| common::max_abs_diff(r.data, &expected)).unwrap();
        assert!(diff <= 1e-5);
        zeros.data_mut().fill(0.0);
        let from_zeros = c.send(zeros, |r| r.data.to_vec()).unwrap();
        let (_, want) = c.infer(&SHAPE, &vec![0.0; input.len()]).unwrap();
        assert_eq!(from_zeros, want);
        // A request belongs to the client that loaned it.
        let foreign = c.loan(&SHAPE).unwrap();
        let err = other.send(foreign, |_| ()).expect_err("sent through another client");
        assert!(err.to_string().contains("another client"), "{err}");
        // Loans were given back (sent or dropped): two can be held again.
        let _held = (c.loan(&SHAPE).unwrap(), c.loan(&SHAPE).unwrap());
    });
}

#[test]
fn bad_requests_are_answered_with_errors_and_the_server_keeps_serving() {
    with_server("tiny.pt", 1, |name, server| {
        let mut c = connect(name);
        let good = RequestHeader::new(0, &SHAPE).unwrap();
        let input = vec![0.5f32; N];
        let cases: Vec<(RequestHeader, usize, &str)> = vec![
            (RequestHeader { magic: 0xDEAD_BEEF, ..good }, N, "magic"),
            (RequestHeader { version: 2, ..good }, N, "version 2"),
            (RequestHeader { dtype: 9, ..good }, N, "dtype code 9"),
            (RequestHeader { rank: 0, ..good }, N, "rank 0"),
            (RequestHeader { rank: 9, ..good }, N, "rank 9"),
            (RequestHeader { shape: [u64::MAX, u64::MAX, 2, 2, 0, 0, 0, 0], ..good }, N, "overflows"),
            (RequestHeader { shape: [1, 3, 128, 0, 0, 0, 0, 0], ..good }, N, "zero dimension"),
            (good, N - 1, "payload holds"),
            (RequestHeader::new(0, &[1, 3, 64, 64]).unwrap(), 3 * 64 * 64, "does not match the model's input shape [1, 3, 128, 128]"),
        ];
        for (h, len, want) in &cases {
            match c.infer_with_header(*h, &input[..*len]) {
                Err(Error::Remote { status: "bad request", message }) => assert!(message.contains(want), "{want:?} not in {message:?}"),
                other => panic!("expected a bad-request error mentioning {want:?}, got {other:?}"),
            }
            // The next valid request still works.
            let (shape, _) = c.infer(&SHAPE, &input).unwrap();
            assert_eq!(shape, vec![1, 10]);
        }
        let st = server.stats();
        assert_eq!(st.bad_requests.load(std::sync::atomic::Ordering::Relaxed), cases.len() as u64);
        // A client-side shape/input disagreement never leaves the process.
        assert!(matches!(c.infer(&SHAPE, &input[..10]), Err(Error::Ipc(_))));
    });
}

#[test]
fn a_second_live_server_is_refused() {
    with_server("tiny.pt", 1, |name, _| {
        let err = Server::new(&runtime(), ServeOptions::new(name, common::model_path("tiny.pt"))).err().expect("second server must be refused");
        assert!(err.to_string().contains("already serves"), "{err}");
    });
}

#[test]
fn no_server_is_server_gone_within_the_timeout() {
    let t = Instant::now();
    let err = Client::connect(&unique("nobody"), Duration::from_millis(500)).err().unwrap();
    assert!(matches!(err, Error::ServerGone(_)), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn killed_server_is_noticed_and_a_restarted_one_serves_again() {
    let name = unique("restart");
    let input = npy("tiny.input.npy");
    let mut server = ServerProcess::start(&name, "tiny.pt", &[]);
    let mut c = Client::connect(&name, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    c.infer(&SHAPE, &input).unwrap();
    server.signal(libc::SIGKILL);
    let _ = server.child.wait();
    let t = Instant::now();
    let err = c.infer(&SHAPE, &input).expect_err("a dead server cannot answer");
    assert!(matches!(err, Error::ServerGone(_)), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "noticed only after {:?}", t.elapsed());
    // A new server on the same name, without manual cleanup, serves the same client.
    let server2 = ServerProcess::start(&name, "tiny.pt", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c.infer(&SHAPE, &input) {
            Ok((shape, _)) => {
                assert_eq!(shape, vec![1, 10]);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the restarted server never answered: {e}\n{}", server2.log()),
        }
    }
    server2.signal(libc::SIGTERM);
}

fn examples_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("UMINFER_EXAMPLES_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test binary> → target/<profile>/examples
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("examples")
}

fn load_client(name: &str, requests: usize, seed: u64) -> Command {
    let mut cmd = Command::new(examples_dir().join("ipc_load"));
    cmd.args([name, &requests.to_string(), &seed.to_string()]).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

#[test]
fn load_from_several_processes_loses_and_mixes_nothing() {
    let name = unique("load");
    let server = ServerProcess::start(&name, "identity.pt", &["--workers", "2"]);
    connect(&name);
    let (k, m) = (3, 100);
    let children: Vec<Child> = (0..k).map(|i| load_client(&name, m, 1000 + i as u64).spawn().expect("ipc_load example (built by cargo test)")).collect();
    let mut total = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "client failed: {stdout}{}\nserver log:\n{}", String::from_utf8_lossy(&out.stderr), server.log());
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["mismatches"], 0);
        assert_eq!(v["requests"], m);
        total += v["requests"].as_u64().unwrap();
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "load client: {stdout}");
    }
    assert_eq!(total, (k * m) as u64);
}

#[test]
fn a_client_killed_mid_stream_does_not_disturb_the_server() {
    let name = unique("killclient");
    let server = ServerProcess::start(&name, "identity.pt", &[]);
    connect(&name);
    let mut victim = load_client(&name, 1_000_000, 7).spawn().unwrap();
    let victim_node = format!("uminfer-client-{}", victim.id());
    std::thread::sleep(Duration::from_millis(1500)); // well inside its request stream
    victim.kill().unwrap();
    let _ = victim.wait();
    let out = load_client(&name, 50, 8).output().unwrap();
    assert!(out.status.success(), "{}{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr), server.log());
    // The server removes dead nodes' resources every second: the victim's are
    // gone after a few. (Only the victim's node is counted: other test
    // binaries running beside this one may leave dead nodes of their own.)
    std::thread::sleep(Duration::from_secs(3));
    use iceoryx2::node::NodeView as _;
    use iceoryx2::prelude::{CallbackProgression, Config, Node, NodeState};
    let mut dead = 0;
    Node::<uminfer::ipc::service::Ipc>::list(&Config::default(), |s| {
        if let NodeState::Dead(n) = &s {
            if n.details().as_ref().is_some_and(|d| d.name().as_str() == victim_node) {
                dead += 1;
            }
        }
        CallbackProgression::Continue
    })
    .unwrap();
    assert_eq!(dead, 0, "the killed client's node ({victim_node}) was left behind dead");
}

#[test]
fn idle_server_uses_no_cpu() {
    let name = unique("idle");
    let server = ServerProcess::start(&name, "tiny.pt", &[]);
    connect(&name).infer(&SHAPE, &npy("tiny.input.npy")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before = server.cpu_seconds();
    std::thread::sleep(Duration::from_secs(10));
    let used = server.cpu_seconds() - before;
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "idle server used {:.3} s of CPU in 10 s", used);
    assert!(used < 0.1, "idle server used {used:.3} s of CPU in 10 s (limit 1%)");
}

#[test]
fn another_user_cannot_connect() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED: dropping privileges to another uid needs root");
        return;
    }
    with_server("tiny.pt", 1, |name, _| {
        // SAFETY: fork in a test binary; the child only drops privileges,
        // tries to connect and leaves with _exit (no unwinding, no destructors).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: setgid/setuid to nobody (65534), then a connect attempt; _exit always.
            unsafe {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    libc::_exit(3);
                }
            }
            let code = match Client::connect(name, Duration::from_secs(2)) {
                Ok(_) => 0,
                Err(_) => 1,
            };
            // SAFETY: leaves the child immediately.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child did not exit normally");
        assert_eq!(libc::WEXITSTATUS(status), 1, "a process of another uid connected (0) or could not drop privileges (3)");
        // The owner still can.
        connect(name);
    });
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use uminfer::ipc::header::{validate_request, MAX_RANK, PROTOCOL_VERSION};

    fn independent_verdict(h: &RequestHeader, payload: usize, model: &[i64], max: usize) -> bool {
        if h.magic != MAGIC || h.version != PROTOCOL_VERSION || h.dtype != 1 || h.rank == 0 || h.rank as usize > MAX_RANK {
            return false;
        }
        let dims = &h.shape[..h.rank as usize];
        let product = dims.iter().try_fold(1u128, |a, &d| if d == 0 { None } else { a.checked_mul(d as u128) });
        match product {
            Some(p) => p <= max as u128 && p == payload as u128 && dims.len() == model.len() && dims.iter().zip(model).all(|(&a, &b)| a as i64 == b),
            None => false,
        }
    }

    fn header() -> impl Strategy<Value = RequestHeader> {
        let dim = prop_oneof![Just(0u64), 1u64..4, Just(128u64), Just(3u64), any::<u64>()];
        (
            prop_oneof![Just(MAGIC), any::<u32>()],
            prop_oneof![Just(1u16), any::<u16>()],
            prop_oneof![Just(1u8), any::<u8>()],
            prop_oneof![Just(4u8), any::<u8>()],
            proptest::array::uniform8(dim),
        )
            .prop_map(|(magic, version, dtype, rank, shape)| RequestHeader { magic, version, dtype, rank, request_id: 0, shape })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]
        #[test]
        fn validation_never_panics_and_accepts_exactly_the_consistent_requests(
            h in header(),
            payload in prop_oneof![Just(N), 0usize..100_000],
        ) {
            let model = [1i64, 3, 128, 128];
            let max = 1 << 24;
            let got = validate_request(&h, payload, &model, max);
            prop_assert_eq!(got.is_ok(), independent_verdict(&h, payload, &model, max), "{:?} payload {} → {:?}", h, payload, got);
        }
    }
}

/// The automatic choice follows the forward time the server measured and
/// logged: every core (shared-memory clients give their core away while they
/// poll) unless the pass is under `PARALLEL_WORTHWHILE`, shared by the
/// workers that run at once; `--intra-op-threads` overrides it.
#[test]
fn serve_uses_every_core_shared_by_its_workers_unless_told_otherwise() {
    for extra in [&[][..], &["--workers", "2"][..], &["--intra-op-threads", "3"][..]] {
        let name = unique("threads");
        let server = ServerProcess::start(&name, "tiny.pt", extra);
        let out = connect(&name).infer(&SHAPE, &npy("tiny.input.npy")).unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
        assert!(common::max_abs_diff(&out.1, &npy("tiny.expected.npy")) <= 1e-5);
        let log = server.log();
        let automatic = !extra.contains(&"--intra-op-threads");
        let want = if automatic {
            let us = common::logged_us(&log, "a forward pass takes ");
            let rule = if us < uminfer::intra_op::PARALLEL_WORTHWHILE.as_secs_f64() * 1e6 { uminfer::intra_op::fewer_cores() } else { uminfer::intra_op::cores() };
            assert_eq!(uminfer::intra_op::for_shm_clients(std::time::Duration::from_secs_f64(us / 1e6)), rule, "a forward pass of {us} µs");
            let workers = if extra.contains(&"--workers") { 2 } else { 1 };
            assert!(log.contains(&format!("a core is left to the shared-memory clients, otherwise every core; shared by {workers} session(s)")), "{extra:?}:\n{log}");
            uminfer::intra_op::shared_by(rule, workers)
        } else {
            3
        };
        let said = log.split("libtorch intra-op threads: ").nth(1).and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<usize>().ok());
        assert_eq!(said, Some(want), "{extra:?}: the log does not say {want} intra-op threads:\n{log}");
        // Its one line on stdout, once the service exists (what `uminfer bench` waits for).
        assert_eq!(server.stdout(), format!("ipc=uminfer/{name}\n"));
        server.signal(libc::SIGTERM);
    }
}
