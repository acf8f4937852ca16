"""A proxyless gRPC workload for meshd's tests, with Python grpcio (gRPC C-core).

  grpc_echo.py serve ADDRESS NAME
      Serves /meshd.test.Echo/Call on ADDRESS; every call answers NAME. Prints "ready".
  grpc_echo.py call TARGET COUNT [KEY=VALUE ...]
      Makes COUNT calls to TARGET (e.g. xds:///echo.default.svc.cluster.local:7070) on one
      channel with the given request metadata, and prints a JSON object counting the
      answers (and errors by status code). GRPC_XDS_BOOTSTRAP points gRPC at meshd;
      MESHD_XDS_CREDS=1 uses xDS channel credentials (mTLS when meshd says so).

  grpc_echo.py suite-serve ADDRESS POD NAMESPACE
      The Gateway API conformance suite's echo service
      (gateway_api_conformance.echo_basic.grpcecho.GrpcEcho: Echo and EchoTwo answer an
      EchoResponse naming the method, the authority and POD/NAMESPACE; EchoThree is left
      unimplemented, as the suite's server leaves it). Prints "ready".
  grpc_echo.py suite-call TARGET
      Reads a JSON list of calls ({"method", "metadata", "authority"}) on stdin and prints
      a JSON list of answers ({"code", "pod", "namespace"}), one per call.

No generated stubs: requests and answers are raw bytes (the suite's messages encoded and
decoded by hand below).
"""

import json
import os
import sys
import time
from concurrent import futures

import grpc
import grpc.experimental

METHOD = "/meshd.test.Echo/Call"


def serve(address, name):
    answer = name.encode()

    def call(_request, _context):
        return answer

    handler = grpc.method_handlers_generic_handler(
        "meshd.test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(address)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(target, count, metadata):
    counts = {}
    # MESHD_XDS_CREDS=1: xDS credentials, so the control plane's TLS settings (and the
    # bootstrap's certificate providers) decide; otherwise plaintext.
    if os.environ.get("MESHD_XDS_CREDS") == "1":
        creds = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        rpc = channel.unary_unary(METHOD)
        for _ in range(count):
            try:
                key = rpc(b"", timeout=10, metadata=metadata).decode()
            except grpc.RpcError as e:  # counted, so the test can show what went wrong
                key = "error:%s:%s" % (e.code().name, e.details())
            counts[key] = counts.get(key, 0) + 1
    print(json.dumps(counts), flush=True)


SUITE_SERVICE = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(tag, payload):
    """A length-delimited protobuf field."""
    return _varint(tag << 3 | 2) + _varint(len(payload)) + payload


def _varint_at(data, i):
    """The varint at data[i]: (value, index after it)."""
    n, shift = 0, 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def _fields(data):
    """The length-delimited fields of a protobuf message: tag -> [bytes]."""
    out, i = {}, 0
    while i < len(data):
        key, i = _varint_at(data, i)
        tag, wire = key >> 3, key & 7
        if wire != 2:
            raise ValueError("unexpected wire type %d" % wire)
        n, i = _varint_at(data, i)
        out.setdefault(tag, []).append(data[i : i + n])
        i += n
    return out


def suite_serve(address, pod, namespace):
    def answer(method):
        def handle(_request, context):
            authority = dict(context.invocation_metadata()).get(":authority", "")
            ctx = _field(1, namespace.encode()) + _field(4, pod.encode())
            assertions = (
                _field(1, ("/%s/%s" % (SUITE_SERVICE, method)).encode())
                + _field(3, authority.encode())
                + _field(4, ctx)
            )
            return _field(1, assertions)

        return grpc.unary_unary_rpc_method_handler(handle)

    handler = grpc.method_handlers_generic_handler(
        SUITE_SERVICE, {"Echo": answer("Echo"), "EchoTwo": answer("EchoTwo")}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(address)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def suite_call(target):
    calls = json.load(sys.stdin)
    channels, out = {}, []
    for c in calls:
        authority = c.get("authority") or ""
        if authority not in channels:
            options = [("grpc.default_authority", authority)] if authority else []
            channels[authority] = grpc.insecure_channel(target, options=options)
        rpc = channels[authority].unary_unary("/%s/%s" % (SUITE_SERVICE, c["method"]))
        md = [(k.lower(), v) for k, v in (c.get("metadata") or {}).items()]
        try:
            resp = _fields(rpc(b"", timeout=10, metadata=md))
            ctx = _fields(_fields(resp[1][0])[4][0])
            out.append(
                {
                    "code": "OK",
                    "namespace": ctx.get(1, [b""])[0].decode(),
                    "pod": ctx.get(4, [b""])[0].decode(),
                }
            )
        except grpc.RpcError as e:
            out.append({"code": e.code().name, "details": e.details()})
    for ch in channels.values():
        ch.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "suite-serve":
        suite_serve(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "suite-call":
        suite_call(sys.argv[2])
    elif sys.argv[1] == "call":
        md = [tuple(kv.split("=", 1)) for kv in sys.argv[4:]]
        call(sys.argv[2], int(sys.argv[3]), md)
    else:
        sys.exit("usage: grpc_echo.py serve ADDRESS NAME | call TARGET COUNT [K=V ...]")
