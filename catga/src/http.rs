//! The instance's HTTP endpoint, on `CATGA_HTTP_ADDR`
//! ([`Config::http_addr`](crate::Config::http_addr)); off unless the
//! address is set. HTTP/1.1 by hyper; any other path is a 404.
//!
//! - `GET /metrics`: the [metrics] in the Prometheus text
//!   format.
//! - `GET /healthz`: 200 while the process answers (liveness).
//! - `GET /readyz`: 200 when the instance takes work — its transport is
//!   connected, every handler is subscribed, it is not draining — else 503
//!   with the reason. The store's reachability is in the body (and in
//!   `catga_store_up`) but does not make the instance unready: one store
//!   blip must not take every instance out of rotation at once.
//!
//! The same routes, for a program that runs its own HTTP server, are
//! [`Routes`] ([`App::routes`](crate::App::routes)): a `tower` service
//! that axum mounts with `Router::nest_service` or `route_service`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;
use tower_service::Service;

use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::metrics;
use crate::store::Key;

/// How long `/readyz` and `/metrics` wait for the store's answer.
const STORE_PROBE: Duration = Duration::from_secs(1);

/// Listen on `addr` (port 0: any free port) and answer there for
/// `instance`: where it listens, and the accepting task (the instance
/// aborts it at shutdown; it also ends once the instance is gone).
pub(crate) async fn start(addr: SocketAddr, instance: &Arc<Instance>) -> Result<(SocketAddr, AbortHandle)> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::Config(format!("cannot listen on CATGA_HTTP_ADDR={addr}: {e}; choose a free address or unset it"))
    })?;
    let addr = listener.local_addr().map_err(|e| Error::Config(format!("CATGA_HTTP_ADDR={addr}: {e}")))?;
    tracing::info!(%addr, "http: serving /metrics, /healthz, /readyz");
    let task = tokio::spawn(accept(listener, Routes::new(instance)));
    Ok((addr, task.abort_handle()))
}

async fn accept(listener: TcpListener, routes: Routes) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait a little, keep serving.
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if routes.instance.strong_count() == 0 {
            return; // the instance is gone (dropped without a shutdown)
        }
        let routes = routes.clone();
        tokio::spawn(async move {
            // The same routes a program mounts in its own server.
            let service = hyper::service::service_fn(move |request| routes.clone().call(request));
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                // A client that sends no complete header within 10 s is dropped.
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "http: connection ended with an error");
            }
        });
    }
}

/// `/metrics`, `/healthz` and `/readyz` of one instance as a `tower`
/// service, for a program that serves HTTP itself: mount it in axum with
/// `Router::new().nest_service("/ops", app.routes())` (then
/// `GET /ops/readyz`) or `.route_service("/readyz", app.routes())`. It
/// answers exactly as the server on [`Config::http_addr`](crate::Config::http_addr)
/// does, ignores the request body, and holds the instance weakly: once the
/// instance is gone every route answers 503 `stopped`.
///
/// ```
/// use tower_service::Service;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> catga::Result<()> {
/// let app = catga::Catga::builder().service("docs-routes").client_only().start().await?;
/// let mut routes = app.routes();
/// let request = hyper::Request::get("/healthz").body(()).unwrap();
/// let response = routes.call(request).await.unwrap();
/// assert_eq!(response.status(), 200);
/// # app.shutdown().await; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Routes {
    instance: Weak<Instance>,
}

impl Routes {
    pub(crate) fn new(instance: &Arc<Instance>) -> Self {
        Routes { instance: Arc::downgrade(instance) }
    }
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").field("live", &(self.instance.strong_count() > 0)).finish()
    }
}

impl<B> Service<Request<B>> for Routes {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let instance = self.instance.clone();
        Box::pin(async move { answer(&method, &path, instance).await })
    }
}

async fn answer(
    method: &Method,
    path: &str,
    instance: Weak<Instance>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let response = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    if !matches!(method, &Method::GET | &Method::HEAD) {
        return Ok(response(StatusCode::METHOD_NOT_ALLOWED, "text/plain", format!("use GET {path}\n")));
    }
    let Some(instance) = instance.upgrade() else {
        return Ok(response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "stopped\n".into()));
    };
    Ok(match path {
        "/healthz" => response(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (ready, body) = readiness(&instance).await;
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            response(status, "application/json", body)
        }
        "/metrics" => {
            probe_store(&instance).await;
            response(StatusCode::OK, metrics::CONTENT_TYPE, instance.metrics.render())
        }
        _ => response(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no route {path}; try GET /metrics, /healthz or /readyz\n"),
        ),
    })
}

/// Whether the instance takes work, and why not; one JSON object.
async fn readiness(instance: &Instance) -> (bool, String) {
    let store_up = probe_store(instance).await;
    let transport = instance.transport.connected();
    let mut reasons = Vec::new();
    if !transport {
        reasons.push(format!("{}: not connected", instance.transport.name()));
    }
    if let Err(why) = instance.taking_work() {
        reasons.push(why.to_owned());
    }
    let body = serde_json::json!({
        "ready": reasons.is_empty(),
        "reasons": reasons,
        "instance": instance.instance_id(),
        "service": instance.service(),
        "transport": { "kind": instance.transport.name(), "connected": transport },
        "handlers": instance.handlers.len(),
        "store": { "kind": instance.store.name(), "reachable": store_up },
    });
    (reasons.is_empty(), format!("{body}\n"))
}

/// Read one key from the store (within [`STORE_PROBE`]); sets
/// `catga_store_up`.
async fn probe_store(instance: &Instance) -> bool {
    let key = Key::new("catga:probe", "health");
    let up = matches!(tokio::time::timeout(STORE_PROBE, instance.store.get(&key)).await, Ok(Ok(_)));
    instance.metrics.store_up(up);
    up
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn get(routes: &mut Routes, method: Method, path: &str) -> (StatusCode, String) {
        let request = Request::builder().method(method).uri(path).body(()).unwrap();
        let response = routes.call(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn routes_answer_as_the_server_does_and_turn_unready_when_draining() {
        let app = crate::Catga::builder().service("http-routes").client_only().start().await.unwrap();
        let mut routes = app.routes();

        assert_eq!(get(&mut routes, Method::GET, "/healthz").await, (StatusCode::OK, "ok\n".into()));
        let (status, body) = get(&mut routes, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(ready["ready"], true);
        assert_eq!(ready["store"]["reachable"], true);
        let (status, metrics) = get(&mut routes, Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(metrics.contains("catga_store_up 1"), "{metrics}");
        assert_eq!(get(&mut routes, Method::POST, "/readyz").await.0, StatusCode::METHOD_NOT_ALLOWED);
        let (status, body) = get(&mut routes, Method::GET, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("/readyz"), "{body}");

        app.shutdown().await;
        let (status, body) = get(&mut routes, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        drop(app);
        assert_eq!(get(&mut routes, Method::GET, "/healthz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
