//! How many libtorch intra-op threads a process uses: a server whose
//! clients share the machine (`uminfer serve`, and the servers `uminfer
//! bench` starts), and a process that runs its sessions itself.
//!
//! A client that waits for a short request polls (a wake-up from sleep costs
//! tens of microseconds, comparable to a small model's forward pass); a long
//! request is waited for asleep (a shared-memory or gRPC client polls at most
//! [`MAX_CLIENT_SPIN`](crate::tuning::MAX_CLIENT_SPIN)).
//!
//! - **Shared memory** (`serve --name`, [`for_shm_clients`]): every core
//!   unless the forward pass is tiny (under [`PARALLEL_WORTHWHILE`], where a
//!   second thread gains nothing and costs its wake-up). Its client gives its
//!   core away at every poll (`sched_yield`), so the server's second OpenMP
//!   thread can run there.
//! - **gRPC** (`serve --grpc`, [`for_grpc_clients`]): one core fewer than the
//!   machine has when the forward pass is short (under [`SHORT_FORWARD`]),
//!   left to the polling client; every core otherwise.
//! - **In process** (`uminfer run`, `uminfer bench`'s in-process schemes,
//!   [`measured_threads`]): the count under which the model's pass is
//!   fastest, each count up to the cores shared among the threads that run
//!   passes side by side timed on the machine at hand (machines differ too
//!   much for a fixed rule).
//!
//! Each thread that runs a forward pass has an OpenMP team of its own, of
//! that many threads. A server whose sessions run K requests at once
//! (`--workers K`; with `--grpc`, K sessions per model) shares the threads
//! among them ([`shared_by`]): K teams of the full count would hold more
//! threads than the machine has cores, and libgomp then stops spinning
//! between parallel regions in every team (see [`on_passing_thread`]).
//!
//! The measurements behind these rules: `docs/notes/thread-choices.md`.

use crate::error::{Result, SessionErrorKind};
use crate::model::{Model, TensorInfo};
use std::time::{Duration, Instant};

/// A forward pass shorter than this (timed with libtorch's default threads)
/// counts as short: two thirds of the client's longest spin, so that clients
/// spin through the whole request.
pub const SHORT_FORWARD: Duration = Duration::from_micros(crate::tuning::MAX_CLIENT_SPIN.as_micros() as u64 * 2 / 3);

/// Cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One core fewer than [`cores`], at least 1.
pub fn fewer_cores() -> usize {
    cores().saturating_sub(1).max(1)
}

/// A forward pass shorter than this (timed with libtorch's default threads)
/// is too short for a second intra-op thread to pay for its wake-up.
pub const PARALLEL_WORTHWHILE: Duration = Duration::from_micros(50);

/// The shared-memory rule above: [`fewer_cores`] when `forward` (the model's
/// forward pass with libtorch's default threads) is shorter than
/// [`PARALLEL_WORTHWHILE`], else [`cores`].
pub fn for_shm_clients(forward: Duration) -> usize {
    fewer_cores_under(PARALLEL_WORTHWHILE, forward)
}

/// The gRPC rule above: [`fewer_cores`] when `forward` (the model's forward
/// pass with libtorch's default threads) is shorter than [`SHORT_FORWARD`],
/// else [`cores`].
pub fn for_grpc_clients(forward: Duration) -> usize {
    fewer_cores_under(SHORT_FORWARD, forward)
}

/// [`fewer_cores`] when `forward` is shorter than `limit`, else [`cores`].
fn fewer_cores_under(limit: Duration, forward: Duration) -> usize {
    if forward < limit {
        fewer_cores()
    } else {
        cores()
    }
}

/// `threads` shared among `concurrent` forward passes that run at once:
/// `threads / concurrent`, at least 1.
pub fn shared_by(threads: usize, concurrent: usize) -> usize {
    (threads / concurrent.max(1)).max(1)
}

/// A larger thread count is chosen over a smaller one only when its pass
/// is at least this much faster ([`measured_threads`]): a thread that
/// saves less costs more in wake-ups and cores taken from others.
pub const WORTH_A_THREAD: f64 = 0.9;

/// The thread counts [`measured_threads`] tries for `teams` threads that
/// run forward passes side by side: 1, 2, 4, ... up to `cores() / teams`, and that.
pub fn candidates(teams: usize) -> Vec<usize> {
    let most = shared_by(cores(), teams);
    let mut c: Vec<usize> = std::iter::successors(Some(1usize), |n| n.checked_mul(2)).take_while(|&n| n < most).collect();
    c.push(most);
    c
}

/// What [`measured_threads`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// The count chosen.
    pub threads: usize,
    /// Each count tried and its fastest pass.
    pub tried: Vec<(usize, Duration)>,
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tried: Vec<String> = self.tried.iter().map(|(n, t)| format!("{n}: {:.1} µs", t.as_secs_f64() * 1e6)).collect();
        write!(f, "measured: a forward pass with {} (a larger count must save {:.0}%)", tried.join(", "), (1.0 - WORTH_A_THREAD) * 100.0)
    }
}

/// The intra-op thread count under which the CPU forward passes of
/// `models` (each over zeros of its inputs) take least time together:
/// each count of [`candidates`]`(teams)` timed with [`time_forward`]; a
/// larger count wins only by [`WORTH_A_THREAD`]. `teams`: the threads of
/// this process that will run passes side by side, each with an OpenMP team
/// of that many threads. libtorch's count is left as it was found.
pub fn measured_threads(models: &[(&Model, &[TensorInfo])], teams: usize) -> Result<Measured> {
    let before = tch::get_num_threads();
    let timed = (|| -> Result<Vec<(usize, Duration)>> {
        let mut tried = Vec::new();
        for n in candidates(teams) {
            tch::set_num_threads(i32::try_from(n).unwrap_or(i32::MAX));
            let mut total = Duration::ZERO;
            for (model, inputs) in models {
                total += time_forward(model, inputs)?;
            }
            tried.push((n, total));
        }
        Ok(tried)
    })();
    tch::set_num_threads(before);
    let tried: Vec<(usize, Duration)> = timed?;
    let mut best = tried[0];
    for &(n, t) in &tried[1..] {
        if t.as_secs_f64() < best.1.as_secs_f64() * WORTH_A_THREAD {
            best = (n, t);
        }
    }
    Ok(Measured { threads: best.0, tried })
}

/// Sets libtorch's intra-op threads for a process that runs CPU sessions
/// itself: `explicit` when given, else [`measured_threads`] over `models`
/// for `teams` side-by-side threads. Returns the count and why, for the log.
pub fn set_for_sessions(explicit: Option<usize>, models: &[(&Model, &[TensorInfo])], teams: usize) -> Result<(usize, String)> {
    let (n, why) = match explicit {
        Some(n) => (n.max(1), "--intra-op-threads".to_string()),
        None => {
            let m = measured_threads(models, teams)?;
            (m.threads, m.to_string())
        }
    };
    tch::set_num_threads(i32::try_from(n).unwrap_or(i32::MAX));
    Ok((n, why))
}

/// Which clients a server process answers, for its thread choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    /// Shared-memory clients (`uminfer serve --name`): [`for_shm_clients`].
    SharedMemory,
    /// gRPC and REST clients (`uminfer serve --grpc`): [`for_grpc_clients`].
    Grpc,
}

/// Sets a server process's libtorch intra-op threads: `explicit` when
/// given; else, when its sessions run on the CPU (`cpu`), the rule for
/// `clients` over the slowest model's forward pass with libtorch's default
/// threads, [shared](shared_by) by the `concurrent` sessions that may run
/// at once; else libtorch's default. A model's declared shape, where given,
/// is a one-input model's ([`Model::resolve_input_shape`]), as the servers
/// take it. Returns the count and why, for the log.
pub fn set_for_server(explicit: Option<usize>, cpu: bool, clients: Clients, models: &[(Model, Option<&[i64]>)], concurrent: usize) -> Result<(usize, String)> {
    let why = match explicit {
        Some(n) => {
            tch::set_num_threads(i32::try_from(n.max(1)).unwrap_or(i32::MAX));
            "--intra-op-threads".to_string()
        }
        None if cpu => {
            let mut slowest = Duration::ZERO;
            for (model, input_shape) in models {
                let inputs = model.resolve_input_shape(*input_shape)?;
                slowest = slowest.max(time_forward(model, &inputs)?);
            }
            let (rule, under, who) = match clients {
                Clients::SharedMemory => (for_shm_clients(slowest), PARALLEL_WORTHWHILE, "shared-memory"),
                Clients::Grpc => (for_grpc_clients(slowest), SHORT_FORWARD, "gRPC"),
            };
            tch::set_num_threads(i32::try_from(shared_by(rule, concurrent)).unwrap_or(i32::MAX));
            format!(
                "automatic: a forward pass takes {:.1} µs with libtorch's default threads; under {} µs a core is left to the {who} clients, otherwise every core; shared by {} session(s) that run at once",
                slowest.as_secs_f64() * 1e6,
                under.as_micros(),
                concurrent.max(1),
            )
        }
        None => "libtorch's default".to_string(),
    };
    Ok((usize::try_from(tch::get_num_threads()).unwrap_or(1), why))
}

/// How many passes [`fastest_pass`] times: at least the first count, at
/// most the second, and in between until [`PROBE_TIME`] went into them.
pub const PROBE_PASSES: std::ops::RangeInclusive<u32> = 5..=200;
/// See [`PROBE_PASSES`].
pub const PROBE_TIME: Duration = Duration::from_millis(20);

/// The fastest of [`PROBE_PASSES`] runs of `pass` (as many as fit in
/// [`PROBE_TIME`]); `pass` returns how long it took. The fastest, since
/// other load on the machine only ever adds time; many, because a process's
/// first passes are slow for longer than a few passes (TorchScript's
/// profiling runs, an OpenMP team starting): on the 2-core Intel machine the
/// `identity` model's fastest of 5 after 3 untimed passes was 57–841 µs in
/// 5 server starts out of 24 (7.6–16.5 µs in the others), which gave it a
/// second thread it pays for on every request. The start-up decisions that
/// depend on a pass's time ([`time_forward`], the gRPC server's inline
/// limit) all measure it so.
pub fn fastest_pass(mut pass: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let (mut fastest, mut spent, mut passes) = (Duration::MAX, Duration::ZERO, 0);
    while probe_more(passes, spent) {
        let took = pass()?;
        fastest = fastest.min(took);
        spent += took;
        passes += 1;
    }
    Ok(fastest)
}

/// Whether [`fastest_pass`] runs another pass after `passes` that took
/// `spent` in all.
fn probe_more(passes: u32, spent: Duration) -> bool {
    passes < *PROBE_PASSES.start() || (passes < *PROBE_PASSES.end() && spent < PROBE_TIME)
}

/// Time of a CPU forward pass of `model` on zeros of `inputs` (the
/// session's inputs, in the model's order), with the process's current
/// threads: [`fastest_pass`] after 3 untimed passes.
///
/// The passes run on a thread of their own that ends afterwards, taking its
/// OpenMP team with it: see [`on_passing_thread`].
pub fn time_forward(model: &Model, inputs: &[TensorInfo]) -> Result<Duration> {
    on_passing_thread(|| {
        let loaded = model.loaded(tch::Device::Cpu)?;
        let xs = inputs.iter().map(|i| Ok(tch::Tensor::f_zeros(&i.shape, (i.dtype.kind(), tch::Device::Cpu))?)).collect::<Result<Vec<_>>>()?;
        for _ in 0..3 {
            drop(loaded.forward(&xs)?);
        }
        fastest_pass(|| {
            let t = Instant::now();
            drop(loaded.forward(&xs)?);
            Ok(t.elapsed())
        })
    })
}

/// Runs `f` (CPU forward passes made once, at start: probes, timing) on a
/// thread that ends when `f` returns. Each thread that runs a parallel
/// region keeps an OpenMP team of its own; once a process's teams hold more
/// threads than it has cores, libgomp stops spinning between parallel
/// regions in every team and each region pays wake-ups (2 cores: a second
/// team doubled the `tiny` model's in-process latency, 153 → 295 µs). A
/// passing thread's team ends with it.
pub fn on_passing_thread<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| s.spawn(f).join()).unwrap_or_else(|_| Err(crate::error::Error::session(SessionErrorKind::Failed, "a probe thread panicked")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_forward_passes_leave_a_core_to_grpc_clients_long_ones_take_all() {
        assert_eq!(for_grpc_clients(Duration::from_micros(150)), fewer_cores());
        assert_eq!(for_grpc_clients(SHORT_FORWARD), cores());
        assert_eq!(for_grpc_clients(Duration::from_millis(9)), cores());
        assert!(fewer_cores() >= 1 && fewer_cores() <= cores());
    }

    #[test]
    fn tiny_forward_passes_leave_a_core_to_shm_clients_others_take_all() {
        assert_eq!(for_shm_clients(Duration::from_micros(6)), fewer_cores());
        assert_eq!(for_shm_clients(PARALLEL_WORTHWHILE), cores());
        assert_eq!(for_shm_clients(Duration::from_micros(150)), cores());
        assert_eq!(for_shm_clients(Duration::from_millis(9)), cores());
    }

    #[test]
    fn the_probe_times_at_least_5_passes_at_most_200_and_between_fills_its_time() {
        // A slow model (8 ms a pass, like resnet18 on 2 cores): 5 passes, though they take 40 ms.
        assert!(probe_more(4, Duration::from_millis(32)));
        assert!(!probe_more(5, Duration::from_millis(40)));
        // A middling one (150 µs, like tiny): passes until 20 ms went into them...
        assert!(probe_more(100, Duration::from_millis(15)));
        assert!(!probe_more(134, PROBE_TIME));
        // ...a fast one (10 µs, like identity): never more than 200.
        assert!(probe_more(199, Duration::from_millis(2)));
        assert!(!probe_more(200, Duration::from_millis(2)));
    }

    #[test]
    fn fastest_pass_keeps_the_fastest_and_stops_at_an_error() {
        let mut took = [300u64, 40, 90, 12, 70, 55].into_iter().cycle().map(Duration::from_micros);
        assert_eq!(fastest_pass(|| Ok(took.next().unwrap())).unwrap(), Duration::from_micros(12));
        let mut calls = 0;
        let failed = fastest_pass(|| {
            calls += 1;
            if calls == 3 { Err(crate::error::Error::session(SessionErrorKind::Failed, "third pass failed")) } else { Ok(Duration::from_micros(5)) }
        });
        assert!(failed.is_err_and(|e| e.to_string().contains("third pass failed")));
        assert_eq!(calls, 3);
    }

    #[test]
    fn candidate_counts_double_up_to_the_cores_per_team() {
        let c = candidates(1);
        assert_eq!((c[0], *c.last().unwrap()), (1, cores()));
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*candidates(2).last().unwrap(), shared_by(cores(), 2));
        assert_eq!(candidates(cores() * 2), [1]);
    }

    #[test]
    fn concurrent_passes_share_the_threads() {
        assert_eq!(shared_by(15, 1), 15);
        assert_eq!(shared_by(15, 2), 7);
        assert_eq!(shared_by(16, 4), 4);
        assert_eq!(shared_by(1, 2), 1);
        assert_eq!(shared_by(3, 0), 3);
    }
}
