#!/usr/bin/env node
// gRPC-Web test client for the Strait gateway's end-to-end tests.
//
// Usage: node tests/web/client.mjs '<spec json>'
//
// spec = {
//   "base": "http://127.0.0.1:PORT",        // gateway base URL
//   "descriptors": "/path/echo.pb",          // FileDescriptorSet (protoc --include_imports)
//   "httpVersion": "1.1" | "2",              // default "1.1"
//   "service": "bench.Echo",                 // optional, default "bench.Echo"
//   "calls": [{
//     "method": "Unary" | "ServerStream" | "ClientStream" | "Bidi",
//     "request": {EchoRequest as proto3 JSON},   // Unary, ServerStream
//     "requests": [{...}, ...],                  // ClientStream, Bidi (else [request])
//     "headers": {"x-meta": "v"},                // request metadata, optional
//     "timeoutMs": 5000                          // optional, default 10000
//   }]
// }
//
// Calls run in order. One JSON line per call goes to stdout:
//   {"method", "code", "message", "replies", "headers", "trailers"}
// code is the gRPC status code (0 = OK), message the raw status message,
// replies the reply messages as proto3 JSON (all fields emitted, lowerCamelCase
// names, bytes as base64), headers/trailers the response metadata with
// lowercase names. For a failed call, trailers also hold the error's metadata.
//
// Exit status: 0 when the spec ran (whatever the calls returned), 2 with a
// message on stderr when the spec or the descriptors could not be used.
//
// Uses the gRPC-Web protocol, binary format (application/grpc-web+proto), of
// @connectrpc/connect-node with no generated code: the service is read from
// the descriptor set at run time.

import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";

// Imported dynamically so a missing node_modules gives a clear setup error.
let createFileRegistry, fromBinary, fromJson, toJson, FileDescriptorSetSchema;
let Code, ConnectError, createClient, createGrpcWebTransport, Http2SessionManager;
try {
  ({ createFileRegistry, fromBinary, fromJson, toJson } = await import("@bufbuild/protobuf"));
  ({ FileDescriptorSetSchema } = await import("@bufbuild/protobuf/wkt"));
  ({ Code, ConnectError, createClient } = await import("@connectrpc/connect"));
  ({ createGrpcWebTransport, Http2SessionManager } = await import("@connectrpc/connect-node"));
} catch (e) {
  process.stderr.write(`client.mjs: cannot load the npm packages (${e.message}); run tests/web/install.sh first\n`);
  process.exit(2);
}

const DEFAULT_TIMEOUT_MS = 10000;
// Extra time past timeoutMs before the client gives up on its own, should the
// transport not end the call at its deadline.
const GUARD_SLACK_MS = 3000;

function die(msg) {
  process.stderr.write(`client.mjs: ${msg}\n`);
  process.exit(2);
}

function headersToObject(h) {
  const out = {};
  if (!h) return out;
  // Headers iterates lowercase names; repeated fields come joined with ", ".
  for (const [k, v] of h) {
    out[k.toLowerCase()] = v;
  }
  return out;
}

function parseSpec() {
  const arg = process.argv[2];
  if (arg === undefined) {
    die("usage: node client.mjs '<spec json>'");
  }
  let spec;
  try {
    spec = JSON.parse(arg);
  } catch (e) {
    die(`spec is not valid JSON: ${e.message}`);
  }
  if (spec === null || typeof spec !== "object") die("spec must be a JSON object");
  if (typeof spec.base !== "string" || spec.base === "") die('spec.base must be a URL string');
  try {
    new URL(spec.base);
  } catch {
    die(`spec.base is not a URL: ${spec.base}`);
  }
  if (typeof spec.descriptors !== "string") die("spec.descriptors must be a file path");
  spec.httpVersion = spec.httpVersion === undefined ? "1.1" : String(spec.httpVersion);
  if (spec.httpVersion !== "1.1" && spec.httpVersion !== "2") {
    die(`spec.httpVersion must be "1.1" or "2", not ${JSON.stringify(spec.httpVersion)}`);
  }
  if (!Array.isArray(spec.calls)) die("spec.calls must be an array");
  return spec;
}

function loadService(path, name) {
  let bytes;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    die(`cannot read descriptors ${path}: ${e.message}`);
  }
  let registry;
  try {
    const set = fromBinary(FileDescriptorSetSchema, new Uint8Array(bytes));
    registry = createFileRegistry(set);
  } catch (e) {
    die(`cannot load descriptor set ${path}: ${e.message}`);
  }
  const service = registry.getService(name);
  if (!service) die(`service ${name} not found in ${path}`);
  return service;
}

// Checks every call before any runs, so a bad spec fails as a setup error.
function prepareCalls(spec, service) {
  return spec.calls.map((call, i) => {
    if (call === null || typeof call !== "object") die(`calls[${i}] must be an object`);
    const method = service.methods.find((m) => m.name === call.method);
    if (!method) {
      die(`calls[${i}]: no method ${JSON.stringify(call.method)} in ${service.typeName} ` +
        `(has ${service.methods.map((m) => m.name).join(", ")})`);
    }
    const streamsIn = method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming";
    let rawRequests;
    if (call.requests !== undefined) {
      if (!Array.isArray(call.requests)) die(`calls[${i}].requests must be an array`);
      if (!streamsIn && call.requests.length !== 1) {
        die(`calls[${i}]: ${method.name} takes exactly one request`);
      }
      rawRequests = call.requests;
    } else {
      rawRequests = [call.request ?? {}];
    }
    let requests;
    try {
      requests = rawRequests.map((r) => fromJson(method.input, r));
    } catch (e) {
      die(`calls[${i}]: request is not a valid ${method.input.typeName} in JSON: ${e.message}`);
    }
    const headers = call.headers ?? {};
    if (typeof headers !== "object" || Array.isArray(headers)) {
      die(`calls[${i}].headers must be an object of strings`);
    }
    let timeoutMs = DEFAULT_TIMEOUT_MS;
    if (call.timeoutMs !== undefined) {
      timeoutMs = Number(call.timeoutMs);
      if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) die(`calls[${i}].timeoutMs must be a positive number`);
    }
    return { method, requests, headers, timeoutMs };
  });
}

async function* iterate(list) {
  for (const item of list) yield item;
}

async function runCall(client, call) {
  const { method, requests, headers, timeoutMs } = call;
  const result = {
    method: method.name,
    code: 0,
    message: "",
    replies: [],
    headers: {},
    trailers: {},
  };
  const abort = new AbortController();
  const options = {
    headers,
    timeoutMs,
    signal: abort.signal,
    onHeader: (h) => {
      result.headers = headersToObject(h);
    },
    onTrailer: (t) => {
      result.trailers = headersToObject(t);
    },
  };
  const reply = (m) => toJson(method.output, m, { alwaysEmitImplicit: true });
  let guard;
  const guardFired = new Promise((resolve) => {
    guard = setTimeout(() => {
      abort.abort();
      resolve(true);
    }, timeoutMs + GUARD_SLACK_MS);
  });
  const fn = client[method.localName];
  const work = (async () => {
    switch (method.methodKind) {
      case "unary":
        result.replies.push(reply(await fn(requests[0], options)));
        break;
      case "server_streaming":
        for await (const m of fn(requests[0], options)) result.replies.push(reply(m));
        break;
      case "client_streaming":
        result.replies.push(reply(await fn(iterate(requests), options)));
        break;
      case "bidi_streaming":
        for await (const m of fn(iterate(requests), options)) result.replies.push(reply(m));
        break;
      default:
        throw new Error(`unsupported method kind ${method.methodKind}`);
    }
  })();
  try {
    const fired = await Promise.race([work.then(() => false), guardFired]);
    if (fired) {
      // The transport did not end the call in time; report it as a deadline.
      work.catch(() => {});
      throw new ConnectError(`client guard: no answer within ${timeoutMs + GUARD_SLACK_MS} ms`, Code.DeadlineExceeded);
    }
  } catch (e) {
    const err = ConnectError.from(e);
    result.code = err.code;
    result.message = err.rawMessage;
    result.trailers = { ...result.trailers, ...headersToObject(err.metadata) };
  } finally {
    clearTimeout(guard);
  }
  return result;
}

async function main() {
  const spec = parseSpec();
  const service = loadService(spec.descriptors, spec.service ?? "bench.Echo");
  const calls = prepareCalls(spec, service);

  let sessionManager;
  let agent;
  const transportOptions = { baseUrl: spec.base, httpVersion: spec.httpVersion, useBinaryFormat: true };
  if (spec.httpVersion === "1.1") {
    // Keep-alive on every Node version (18's default agent closes each
    // connection, 20's keeps it), so calls reuse one connection alike.
    const Agent = new URL(spec.base).protocol === "https:" ? https.Agent : http.Agent;
    agent = new Agent({ keepAlive: true });
    transportOptions.nodeOptions = { agent };
  } else {
    // Our own session manager so the HTTP/2 connection can be closed at the end.
    sessionManager = new Http2SessionManager(spec.base);
    transportOptions.sessionManager = sessionManager;
  }
  let transport;
  try {
    transport = createGrpcWebTransport(transportOptions);
  } catch (e) {
    die(`cannot create transport: ${e.message}`);
  }
  const client = createClient(service, transport);

  for (const call of calls) {
    const result = await runCall(client, call);
    process.stdout.write(JSON.stringify(result) + "\n");
  }
  sessionManager?.abort();
  agent?.destroy();
}

main().then(
  () => {
    // Exit once stdout is flushed; idle keep-alive sockets must not hold the process.
    process.stdout.write("", () => process.exit(0));
  },
  (e) => die(`unexpected failure: ${e?.stack ?? e}`),
);
