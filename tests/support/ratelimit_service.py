"""A rate limit service for meshd's tests: Envoy's envoy.service.ratelimit.v3
RateLimitService (ShouldRateLimit) with Python grpcio, no generated stubs.

  ratelimit_service.py ADDRESS LIMIT LOG

Counts requests per descriptor (domain and entries) and answers OVER_LIMIT once a
descriptor has been seen more than LIMIT times, OK before. Appends one JSON line per
request to LOG: {"domain": ..., "descriptors": [[[key, value], ...], ...], "code": ...}.
Prints "ready" once serving.
"""

import json
import sys
import threading
from concurrent import futures

import grpc


def varint(buf, i):
    shift = 0
    out = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def fields(buf):
    """(field number, wire type, value) of a protobuf message; bytes for length-delimited."""
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 2:
            n, i = varint(buf, i)
            value = bytes(buf[i : i + n])
            i += n
        elif wire == 1:
            value = bytes(buf[i : i + 8])
            i += 8
        elif wire == 5:
            value = bytes(buf[i : i + 4])
            i += 4
        else:
            raise ValueError("wire type %d" % wire)
        yield number, wire, value


def parse_request(buf):
    domain = ""
    descriptors = []
    for number, _, value in fields(buf):
        if number == 1:
            domain = value.decode()
        elif number == 2:
            entries = []
            for n2, _, v2 in fields(value):
                if n2 == 1:
                    entry = {1: "", 2: ""}
                    for n3, _, v3 in fields(v2):
                        if n3 in entry:
                            entry[n3] = v3.decode()
                    entries.append([entry[1], entry[2]])
            descriptors.append(entries)
    return domain, descriptors


def main():
    address, limit, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    counts = {}
    lock = threading.Lock()

    def should_rate_limit(request, _context):
        domain, descriptors = parse_request(request)
        over = False
        with lock:
            for d in descriptors:
                key = json.dumps([domain, d])
                counts[key] = counts.get(key, 0) + 1
                over = over or counts[key] > limit
            code = 2 if over else 1  # OVER_LIMIT, OK
            with open(log, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "domain": domain,
                            "descriptors": descriptors,
                            "code": "OVER_LIMIT" if over else "OK",
                        }
                    )
                    + "\n"
                )
        # RateLimitResponse { overall_code = 1 (enum) }
        return bytes([0x08, code])

    handler = grpc.method_handlers_generic_handler(
        "envoy.service.ratelimit.v3.RateLimitService",
        {"ShouldRateLimit": grpc.unary_unary_rpc_method_handler(should_rate_limit)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(address)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
