//! The server side of the `serialize-copy` scheme, run as its own process
//! (`uminfer bench-json-server`, hidden from `--help`): JSON over HTTP
//! (tiny_http), deserialised, copied into a tensor, forward, serialised back.
//!
//! A process of its own, as the serialising path is deployed, and because a
//! second thread running forward passes inside the bench process would give
//! that process a second OpenMP team: libgomp then counts more threads than
//! cores and stops spinning between parallel regions in every team, which
//! doubled `cpu-zero-copy`'s in-process latency on 2 cores (155 → 295 µs P50)
//! whenever `serialize-copy` was in the run.

use crate::error::{Error, Result};
use crate::runtime::Runtime;
use std::io::Write;
use std::path::Path;

/// Loads `model`, listens on a free loopback port, prints `http=ADDR` on
/// stdout, then answers `POST` bodies (a JSON array of `shape`'s element count
/// of floats) with the output as a JSON array, until the process is killed.
pub fn run(model: &Path, shape: &[i64]) -> Result<()> {
    let rt = Runtime::new();
    let module = rt.model(model)?.module(tch::Device::Cpu)?;
    let n = crate::memory::region::checked_numel(shape)?;
    let server = tiny_http::Server::http("127.0.0.1:0").map_err(|e| Error::Session(format!("HTTP server: {e}")))?;
    let addr = server.server_addr().to_ip().ok_or_else(|| Error::Session("HTTP server has no IP address".into()))?;
    let mut out = std::io::stdout();
    writeln!(out, "http={addr}").and_then(|_| out.flush()).map_err(|source| Error::Os { call: "writing the HTTP address", source })?;
    for mut req in server.incoming_requests() {
        let mut body = String::new();
        let reply = req
            .as_reader()
            .read_to_string(&mut body)
            .map_err(|e| e.to_string())
            .and_then(|_| serde_json::from_str::<Vec<f32>>(&body).map_err(|e| e.to_string()))
            .and_then(|v| if v.len() == n { Ok(v) } else { Err(format!("{} values, expected {n}", v.len())) })
            .and_then(|v| {
                let x = tch::Tensor::from_slice(&v).view(shape);
                let y = module.forward(&x).map_err(|e| e.to_string())?;
                let out = Vec::<f32>::try_from(y.flatten(0, -1)).map_err(|e| e.to_string())?;
                serde_json::to_string(&out).map_err(|e| e.to_string())
            });
        let resp = match reply {
            Ok(json) => tiny_http::Response::from_string(json),
            Err(e) => tiny_http::Response::from_string(e).with_status_code(400),
        };
        let _ = req.respond(resp);
    }
    Ok(())
}
