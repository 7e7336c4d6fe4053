//! The Open Inference Protocol's REST/JSON form (`uminfer serve --grpc
//! --http ADDR`), the routes Triton serves on its HTTP port: health, server
//! and model metadata, model configuration, statistics and the repository
//! index, inference (JSON data, or Triton's binary tensor data extension,
//! [`rest_codec`](super::rest_codec)) and the system shared memory extension. Every route calls the gRPC service itself, so
//! both forms share the models, the registered regions, the metrics and the
//! rules of where inference runs. A refused request is answered with an HTTP
//! status and `{"error": "..."}`, as the protocol says.

use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::*;
use super::rest_codec::{decode_request, encode_response, RestBody};
use super::service::OipService;
use super::status::{echo, echo_value, RequestError};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::collections::HashMap;
use tonic::{Code, Request, Status};

/// The header that gives the JSON part's length when binary data follows.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// A JSON body larger than this is decoded and encoded on a blocking thread:
/// the transport thread would otherwise parse it (a 1×3×128×128 tensor is
/// ~0.5 MB of JSON) while other requests, health checks and streams wait.
const JSON_ON_TRANSPORT_LIMIT: usize = 64 << 10;

/// The routes, over `svc`, accepting bodies up to `max_body` bytes (larger:
/// 413 Payload Too Large).
pub fn router(svc: OipService, max_body: usize) -> Router {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/stats", get(stats))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/models/{model}", get(metadata))
        .route("/v2/models/{model}/versions/{version}", get(metadata))
        .route("/v2/models/{model}/ready", get(readiness))
        .route("/v2/models/{model}/versions/{version}/ready", get(readiness))
        .route("/v2/models/{model}/config", get(config))
        .route("/v2/models/{model}/versions/{version}/config", get(config))
        .route("/v2/models/{model}/stats", get(stats))
        .route("/v2/models/{model}/versions/{version}/stats", get(stats))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
        .route("/v2/systemsharedmemory/status", get(shm_status))
        .route("/v2/systemsharedmemory/region/{region}/status", get(shm_status))
        .route("/v2/systemsharedmemory/region/{region}/register", post(shm_register))
        .route("/v2/systemsharedmemory/region/{region}/unregister", post(shm_unregister))
        .route("/v2/systemsharedmemory/unregister", post(shm_unregister))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route: the Open Inference Protocol's REST routes start with /v2 (docs/oip.md lists them)") })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(svc)
}

/// `{"error": message}` with `code`.
fn error(code: StatusCode, message: &str) -> Response {
    (code, axum::Json(json!({ "error": message }))).into_response()
}

/// The HTTP status of a refused gRPC call.
fn refused(s: Status) -> Response {
    let code = match s.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(code, s.message())
}

/// 200 when `yes`, else 400 (the protocol's boolean health answer).
fn health(yes: bool) -> Response {
    let code = if yes { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    code.into_response()
}

fn json_response(v: Value) -> Response {
    axum::Json(v).into_response()
}

async fn live(State(svc): State<OipService>) -> Response {
    match svc.server_live(Request::new(ServerLiveRequest {})).await {
        Ok(r) => health(r.into_inner().live),
        Err(s) => refused(s),
    }
}

async fn ready(State(svc): State<OipService>) -> Response {
    match svc.server_ready(Request::new(ServerReadyRequest {})).await {
        Ok(r) => health(r.into_inner().ready),
        Err(s) => refused(s),
    }
}

async fn server_metadata(State(svc): State<OipService>) -> Response {
    match svc.server_metadata(Request::new(ServerMetadataRequest {})).await {
        Ok(r) => {
            let r = r.into_inner();
            let mut extensions = r.extensions;
            extensions.push("binary_tensor_data".into());
            json_response(json!({ "name": r.name, "version": r.version, "extensions": extensions }))
        }
        Err(s) => refused(s),
    }
}

/// The parameters of a route: `model` and `version` of
/// `/v2/models[/{model}[/versions/{version}]]/...`, `region` of
/// `/v2/systemsharedmemory[/region/{region}]/...`; none on a route without them.
type Params = Option<Path<HashMap<String, String>>>;

/// Parameter `key`, "" when the route has none (every model, every region).
fn param(p: &mut Params, key: &str) -> String {
    p.as_mut().and_then(|Path(p)| p.remove(key)).unwrap_or_default()
}

fn model_and_version(mut p: Params) -> (String, String) {
    (param(&mut p, "model"), param(&mut p, "version"))
}

async fn metadata(State(svc): State<OipService>, path: Params) -> Response {
    let (name, version) = model_and_version(path);
    match svc.model_metadata(Request::new(ModelMetadataRequest { name, version })).await {
        Ok(r) => {
            let r = r.into_inner();
            let tensors = |ts: &[model_metadata_response::TensorMetadata]| -> Vec<Value> {
                ts.iter().map(|t| json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape })).collect()
            };
            json_response(json!({
                "name": r.name,
                "versions": r.versions,
                "platform": r.platform,
                "inputs": tensors(&r.inputs),
                "outputs": tensors(&r.outputs),
            }))
        }
        Err(s) => refused(s),
    }
}

async fn readiness(State(svc): State<OipService>, path: Params) -> Response {
    let (name, version) = model_and_version(path);
    match svc.model_ready(Request::new(ModelReadyRequest { name, version })).await {
        Ok(r) => health(r.into_inner().ready),
        Err(s) => refused(s),
    }
}

async fn config(State(svc): State<OipService>, path: Params) -> Response {
    let (name, version) = model_and_version(path);
    match svc.model_config(Request::new(ModelConfigRequest { name, version })).await {
        Ok(r) => json_response(r.into_inner().config.map(|c| config_json(&c)).unwrap_or_default()),
        Err(s) => refused(s),
    }
}

/// The configuration as Triton's REST form writes it (protobuf's JSON names).
fn config_json(c: &ModelConfig) -> Value {
    let data_type = |t: i32| DataType::try_from(t).map(|t| t.as_str_name()).unwrap_or("TYPE_INVALID");
    json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": c.input.iter().map(|i| json!({ "name": i.name, "data_type": data_type(i.data_type), "dims": i.dims })).collect::<Vec<_>>(),
        "output": c.output.iter().map(|o| json!({ "name": o.name, "data_type": data_type(o.data_type), "dims": o.dims })).collect::<Vec<_>>(),
        "instance_group": c.instance_group.iter().map(|g| {
            let kind = model_instance_group::Kind::try_from(g.kind).map(|k| k.as_str_name()).unwrap_or("KIND_AUTO");
            json!({ "name": g.name, "kind": kind, "count": g.count })
        }).collect::<Vec<_>>(),
    })
}

/// The statistics of a model, or of every model (`/v2/models/stats`).
async fn stats(State(svc): State<OipService>, path: Params) -> Response {
    let (name, version) = model_and_version(path);
    match svc.model_statistics(Request::new(ModelStatisticsRequest { name, version })).await {
        Ok(r) => {
            let d = |d: &Option<StatisticDuration>| d.as_ref().map_or(json!({ "count": 0, "ns": 0 }), |d| json!({ "count": d.count, "ns": d.ns }));
            let models: Vec<Value> = r
                .into_inner()
                .model_stats
                .iter()
                .map(|m| {
                    let i = m.inference_stats.unwrap_or_default();
                    json!({
                        "name": m.name,
                        "version": m.version,
                        "last_inference": m.last_inference,
                        "inference_count": m.inference_count,
                        "execution_count": m.execution_count,
                        "inference_stats": {
                            "success": d(&i.success), "fail": d(&i.fail), "queue": d(&i.queue),
                            "compute_input": d(&i.compute_input), "compute_infer": d(&i.compute_infer),
                            "compute_output": d(&i.compute_output), "cache_hit": d(&i.cache_hit), "cache_miss": d(&i.cache_miss),
                        },
                        "batch_stats": [],
                    })
                })
                .collect();
            json_response(json!({ "model_stats": models }))
        }
        Err(s) => refused(s),
    }
}

/// Runs `f` on a blocking thread when `heavy`, else here.
async fn off_transport_if<T: Send + 'static>(heavy: bool, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Response> {
    if !heavy {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await.map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &format!("the JSON task failed: {e}")))
}

async fn infer(State(svc): State<OipService>, path: Params, headers: HeaderMap, body: Bytes) -> Response {
    let (model, version) = model_and_version(path);
    if let Some(enc) = headers.get(header::CONTENT_ENCODING).filter(|e| e.as_bytes() != b"identity") {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &format!("Content-Encoding {} is not supported: send the body uncompressed", echo(enc.to_str().unwrap_or("(not text)"))));
    }
    let header_len = match headers.get(HEADER_LENGTH).map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok())) {
        None => None,
        Some(Some(n)) => Some(n),
        Some(None) => return error(StatusCode::BAD_REQUEST, "Inference-Header-Content-Length must be a byte count"),
    };
    let heavy = header_len.is_none() && body.len() > JSON_ON_TRANSPORT_LIMIT;
    let mut req = match off_transport_if(heavy, move || decode_request(&model, &version, header_len, &body)).await {
        Ok(Ok(req)) => req,
        Ok(Err(e)) => return refused(e.into()),
        Err(r) => return r,
    };
    let answer = match svc.model_infer(Request::new(std::mem::take(&mut req.message))).await {
        Ok(r) => r.into_inner(),
        Err(s) => return refused(s),
    };
    // A float takes ~4 bytes raw and up to ~16 in JSON.
    let big_answer = answer.raw_output_contents.iter().map(Vec::len).sum::<usize>() > JSON_ON_TRANSPORT_LIMIT / 4;
    let encoded = match off_transport_if(big_answer && req.json_outputs(), move || encode_response(&req, &answer)).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return refused(e.into()),
        Err(r) => return r,
    };
    body_response(encoded)
}

fn body_response(b: RestBody) -> Response {
    match b.header_len {
        None => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], b.body).into_response(),
        Some(n) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")), (header::HeaderName::from_static(HEADER_LENGTH), HeaderValue::from(n))],
            b.body,
        )
            .into_response(),
    }
}

/// `POST /v2/repository/index`, body `{"ready": bool}` (optional): the
/// served models as `[{"name", "version", "state", "reason"}]`.
async fn repository_index(State(svc): State<OipService>, body: Bytes) -> Response {
    let ready = if body.is_empty() {
        Ok(false)
    } else {
        serde_json::from_slice::<Value>(&body)
            .map_err(|e| format!("the index request's JSON does not parse: {e}"))
            .and_then(|v| match v.get("ready") {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(format!("\"ready\" must be a boolean, not {}", echo_value(other))),
            })
    };
    let ready = match ready {
        Ok(r) => r,
        Err(e) => return refused(RequestError::Invalid(e).into()),
    };
    match svc.repository_index(Request::new(RepositoryIndexRequest { repository_name: String::new(), ready })).await {
        Ok(r) => json_response(Value::Array(
            r.into_inner().models.iter().map(|m| json!({ "name": m.name, "version": m.version, "state": m.state, "reason": m.reason })).collect(),
        )),
        Err(s) => refused(s),
    }
}

async fn shm_status(State(svc): State<OipService>, mut path: Params) -> Response {
    let name = param(&mut path, "region");
    match svc.system_shared_memory_status(Request::new(SystemSharedMemoryStatusRequest { name })).await {
        Ok(r) => {
            let mut regions: Vec<_> = r.into_inner().regions.into_values().collect();
            regions.sort_by(|a, b| a.name.cmp(&b.name));
            json_response(Value::Array(regions.iter().map(|r| json!({ "name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size })).collect()))
        }
        Err(s) => refused(s),
    }
}

/// A gRPC request carrying the REST connection's [`ConnInfo`](super::conn::ConnInfo)
/// (the peer address the shared memory rules check).
fn from_peer<T>(message: T, conn: Option<axum::Extension<super::conn::ConnInfo>>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(axum::Extension(info)) = conn {
        r.extensions_mut().insert(info);
    }
    r
}

async fn shm_register(State(svc): State<OipService>, Path(name): Path<String>, conn: Option<axum::Extension<super::conn::ConnInfo>>, body: Bytes) -> Response {
    let parsed: Result<Value, _> = serde_json::from_slice(&body);
    let field = |v: &Value, k: &str| v.get(k).cloned();
    let (key, offset, byte_size) = match parsed {
        Ok(v) => (field(&v, "key"), field(&v, "offset"), field(&v, "byte_size")),
        Err(e) => return refused(RequestError::Invalid(format!("the registration's JSON does not parse: {e}")).into()),
    };
    let Some(Value::String(key)) = key else {
        return refused(RequestError::Invalid("a registration needs a \"key\" string, the POSIX shared memory name (e.g. \"/my_region\")".into()).into());
    };
    let offset = match offset {
        None => Some(0),
        Some(v) => v.as_u64(),
    };
    let (Some(offset), Some(byte_size)) = (offset, byte_size.as_ref().and_then(Value::as_u64)) else {
        return refused(RequestError::Invalid("a registration needs \"byte_size\" (and an optional \"offset\") as non-negative integers".into()).into());
    };
    match svc.system_shared_memory_register(from_peer(SystemSharedMemoryRegisterRequest { name, key, offset, byte_size }, conn)).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(s) => refused(s),
    }
}

async fn shm_unregister(State(svc): State<OipService>, mut path: Params, conn: Option<axum::Extension<super::conn::ConnInfo>>) -> Response {
    let name = param(&mut path, "region");
    match svc.system_shared_memory_unregister(from_peer(SystemSharedMemoryUnregisterRequest { name }, conn)).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(s) => refused(s),
    }
}
