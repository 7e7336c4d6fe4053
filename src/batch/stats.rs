//! What a batcher did: batches per formed size (executions, samples, time
//! of their forward passes, as Triton's `batch_stats`), per bucket, padding,
//! and the time requests waited in the queue (hdrhistogram).

use crate::session::timing::{summarise, histogram};
use crate::session::Summary;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// Executions of one batch size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BatchSizeStats {
    /// Samples in each of these batches.
    pub batch_size: usize,
    /// Batches of this size run.
    pub executions: u64,
    /// Time of their forward passes (host, each pass including the copies
    /// into and out of the bucket's tensors), in total.
    pub run_ns: u64,
}

/// A summary of a batcher's work so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchSummary {
    /// Requests answered with outputs.
    pub requests: u64,
    /// Requests refused or failed (queue full, timeout, a failed batch).
    pub refused: u64,
    /// Batches run.
    pub batches: u64,
    /// Samples run (requests may carry several).
    pub samples: u64,
    /// Padding samples run (a batch filled up to its bucket).
    pub padded: u64,
    /// Samples per batch, on average (0 before the first batch).
    pub mean_batch: f64,
    /// Padding as a share of the samples the model computed.
    pub padding_share: f64,
    /// Time requests waited in the queue before their batch started.
    pub queue: Option<Summary>,
    /// One entry per batch size formed, smallest first.
    pub batch_sizes: Vec<BatchSizeStats>,
    /// Executions per bucket, in the batcher's bucket order.
    pub bucket_runs: Vec<(usize, u64)>,
}

/// One line: `120 requests (3 refused) in 40 batches, mean batch 3.00, padding 4.0 %, queue P50/P99 12.0/80.0 µs`.
impl std::fmt::Display for BatchSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests ({} refused) in {} batches, mean batch {:.2}, padding {:.1} %",
            self.requests,
            self.refused,
            self.batches,
            self.mean_batch,
            self.padding_share * 100.0
        )?;
        if let Some(q) = &self.queue {
            write!(f, ", queue P50/P99 {:.1}/{:.1} µs", q.p50_us, q.p99_us)?;
        }
        Ok(())
    }
}

/// Counters the scheduler updates after each batch.
pub(super) struct BatchStats {
    requests: u64,
    refused: u64,
    samples: u64,
    padded: u64,
    /// Index: batch size (0 unused).
    by_size: Vec<(u64, u64)>,
    /// Index: bucket, in `buckets` order.
    by_bucket: Vec<u64>,
    buckets: Vec<usize>,
    queue: Histogram<u64>,
}

impl BatchStats {
    pub fn new(max_batch: usize, buckets: &[usize]) -> Self {
        Self { requests: 0, refused: 0, samples: 0, padded: 0, by_size: vec![(0, 0); max_batch + 1], by_bucket: vec![0; buckets.len()], buckets: buckets.to_vec(), queue: histogram() }
    }

    /// One batch of `samples` samples and `padded` padding samples, run in
    /// bucket `bucket` (an index) in `run`.
    pub fn batch(&mut self, samples: usize, bucket: usize, padded: usize, run: Duration) {
        self.samples += samples as u64;
        self.padded += padded as u64;
        if let Some(s) = self.by_size.get_mut(samples) {
            s.0 += 1;
            s.1 += run.as_nanos().min(u64::MAX as u128) as u64;
        }
        self.by_bucket[bucket] += 1;
    }

    /// One request answered with outputs after waiting `queued`.
    pub fn answered(&mut self, queued: Duration) {
        self.requests += 1;
        self.queue.saturating_record(queued.as_nanos().clamp(1, u64::MAX as u128) as u64);
    }

    /// `n` requests refused or failed.
    pub fn refused(&mut self, n: u64) {
        self.refused += n;
    }

    pub fn summary(&self) -> BatchSummary {
        let batches: u64 = self.by_bucket.iter().sum();
        let computed = self.samples + self.padded;
        BatchSummary {
            requests: self.requests,
            refused: self.refused,
            batches,
            samples: self.samples,
            padded: self.padded,
            mean_batch: if batches == 0 { 0.0 } else { self.samples as f64 / batches as f64 },
            padding_share: if computed == 0 { 0.0 } else { self.padded as f64 / computed as f64 },
            queue: (!self.queue.is_empty()).then(|| summarise(&self.queue)),
            batch_sizes: self
                .by_size
                .iter()
                .enumerate()
                .filter(|(_, s)| s.0 > 0)
                .map(|(batch_size, &(executions, run_ns))| BatchSizeStats { batch_size, executions, run_ns })
                .collect(),
            bucket_runs: self.buckets.iter().copied().zip(self.by_bucket.iter().copied()).collect(),
        }
    }
}
