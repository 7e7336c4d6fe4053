//! The server side of the `serialize-copy` scheme, run as its own process
//! (`uminfer bench-json-server`, hidden from `--help`): JSON over HTTP/1
//! (axum, TCP_NODELAY), deserialised, copied into a tensor, forward,
//! serialised back.
//!
//! A process of its own, as the serialising path is deployed, and because a
//! second thread running forward passes inside the bench process would give
//! that process a second OpenMP team: libgomp then counts more threads than
//! cores and stops spinning between parallel regions in every team, which
//! slows the in-process schemes of the same run. TCP_NODELAY: without it a
//! response's last segment waits for the client's delayed ACK
//! (`docs/notes/thread-choices.md`).

use crate::error::{Error, Result};
use crate::runtime::Runtime;
use axum::http::StatusCode;
use axum::serve::ListenerExt;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Loads `model`, listens on a free loopback port, prints `http=ADDR` on
/// stdout, then answers `POST /infer` bodies (a JSON array of `shape`'s
/// element count of floats) with the output as a JSON array, one request at a
/// time, until the process is killed.
pub fn run(model: &Path, shape: &[i64]) -> Result<()> {
    let rt = Runtime::new();
    let module = rt.model(model)?.loaded(tch::Device::Cpu)?;
    let n = crate::memory::region::checked_numel(shape)?;
    let shape: Arc<[i64]> = shape.into();
    let infer = move |body: String| -> std::result::Result<String, String> {
        let v = serde_json::from_str::<Vec<f32>>(&body).map_err(|e| e.to_string())?;
        if v.len() != n {
            return Err(format!("{} values, expected {n}", v.len()));
        }
        let x = tch::Tensor::from_slice(&v).view(&*shape);
        let y = match module.forward(&[x]).map_err(|e| e.to_string())?.as_slice() {
            [y] => y.flatten(0, -1),
            more => return Err(format!("the model returned {} tensors; this server answers with one", more.len())),
        };
        let out = Vec::<f32>::try_from(y).map_err(|e| e.to_string())?;
        serde_json::to_string(&out).map_err(|e| e.to_string())
    };
    let app = axum::Router::new()
        .route(
            "/infer",
            axum::routing::post(move |body: String| {
                let reply = infer(body).map_err(|e| (StatusCode::BAD_REQUEST, e));
                std::future::ready(reply)
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    let os = |call| move |source| Error::Os { call, source };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(os("starting the HTTP runtime"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(os("listening on 127.0.0.1"))?;
        let addr = listener.local_addr().map_err(os("reading the HTTP address"))?;
        let mut out = std::io::stdout();
        writeln!(out, "http={addr}").and_then(|_| out.flush()).map_err(os("writing the HTTP address"))?;
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!("TCP_NODELAY: {e}");
            }
        });
        axum::serve(listener, app).await.map_err(os("serving HTTP"))
    })
}
