import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
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
  /** Counts the job's restarts from 1: messages of a worker of an earlier generation are refused. */
  readonly generation?: number;
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
  /**
   * SIGINT/SIGTERM once the workers run: finish the steps already fed, save a checkpoint after the
   * last and end the job there (JobResult.stopped); a second signal stops at once. Without it, or
   * before the rendezvous, a signal stops at once.
   */
  readonly stopOnSignal?: boolean;
  readonly log: Logger;
}

export interface JobResult {
  readonly workers: readonly WorkerInfo[];
  readonly stepsRun: number;
  readonly lastStep?: StepSummary;
  readonly feed: readonly RankFeedStats[];
  readonly seconds: number;
  /** The job ended early on this signal, after global step `step` (its checkpoint is step + 1). */
  readonly stopped?: { readonly signal: NodeJS.Signals; readonly step: number };
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
    generation: o.generation ?? 1,
    sampler,
    source: o.source,
    startStep,
    endStep,
    prefetch,
    checkpointAfter: o.checkpointAfter,
    log: o.log,
  });
  const boundData = await rebinding(() => feed.start(), o.generation ?? 1);
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
  // The job's last global step: endStep - 1, or the stop step after a signal.
  let finalStep = endStep - 1;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  const server = new ControlServer({
    listen: `${bracket(listenHost)}:${listenPort}`,
    token,
    world,
    configJson: JSON.stringify({ ...o.config, job: section }),
    dataEndpoint,
    generation: o.generation ?? 1,
    heartbeatIntervalMs,
    heartbeatTimeoutMs,
    log: o.log,
    onStep: (s) => {
      stepsRun++;
      lastStep = s;
      o.onStep?.(s);
      if (s.step === finalStep) resolveDone();
    },
    onCheckpointShard: o.onCheckpointShard,
  });
  let port: number;
  try {
    port = await rebinding(() => server.start(), o.generation ?? 1);
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
  let running = false;
  let stopped: JobResult['stopped'];
  const onSignal = (sig: NodeJS.Signals) => {
    if (o.stopOnSignal && running && !stopped) {
      const at = feed.stopEarly();
      stopped = { signal: sig, step: at ?? endStep - 1 };
      if (at === null) o.log.warn(`${sig}: every step is already fed; finishing the run (a second signal stops at once)`);
      else {
        finalStep = at;
        o.log.warn(
          `${sig}: finishing the steps already fed, saving a checkpoint after step ${at + 1} and stopping (a second signal stops at once, without saving)`,
        );
      }
      return;
    }
    interrupted(Object.assign(new JobFailure(`interrupted by ${sig}; stopping the workers`), { exitCode: sig === 'SIGINT' ? 130 : 143 }));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

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
    running = true;

    if (endStep > startStep) await orFail(done);
    running = false;
    const early = stopped && finalStep < endStep - 1;
    o.log.info(
      early
        ? `stopped by ${stopped!.signal} after step ${finalStep + 1}; shutting the workers down`
        : `all ${endStep - startStep} steps done; shutting the workers down`,
    );
    procs?.expectExit();
    await server.shutdown(early ? `stopped by ${stopped!.signal}` : 'training finished');
    const bad = procs ? await procs.waitExit(30_000) : [];
    if (bad.length) throw new JobFailure(`after shutdown, ${bad.join('; ')}`);
    return {
      workers,
      stepsRun,
      lastStep,
      feed: Array.from({ length: world }, (_, r) => feed.statsOf(r)),
      seconds: (Date.now() - t0) / 1000,
      ...(early ? { stopped: { signal: stopped!.signal, step: finalStep } } : {}),
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
    // A local worker that was killed could not remove its Unix socket file; they are all gone now.
    if (procs)
      for (const w of server.workers())
        if (/^ipc:\/\/.*\/cxr-collective-[^/]+\.sock$/.test(w.collectiveEndpoint))
          rmSync(w.collectiveEndpoint.slice('ipc://'.length), { force: true });
  }
}

/** A restarted job binds the ports its previous generation just closed: retry for a few seconds while they are released. */
async function rebinding<T>(bind: () => Promise<T>, generation: number): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await bind();
    } catch (e) {
      if (generation === 1 || i >= 20) throw e;
      await new Promise((r) => setTimeout(r, 250));
    }
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
