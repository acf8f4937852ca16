//! The ADS gRPC service (`envoy.service.discovery.v3.AggregatedDiscoveryService`) that
//! accepts streams on both ports and hands each to [`super::connection::run_stream`].

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::{Request, Status};

use super::connection::{Mode, PeerAuth, run_stream};
use super::state::{MAX_REQUEST_BYTES, XdsState};
use super::wire::{Requests, ResponseBody};
use crate::ca::server::Authenticator;

/// The ADS gRPC service (`envoy.service.discovery.v3.AggregatedDiscoveryService`),
/// written by hand rather than generated: requests are decoded by tonic, responses are
/// written from the shared encoded resources (see [`super::wire`]).
#[derive(Debug, Clone)]
pub struct AdsService {
    state: Arc<XdsState>,
    /// Set on the TLS port: streams must authenticate, and may get secrets.
    auth: Option<Arc<Authenticator>>,
    max_request_bytes: usize,
}

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

impl AdsService {
    /// The plaintext service (15010): configuration only, never secrets.
    pub fn new(state: Arc<XdsState>) -> Self {
        AdsService {
            state,
            auth: None,
            max_request_bytes: MAX_REQUEST_BYTES,
        }
    }

    /// The TLS service (15012): callers authenticate; secrets for their own identity.
    pub fn secure(state: Arc<XdsState>, auth: Arc<Authenticator>) -> Self {
        AdsService {
            state,
            auth: Some(auth),
            max_request_bytes: MAX_REQUEST_BYTES,
        }
    }

    /// The largest request message accepted (default [`MAX_REQUEST_BYTES`]).
    pub fn max_request_bytes(mut self, n: usize) -> Self {
        self.max_request_bytes = n;
        self
    }

    async fn peer_auth<T>(&self, req: &Request<T>) -> PeerAuth {
        match &self.auth {
            None => PeerAuth::Plaintext,
            Some(a) => match a.authenticate(req).await {
                Ok(id) => PeerAuth::Authenticated(id),
                Err(e) => PeerAuth::Refused(e),
            },
        }
    }

    async fn serve(
        self,
        req: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        let delta = match req.uri().path() {
            SOTW_PATH => false,
            DELTA_PATH => true,
            other => {
                return Status::unimplemented(format!("no method {other}")).into_http();
            }
        };
        // Envoy does not compress requests; a client that does is told so.
        if let Some(enc) = req.headers().get("grpc-encoding")
            && enc.as_bytes() != b"identity"
        {
            return Status::unimplemented(format!(
                "request compression {} is not supported",
                String::from_utf8_lossy(enc.as_bytes())
            ))
            .into_http();
        }
        // The body is kept apart: authentication reads only the headers and extensions.
        let (parts, body) = req.into_parts();
        let request = Request::from_http(http::Request::from_parts(parts, ()));
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let auth = self.peer_auth(&request).await;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let max = self.max_request_bytes;
        let mode = if delta {
            Mode::Delta {
                inbound: Requests::new(body, max),
                tx,
            }
        } else {
            Mode::Sotw {
                inbound: Requests::new(body, max),
                tx,
            }
        };
        tokio::spawn(run_stream(self.state.clone(), mode, peer, auth));
        let mut resp = http::Response::new(tonic::body::Body::new(ResponseBody::new(rx)));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        resp
    }
}

/// Responses queued per stream before a slow proxy applies back-pressure. Queued
/// responses hold references to shared resources, not copies.
const STREAM_BUFFER: usize = 4;

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.serve(req).await) })
    }
}

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}
