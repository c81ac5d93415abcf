#!/usr/bin/python3
"""A gRPC backend on Python grpcio (gRPC C-core), e.g. Debian 12's python3-grpcio 1.51.

The e2e tests (tests/e2e/hostile.rs) put it behind Strait where a backend's own HTTP/2 defences
matter: C-core is what many fleets run, and it has its own limits on what a client (here the
gateway) may do to one connection. Messages are raw bytes (no grpcio-tools):
  /grpc.health.v1.Health/Check   -> SERVING
  /bench.Echo/Unary              -> an empty EchoReply
  /bench.Echo/ServerStream       -> EchoReply{payload: 512 bytes} every 2 ms until the caller
                                    goes away (the request is not read)
Usage: /usr/bin/python3 backend.py PORT   (prints "ready" on stdout once it serves)
"""
import asyncio
import sys

import grpc

SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}
REPLY = b"\x0a\x80\x04" + b"\x07" * 512  # EchoReply{payload: 512 bytes}


def identity(message):
    return message


async def check(request, context):
    return SERVING


async def unary(request, context):
    return b""


async def server_stream(request, context):
    # Ends when the caller goes away: grpc.aio cancels this task.
    while True:
        yield REPLY
        await asyncio.sleep(0.002)


def quiet_about_cancelled_calls(loop, context):
    """grpcio 1.51's aio server reports a write to a call its client cancelled as an unretrieved
    task exception (ExecuteBatchError); a flood cancels thousands. Anything else is shown."""
    if type(context.get("exception")).__name__ == "ExecuteBatchError":
        return
    loop.default_exception_handler(context)


async def main():
    port = int(sys.argv[1])
    asyncio.get_running_loop().set_exception_handler(quiet_about_cancelled_calls)
    # asyncio, not a thread pool: every call of a flood runs at once, as on a real server.
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health",
                {"Check": grpc.unary_unary_rpc_method_handler(check, identity, identity)},
            ),
            grpc.method_handlers_generic_handler(
                "bench.Echo",
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(unary, identity, identity),
                    "ServerStream": grpc.unary_stream_rpc_method_handler(
                        server_stream, identity, identity
                    ),
                },
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
