//! What the server and every client must agree on: service names, the
//! iceoryx2 configuration, and identical service settings (iceoryx2 refuses
//! to connect ports whose service was built differently).

use crate::error::{Error, IpcErrorKind, Result};
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::event::PortFactory as EventFactory;
use iceoryx2::service::port_factory::request_response::PortFactory as RrFactory;

use super::header::{RequestHeaderV1, ResponseHeaderV1};
use super::table::{RequestHeaderV2, ResponseHeaderV2, TENSOR_ALIGN};

/// The iceoryx2 service flavour: ports usable from several threads.
pub type Ipc = ipc_threadsafe::Service;

/// An endpoint's protocol v1 request-response service: one float32 tensor each way.
pub type ServiceV1 = RrFactory<Ipc, [f32], RequestHeaderV1, [f32], ResponseHeaderV1>;
/// An endpoint's protocol v2 request-response service: named tensors of any dtype.
pub type ServiceV2 = RrFactory<Ipc, [u8], RequestHeaderV2, [u8], ResponseHeaderV2>;

/// Most clients connected to one endpoint at once (of each protocol; in
/// all, at most this many: they share the request-event service's notifiers).
pub const MAX_CLIENTS: usize = 64;
/// Requests a client may have in flight.
pub const MAX_ACTIVE_REQUESTS_PER_CLIENT: usize = 2;
/// Most nodes (processes' handles) attached to one endpoint.
pub const MAX_NODES: usize = MAX_CLIENTS + 8;
/// Notifiers on the request-event service: the clients.
const MAX_REQUEST_NOTIFIERS: usize = MAX_CLIENTS;
/// Notifiers on the response-event service: the server's workers.
pub const MAX_RESPONSE_NOTIFIERS: usize = 32;

/// Names of an endpoint's four services.
pub struct Names {
    /// Protocol v1: `uminfer/NAME`.
    pub service: String,
    /// Protocol v2: `uminfer/NAME/v2`.
    pub service_v2: String,
    pub request_event: String,
    pub response_event: String,
}

/// `uminfer/<NAME>` and its event services.
pub fn names(endpoint: &str) -> Result<Names> {
    if endpoint.is_empty() || endpoint.len() > 200 || !endpoint.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(Error::ipc(IpcErrorKind::Invalid, format!("endpoint name {endpoint:?} must be 1 to 200 characters of [A-Za-z0-9-_.]")));
    }
    Ok(Names {
        service: format!("uminfer/{endpoint}"),
        service_v2: format!("uminfer/{endpoint}/v2"),
        request_event: format!("uminfer/{endpoint}/requests"),
        response_event: format!("uminfer/{endpoint}/responses"),
    })
}

/// A node with the default configuration passed explicitly (no "no config
/// file" warning), iceoryx2's own logs routed through `tracing` at warn level.
pub fn node(name: &str) -> Result<Node<Ipc>> {
    set_log_level(LogLevel::Warn);
    let node_name = NodeName::new(name).map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("node name {name:?}: {e:?}")))?;
    NodeBuilder::new()
        .name(&node_name)
        .config(&Config::default())
        .signal_handling_mode(SignalHandlingMode::HandleTerminationRequests)
        .create::<Ipc>()
        .map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("creating an iceoryx2 node: {e}")))
}

fn service_name(s: &str) -> Result<ServiceName> {
    ServiceName::new(s).map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("service name {s:?}: {e:?}")))
}

/// The settings both request-response services are built with (the same on
/// every side, or iceoryx2 refuses to connect the ports).
macro_rules! rr_settings {
    ($b:expr) => {
        $b.max_servers(1)
            .max_clients(MAX_CLIENTS)
            .max_nodes(MAX_NODES)
            .max_active_requests_per_client(MAX_ACTIVE_REQUESTS_PER_CLIENT)
            .max_response_buffer_size(2)
            .max_loaned_requests(2)
    };
}

/// Opens (client) or creates (server) the protocol v1 request-response service.
pub fn service_v1(node: &Node<Ipc>, names: &Names, create: bool) -> Result<ServiceV1> {
    let b = node.service_builder(&service_name(&names.service)?).request_response::<[f32], [f32]>().request_user_header::<RequestHeaderV1>().response_user_header::<ResponseHeaderV1>();
    let b = rr_settings!(b);
    if create {
        opened(b.open_or_create(), true, &names.service)
    } else {
        opened(b.open(), false, &names.service)
    }
}

/// Opens (client) or creates (server) the protocol v2 request-response
/// service: byte payloads that start on a [`TENSOR_ALIGN`]-byte boundary.
pub fn service_v2(node: &Node<Ipc>, names: &Names, create: bool) -> Result<ServiceV2> {
    let align = Alignment::new(TENSOR_ALIGN).expect("a power of two");
    let b = node
        .service_builder(&service_name(&names.service_v2)?)
        .request_response::<[u8], [u8]>()
        .request_user_header::<RequestHeaderV2>()
        .response_user_header::<ResponseHeaderV2>()
        .request_payload_alignment(align)
        .response_payload_alignment(align);
    let b = rr_settings!(b);
    if create {
        opened(b.open_or_create(), true, &names.service_v2)
    } else {
        opened(b.open(), false, &names.service_v2)
    }
}

/// A request-response service opened or created, or why not: a missing
/// service (or one being removed) is [`Error::ServerGone`].
fn opened<S, E: std::fmt::Display>(r: std::result::Result<S, E>, create: bool, service: &str) -> Result<S> {
    r.map_err(|e| {
        let text = format!("{e}");
        // IsMarkedForDestruction: a stopped server's service is being removed (a new one may follow).
        if create {
            Error::ipc(IpcErrorKind::Transport, format!("creating service {service}: {text}"))
        } else if text.contains("DoesNotExist") || text.contains("IsMarkedForDestruction") {
            Error::ServerGone(format!("no server serves {service} (start one with `uminfer serve --name …`)"))
        } else {
            Error::ipc(IpcErrorKind::Transport, format!("opening service {service}: {text}"))
        }
    })
}

/// The event service clients notify when they send a request.
pub fn request_events(node: &Node<Ipc>, names: &Names) -> Result<EventFactory<Ipc>> {
    node.service_builder(&service_name(&names.request_event)?)
        .event()
        .max_notifiers(MAX_REQUEST_NOTIFIERS)
        .max_listeners(2)
        .max_nodes(MAX_NODES)
        .open_or_create()
        .map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("event service {}: {e}", names.request_event)))
}

/// The event service the server notifies a client's listener on when its response is ready.
pub fn response_events(node: &Node<Ipc>, names: &Names) -> Result<EventFactory<Ipc>> {
    node.service_builder(&service_name(&names.response_event)?)
        .event()
        .max_notifiers(MAX_RESPONSE_NOTIFIERS)
        .max_listeners(MAX_CLIENTS)
        .max_nodes(MAX_NODES)
        .open_or_create()
        .map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("event service {}: {e}", names.response_event)))
}

/// Removes the resources of dead nodes (crashed servers or clients) on this machine.
pub fn cleanup_dead_nodes(node: &Node<Ipc>) -> usize {
    node.try_cleanup_dead_nodes().cleanups as usize
}

/// Installs iceoryx2's signal handlers now. It installs them when a server
/// first waits, for SIGINT and SIGTERM but also SIGPROF and SIGUSR1, and
/// records only the last signal: a profiler's SIGPROF (pprof's, started
/// before) would then reach iceoryx2's handler, overwrite a SIGTERM and the
/// server would never stop. Called before a profile starts, iceoryx2's
/// handlers come first and pprof's SIGPROF handler replaces theirs.
pub fn install_signal_handlers() -> Result<()> {
    let waitset = WaitSetBuilder::new()
        .signal_handling_mode(SignalHandlingMode::HandleTerminationRequests)
        .create::<Ipc>()
        .map_err(|e| Error::ipc(IpcErrorKind::Transport, format!("waitset: {e:?}")))?;
    // An empty waitset refuses to wait, but only after asking iceoryx2's
    // signal handler whether termination was requested: that installs it.
    let _ = waitset.wait_and_process_once_with_timeout(|_| CallbackProgression::Continue, std::time::Duration::ZERO);
    Ok(())
}
