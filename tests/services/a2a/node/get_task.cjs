// An A2A client in another language, generated at run time from the vendored contract alone
// (protos/third_party/a2a/a2a.proto, with the googleapis files it imports): GetTask through the gateway.
//
//   node get_task.cjs <address> <task id> [bearer token]
// prints the Task as JSON (proto field names, enums as names), or the gRPC error as
// {"code": <number>, "details": "..."} and exits 1.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const repo = path.resolve(__dirname, "..", "..", "..", "..");
const definition = protoLoader.loadSync("a2a.proto", {
  includeDirs: [path.join(repo, "protos", "third_party", "a2a"), path.join(repo, "protos", "third_party", "googleapis")],
  keepCase: true,
  enums: String,
  longs: String,
  defaults: false,
  oneofs: true,
});
const { A2AService } = grpc.loadPackageDefinition(definition).lf.a2a.v1;

const [address, taskId, token] = process.argv.slice(2);
const client = new A2AService(address, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
metadata.set("a2a-version", "1.0");
if (token) metadata.set("authorization", `Bearer ${token}`);

client.GetTask({ id: taskId }, metadata, { deadline: Date.now() + 10000 }, (error, task) => {
  if (error) {
    process.stdout.write(JSON.stringify({ code: error.code, details: error.details }) + "\n");
    process.exit(1);
  }
  process.stdout.write(JSON.stringify(task) + "\n");
  client.close();
});
