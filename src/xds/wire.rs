//! ADS responses written straight from the shared encoded resources.
//!
//! tonic's generated service encodes every response message into one buffer per stream
//! and that buffer keeps the capacity of the largest message it ever held (a proxy's
//! whole CDS, megabytes) for the stream's life; building the prost response also deep-
//! copies every resource. Here a response is a small head (the gRPC length prefix and
//! the response's own fields) plus references to resources already encoded once for
//! every proxy of a class. The body copies them into short-lived chunks as HTTP/2 asks
//! for data — hyper polls a body only when the stream has send capacity, so at most a
//! few hundred kilobytes per stream are in flight — and hands large resources (route
//! configurations) to hyper as the shared bytes themselves, with no copy at all.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tokio::sync::mpsc;
use tonic::Status;

use super::cache::Generated;
use crate::envoy::encoded::Encoded;

/// How a response wraps each resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrap {
    /// SotW `DiscoveryResponse.resources` (field 2): the `Any` itself.
    Any,
    /// Delta `DeltaDiscoveryResponse.resources` (field 2): a `Resource` with the
    /// resource's name and version around the `Any`.
    Resource,
}

/// One gRPC message on its way to the proxy. Boxed: a stream's channel allocates
/// its slots 32 at a time whatever its capacity, and every connected proxy has one, so
/// a slot is one pointer rather than the message.
#[derive(Debug)]
pub struct Outgoing(Box<Parts>);

#[derive(Debug)]
pub struct Parts {
    /// The 5-byte gRPC prefix and the response's own fields (versions, type, nonce).
    head: Bytes,
    resources: Vec<Arc<Generated>>,
    wrap: Wrap,
    too_large: bool,
}

impl std::ops::Deref for Outgoing {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

impl std::ops::DerefMut for Outgoing {
    fn deref_mut(&mut self) -> &mut Parts {
        &mut self.0
    }
}

/// Fields of a response other than its resources, in field-number order. Protobuf
/// parsers accept fields in any order, so the resources (field 2) follow them.
pub type Fields<'a> = &'a [(u32, FieldValue<'a>)];

/// A scalar field of a response.
#[derive(Debug, Clone, Copy)]
pub enum FieldValue<'a> {
    Str(&'a str),
    /// An already encoded message (ControlPlane).
    Msg(&'a [u8]),
}

fn field_len(tag: u32, v: &FieldValue<'_>) -> usize {
    let n = match v {
        FieldValue::Str(s) => s.len(),
        FieldValue::Msg(b) => b.len(),
    };
    prost::encoding::key_len(tag) + encoded_len_varint(n as u64) + n
}

fn put_field(buf: &mut impl BufMut, tag: u32, v: &FieldValue<'_>) {
    let b = match v {
        FieldValue::Str(s) => s.as_bytes(),
        FieldValue::Msg(b) => b,
    };
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(b.len() as u64, buf);
    buf.put_slice(b);
}

/// The bytes of a Delta `Resource` before its `Any` (version, field 1; name, field 3;
/// then the key and length of the `Any`, field 2).
fn resource_head_len(r: &Generated) -> usize {
    field_len(1, &FieldValue::Str(&r.version))
        + field_len(3, &FieldValue::Str(&r.name))
        + prost::encoding::key_len(2)
        + encoded_len_varint(r.any.len() as u64)
}

/// The encoded length of one resource as it appears inside the response (without its
/// own field-2 key and length).
fn inner_len(r: &Generated, wrap: Wrap) -> usize {
    match wrap {
        Wrap::Any => r.any.len(),
        Wrap::Resource => resource_head_len(r) + r.any.len(),
    }
}

impl Outgoing {
    /// A response: `fields` (never field 2) then each resource as field 2.
    pub fn new(fields: Fields<'_>, resources: Vec<Arc<Generated>>, wrap: Wrap) -> Self {
        let fields_len: usize = fields.iter().map(|(t, v)| field_len(*t, v)).sum();
        let res_len: usize = resources
            .iter()
            .map(|r| {
                let n = inner_len(r, wrap);
                prost::encoding::key_len(2) + encoded_len_varint(n as u64) + n
            })
            .sum();
        let total = fields_len + res_len;
        let mut head = BytesMut::with_capacity(5 + fields_len);
        head.put_u8(0); // not compressed
        // Over 4 GiB cannot be framed: `too_large` tells the sender to refuse it.
        head.put_u32(u32::try_from(total).unwrap_or(u32::MAX));
        for (t, v) in fields {
            put_field(&mut head, *t, v);
        }
        Outgoing(Box::new(Parts {
            head: head.freeze(),
            resources,
            wrap,
            too_large: u32::try_from(total).is_err(),
        }))
    }

    /// Larger than a gRPC length prefix can say (4 GiB): not to be sent.
    pub fn too_large(&self) -> bool {
        self.too_large
    }

    /// A message already encoded whole (debug responses).
    pub fn encoded(msg: &impl prost::Message) -> Self {
        let body = msg.encode_to_vec();
        let mut head = BytesMut::with_capacity(5 + body.len());
        head.put_u8(0);
        head.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
        head.put_slice(&body);
        Outgoing(Box::new(Parts {
            head: head.freeze(),
            resources: Vec::new(),
            wrap: Wrap::Any,
            too_large: u32::try_from(body.len()).is_err(),
        }))
    }

    /// Number of resources it carries.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Its size on the wire (for metrics and tests).
    pub fn wire_len(&self) -> usize {
        let b = &self.head[1..5];
        5 + u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
    }
}

/// The sending half a stream's task writes responses (or a final error) into.
pub type Sender = mpsc::Sender<Result<Outgoing, Status>>;

/// Chunks handed to hyper are about this size: small enough that a stream holds little
/// in flight, large enough that HTTP/2 framing costs nothing.
const CHUNK: usize = 32 * 1024;

/// Resources at least this large go out as their shared bytes, uncopied.
const SHARE_FROM: usize = 16 * 1024;

/// The response body of one ADS stream.
#[derive(Debug)]
pub struct ResponseBody {
    rx: mpsc::Receiver<Result<Outgoing, Status>>,
    /// The message being written and the index of its next resource.
    current: Option<(Outgoing, usize)>,
    /// A large part's shared bytes, to go out right after the chunk before it.
    shared: Option<Bytes>,
    /// The resource being written (its `Any` may be in parts) and its next part.
    parts: Option<(Encoded, usize)>,
    /// The final status, once the stream's task ended (sent as trailers).
    end: Option<Status>,
    finished: bool,
}

impl ResponseBody {
    pub fn new(rx: mpsc::Receiver<Result<Outgoing, Status>>) -> Self {
        ResponseBody {
            rx,
            current: None,
            shared: None,
            parts: None,
            end: None,
            finished: false,
        }
    }

    /// The large part to go out next, if any; the message is done with when it was
    /// its last.
    fn take_shared(&mut self) -> Option<Bytes> {
        let b = self.shared.take()?;
        if self.parts.is_none()
            && self
                .current
                .as_ref()
                .is_some_and(|(m, n)| *n >= m.resources.len())
        {
            self.current = None;
        }
        Some(b)
    }

    /// Copies what fits of the current message into `chunk`; true when the message is
    /// done. A large part's bytes are left in `shared` instead of being copied.
    fn fill(&mut self, chunk: &mut BytesMut) -> bool {
        let Some((msg, next)) = self.current.as_mut() else {
            return true;
        };
        if *next == 0 && self.parts.is_none() && !msg.head.is_empty() {
            chunk.put_slice(&msg.head);
            msg.head = Bytes::new();
        }
        loop {
            // The rest of the resource being written.
            if let Some((any, i)) = self.parts.as_mut() {
                while let Some(p) = any.parts().get(*i) {
                    if chunk.len() >= CHUNK {
                        return false;
                    }
                    *i += 1;
                    if p.len() >= SHARE_FROM {
                        self.shared = Some(p.clone());
                        if *i == any.parts().len() {
                            self.parts = None;
                        }
                        return self.parts.is_none() && *next == msg.resources.len();
                    }
                    chunk.put_slice(p);
                }
                self.parts = None;
            }
            if *next == msg.resources.len() {
                return true;
            }
            if chunk.len() >= CHUNK {
                return false;
            }
            let r = &msg.resources[*next];
            *next += 1;
            encode_key(2, WireType::LengthDelimited, chunk);
            encode_varint(inner_len(r, msg.wrap) as u64, chunk);
            if msg.wrap == Wrap::Resource {
                put_field(chunk, 1, &FieldValue::Str(&r.version));
                put_field(chunk, 3, &FieldValue::Str(&r.name));
                encode_key(2, WireType::LengthDelimited, chunk);
                encode_varint(r.any.len() as u64, chunk);
            }
            self.parts = Some((r.any.clone(), 0));
        }
    }
}

fn trailers(status: Option<Status>) -> HeaderMap {
    let mut h = HeaderMap::new();
    let status = status.unwrap_or_else(|| Status::ok(""));
    if status.add_header(&mut h).is_err() {
        // A message that cannot be a header value: the code alone.
        h.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    h
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(b) = this.take_shared() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(b))));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        let mut chunk = BytesMut::new();
        loop {
            if this.current.is_none() {
                if this.end.is_none() {
                    match this.rx.poll_recv(cx) {
                        Poll::Ready(Some(Ok(m))) => this.current = Some((m, 0)),
                        Poll::Ready(Some(Err(status))) => this.end = Some(status),
                        Poll::Ready(None) => this.end = Some(Status::ok("")),
                        Poll::Pending if chunk.is_empty() => return Poll::Pending,
                        Poll::Pending => {
                            return Poll::Ready(Some(Ok(http_body::Frame::data(chunk.freeze()))));
                        }
                    }
                }
                if let Some(status) = this.end.take_if(|_| this.current.is_none()) {
                    if !chunk.is_empty() {
                        this.end = Some(status);
                        return Poll::Ready(Some(Ok(http_body::Frame::data(chunk.freeze()))));
                    }
                    this.finished = true;
                    let status = (status.code() != tonic::Code::Ok).then_some(status);
                    return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers(status)))));
                }
            }
            if chunk.capacity() == 0 {
                chunk.reserve(CHUNK + 1024);
            }
            let done = this.fill(&mut chunk);
            if done && this.shared.is_none() {
                this.current = None;
            }
            if chunk.is_empty()
                && let Some(b) = this.take_shared()
            {
                // A part after a part: nothing of its own goes before it.
                return Poll::Ready(Some(Ok(http_body::Frame::data(b))));
            }
            if this.shared.is_some() || chunk.len() >= CHUNK {
                return Poll::Ready(Some(Ok(http_body::Frame::data(chunk.freeze()))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.shared.is_none()
    }
}

/// The request side of an ADS stream: gRPC messages decoded from the request body.
/// tonic's decoder keeps its buffer at the largest request's size for the stream's
/// life (a real Envoy's first request, its node with every extension it has, is tens of
/// kilobytes; a Delta request naming every cluster of a large mesh, hundreds); this one
/// lets the buffer go whenever it holds no part of a next message, which between
/// requests is always: a waiting stream holds no buffer.
pub struct Requests<M> {
    body: tonic::body::Body,
    /// Bytes received and not yet decoded, from the start of a message.
    buf: Vec<u8>,
    max: usize,
    _message: std::marker::PhantomData<fn() -> M>,
}

impl<M: prost::Message + Default> Requests<M> {
    pub fn new(body: tonic::body::Body, max: usize) -> Self {
        Requests {
            body,
            buf: Vec::new(),
            max,
            _message: std::marker::PhantomData,
        }
    }

    /// The next request; `None` when the client closed its side. Cancel-safe: bytes
    /// read before a cancellation stay buffered for the next call.
    pub async fn message(&mut self) -> Result<Option<M>, Status> {
        loop {
            if self.buf.len() >= 5 {
                if self.buf[0] != 0 {
                    return Err(Status::unimplemented(
                        "compressed requests are not supported",
                    ));
                }
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > self.max {
                    return Err(Status::resource_exhausted(format!(
                        "request of {len} bytes is larger than the limit of {} bytes",
                        self.max
                    )));
                }
                if self.buf.len() >= 5 + len {
                    let msg = M::decode(&self.buf[5..5 + len]);
                    if self.buf.len() == 5 + len {
                        self.buf = Vec::new();
                    } else {
                        self.buf.drain(..5 + len);
                    }
                    return msg
                        .map(Some)
                        .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")));
                }
            }
            let frame = std::future::poll_fn(|cx| {
                http_body::Body::poll_frame(Pin::new(&mut self.body), cx)
            })
            .await;
            match frame {
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(Status::invalid_argument(
                        "the stream ended inside a message",
                    ));
                }
                Some(Err(e)) => return Err(e),
                // Trailers carry nothing for us.
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse,
    };
    use envoy_types::pb::google::protobuf::Any;
    use http_body_util::BodyExt;
    use prost::Message;

    fn res(name: &str, size: usize) -> Arc<Generated> {
        let any = Any {
            type_url: "type.googleapis.com/test".into(),
            value: vec![7u8; size],
        };
        Arc::new(Generated {
            name: name.into(),
            version: format!("v-{name}"),
            any: any.encode_to_vec().into(),
        })
    }

    /// A resource whose `Any` is in parts of the given sizes (the last takes the rest).
    fn res_parts(name: &str, size: usize, cuts: &[usize]) -> Arc<Generated> {
        let bytes = Bytes::from(
            Any {
                type_url: "type.googleapis.com/test".into(),
                value: (0..size).map(|i| i as u8).collect(),
            }
            .encode_to_vec(),
        );
        let mut parts = Vec::new();
        let mut at = 0;
        for c in cuts {
            parts.push(bytes.slice(at..at + c));
            at += c;
        }
        parts.push(bytes.slice(at..));
        Arc::new(Generated {
            name: name.into(),
            version: format!("v-{name}"),
            any: Encoded::from_parts(parts, 1),
        })
    }

    /// Everything the body yields, split back into gRPC messages, and its trailers.
    async fn drain(items: Vec<Result<Outgoing, Status>>) -> (Vec<Vec<u8>>, HeaderMap) {
        let (tx, rx) = mpsc::channel(items.len().max(1));
        for i in items {
            tx.send(i).await.expect("room");
        }
        drop(tx);
        let mut body = ResponseBody::new(rx);
        let mut data = Vec::new();
        let mut trailers = HeaderMap::new();
        while let Some(f) = body.frame().await {
            let f = f.expect("frame");
            match f.into_data() {
                Ok(d) => {
                    assert!(!d.is_empty(), "empty data frame");
                    data.extend_from_slice(&d);
                }
                Err(f) => trailers = f.into_trailers().expect("trailers"),
            }
        }
        let mut msgs = Vec::new();
        let mut rest = &data[..];
        while !rest.is_empty() {
            assert_eq!(rest[0], 0);
            let n = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            msgs.push(rest[5..5 + n].to_vec());
            rest = &rest[5 + n..];
        }
        (msgs, trailers)
    }

    #[tokio::test]
    async fn sotw_and_delta_responses_decode_as_prost_would_encode_them() {
        let small: Vec<_> = (0..3000).map(|i| res(&format!("c{i}"), 400)).collect();
        let big = res("routes", 300 * 1024);
        let mut all = small.clone();
        all.insert(1500, big.clone());
        // In parts, small and large (large ones go out uncopied) in every order: one
        // ending on a large part, then one after it beginning with a large part.
        all.insert(
            700,
            res_parts("parts-a", 100_000, &[10, 40_000, 20_000, 300, 5]),
        );
        all.insert(
            701,
            res_parts("parts-b", 100_000, &[30_000, 1, 17_000, 2_000]),
        );
        all.insert(702, res_parts("parts-c", 500, &[3, 3]));
        all.push(res("last", 10));
        all.push(res_parts("parts-last", 60_000, &[7, 20_000]));
        let cp = envoy_types::pb::envoy::config::core::v3::ControlPlane {
            identifier: "meshd".into(),
        }
        .encode_to_vec();
        let sotw = Outgoing::new(
            &[
                (1, FieldValue::Str("ver")),
                (4, FieldValue::Str("type.googleapis.com/test")),
                (5, FieldValue::Str("n-1")),
                (6, FieldValue::Msg(&cp)),
            ],
            all.clone(),
            Wrap::Any,
        );
        let delta = Outgoing::new(
            &[
                (1, FieldValue::Str("sys")),
                (4, FieldValue::Str("type.googleapis.com/test")),
                (5, FieldValue::Str("n-2")),
            ],
            all.clone(),
            Wrap::Resource,
        );
        let empty = Outgoing::new(&[(5, FieldValue::Str("n-3"))], Vec::new(), Wrap::Any);
        let lens = [sotw.wire_len(), delta.wire_len(), empty.wire_len()];
        let (msgs, trailers) = drain(vec![Ok(sotw), Ok(delta), Ok(empty)]).await;
        assert_eq!(msgs.len(), 3);
        assert_eq!(
            msgs.iter().map(|m| m.len() + 5).collect::<Vec<_>>(),
            lens.to_vec()
        );
        let s = DiscoveryResponse::decode(&msgs[0][..]).expect("sotw decodes");
        assert_eq!(s.version_info, "ver");
        assert_eq!(s.nonce, "n-1");
        assert_eq!(
            s.control_plane.map(|c| c.identifier).as_deref(),
            Some("meshd")
        );
        assert_eq!(s.resources.len(), all.len());
        for (got, want) in s.resources.iter().zip(&all) {
            assert_eq!(got.encode_to_vec(), want.any.to_vec());
        }
        let d = DeltaDiscoveryResponse::decode(&msgs[1][..]).expect("delta decodes");
        assert_eq!(d.system_version_info, "sys");
        assert_eq!(d.resources.len(), all.len());
        for (got, want) in d.resources.iter().zip(&all) {
            assert_eq!(got.name, want.name);
            assert_eq!(got.version, want.version);
            assert_eq!(
                got.resource.as_ref().map(|a| a.encode_to_vec()),
                Some(want.any.to_vec())
            );
        }
        let e = DiscoveryResponse::decode(&msgs[2][..]).expect("empty decodes");
        assert_eq!(e.nonce, "n-3");
        assert!(e.resources.is_empty());
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
    }

    #[tokio::test]
    async fn an_error_ends_the_stream_with_its_status_after_what_was_queued() {
        let m = Outgoing::new(&[(5, FieldValue::Str("n"))], vec![res("a", 5)], Wrap::Any);
        let (msgs, trailers) =
            drain(vec![Ok(m), Err(Status::permission_denied("not yours"))]).await;
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"7"[..])
        );
        assert_eq!(
            trailers.get("grpc-message").map(|v| v.as_bytes()),
            Some(&b"not%20yours"[..])
        );
    }

    #[tokio::test]
    async fn requests_split_across_frames_decode_and_leave_no_buffer() {
        use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
        let big = DeltaDiscoveryRequest {
            resource_names_subscribe: (0..3000).map(|i| format!("outbound|80||s{i}.ns")).collect(),
            ..Default::default()
        };
        let small = DeltaDiscoveryRequest {
            response_nonce: "n1".into(),
            ..Default::default()
        };
        let mut bytes = Vec::new();
        for m in [&big, &small] {
            let b = m.encode_to_vec();
            bytes.push(0u8);
            bytes.extend_from_slice(&(b.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&b);
        }
        // Frames of 1,000 bytes: messages and even headers straddle them.
        let frames: Vec<Result<http_body::Frame<Bytes>, Status>> = bytes
            .chunks(1000)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )));
        let mut r = Requests::<DeltaDiscoveryRequest>::new(body, 4 << 20);
        let first = r.message().await.expect("ok").expect("a message");
        assert_eq!(first, big);
        let second = r.message().await.expect("ok").expect("a message");
        assert_eq!(second, small);
        // Between requests the stream holds no buffer.
        assert_eq!(r.buf.capacity(), 0);
        assert!(r.message().await.expect("ok").is_none());
    }

    #[tokio::test]
    async fn a_request_over_the_limit_is_refused() {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&(10_000u32).to_be_bytes());
        let frames = vec![Ok::<_, Status>(http_body::Frame::data(Bytes::from(bytes)))];
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )));
        let mut r =
            Requests::<envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest>::new(
                body, 1000,
            );
        let err = r.message().await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn a_large_resource_goes_out_as_its_shared_bytes() {
        let big = res("routes", 64 * 1024);
        let parts = res_parts("parts", 100_000, &[100, 40_000, 50, 20_000]);
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(Outgoing::new(
            &[],
            vec![big.clone(), parts.clone()],
            Wrap::Any,
        )))
        .await
        .expect("room");
        drop(tx);
        let mut body = ResponseBody::new(rx);
        let mut frames = Vec::new();
        while let Some(Ok(f)) = body.frame().await {
            if let Ok(d) = f.into_data() {
                frames.push(d);
            }
        }
        // Each large part (whole resource or part of one) handed over as itself.
        let large = big
            .any
            .parts()
            .iter()
            .chain(parts.any.parts().iter().filter(|p| p.len() >= SHARE_FROM));
        for part in large {
            assert!(
                frames
                    .iter()
                    .any(|d| d.as_ptr() == part.as_ptr() && d.len() == part.len()),
                "a part of {} bytes was copied",
                part.len()
            );
        }
    }
}
