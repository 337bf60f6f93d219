import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import * as path from 'node:path';
import { decodeBatch } from '../shared/dataset/wire.js';
import { freePorts } from '../shared/util/free-ports.js';
import { parseWorkerConfig } from '../shared/config/job.js';
import { UserError, errorMessage } from '../shared/util/errors.js';
import type { Logger } from '../shared/util/log.js';
import { AbortedByCoordinator, register, type ControlSession } from './control-client.js';
import { DataClient, FeedAborted } from './data-client.js';
import { BatchAugmenter } from './batch-augmenter.js';
import { stepFactory, type StepFactory, type WorkerStep } from './steps/api.js';

export interface WorkerOptions {
  /** "HOST:PORT" of the coordinator's control plane. */
  readonly coordinator: string;
  readonly token: string;
  /** Device index (--device); -1 when none. */
  readonly device: number;
  /** Requested rank, or -1 for arrival order. */
  readonly rank: number;
  /** The address peers reach this worker's collective socket at. */
  readonly advertise: string;
  /** Collective port; 0 picks a free one. */
  readonly collectivePort: number;
  readonly connectTimeoutMs: number;
  /** The pid of the coordinator that started this worker, if one did (CXR_COORDINATOR_PID). */
  readonly parentPid?: number;
  readonly log: Logger;
  /** Replace the step the coordinator names (tests, embedding); default: worker/steps.ts. */
  readonly step?: StepFactory;
}

/** Stopped on the coordinator's word (abort, shutdown too early), not by a fault of this worker: nothing to report back. */
class Aborted extends Error {}
/** The coordinator shut the job down after this rank's last step: success. */
class Finished extends Error {}

/**
 * One worker's life: register (with backoff), join the data feed, build the step, prove the
 * replicas identical, run steps until end-of-data reporting each, then wait for the coordinator's
 * shutdown. Resolves with the process exit code.
 */
export async function runWorker(o: WorkerOptions): Promise<number> {
  const loopback = /^(127\.|localhost$|\[?::1\]?$)/.test(o.coordinator.replace(/:\d+$/, ''));
  // Ranks of a job on this host (a loopback coordinator) talk over Unix sockets: measured faster
  // than loopback TCP for the all-reduce (docs/performance.md, "Collectives"). --collective-port keeps TCP.
  const ipc = loopback && !o.collectivePort;
  const port = ipc ? 0 : o.collectivePort || (await freePorts(1, loopback ? '127.0.0.1' : '0.0.0.0'))[0]!;
  const collectiveEndpoint = ipc
    ? `ipc://${path.join(tmpdir(), `cxr-collective-${process.pid}-${randomBytes(4).toString('hex')}.sock`)}`
    : `tcp://${bracket(o.advertise)}:${port}`;
  const session = await register({
    address: o.coordinator,
    connectTimeoutMs: o.connectTimeoutMs,
    parentPid: o.parentPid,
    log: o.log,
    request: {
      jobToken: o.token,
      host: hostname(),
      device: o.device,
      pid: process.pid,
      collectiveEndpoint,
      requestedRank: o.rank,
      backend: '',
    },
  });
  const reply = session.reply;
  const log = o.log.child({ rank: reply.rank });
  let step: WorkerStep | undefined;
  let data: DataClient | undefined;
  let augmenter: BatchAugmenter | undefined;
  try {
    const config = parseWorkerConfig(reply.configJson);
    const job = config.job;
    log.info(
      `rank ${reply.rank} of ${reply.worldSize}; data feed ${reply.dataEndpoint}; step '${job.step.name}', steps ${job.startStep}..${job.endStep - 1}`,
    );
    session.start(job.heartbeatTimeoutMs);
    // Every await below races the coordinator's commands: an abort or a lost coordinator stops the worker at once.
    const stopped = session.command.then((c) => {
      if (c.command === 'abort') throw new AbortedByCoordinator(c.abort.reason);
      if (c.command === 'lost') throw new Error(`lost the coordinator at ${o.coordinator}: ${c.reason}`);
      return c;
    });
    stopped.catch(() => {});
    let lastRun = -1;
    // A shutdown can overtake the end-of-data message and the last report's answer: the coordinator
    // sends it once it holds every rank's last report. It is early only if this rank's last step is not done.
    const orStop = <T>(p: Promise<T>): Promise<T> =>
      Promise.race([
        p,
        stopped.then((c) => {
          throw lastRun === job.endStep - 1
            ? new Finished(c.command === 'shutdown' ? c.shutdown.reason : '')
            : new Aborted(
                `the coordinator shut the job down before step ${job.endStep - 1}: ${c.command === 'shutdown' ? c.shutdown.reason : ''}`,
              );
        }),
      ]);

    if (job.augment) augmenter = new BatchAugmenter(job.augment, job.seed);
    const aug = augmenter;
    data = new DataClient({
      endpoint: reply.dataEndpoint,
      rank: reply.rank,
      generation: reply.generation,
      prefetch: job.prefetch,
      ...(aug ? { prepare: (h, payload) => aug.prepare(payload, h.epoch, h.indices) } : {}),
    });
    // The hello waits for the feed's socket to connect, which never fails (ZeroMQ reconnects
    // forever): a coordinator that dies now is noticed only through the race.
    await orStop(data.start());
    const bind = ipc ? collectiveEndpoint : `tcp://${loopback ? '127.0.0.1' : '0.0.0.0'}:${port}`;
    step = await orStop(
      (o.step ?? stepFactory(job.step.name))({
        rank: reply.rank,
        world: reply.worldSize,
        peers: reply.peerEndpoints,
        collectiveBind: bind,
        device: o.device,
        config,
        control: session,
        log,
      }),
    );
    if (step.paramsHash) {
      const verdict = await orStop(session.verifyParams(job.startStep, await step.paramsHash()));
      if (!verdict.ok) throw new Error(verdict.message);
    }

    // Reports go out one after another (so the coordinator sees each rank's steps in order) without
    // the loop waiting for their answers: a step that holds the main thread delays the send of the
    // previous report, and waiting for its answer would add a round trip to every step. At most
    // MAX_UNANSWERED are outstanding; a failed report fails the loop at the next step.
    const MAX_UNANSWERED = 4;
    let chain: Promise<void> = Promise.resolve();
    const unanswered: Promise<void>[] = [];
    for (;;) {
      // One turn of the event loop per step: a queued batch and a synchronous step resolve as
      // microtasks only, and without this turn credits, reports and commands would wait for I/O.
      await new Promise((r) => setImmediate(r));
      const tStep = performance.now();
      const item = await orStop(data.next());
      if (item.kind === 'end') break;
      const h = item.header;
      const tDecode = performance.now();
      const batch = item.batch ?? decodeBatch(item.payload);
      const decodeSeconds = (performance.now() - tDecode) / 1000;
      const info = { step: h.step, epoch: h.epoch, epochStep: h.epochStep, indices: h.indices, checkpoint: h.checkpoint === true };
      const r = await orStop(step.run(batch, info));
      lastRun = h.step;
      const check =
        job.paramsCheckEvery > 0 && step.paramsHash && ((h.step + 1) % job.paramsCheckEvery === 0 || h.step + 1 === job.endStep);
      const paramsHash = check ? await step.paramsHash!() : '';
      const tAck = performance.now();
      while (unanswered.length >= MAX_UNANSWERED) await orStop(unanswered.shift()!);
      const ackSeconds = (performance.now() - tAck) / 1000;
      const report = {
        step: h.step,
        epoch: h.epoch,
        losses: r.losses ?? {},
        counters: { ...r.counters, data_queue: item.queued, decode_seconds: decodeSeconds, ack_wait_seconds: ackSeconds },
        images: r.images,
        timings: {
          compute: r.timings?.compute ?? 0,
          gather: r.timings?.gather ?? 0,
          reduce: r.timings?.reduce ?? 0,
          dataWait: item.waitSeconds,
          total: (performance.now() - tStep) / 1000,
        },
        paramsHash,
      };
      chain = chain.then(() => session.reportStep(report));
      chain.catch(() => {}); // handled: awaited below or at the end
      unanswered.push(chain);
      // Surface a failed report now rather than MAX_UNANSWERED steps later.
      if (unanswered.length > 1) await orStop(Promise.race([unanswered[0]!, Promise.resolve()]));
    }
    await orStop(chain);
    log.info('end of data; waiting for the coordinator to shut down');
    const c = await stopped;
    log.info(`shutdown: ${c.command === 'shutdown' ? c.shutdown.reason : ''}`);
    return 0;
  } catch (e) {
    if (e instanceof Finished) {
      log.info(`shutdown: ${e.message}`);
      return 0;
    }
    // AbortedByCoordinator also comes from inside a step: a collective the abort interrupted.
    if (e instanceof Aborted || e instanceof AbortedByCoordinator || e instanceof FeedAborted) {
      log.error(e.message);
      return 1;
    }
    log.error(errorMessage(e));
    await session.reportError(e);
    return e instanceof UserError ? e.exitCode : 1;
  } finally {
    await step?.close?.().catch(() => {});
    data?.close();
    await augmenter?.close().catch(() => {});
    session.close();
    // libzmq leaves a bound ipc socket's file behind when the process ends without unbinding.
    if (ipc) rmSync(collectiveEndpoint.slice('ipc://'.length), { force: true });
  }
}

function bracket(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

export type { ControlSession };
