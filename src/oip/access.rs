//! Restricted APIs, as Triton offers them: `--grpc-restricted-protocol` and
//! `--http-restricted-api` take `CATEGORY[,CATEGORY...]:KEY=VALUE`; a call of
//! such a category is served only when it carries the header (gRPC:
//! metadata) `KEY` with `VALUE`, others get `UNAVAILABLE` (gRPC) or 403
//! (REST), as Triton answers. The categories are Triton's: `health`,
//! `metadata`, `inference`, `shared-memory`, `model-config`,
//! `model-repository`, `statistics`, `trace`, `logging`.

use super::conn::{GrpcRequest, GrpcResponse};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::http::{HeaderMap, HeaderName};

/// Triton's API categories.
pub const CATEGORIES: [&str; 9] = ["health", "metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics", "trace", "logging"];

/// Some categories, allowed only with header `key` set to `value`.
#[derive(Debug, Clone)]
pub struct Restriction {
    categories: Vec<&'static str>,
    key: HeaderName,
    value: String,
}

impl std::str::FromStr for Restriction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let form = "expected CATEGORY[,CATEGORY...]:KEY=VALUE, e.g. shared-memory,model-repository:admin-key=secret";
        let (cats, kv) = s.split_once(':').ok_or_else(|| format!("{s:?}: {form}"))?;
        let (key, value) = kv.split_once('=').ok_or_else(|| format!("{s:?}: {form}"))?;
        let key = HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes()).map_err(|_| format!("{s:?}: {key:?} is not a header name; {form}"))?;
        if value.is_empty() {
            return Err(format!("{s:?}: the value is empty; {form}"));
        }
        let categories = cats
            .split(',')
            .map(|c| CATEGORIES.iter().copied().find(|k| *k == c.trim()).ok_or_else(|| format!("{s:?}: unknown category {c:?}; the categories are {}", CATEGORIES.join(", "))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { categories, key, value: value.to_string() })
    }
}

/// The restrictions of one listener.
#[derive(Debug, Clone, Default)]
pub struct Restrictions(Vec<Restriction>);

impl Restrictions {
    /// `flag` names the option in errors; a category restricted twice is refused.
    pub fn new(list: Vec<Restriction>, flag: &str) -> Result<Self, String> {
        for (i, r) in list.iter().enumerate() {
            if let Some(c) = r.categories.iter().find(|c| list[..i].iter().any(|e| e.categories.contains(c))) {
                return Err(format!("{flag}: category {c} is restricted twice; give each category one KEY=VALUE"));
            }
        }
        Ok(Self(list))
    }

    /// Whether a call of `category` with `headers` may be served; else why not.
    pub fn check(&self, category: &str, headers: &HeaderMap) -> Result<(), String> {
        let Some(r) = self.0.iter().find(|r| r.categories.contains(&category)) else { return Ok(()) };
        if headers.get(&r.key).is_some_and(|v| v.as_bytes() == r.value.as_bytes()) {
            return Ok(());
        }
        Err(format!("this API ({category}) is restricted: expecting header {:?} with the value the server was given", r.key.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The category of a gRPC method (`/package.Service/Method`).
pub fn grpc_category(path: &str) -> Option<&'static str> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    match service {
        "grpc.health.v1.Health" => Some("health"),
        "inference.GRPCInferenceService" => Some(match method {
            "ServerLive" | "ServerReady" | "ModelReady" => "health",
            "ServerMetadata" | "ModelMetadata" => "metadata",
            "ModelInfer" | "ModelStreamInfer" => "inference",
            "ModelConfig" => "model-config",
            "ModelStatistics" => "statistics",
            "RepositoryIndex" | "RepositoryModelLoad" | "RepositoryModelUnload" => "model-repository",
            "TraceSetting" => "trace",
            "LogSettings" => "logging",
            m if m.contains("SharedMemory") => "shared-memory",
            _ => return None,
        }),
        _ => None,
    }
}

/// The category of a REST route (`/v2/...`).
pub fn rest_category(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/v2")?;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    Some(match parts.as_slice() {
        [] => "metadata",
        ["health", ..] => "health",
        ["repository", ..] => "model-repository",
        ["systemsharedmemory" | "cudasharedmemory", ..] => "shared-memory",
        ["trace", ..] => "trace",
        ["logging", ..] => "logging",
        ["models", "stats"] => "statistics",
        ["models", _] | ["models", _, "versions", _] => "metadata",
        ["models", _, what] | ["models", _, "versions", _, what] => match *what {
            "ready" => "health",
            "infer" => "inference",
            "config" => "model-config",
            "stats" => "statistics",
            _ => return None,
        },
        _ => return None,
    })
}

/// A tower layer for tonic's server that answers a call of a restricted
/// category without its header `UNAVAILABLE`, as Triton does.
#[derive(Clone, Default)]
pub struct RestrictLayer(Arc<Restrictions>);

impl RestrictLayer {
    pub fn new(r: Restrictions) -> Self {
        Self(Arc::new(r))
    }
}

impl<S> tower::Layer<S> for RestrictLayer {
    type Service = Restrict<S>;

    fn layer(&self, inner: S) -> Restrict<S> {
        Restrict { inner, restrictions: self.0.clone() }
    }
}

/// The service of [`RestrictLayer`].
#[derive(Clone)]
pub struct Restrict<S> {
    inner: S,
    restrictions: Arc<Restrictions>,
}

impl<S> tower::Service<GrpcRequest> for Restrict<S>
where
    S: tower::Service<GrpcRequest, Response = GrpcResponse>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<GrpcResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: GrpcRequest) -> Self::Future {
        if let Some(category) = grpc_category(req.uri().path()) {
            if let Err(why) = self.restrictions.check(category, req.headers()) {
                return Box::pin(std::future::ready(Ok(tonic::Status::unavailable(why).into_http())));
            }
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restrictions_parse_as_triton_writes_them_and_refuse_what_they_should() {
        let r: Restriction = "shared-memory,model-repository:Admin-Key=s3cret".parse().unwrap();
        let rs = Restrictions::new(vec![r.clone()], "--grpc-restricted-protocol").unwrap();
        let mut h = HeaderMap::new();
        assert!(rs.check("shared-memory", &h).unwrap_err().contains("\"admin-key\""));
        assert!(rs.check("inference", &h).is_ok(), "an unrestricted category");
        h.insert("admin-key", "wrong".parse().unwrap());
        assert!(rs.check("model-repository", &h).is_err());
        h.insert("admin-key", "s3cret".parse().unwrap());
        assert!(rs.check("model-repository", &h).is_ok());
        assert!("inference".parse::<Restriction>().is_err());
        assert!("inference:k".parse::<Restriction>().is_err());
        assert!("nope:k=v".parse::<Restriction>().unwrap_err().contains("unknown category"));
        assert!(Restrictions::new(vec![r.clone(), "shared-memory:k=v".parse().unwrap()], "--flag").unwrap_err().contains("restricted twice"));
    }

    #[test]
    fn every_route_and_method_has_its_category() {
        assert_eq!(grpc_category("/inference.GRPCInferenceService/SystemSharedMemoryRegister"), Some("shared-memory"));
        assert_eq!(grpc_category("/inference.GRPCInferenceService/ModelInfer"), Some("inference"));
        assert_eq!(grpc_category("/grpc.health.v1.Health/Check"), Some("health"));
        assert_eq!(rest_category("/v2"), Some("metadata"));
        assert_eq!(rest_category("/v2/health/live"), Some("health"));
        assert_eq!(rest_category("/v2/models/ready"), Some("metadata"), "a model named ready");
        assert_eq!(rest_category("/v2/models/tiny/ready"), Some("health"));
        assert_eq!(rest_category("/v2/models/tiny/versions/1/infer"), Some("inference"));
        assert_eq!(rest_category("/v2/models/stats"), Some("statistics"));
        assert_eq!(rest_category("/v2/systemsharedmemory/region/r/register"), Some("shared-memory"));
        assert_eq!(rest_category("/v2/repository/index"), Some("model-repository"));
        assert_eq!(rest_category("/metrics"), None);
    }
}
