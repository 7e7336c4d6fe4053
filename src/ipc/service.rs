//! What the server and every client must agree on: service names, the
//! iceoryx2 configuration, and identical service settings (iceoryx2 refuses
//! to connect ports whose service was built differently).

use crate::error::{Error, Result};
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::event::PortFactory as EventFactory;
use iceoryx2::service::port_factory::request_response::PortFactory as RrFactory;

use super::header::{RequestHeader, ResponseHeader};

/// The iceoryx2 service flavour: ports usable from several threads.
pub type Ipc = ipc_threadsafe::Service;

/// The request-response service of one endpoint.
pub type TensorService = RrFactory<Ipc, [f32], RequestHeader, [f32], ResponseHeader>;

/// Most clients connected to one endpoint at once.
pub const MAX_CLIENTS: usize = 64;
/// Requests a client may have in flight.
pub const MAX_ACTIVE_REQUESTS_PER_CLIENT: usize = 2;
/// Most nodes (processes' handles) attached to one endpoint.
pub const MAX_NODES: usize = MAX_CLIENTS + 8;
/// Notifiers on the request-event service: the clients.
const MAX_REQUEST_NOTIFIERS: usize = MAX_CLIENTS;
/// Notifiers on the response-event service: the server's workers.
pub const MAX_RESPONSE_NOTIFIERS: usize = 32;

/// Names of an endpoint's three services.
pub struct Names {
    pub service: String,
    pub request_event: String,
    pub response_event: String,
}

/// `uminfer/<NAME>` and its event services.
pub fn names(endpoint: &str) -> Result<Names> {
    if endpoint.is_empty() || endpoint.len() > 200 || !endpoint.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(Error::Ipc(format!("endpoint name {endpoint:?} must be 1 to 200 characters of [A-Za-z0-9-_.]")));
    }
    Ok(Names {
        service: format!("uminfer/{endpoint}"),
        request_event: format!("uminfer/{endpoint}/requests"),
        response_event: format!("uminfer/{endpoint}/responses"),
    })
}

/// A node with the default configuration passed explicitly (no "no config
/// file" warning), iceoryx2's own logs routed through `tracing` at warn level.
pub fn node(name: &str) -> Result<Node<Ipc>> {
    set_log_level(LogLevel::Warn);
    let node_name = NodeName::new(name).map_err(|e| Error::Ipc(format!("node name {name:?}: {e:?}")))?;
    NodeBuilder::new()
        .name(&node_name)
        .config(&Config::default())
        .signal_handling_mode(SignalHandlingMode::HandleTerminationRequests)
        .create::<Ipc>()
        .map_err(|e| Error::Ipc(format!("creating an iceoryx2 node: {e}")))
}

fn service_name(s: &str) -> Result<ServiceName> {
    ServiceName::new(s).map_err(|e| Error::Ipc(format!("service name {s:?}: {e:?}")))
}

/// Opens (client) or creates (server) the request-response service.
pub fn tensor_service(node: &Node<Ipc>, names: &Names, create: bool) -> Result<TensorService> {
    let b = node
        .service_builder(&service_name(&names.service)?)
        .request_response::<[f32], [f32]>()
        .request_user_header::<RequestHeader>()
        .response_user_header::<ResponseHeader>()
        .max_servers(1)
        .max_clients(MAX_CLIENTS)
        .max_nodes(MAX_NODES)
        .max_active_requests_per_client(MAX_ACTIVE_REQUESTS_PER_CLIENT)
        .max_response_buffer_size(2)
        .max_loaned_requests(2);
    if create {
        b.open_or_create().map_err(|e| Error::Ipc(format!("creating service {}: {e}", names.service)))
    } else {
        b.open().map_err(|e| {
            let text = format!("{e}");
            // IsMarkedForDestruction: a stopped server's service is being removed (a new one may follow).
            if text.contains("DoesNotExist") || text.contains("IsMarkedForDestruction") {
                Error::ServerGone(format!("no server serves {} (start one with `uminfer serve --name …`)", names.service))
            } else {
                Error::Ipc(format!("opening service {}: {text}", names.service))
            }
        })
    }
}

/// The event service clients notify when they send a request.
pub fn request_events(node: &Node<Ipc>, names: &Names) -> Result<EventFactory<Ipc>> {
    node.service_builder(&service_name(&names.request_event)?)
        .event()
        .max_notifiers(MAX_REQUEST_NOTIFIERS)
        .max_listeners(2)
        .max_nodes(MAX_NODES)
        .open_or_create()
        .map_err(|e| Error::Ipc(format!("event service {}: {e}", names.request_event)))
}

/// The event service the server notifies a client's listener on when its response is ready.
pub fn response_events(node: &Node<Ipc>, names: &Names) -> Result<EventFactory<Ipc>> {
    node.service_builder(&service_name(&names.response_event)?)
        .event()
        .max_notifiers(MAX_RESPONSE_NOTIFIERS)
        .max_listeners(MAX_CLIENTS)
        .max_nodes(MAX_NODES)
        .open_or_create()
        .map_err(|e| Error::Ipc(format!("event service {}: {e}", names.response_event)))
}

/// Removes the resources of dead nodes (crashed servers or clients) on this machine.
pub fn cleanup_dead_nodes(node: &Node<Ipc>) -> usize {
    node.try_cleanup_dead_nodes().cleanups as usize
}
