/**
 * A TypeScript client for the Pilothouse gRPC API (package pilothouse.v1).
 *
 * The services are loaded at run time from the repository's proto/ files with
 * @grpc/proto-loader, so this client always speaks the current contract. Field names
 * are the protos' own (snake_case); enums travel as their names; int64 values as strings.
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

/** The repository's proto/ directory (this package lives at clients/typescript). */
export const PROTO_ROOT = resolve(here, "..", "..", "..", "proto");

export const SERVICES = [
  "ToolService",
  "ModelService",
  "PromptService",
  "AgentRegistryService",
  "TenantService",
  "ApiKeyService",
] as const;
export type ServiceName = (typeof SERVICES)[number];

/** A message as proto-loader represents it. */
export type Message = Record<string, unknown>;

/** A refused or failed call: the gRPC status by name, with the server's message. */
export class ApiError extends Error {
  constructor(
    readonly code: string,
    readonly details: string,
    readonly metadata: grpc.Metadata,
  ) {
    super(`${code}: ${details}`);
  }
}

export interface ClientOptions {
  /** host:port of the control plane. */
  address: string;
  /** Sent as `authorization: Bearer <apiKey>`. */
  apiKey: string;
  /** TLS credentials; plaintext when unset. */
  credentials?: grpc.ChannelCredentials;
  /** Deadline of each call in milliseconds (default 30 000). */
  timeoutMs?: number;
}

function loadPackage(): grpc.GrpcObject {
  const files = readdirSync(join(PROTO_ROOT, "pilothouse", "v1"))
    .filter((f) => f.endsWith(".proto"))
    .map((f) => join("pilothouse", "v1", f));
  const definition = protoLoader.loadSync(files, {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition);
}

type Unary = (
  request: Message,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (error: grpc.ServiceError | null, response?: Message) => void,
) => grpc.ClientUnaryCall;

export class PilothouseClient {
  private readonly stubs = new Map<ServiceName, grpc.Client>();
  private readonly timeoutMs: number;

  constructor(private readonly options: ClientOptions) {
    const pkg = loadPackage();
    const v1 = (pkg.pilothouse as grpc.GrpcObject).v1 as grpc.GrpcObject;
    const credentials = options.credentials ?? grpc.credentials.createInsecure();
    for (const name of SERVICES) {
      const Ctor = v1[name] as grpc.ServiceClientConstructor;
      this.stubs.set(name, new Ctor(options.address, credentials));
    }
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  /** Calls `service.method(request)`; rejects with ApiError when the server refuses. */
  call<T extends Message = Message>(service: ServiceName, method: string, request: Message): Promise<T> {
    const stub = this.stubs.get(service) as unknown as Record<string, Unary>;
    const fn = stub[method];
    if (typeof fn !== "function") {
      return Promise.reject(new Error(`${service} has no method ${method}`));
    }
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${this.options.apiKey}`);
    const deadline = new Date(Date.now() + this.timeoutMs);
    return new Promise<T>((resolvePromise, reject) => {
      fn.call(stub, request, metadata, { deadline }, (error, response) => {
        if (error) {
          reject(new ApiError(grpc.status[error.code] ?? String(error.code), error.details, error.metadata));
        } else {
          resolvePromise(response as T);
        }
      });
    });
  }

  close(): void {
    for (const stub of this.stubs.values()) stub.close();
  }
}

/**
 * google.protobuf.Struct from a plain JSON object, as proto-loader expects it (the
 * well-known types keep protobufjs's camelCase names whatever keepCase says).
 */
export function toStruct(value: Record<string, unknown>): Message {
  return { fields: Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toValue(v)])) };
}

function toValue(value: unknown): Message {
  if (value === null || value === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  return { structValue: toStruct(value as Record<string, unknown>) };
}
