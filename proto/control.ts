import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { packageRoot } from '../shared/util/paths.js';

/**
 * TypeScript view of proto/control.proto, loaded at run time with @grpc/proto-loader.
 *
 * The types are written by hand (proto-loader-gen-types emits extensionless relative imports that
 * NodeNext refuses), so `loadControlProto` checks them against the .proto when it loads it: every
 * message's field names must be exactly those in `MESSAGE_FIELDS`, and `MESSAGE_FIELDS` is tied to
 * the interfaces below by `satisfies`, so the .proto, the table and the types cannot drift apart
 * without a compile error or a load-time error naming the message and field.
 *
 * Loader options: 64-bit integers as JS numbers (steps and byte counts stay far below 2^53), every
 * field present with its default, oneofs exposed as a `command` discriminator.
 */

export interface RegisterRequest {
  jobToken: string;
  host: string;
  device: number;
  pid: number;
  collectiveEndpoint: string;
  requestedRank: number;
  backend: string;
}

export interface RegisterReply {
  rank: number;
  worldSize: number;
  peerEndpoints: string[];
  configJson: string;
  dataEndpoint: string;
  generation: number;
  heartbeatIntervalMs: number;
}

export interface HeartbeatRequest {
  rank: number;
  generation: number;
  step: number;
}

export interface HeartbeatReply {
  /** Non-empty once the coordinator has aborted the job. */
  abortReason: string;
}

export interface ParamsHash {
  rank: number;
  generation: number;
  step: number;
  sha256: string;
}

export interface ParamsVerdict {
  ok: boolean;
  message: string;
}

export interface StepTimings {
  compute: number;
  gather: number;
  reduce: number;
  dataWait: number;
  total: number;
}

export interface StepReport {
  rank: number;
  generation: number;
  step: number;
  epoch: number;
  losses: Record<string, number>;
  counters: Record<string, number>;
  timings: StepTimings;
  images: number;
  paramsHash: string;
}

export type StepAck = Record<string, never>;

export interface CheckpointShard {
  rank: number;
  generation: number;
  step: number;
  path: string;
  sha256: string;
  bytes: number;
  world: number;
  start: number;
  end: number;
  hostPath: string;
  seconds: number;
}

export type CheckpointAck = Record<string, never>;

export interface ErrorReport {
  rank: number;
  generation: number;
  message: string;
  stack: string;
  userError: boolean;
}

export type ErrorAck = Record<string, never>;

export interface CommandsRequest {
  rank: number;
  generation: number;
}

export type Command = { command: 'shutdown'; shutdown: { reason: string } } | { command: 'abort'; abort: { reason: string } };

type Fields<T> = readonly (keyof T)[];

/** The field names of every message, as the .proto declares them (camelCased). */
export const MESSAGE_FIELDS = {
  RegisterRequest: [
    'jobToken',
    'host',
    'device',
    'pid',
    'collectiveEndpoint',
    'requestedRank',
    'backend',
  ] satisfies Fields<RegisterRequest>,
  RegisterReply: [
    'rank',
    'worldSize',
    'peerEndpoints',
    'configJson',
    'dataEndpoint',
    'generation',
    'heartbeatIntervalMs',
  ] satisfies Fields<RegisterReply>,
  HeartbeatRequest: ['rank', 'generation', 'step'] satisfies Fields<HeartbeatRequest>,
  HeartbeatReply: ['abortReason'] satisfies Fields<HeartbeatReply>,
  ParamsHash: ['rank', 'generation', 'step', 'sha256'] satisfies Fields<ParamsHash>,
  ParamsVerdict: ['ok', 'message'] satisfies Fields<ParamsVerdict>,
  StepTimings: ['compute', 'gather', 'reduce', 'dataWait', 'total'] satisfies Fields<StepTimings>,
  StepReport: ['rank', 'generation', 'step', 'epoch', 'losses', 'counters', 'timings', 'images', 'paramsHash'] satisfies Fields<StepReport>,
  StepAck: [],
  CheckpointShard: [
    'rank',
    'generation',
    'step',
    'path',
    'sha256',
    'bytes',
    'world',
    'start',
    'end',
    'hostPath',
    'seconds',
  ] satisfies Fields<CheckpointShard>,
  CheckpointAck: [],
  ErrorReport: ['rank', 'generation', 'message', 'stack', 'userError'] satisfies Fields<ErrorReport>,
  ErrorAck: [],
  CommandsRequest: ['rank', 'generation'] satisfies Fields<CommandsRequest>,
  Command: ['shutdown', 'abort'],
  Shutdown: ['reason'],
  Abort: ['reason'],
} as const;

/** The RPCs and their shapes; `stream` marks the one server-streaming call. */
export const CONTROL_METHODS = {
  Register: { request: 'RegisterRequest', response: 'RegisterReply', stream: false },
  Heartbeat: { request: 'HeartbeatRequest', response: 'HeartbeatReply', stream: false },
  VerifyParams: { request: 'ParamsHash', response: 'ParamsVerdict', stream: false },
  ReportStep: { request: 'StepReport', response: 'StepAck', stream: false },
  CommitCheckpoint: { request: 'CheckpointShard', response: 'CheckpointAck', stream: false },
  ReportError: { request: 'ErrorReport', response: 'ErrorAck', stream: false },
  Commands: { request: 'CommandsRequest', response: 'Command', stream: true },
} as const;

/** The server side: what the coordinator implements. */
export interface ControlHandlers extends grpc.UntypedServiceImplementation {
  Register: grpc.handleUnaryCall<RegisterRequest, RegisterReply>;
  Heartbeat: grpc.handleUnaryCall<HeartbeatRequest, HeartbeatReply>;
  VerifyParams: grpc.handleUnaryCall<ParamsHash, ParamsVerdict>;
  ReportStep: grpc.handleUnaryCall<StepReport, StepAck>;
  CommitCheckpoint: grpc.handleUnaryCall<CheckpointShard, CheckpointAck>;
  ReportError: grpc.handleUnaryCall<ErrorReport, ErrorAck>;
  Commands: grpc.handleServerStreamingCall<CommandsRequest, Command>;
}

type Unary<Req, Res> = (
  req: Req,
  options: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res?: Res) => void,
) => grpc.ClientUnaryCall;

/** The client side: what a worker calls (grpc-js's generated-client shape). */
export interface ControlClient extends grpc.Client {
  Register: Unary<RegisterRequest, RegisterReply>;
  Heartbeat: Unary<HeartbeatRequest, HeartbeatReply>;
  VerifyParams: Unary<ParamsHash, ParamsVerdict>;
  ReportStep: Unary<StepReport, StepAck>;
  CommitCheckpoint: Unary<CheckpointShard, CheckpointAck>;
  ReportError: Unary<ErrorReport, ErrorAck>;
  Commands: (req: CommandsRequest, options?: grpc.CallOptions) => grpc.ClientReadableStream<Command>;
}

export interface ControlProto {
  service: grpc.ServiceDefinition;
  Client: new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ClientOptions) => ControlClient;
}

export const PROTO_FILE = path.join(packageRoot, 'proto', 'control.proto');
const PACKAGE = 'cxr.control.v1';

let loaded: ControlProto | undefined;

const LOADER_OPTIONS: protoLoader.Options = { longs: Number, enums: String, defaults: true, oneofs: true };

/** Load proto/control.proto once, after checking it against the TypeScript types above. */
export function loadControlProto(): ControlProto {
  if (loaded) return loaded;
  const def = protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS);
  checkAgainstTypes(def, PROTO_FILE);
  // biome-ignore lint/suspicious/noExplicitAny: loadPackageDefinition returns an untyped namespace tree
  const ctor = (grpc.loadPackageDefinition(def) as any).cxr.control.v1.Control as grpc.ServiceClientConstructor;
  loaded = { service: ctor.service, Client: ctor as unknown as ControlProto['Client'] };
  return loaded;
}

/** Check a .proto file against the TypeScript types; throws naming the first message or rpc that differs. */
export function checkProtoFile(file: string): void {
  checkAgainstTypes(protoLoader.loadSync(file, LOADER_OPTIONS), file);
}

function checkAgainstTypes(def: protoLoader.PackageDefinition, file: string): void {
  const where = path.relative(process.cwd(), file) || file;
  for (const [message, fields] of Object.entries(MESSAGE_FIELDS)) {
    const entry = def[`${PACKAGE}.${message}`] as { type?: { field: { name: string }[] } } | undefined;
    if (!entry?.type) throw new Error(`${where}: message ${message} is missing (proto/control.ts expects it)`);
    const inProto = entry.type.field.map((f) => f.name);
    const expected = fields as readonly string[];
    const missing = expected.filter((f) => !inProto.includes(f));
    const extra = inProto.filter((f) => !expected.includes(f));
    if (missing.length || extra.length)
      throw new Error(
        `${where}: message ${message} does not match proto/control.ts` +
          (missing.length ? `; fields missing from the proto: ${missing.join(', ')}` : '') +
          (extra.length ? `; fields not in the TypeScript types: ${extra.join(', ')}` : ''),
      );
  }
  const service = def[`${PACKAGE}.Control`] as protoLoader.ServiceDefinition | undefined;
  if (!service) throw new Error(`${where}: service Control is missing`);
  for (const [name, m] of Object.entries(CONTROL_METHODS)) {
    const got = service[name];
    if (!got) throw new Error(`${where}: rpc ${name} is missing (proto/control.ts expects it)`);
    const req = (got.requestType.type as { name: string }).name;
    const res = (got.responseType.type as { name: string }).name;
    if (req !== m.request || res !== m.response || got.responseStream !== m.stream || got.requestStream)
      throw new Error(
        `${where}: rpc ${name} is (${req}) -> ${got.responseStream ? 'stream ' : ''}${res}, proto/control.ts expects (${m.request}) -> ${m.stream ? 'stream ' : ''}${m.response}`,
      );
  }
  const unknown = Object.keys(service).filter((n) => !(n in CONTROL_METHODS));
  if (unknown.length) throw new Error(`${where}: rpcs not in proto/control.ts: ${unknown.join(', ')}`);
}
