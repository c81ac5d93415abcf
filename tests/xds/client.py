#!/usr/bin/python3
"""xDS test driver: Python grpcio (gRPC C-core), e.g. Debian 12's python3-grpcio 1.51.

The e2e tests (tests/e2e/xds.rs) run it as a real proxyless client of Strait's xDS server: the
channel resolves `xds:///echo` through the bootstrap that `strait xds-bootstrap` wrote, and
balances by what the server publishes. The channel lives as long as the process, so a test sees
the same client follow each change.

Usage: GRPC_XDS_BOOTSTRAP=/path/bootstrap.json /usr/bin/python3 client.py [target]
  target defaults to xds:///echo (or $XDS_TARGET).
stdin, one command per line:
  call N   -> N sequential unary calls to /bench.Echo/Unary, each with a 2 s deadline,
              then ONE JSON line on stdout:
              {"ok":{"<served_by>":count,...},"errors":{"<STATUS_NAME>":count,...}}
  quit     -> exit 0 (EOF on stdin does the same)
Messages are raw bytes (no grpcio-tools): EchoRequest is sent empty; EchoReply
field 2 (string served_by) is decoded by hand. Diagnostics go to stderr only.
"""
import json
import os
import sys

import grpc

METHOD = "/bench.Echo/Unary"
DEADLINE_S = 2.0


def read_varint(buf, pos):
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def decode_served_by(buf):
    """Last occurrence of field 2 (string served_by), or '' when absent."""
    pos = 0
    served_by = ""
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            end = pos + length
            if end > len(buf):
                raise ValueError("truncated length-delimited field")
            if field == 2:
                served_by = bytes(buf[pos:end]).decode("utf-8")
            pos = end
        else:
            raise ValueError("unsupported wire type %d" % wire)
        if pos > len(buf):
            raise ValueError("truncated field")
    return served_by


def run_calls(stub, n):
    ok, errors = {}, {}
    first_error = None
    for _ in range(n):
        try:
            reply = stub(b"", timeout=DEADLINE_S)
        except grpc.RpcError as e:
            code = e.code()
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            errors[name] = errors.get(name, 0) + 1
            if first_error is None:
                first_error = "%s: %s" % (name, e.details())
            continue
        try:
            served_by = decode_served_by(reply)
        except (ValueError, UnicodeDecodeError) as e:
            errors["INTERNAL"] = errors.get("INTERNAL", 0) + 1
            if first_error is None:
                first_error = "INTERNAL: bad EchoReply: %s" % e
            continue
        ok[served_by] = ok.get(served_by, 0) + 1
    if first_error is not None:
        print("client.py: first error: %s" % first_error, file=sys.stderr, flush=True)
    write_line({"ok": ok, "errors": errors})


def write_line(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("XDS_TARGET", "xds:///echo")
    channel = grpc.insecure_channel(target)
    # No serializers: the request is passed through as bytes, the reply returned as bytes.
    stub = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "call" and len(words) == 2 and words[1].isdigit():
            run_calls(stub, int(words[1]))
            continue
        write_line({"error": "unknown command: %s" % line.strip()})
    sys.stdout.flush()
    # Skip interpreter teardown of the channel/xDS client; exit promptly with 0.
    os._exit(0)


if __name__ == "__main__":
    main()
