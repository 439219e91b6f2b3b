//! The instance's HTTP endpoint, on `CATGA_HTTP_ADDR`
//! ([`Config::http_addr`](crate::Config::http_addr)): `GET /metrics`, the
//! [metrics](crate::metrics) in the Prometheus text format. Off unless the
//! address is set. HTTP/1.1 by hyper; every other path is a 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::metrics::{self, Metrics};

/// The listening endpoint; stops accepting when dropped.
pub(crate) struct HttpServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Listen on `addr` (port 0: any free port) and answer there.
    pub(crate) async fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<HttpServer> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Error::Config(format!("cannot listen on CATGA_HTTP_ADDR={addr}: {e}; choose a free address or unset it"))
        })?;
        let addr = listener.local_addr().map_err(|e| Error::Config(format!("CATGA_HTTP_ADDR={addr}: {e}")))?;
        tracing::info!(%addr, "http: serving /metrics");
        let task = tokio::spawn(accept(listener, metrics));
        Ok(HttpServer { addr, task })
    }

    /// Where it listens (the port chosen when 0 was asked for).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, metrics: Arc<Metrics>) {
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
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(request, metrics.clone()));
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

async fn answer(
    request: Request<Incoming>,
    metrics: Arc<Metrics>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let response = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    Ok(match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => response(StatusCode::OK, metrics::CONTENT_TYPE, metrics.render()),
        (_, "/metrics") => response(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET /metrics\n".into()),
        (_, path) => response(StatusCode::NOT_FOUND, "text/plain", format!("no route {path}; try GET /metrics\n")),
    })
}
