import { hostname } from 'node:os';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { createLogger } from '../shared/util/log.js';
import { errorMessage, isUserError } from '../shared/util/errors.js';
import { runWorker } from './run.js';
import { closeAllThreadedGroups } from './collectives/threaded-group.js';

/**
 * The `worker` command: one process per accelerator. Started by `coordinator --workers N` on the
 * same host, or on its own (Kubernetes) as `worker --coordinator HOST:PORT --token T`.
 */
let sigterms = 0;

async function main(argv: string[]): Promise<number> {
  const args = await yargs(argv)
    .scriptName('worker')
    .strict()
    .option('coordinator', { type: 'string', demandOption: true, describe: 'HOST:PORT of the coordinator control plane' })
    .option('token', { type: 'string', describe: 'job token (default: $CXR_JOB_TOKEN)' })
    .option('device', { type: 'number', default: -1, describe: 'device index this worker drives (the launcher sets it)' })
    .option('rank', { type: 'number', default: -1, describe: 'ask for this rank (default: ranks in arrival order)' })
    .option('advertise', {
      type: 'string',
      describe: 'address peers reach this worker at (default: 127.0.0.1 for a loopback coordinator, else $POD_IP or the host name)',
    })
    .option('collective-port', {
      type: 'number',
      default: 0,
      describe: 'port of the worker<->worker collective socket (default: a free one)',
    })
    .option('connect-timeout', {
      type: 'number',
      default: 300,
      describe: 'seconds to keep retrying while the coordinator is not reachable',
    })
    .help()
    .version()
    .parseAsync();
  const log = createLogger(`worker${args.device >= 0 ? `-${args.device}` : ''}`);
  const token = args.token ?? process.env.CXR_JOB_TOKEN;
  if (!token) {
    process.stderr.write('worker: error: no job token: pass --token or set CXR_JOB_TOKEN\n');
    return 2;
  }
  // A worker pod gets SIGTERM with its coordinator (preemption, a deleted Job): it goes on until the
  // coordinator ends the job at a checkpoint. Local workers are stopped by their coordinator only.
  if (parentPid() === undefined)
    process.on('SIGTERM', () => {
      if (sigterms++ > 0) process.exit(143);
      log.warn('SIGTERM: going on until the coordinator stops the job at a checkpoint; a second SIGTERM stops now');
    });
  const host = args.coordinator.replace(/:\d+$/, '');
  const loopback = /^(127\.|localhost$|\[?::1\]?$)/.test(host);
  const advertise = args.advertise ?? (loopback ? '127.0.0.1' : (process.env.POD_IP ?? hostname()));
  return runWorker({
    coordinator: args.coordinator,
    token,
    device: args.device,
    rank: args.rank,
    advertise,
    collectivePort: args['collective-port'],
    connectTimeoutMs: args['connect-timeout'] * 1000,
    parentPid: parentPid(),
    log,
  });
}

/** CXR_COORDINATOR_PID, set by a coordinator that starts its workers itself (coordinator/launcher.ts). */
function parentPid(): number | undefined {
  const v = process.env.CXR_COORDINATOR_PID;
  return v && /^[1-9]\d*$/.test(v) ? Number(v) : undefined;
}

// A comm thread still holding ZeroMQ sockets at process.exit makes libzmq abort the process
// (exit code 134 instead of ours): steps close theirs, and this catches any left over.
const exit = (code: number): Promise<never> =>
  closeAllThreadedGroups().then(
    () => process.exit(code),
    () => process.exit(code),
  );

main(hideBin(process.argv)).then(
  async (code) => {
    process.exitCode = code;
    await closeAllThreadedGroups().catch(() => {});
    // Sockets and timers of libraries (ZeroMQ, gRPC, TensorFlow.js) must not keep a finished worker alive.
    setTimeout(() => process.exit(code), 200).unref();
  },
  async (e: unknown) => {
    process.stderr.write(
      isUserError(e)
        ? `worker: error: ${e.message}\n`
        : `worker: internal error: ${errorMessage(e)}\n${process.env.CXR_DEBUG === '1' ? `${(e as Error)?.stack ?? ''}\n` : ''}`,
    );
    await exit(isUserError(e) ? e.exitCode : 1);
  },
);
