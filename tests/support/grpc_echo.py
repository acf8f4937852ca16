"""A proxyless gRPC workload for meshd's tests, with Python grpcio (gRPC C-core).

  grpc_echo.py serve ADDRESS NAME
      Serves /meshd.test.Echo/Call on ADDRESS; every call answers NAME. Prints "ready".
  grpc_echo.py call TARGET COUNT [KEY=VALUE ...]
      Makes COUNT calls to TARGET (e.g. xds:///echo.default.svc.cluster.local:7070) on one
      channel with the given request metadata, and prints a JSON object counting the
      answers (and errors by status code). GRPC_XDS_BOOTSTRAP points gRPC at meshd;
      MESHD_XDS_CREDS=1 uses xDS channel credentials (mTLS when meshd says so).

No generated stubs: requests and answers are raw bytes.
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


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "call":
        md = [tuple(kv.split("=", 1)) for kv in sys.argv[4:]]
        call(sys.argv[2], int(sys.argv[3]), md)
    else:
        sys.exit("usage: grpc_echo.py serve ADDRESS NAME | call TARGET COUNT [K=V ...]")
