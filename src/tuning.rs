//! Timing constants that the transports and the intra-op thread rule share:
//! how long a waiting client polls before it sleeps, and how often a polling
//! server gives its core away.

use std::time::Duration;

/// Least time a client polls for its response (yielding the CPU between
/// polls) before sleeping on its listener, while responses are short.
pub const CLIENT_SPIN: Duration = Duration::from_micros(200);

/// Most time a client polls before sleeping. When its typical response takes
/// longer than two thirds of this, the client sleeps at once: a wake-up
/// (tens of microseconds) is small beside such a request, and the core is
/// the server's.
pub const MAX_CLIENT_SPIN: Duration = Duration::from_millis(2);

/// How often a server polling for its next request (the shared-memory
/// server, the gRPC server's poller) gives up the CPU: a client polling for
/// its answer may share the core.
pub const YIELD_EVERY: Duration = Duration::from_micros(20);
