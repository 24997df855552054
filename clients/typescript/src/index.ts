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

/** The control plane's services. */
export const SERVICES = [
  "ToolService",
  "ModelService",
  "PromptService",
  "AgentRegistryService",
  "TenantService",
  "ApiKeyService",
  "ApprovalService",
  "TelemetryService",
  "FeedbackService",
  "RolloutService",
  "EvalService",
  "AuditService",
  "QuotaService",
] as const;
/** AgentService runs agents: it is served by executors, not by the control plane. */
export type ServiceName = (typeof SERVICES)[number] | "AgentService";

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
  /** host:port of an executor (for AgentService); unset: AgentService is not available. */
  executorAddress?: string;
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
    if (options.executorAddress) {
      const Ctor = v1.AgentService as grpc.ServiceClientConstructor;
      this.stubs.set("AgentService", new Ctor(options.executorAddress, credentials));
    }
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  private metadata(): grpc.Metadata {
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${this.options.apiKey}`);
    return metadata;
  }

  private stub(service: ServiceName): Record<string, unknown> {
    const stub = this.stubs.get(service);
    if (stub === undefined) {
      throw new Error(`${service} is served by executors: pass executorAddress`);
    }
    return stub as unknown as Record<string, unknown>;
  }

  /**
   * A server-streaming call (RunAgent, WatchRun, WatchRollout): its responses as they
   * come; the iteration throws ApiError when the server ends the stream with an error.
   * Without ``timeoutMs`` the stream has no deadline.
   */
  async *stream<T extends Message = Message>(
    service: ServiceName,
    method: string,
    request: Message,
    timeoutMs?: number,
  ): AsyncGenerator<T> {
    const stub = this.stub(service);
    const fn = stub[method] as ((r: Message, m: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientReadableStream<T>) | undefined;
    if (typeof fn !== "function") throw new Error(`${service} has no method ${method}`);
    const options: grpc.CallOptions = timeoutMs ? { deadline: new Date(Date.now() + timeoutMs) } : {};
    const call = fn.call(stub, request, this.metadata(), options);
    try {
      for await (const response of call) yield response as T;
    } catch (error) {
      const e = error as grpc.ServiceError;
      throw new ApiError(grpc.status[e.code] ?? String(e.code), e.details, e.metadata);
    }
  }

  /** Calls `service.method(request)`; rejects with ApiError when the server refuses. */
  call<T extends Message = Message>(service: ServiceName, method: string, request: Message): Promise<T> {
    let stub: Record<string, Unary>;
    try {
      stub = this.stub(service) as Record<string, Unary>;
    } catch (error) {
      return Promise.reject(error);
    }
    const fn = stub[method];
    if (typeof fn !== "function") {
      return Promise.reject(new Error(`${service} has no method ${method}`));
    }
    const deadline = new Date(Date.now() + this.timeoutMs);
    return new Promise<T>((resolvePromise, reject) => {
      fn.call(stub, request, this.metadata(), { deadline }, (error, response) => {
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
