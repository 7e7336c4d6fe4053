//! Triton's per-model inference statistics (`ModelStatistics`, and `GET
//! /v2/models/NAME/stats` in the REST form): counts and summed durations of
//! each model's requests, kept in atomics by the requests themselves.
//!
//! What each duration covers in uminfer (a request is never batched, so each
//! inference is one execution):
//! - `success`, `fail`: from receipt by the service to the answer (the same
//!   span as the `uminfer_inference_duration_seconds` metric);
//! - `compute_input`: checking the request and finding its input (message
//!   bytes, typed contents or a shared memory region) and output region;
//! - `queue`: waiting for a free session of the model's pool;
//! - `compute_infer`: the session's run (the forward pass over the input);
//! - `compute_output`: writing the output into the response or its region.

use super::proto::{InferBatchStatistics, InferStatistics, ModelStatistics, StatisticDuration};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and the nanoseconds it summed.
#[derive(Debug, Default)]
struct Summed {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Summed {
    fn add(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn get(&self) -> StatisticDuration {
        StatisticDuration { count: self.count.load(Ordering::Relaxed), ns: self.ns.load(Ordering::Relaxed) }
    }
}

/// The phases of one successful inference, as [`ModelStats::record_phases`] takes them.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// Checking the request and finding its input and output.
    pub compute_input: Duration,
    /// Waiting for a free session.
    pub queue: Duration,
    /// The session's run.
    pub compute_infer: Duration,
    /// Writing the output.
    pub compute_output: Duration,
}

/// One model's statistics.
#[derive(Debug, Default)]
pub struct ModelStats {
    success: Summed,
    fail: Summed,
    queue: Summed,
    compute_input: Summed,
    compute_infer: Summed,
    compute_output: Summed,
    /// Milliseconds since the Unix epoch of the latest answered request; 0: none yet.
    last_inference_ms: AtomicU64,
}

impl ModelStats {
    /// Records the phases of an inference that ran.
    pub fn record_phases(&self, p: Phases) {
        self.compute_input.add(p.compute_input);
        self.queue.add(p.queue);
        self.compute_infer.add(p.compute_infer);
        self.compute_output.add(p.compute_output);
    }

    /// Records an answered request that took `took`.
    pub fn success(&self, took: Duration) {
        self.success.add(took);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_inference_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// Records a refused or failed request that took `took`.
    pub fn failure(&self, took: Duration) {
        self.fail.add(took);
    }

    /// The protocol's message for model `name`, version `version`; with
    /// `batches` (a batched model's), Triton's counts: inferences are
    /// samples, executions are batches, and `batch_stats` holds the batches
    /// of each size (their forward passes as `compute_infer`).
    pub fn to_proto(&self, name: &str, version: &str, batches: Option<&crate::batch::BatchSummary>) -> ModelStatistics {
        let success = self.success.get();
        let (inference_count, execution_count) = match batches {
            Some(b) => (b.samples, b.batches),
            // One inference per request, each its own execution.
            None => (success.count, success.count),
        };
        let batch_stats = batches
            .map(|b| {
                b.batch_sizes
                    .iter()
                    .map(|s| InferBatchStatistics {
                        batch_size: s.batch_size as u64,
                        compute_input: Some(StatisticDuration::default()),
                        compute_infer: Some(StatisticDuration { count: s.executions, ns: s.run_ns }),
                        compute_output: Some(StatisticDuration::default()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        ModelStatistics {
            name: name.to_string(),
            version: version.to_string(),
            last_inference: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count,
            execution_count,
            batch_stats,
            inference_stats: Some(InferStatistics {
                success: Some(success),
                fail: Some(self.fail.get()),
                queue: Some(self.queue.get()),
                compute_input: Some(self.compute_input.get()),
                compute_infer: Some(self.compute_infer.get()),
                compute_output: Some(self.compute_output.get()),
                cache_hit: Some(StatisticDuration::default()),
                cache_miss: Some(StatisticDuration::default()),
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sums_each_phase_and_outcome() {
        let s = ModelStats::default();
        let before = s.to_proto("tiny", "1", None);
        assert_eq!((before.inference_count, before.last_inference), (0, 0));
        let us = Duration::from_micros;
        for _ in 0..3 {
            s.record_phases(Phases { compute_input: us(1), queue: us(2), compute_infer: us(100), compute_output: us(3) });
            s.success(us(120));
        }
        s.failure(us(5));
        let p = s.to_proto("tiny", "1", None);
        assert_eq!((p.name.as_str(), p.version.as_str(), p.inference_count, p.execution_count), ("tiny", "1", 3, 3));
        assert!(p.last_inference > 1_700_000_000_000, "milliseconds since the epoch: {}", p.last_inference);
        let i = p.inference_stats.unwrap();
        let pair = |d: Option<StatisticDuration>| d.map(|d| (d.count, d.ns)).unwrap();
        assert_eq!(pair(i.success), (3, 360_000));
        assert_eq!(pair(i.fail), (1, 5_000));
        assert_eq!(pair(i.compute_infer), (3, 300_000));
        assert_eq!(pair(i.queue), (3, 6_000));
        assert_eq!(pair(i.compute_input), (3, 3_000));
        assert_eq!(pair(i.compute_output), (3, 9_000));
        assert!(p.batch_stats.is_empty());
    }

    #[test]
    fn a_batched_model_counts_samples_batches_and_each_batch_size() {
        use crate::batch::{BatchSizeStats, BatchSummary};
        let s = ModelStats::default();
        s.success(Duration::from_micros(50));
        let b = BatchSummary {
            requests: 5,
            refused: 0,
            batches: 3,
            samples: 7,
            padded: 1,
            mean_batch: 7.0 / 3.0,
            padding_share: 0.125,
            queue: None,
            batch_sizes: vec![BatchSizeStats { batch_size: 1, executions: 1, run_ns: 100 }, BatchSizeStats { batch_size: 3, executions: 2, run_ns: 500 }],
            bucket_runs: vec![(1, 1), (4, 2)],
        };
        let p = s.to_proto("tiny", "1", Some(&b));
        assert_eq!((p.inference_count, p.execution_count), (7, 3));
        let got: Vec<(u64, u64, u64)> = p.batch_stats.iter().map(|x| (x.batch_size, x.compute_infer.unwrap().count, x.compute_infer.unwrap().ns)).collect();
        assert_eq!(got, [(1, 1, 100), (3, 2, 500)]);
    }
}
