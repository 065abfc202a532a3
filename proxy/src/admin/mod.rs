//! The admin HTTP API on its own thread (`[admin] listen`): JSON for operators and load
//! balancers, and `regedge ctl` as its client.
//!
//! - `GET /live`: 200 while the process runs (never needs the token).
//! - `GET /ready`: 200 when the config is loaded, the event loops run and the fast path
//!   is attached or deliberately off; 503 with the reason otherwise (and while shutting
//!   down).
//! - `GET /bindings?device=&aor=&flow=&offset=&limit=`: bindings sorted by device, a page
//!   of them with the total.
//! - `GET /backends`, `GET /groups`.
//! - `POST /backends/<name>/drain`, `POST /backends/<name>/enable`,
//!   `POST /bindings/<device>/remove`. Mutations take POST only (405 otherwise).
//!
//! With `[admin] token` set, every request but `/live` needs `Authorization: Bearer
//! <token>` (401 otherwise). Errors are JSON too: `{"error": "...", "status": N}`.

pub mod api;
pub mod client;

use std::{net::SocketAddr, sync::Arc, thread::JoinHandle};

use arc_swap::ArcSwap;

use crate::{failover::Routing, io::workers::Shared, registrar::Registrar};

/// What the handlers see of the node.
pub struct Node {
    pub routing: Arc<Routing>,
    pub shared: Arc<Shared>,
    pub readiness: api::SharedReadiness,
    /// The bearer token; empty means none. A reload may change it.
    pub token: ArcSwap<String>,
}

impl Node {
    /// The SIP registration edge, when the node has one.
    pub fn registrar(&self) -> Option<&Registrar> {
        self.shared.engine.registrar.as_ref()
    }
}

/// The admin endpoint on its own thread; dropping stops it.
pub struct AdminServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    pub local_addr: SocketAddr,
}

impl AdminServer {
    pub fn start(listen: SocketAddr, node: Arc<Node>) -> std::io::Result<Self> {
        let server = Arc::new(tiny_http::Server::http(listen).map_err(std::io::Error::other)?);
        let local_addr =
            server.server_addr().to_ip().ok_or_else(|| std::io::Error::other("admin listener is not IP"))?;
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new().name("admin".into()).spawn(move || serve(&serving, &node))?;
        Ok(Self { server, thread: Some(thread), local_addr })
    }
}

const JSON: &str = "application/json";

fn serve(server: &tiny_http::Server, node: &Node) {
    for request in server.incoming_requests() {
        let method = match request.method() {
            tiny_http::Method::Get => api::Method::Get,
            tiny_http::Method::Post => api::Method::Post,
            _ => api::Method::Other,
        };
        let authorization =
            request.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str().to_owned());
        let token = node.token.load();
        let token = (!token.is_empty()).then_some(token.as_str());
        let now_ms = crate::io::workers::monotonic_ms();
        let reply = api::handle(node, method, request.url(), authorization.as_deref(), token, now_ms);
        let mut body = serde_json::to_string_pretty(&reply.body).expect("JSON values serialize");
        body.push('\n');
        let mut response = tiny_http::Response::from_string(body)
            .with_status_code(reply.status)
            .with_header(tiny_http::Header::from_bytes("Content-Type", JSON).expect("static header"));
        if let Some(allow) = reply.allow {
            response.add_header(tiny_http::Header::from_bytes("Allow", allow).expect("static header"));
        }
        if reply.status == 401 {
            response.add_header(tiny_http::Header::from_bytes("WWW-Authenticate", "Bearer").expect("static header"));
        }
        if reply.status >= 400 && reply.status != 401 {
            tracing::debug!(status = reply.status, url = %request.url(), "admin request refused");
        }
        if let Err(err) = request.respond(response) {
            tracing::debug!(error = %err, "admin client went away");
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
