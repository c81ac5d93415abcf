// xDS test driver: Node.js @grpc/grpc-js 1.14 + @grpc/grpc-js-xds 1.14 (vendored in ./vendor).
//
// The second-language proxyless client next to tests/xds/client.py (gRPC C-core): the e2e
// tests (tests/e2e/xds.rs) run it as a real proxyless client of Strait's xDS server. The
// channel resolves `xds:///echo` through the bootstrap that `strait xds-bootstrap` wrote, and
// balances by what the server publishes. The channel lives as long as the process, so a test
// sees the same client follow each change.
//
// Install first (offline, from ./vendor): bash tests/xds/node/install.sh
// Usage: GRPC_XDS_BOOTSTRAP=/path/bootstrap.json node client.mjs [target]
//   target defaults to xds:///echo (or $XDS_TARGET).
// stdin, one command per line:
//   call N   -> N sequential unary calls to /bench.Echo/Unary, each with a 2 s deadline,
//               then ONE JSON line on stdout:
//               {"ok":{"<served_by>":count,...},"errors":{"<STATUS_NAME>":count,...}}
//               (STATUS_NAME as grpc.status names it: "UNAVAILABLE", "DEADLINE_EXCEEDED", ...)
//   quit     -> exit 0 (EOF on stdin does the same)
// An unrecognised line gets {"error":"unknown command: ..."}.
// Messages are hand-encoded protobuf: EchoRequest is sent empty; EchoReply field 2
// (string served_by) is decoded by hand. Diagnostics go to stderr only.
import { createRequire } from 'node:module';
import readline from 'node:readline';

const require = createRequire(import.meta.url);
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const target = process.argv[2] || process.env.XDS_TARGET || 'xds:///echo';
const METHOD = '/bench.Echo/Unary';
const DEADLINE_MS = 2000;

// Status code number -> name ("UNAVAILABLE", ...). grpc.status is a TS numeric enum.
function statusName(code) {
  const name = grpc.status[code];
  return typeof name === 'string' ? name : String(code);
}

function readVarint(buf, pos) {
  let result = 0n;
  let shift = 0n;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const b = buf[pos++];
    result |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [result, pos];
    shift += 7n;
    if (shift > 63n) throw new Error('varint too long');
  }
}

// Returns the last occurrence of field 2 (string served_by), or '' when absent.
function decodeServedBy(buf) {
  let pos = 0;
  let servedBy = '';
  while (pos < buf.length) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    switch (wire) {
      case 0: [, pos] = readVarint(buf, pos); break;
      case 1: pos += 8; break;
      case 5: pos += 4; break;
      case 2: {
        let len;
        [len, pos] = readVarint(buf, pos);
        const end = pos + Number(len);
        if (end > buf.length) throw new Error('truncated length-delimited field');
        if (field === 2) servedBy = buf.subarray(pos, end).toString('utf8');
        pos = end;
        break;
      }
      default: throw new Error(`unsupported wire type ${wire}`);
    }
    if (pos > buf.length) throw new Error('truncated field');
  }
  return servedBy;
}

const client = new grpc.Client(target, grpc.credentials.createInsecure());
const serialize = (b) => (Buffer.isBuffer(b) ? b : Buffer.alloc(0));
const deserialize = (b) => decodeServedBy(b); // a throw here becomes status INTERNAL

function callOnce() {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client.makeUnaryRequest(METHOD, serialize, deserialize, Buffer.alloc(0),
      new grpc.Metadata(), { deadline }, (err, servedBy) => {
        if (err) resolve({ error: statusName(err.code), details: err.details });
        else resolve({ servedBy });
      });
  });
}

function writeLine(obj) {
  return new Promise((resolve) => process.stdout.write(JSON.stringify(obj) + '\n', () => resolve()));
}

async function runCalls(n) {
  const ok = {};
  const errors = {};
  let firstError = null;
  for (let i = 0; i < n; i++) {
    const r = await callOnce();
    if (r.error !== undefined) {
      errors[r.error] = (errors[r.error] || 0) + 1;
      if (firstError === null) firstError = `${r.error}: ${r.details}`;
    } else {
      ok[r.servedBy] = (ok[r.servedBy] || 0) + 1;
    }
  }
  if (firstError !== null) process.stderr.write(`client.mjs: first error: ${firstError}\n`);
  await writeLine({ ok, errors });
}

const rl = readline.createInterface({ input: process.stdin, terminal: false });
// Commands are handled strictly one at a time, in order.
let chain = Promise.resolve();
rl.on('line', (line) => {
  chain = chain.then(async () => {
    const words = line.trim().split(/\s+/).filter(Boolean);
    if (words.length === 0) return;
    if (words[0] === 'quit') process.exit(0);
    if (words[0] === 'call' && words.length === 2 && /^\d+$/.test(words[1])) {
      await runCalls(Number(words[1]));
      return;
    }
    await writeLine({ error: `unknown command: ${line.trim()}` });
  });
});
rl.on('close', () => { chain.then(() => process.exit(0)); });
