// A proxyless gRPC client for meshd's tests with npm @grpc/grpc-js-xds:
//   node grpc_xds_client.js TARGET COUNT [KEY=VALUE ...]
// makes COUNT unary calls to /meshd.test.Echo/Call on one channel (raw bytes, no
// generated stubs) and prints a JSON object counting the answers and the errors.
// GRPC_XDS_BOOTSTRAP points the xDS client at meshd.
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const [target, countArg, ...pairs] = process.argv.slice(2);
const count = Number(countArg);
const client = new grpc.Client(target, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
for (const kv of pairs) {
  const i = kv.indexOf('=');
  metadata.set(kv.slice(0, i), kv.slice(i + 1));
}
const identity = (b) => b;

function call() {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + 10000);
    client.makeUnaryRequest('/meshd.test.Echo/Call', identity, identity, Buffer.alloc(0),
      metadata, { deadline }, (err, reply) => {
        resolve(err ? `error:${grpc.status[err.code]}:${err.details}` : reply.toString());
      });
  });
}

(async () => {
  const counts = {};
  for (let i = 0; i < count; i++) {
    const key = await call();
    counts[key] = (counts[key] || 0) + 1;
  }
  console.log(JSON.stringify(counts));
  client.close();
  process.exit(0);
})();
