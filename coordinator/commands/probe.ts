import type { CommandModule } from 'yargs';
import { openDataset } from '../../shared/dataset/reader.js';
import { batchChecksum } from '../../shared/batch-checksum.js';
import { createLogger } from '../../shared/util/log.js';
import { UserError } from '../../shared/util/errors.js';
import { runJob } from '../job/run-job.js';
import { datasetRowSource } from '../data/dataset-source.js';
import { Sampler } from '../job/sampler.js';
import { JobFailure, type StepSummary } from '../job/control-server.js';

interface ProbeArgs {
  data: string;
  workers: number;
  listen?: string;
  advertise?: string;
  'data-port'?: number;
  token?: string;
  batch: number;
  steps?: number;
  epochs?: number;
  seed: number;
  prefetch: number;
  'params-check-every': number;
  'heartbeat-timeout': number;
  'rendezvous-timeout'?: number;
  gpu: boolean;
  'step-option': string[];
}

/**
 * `coordinator probe`: run the whole distributed machinery (launch or await workers, rendezvous,
 * data feed with credit flow, step reports, parameter-hash checks, shutdown) with the `checksum`
 * step instead of training, and verify that every rank received exactly its slice of every
 * global batch: the ranks' sums must equal the sums the coordinator computes from the dataset.
 * A cheap check of a cluster's plumbing before a long training run.
 */
export const probeCommand: CommandModule<object, ProbeArgs> = {
  command: 'probe',
  describe: 'check the cluster: stream the training split through N workers and verify every byte arrived',
  builder: (y) =>
    y
      .option('data', { type: 'string', demandOption: true, describe: 'dataset directory (manifest.json + Arrow shards)' })
      .option('workers', { type: 'number', default: 2, describe: 'worker processes (ranks)' })
      .option('listen', { type: 'string', describe: 'HOST:PORT: wait for remote workers there instead of starting local ones' })
      .option('advertise', { type: 'string', describe: 'address workers reach this coordinator at (with --listen)' })
      .option('data-port', { type: 'number', describe: 'data-feed port with --listen (default: the control port + 1)' })
      .option('token', {
        type: 'string',
        describe: 'job token remote workers must present (default: $CXR_JOB_TOKEN; generated for local workers)',
      })
      .option('batch', { type: 'number', default: 8, describe: 'rows per worker per step' })
      .option('steps', { type: 'number', describe: 'steps to run (default: one epoch)' })
      .option('epochs', { type: 'number', describe: 'epochs to run' })
      .option('seed', { type: 'number', default: 0 })
      .option('prefetch', { type: 'number', default: 2, describe: 'batches queued ahead per worker' })
      .option('params-check-every', { type: 'number', default: 10, describe: 'compare replica hashes every K steps' })
      .option('heartbeat-timeout', { type: 'number', default: 15, describe: 'seconds of worker silence that fail the job' })
      .option('rendezvous-timeout', {
        type: 'number',
        describe: 'seconds to wait for all workers (default 120 local, unbounded with --listen)',
      })
      .option('gpu', {
        type: 'boolean',
        default: false,
        describe: 'pin local worker i to GPU i (CUDA_VISIBLE_DEVICES; for WebGPU, Mesa device selection: docs/gpu.md)',
      })
      .option('step-option', {
        type: 'string',
        array: true,
        default: [],
        hidden: true,
        describe: 'KEY=NUMBER for the checksum step (fault injection)',
      })
      .example('$0 probe --data data/nih64 --workers 2', 'stream one epoch through 2 local workers, verifying every slice')
      .example(
        '$0 probe --listen 0.0.0.0:29400 --workers 4 --data data/nih64',
        'the same with remote workers (worker --coordinator HOST:29400)',
      ),
  handler: async (a) => {
    const log = createLogger('coordinator');
    const ds = await openDataset(a.data);
    try {
      const source = datasetRowSource(ds);
      const globalBatch = a.batch * a.workers;
      if (!(a.batch >= 1 && Number.isInteger(a.batch))) throw new UserError(`--batch must be a positive integer, got ${a.batch}`);
      let sampler: Sampler;
      try {
        sampler = new Sampler({ size: source.size, globalBatch, seed: a.seed });
      } catch (e) {
        throw new UserError(`--batch ${a.batch} x --workers ${a.workers}: ${(e as Error).message.replace(/^sampler: /, '')} in ${a.data}`);
      }
      const steps = a.steps ?? (a.epochs ?? 1) * sampler.stepsPerEpoch;
      const options: Record<string, number> = {};
      for (const kv of a['step-option']) {
        const m = /^(\w+)=(-?\d+)$/.exec(kv);
        if (!m) throw new UserError(`--step-option must be KEY=INTEGER, got '${kv}'`);
        options[m[1]!] = Number(m[2]);
      }
      // Verify each completed step against the dataset, in order, while the job runs.
      const train = ds.split('train');
      let verified = 0;
      let verifying: Promise<void> = Promise.resolve();
      let mismatch: string | undefined;
      const verify = async (s: StepSummary) => {
        const idx = sampler.globalBatch(sampler.positionAt(s.step));
        const want = batchChecksum(await train.read(idx), idx);
        for (const [k, v] of Object.entries(want))
          if (s.counters[k] !== v)
            mismatch ??= `step ${s.step}: the ranks' ${k} sum to ${s.counters[k]}, the dataset's global batch gives ${v}`;
        verified++;
      };
      const token = a.token ?? process.env.CXR_JOB_TOKEN;
      const result = await runJob({
        workers: a.workers,
        listen: a.listen,
        advertise: a.advertise,
        dataPort: a['data-port'],
        token,
        gpu: a.gpu,
        step: { name: 'checksum', options },
        source,
        seed: a.seed,
        globalBatch,
        steps,
        prefetch: a.prefetch,
        paramsCheckEvery: a['params-check-every'],
        heartbeatTimeoutMs: a['heartbeat-timeout'] * 1000,
        rendezvousTimeoutMs: a['rendezvous-timeout'] !== undefined ? a['rendezvous-timeout'] * 1000 : undefined,
        onStep: (s) => {
          verifying = verifying.then(() => verify(s));
        },
        log,
      });
      await verifying;
      if (mismatch) throw new JobFailure(`data plane check failed: ${mismatch}`);
      if (verified !== steps) throw new JobFailure(`data plane check failed: ${verified} of ${steps} steps were reported`);
      const images = steps * globalBatch;
      const summary = {
        ok: true,
        workers: result.workers.length,
        steps,
        images,
        seconds: Number(result.seconds.toFixed(3)),
        maxAhead: result.feed.map((f) => f.maxAhead),
        lastParamsHash: result.lastStep?.paramsHash ?? '',
      };
      process.stdout.write(JSON.stringify(summary) + '\n');
      log.info(`probe ok: ${steps} steps x ${globalBatch} rows through ${a.workers} workers verified against the dataset`);
    } finally {
      await ds.close();
    }
  },
};
