import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { ControlServer, JobFailure, describeWorker, type StepSummary, type WorkerInfo } from './control-server.js';
import { DataFeed, type RankFeedStats, type RowSource } from './data-feed.js';
import { WorkerProcesses } from './launcher.js';
import { Sampler } from './sampler.js';
import type { ShardWritten } from '../../shared/checkpoint/shard-writer.js';
import { UserError } from '../../shared/util/errors.js';
import type { Logger } from '../../shared/util/log.js';
import type { WorkerJobSection } from '../../shared/config/job.js';
import type { AugmentPolicy } from '../../shared/augment/policy.js';

export interface JobOptions {
  readonly workers: number;
  /** "HOST:PORT": serve the control plane there and wait for remote workers instead of starting local ones. */
  readonly listen?: string;
  /** The host name or address workers reach the coordinator at (default: 127.0.0.1 locally; with --listen its host, or this host's name when that is 0.0.0.0). */
  readonly advertise?: string;
  /** Data-feed port with --listen (default: the control port + 1); local jobs take a free one. */
  readonly dataPort?: number;
  /** Job token; local jobs generate one. Remote workers must be given the same. */
  readonly token?: string;
  /** Pin local workers to GPUs (CUDA_VISIBLE_DEVICES=i). */
  readonly gpu?: boolean;
  readonly workerArgs?: readonly string[];
  readonly workerEnv?: NodeJS.ProcessEnv;
  /** Arguments and environment for local worker i alone. */
  readonly perWorker?: (i: number) => { args?: readonly string[]; env?: NodeJS.ProcessEnv };
  readonly workerOutput?: (line: string) => void;
  readonly step: { readonly name: string; readonly options?: Record<string, unknown> };
  /** The trainer's resolved config, handed to every worker (the job adds its `job` section). */
  readonly config?: Record<string, unknown>;
  readonly source: RowSource;
  readonly seed: number;
  readonly globalBatch: number;
  readonly dropLast?: boolean;
  /** First global step (resume), default 0. */
  readonly startStep?: number;
  /** Steps to run from startStep. */
  readonly steps: number;
  readonly prefetch?: number;
  /** Augment every fed slice in the workers (training only: evaluation reads the dataset itself). */
  readonly augment?: AugmentPolicy | null;
  readonly paramsCheckEvery?: number;
  readonly heartbeatIntervalMs?: number;
  readonly heartbeatTimeoutMs?: number;
  /** Fail when the world is not complete this long after start (default: 120 s local, unbounded with --listen). */
  readonly rendezvousTimeoutMs?: number;
  readonly onStep?: (s: StepSummary) => void;
  /** Called with the local workers' pids once they are started. */
  readonly onLaunched?: (pids: readonly number[]) => void;
  /** Called once every rank has registered. */
  readonly onRendezvous?: (workers: readonly WorkerInfo[]) => void;
  readonly onCheckpointShard?: (s: ShardWritten) => void;
  /** Whether the ranks save a checkpoint after global step `step` (asked once per step, in step order, as the feed sends it). */
  readonly checkpointAfter?: (step: number) => boolean;
  /** Called once the control plane listens (tests start remote workers from here). */
  readonly onListening?: (address: { control: string; data: string; token: string }) => void;
  readonly log: Logger;
}

export interface JobResult {
  readonly workers: readonly WorkerInfo[];
  readonly stepsRun: number;
  readonly lastStep?: StepSummary;
  readonly feed: readonly RankFeedStats[];
  readonly seconds: number;
}

/**
 * One distributed job from start to finish: data feed and control plane up, workers started (or
 * awaited), rendezvous, the steps, shutdown. Any failure (a worker exiting, going silent, reporting
 * an error, replicas diverging, the feed failing, SIGINT/SIGTERM) aborts every worker, stops the
 * local ones and rejects with a JobFailure naming the worker.
 */
export async function runJob(o: JobOptions): Promise<JobResult> {
  const t0 = Date.now();
  const world = o.workers;
  if (!Number.isInteger(world) || world < 1) throw new UserError(`--workers must be a positive integer, got ${world}`);
  const local = o.listen === undefined;
  const token = o.token ?? (local ? randomBytes(16).toString('hex') : undefined);
  if (!token) throw new UserError('--listen needs a job token (--token or CXR_JOB_TOKEN) that the remote workers are also given');
  const prefetch = o.prefetch ?? 2;
  const startStep = o.startStep ?? 0;
  const endStep = startStep + o.steps;
  const heartbeatIntervalMs = o.heartbeatIntervalMs ?? 1000;
  const heartbeatTimeoutMs = o.heartbeatTimeoutMs ?? 15_000;
  let sampler: Sampler;
  try {
    sampler = new Sampler({ size: o.source.size, globalBatch: o.globalBatch, seed: o.seed, dropLast: o.dropLast ?? true });
  } catch (e) {
    throw new UserError((e as Error).message);
  }
  if (o.globalBatch < world)
    throw new UserError(`global batch ${o.globalBatch} is smaller than the worker count ${world}: some ranks would get no rows`);

  const [listenHost, listenPort] = local ? ['127.0.0.1', 0] : splitHostPort(o.listen!, '--listen');
  const advertise = o.advertise ?? (local ? '127.0.0.1' : listenHost === '0.0.0.0' || listenHost === '::' ? hostname() : listenHost);
  const dataPort = local ? 0 : (o.dataPort ?? (listenPort === 0 ? 0 : listenPort + 1));

  const feed = new DataFeed({
    bind: `tcp://${local ? '127.0.0.1' : bracket(listenHost)}:${dataPort === 0 ? '*' : dataPort}`,
    world,
    generation: 1,
    sampler,
    source: o.source,
    startStep,
    endStep,
    prefetch,
    checkpointAfter: o.checkpointAfter,
    log: o.log,
  });
  const boundData = await feed.start();
  const dataEndpoint = `tcp://${bracket(advertise)}:${boundData.slice(boundData.lastIndexOf(':') + 1)}`;

  const section: WorkerJobSection = {
    step: { name: o.step.name, options: o.step.options ?? {} },
    world,
    seed: o.seed,
    globalBatch: o.globalBatch,
    startStep,
    endStep,
    stepsPerEpoch: sampler.stepsPerEpoch,
    prefetch,
    ...(o.augment ? { augment: o.augment } : {}),
    paramsCheckEvery: o.paramsCheckEvery ?? 0,
    heartbeatTimeoutMs,
  };
  let stepsRun = 0;
  let lastStep: StepSummary | undefined;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  const server = new ControlServer({
    listen: `${bracket(listenHost)}:${listenPort}`,
    token,
    world,
    configJson: JSON.stringify({ ...o.config, job: section }),
    dataEndpoint,
    generation: 1,
    heartbeatIntervalMs,
    heartbeatTimeoutMs,
    log: o.log,
    onStep: (s) => {
      stepsRun++;
      lastStep = s;
      o.onStep?.(s);
      if (s.step === endStep - 1) resolveDone();
    },
    onCheckpointShard: o.onCheckpointShard,
  });
  let port: number;
  try {
    port = await server.start();
  } catch (e) {
    await feed.close();
    throw new UserError((e as Error).message);
  }
  const control = `${bracket(advertise)}:${port}`;
  o.log.info(`control plane on ${control}, data feed on ${dataEndpoint}; waiting for ${world} worker${world > 1 ? 's' : ''}`);
  o.onListening?.({ control, data: dataEndpoint, token });

  const procs = local
    ? new WorkerProcesses({
        count: world,
        coordinator: control,
        token,
        gpu: o.gpu ?? false,
        args: o.workerArgs,
        env: o.workerEnv,
        perWorker: o.perWorker,
        output: o.workerOutput,
        log: o.log,
      })
    : undefined;

  let interrupted: (f: JobFailure) => void = () => {};
  const signalled = new Promise<JobFailure>((r) => (interrupted = r));
  const onSignal = (sig: NodeJS.Signals) =>
    interrupted(Object.assign(new JobFailure(`interrupted by ${sig}; stopping the workers`), { exitCode: sig === 'SIGINT' ? 130 : 143 }));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const failures: Promise<JobFailure>[] = [server.failure, feed.failure.then((e) => new JobFailure(e.message)), signalled];
  if (procs) failures.push(procs.failure);
  const firstFailure = Promise.race(failures);
  const orFail = async <T>(p: Promise<T>): Promise<T> => {
    const r = await Promise.race([p.then((v) => ({ ok: true as const, v })), firstFailure.then((f) => ({ ok: false as const, f }))]);
    if (!r.ok) throw r.f;
    return r.v;
  };

  try {
    if (procs) {
      procs.start();
      o.onLaunched?.(procs.pids());
    }
    const rendezvousMs = o.rendezvousTimeoutMs ?? (local ? 120_000 : 0);
    let timer: NodeJS.Timeout | undefined;
    const timeout =
      rendezvousMs > 0
        ? new Promise<never>((_, reject) => {
            timer = setTimeout(() => {
              const got = server.workers();
              const missing = Array.from({ length: world }, (_, r) => r).filter((r) => !got.some((w) => w.rank === r));
              reject(
                new JobFailure(
                  `only ${got.length} of ${world} workers registered within ${(rendezvousMs / 1000).toFixed(0)} s (ranks ${missing.join(', ')} missing)`,
                ),
              );
            }, rendezvousMs);
          })
        : new Promise<never>(() => {});
    const workers = await orFail(Promise.race([server.world, timeout])).finally(() => clearTimeout(timer));
    procs?.setRanks(new Map(workers.map((w) => [w.pid, w.rank])));
    o.log.info(`rendezvous complete: ${workers.map((w) => describeWorker(w)).join('; ')}`);
    o.onRendezvous?.(workers);

    if (endStep > startStep) await orFail(done);
    o.log.info(`all ${endStep - startStep} steps done; shutting the workers down`);
    procs?.expectExit();
    await server.shutdown('training finished');
    const bad = procs ? await procs.waitExit(30_000) : [];
    if (bad.length) throw new JobFailure(`after shutdown, ${bad.join('; ')}`);
    return {
      workers,
      stepsRun,
      lastStep,
      feed: Array.from({ length: world }, (_, r) => feed.statsOf(r)),
      seconds: (Date.now() - t0) / 1000,
    };
  } catch (e) {
    const reason = e instanceof Error ? e.message : String(e);
    server.fail(e instanceof JobFailure ? e : new JobFailure(reason));
    server.abortAll(reason);
    await feed.abort(reason);
    // Give workers a moment to read the abort and exit on their own, then stop what is left.
    if (procs) await procs.kill(2000);
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    // Until every worker has gone (their streams close), keep answering heartbeats for two beats
    // at least: a worker blocked in a collective hears an abort only in a heartbeat reply.
    await server.close(Math.max(500, 2 * heartbeatIntervalMs));
    await feed.close();
  }
}

function splitHostPort(s: string, what: string): [string, number] {
  const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(s);
  const port = m ? Number(m[2]) : NaN;
  if (!m?.[1] || !(port >= 0 && port < 65536)) throw new UserError(`${what} must be HOST:PORT (e.g. 0.0.0.0:29400), got '${s}'`);
  return [m[1], port];
}

function bracket(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}
