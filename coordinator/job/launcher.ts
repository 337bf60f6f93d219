import { spawn, type ChildProcess } from 'node:child_process';
import { workerEntry } from '../../shared/util/paths.js';
import { JobFailure } from './control-server.js';
import { WEBGPU_DEVICE_ENV } from '../../kernels/webgpu.js';
import type { Logger } from '../../shared/util/log.js';

export interface LaunchOptions {
  readonly count: number;
  /** "HOST:PORT" of the control plane. */
  readonly coordinator: string;
  readonly token: string;
  /** Pin worker i to GPU i: CUDA_VISIBLE_DEVICES for CUDA, CXR_WEBGPU_DEVICE for WebGPU (kernels/webgpu.ts). */
  readonly gpu: boolean;
  /** More arguments for every worker. */
  readonly args?: readonly string[];
  readonly env?: NodeJS.ProcessEnv;
  /** Extra arguments and environment for worker i alone (heterogeneous devices, fault-injection tests). */
  readonly perWorker?: (i: number) => { args?: readonly string[]; env?: NodeJS.ProcessEnv };
  /** Where worker output goes, each line prefixed "[worker i] " (default: this process's stderr). */
  readonly output?: (line: string) => void;
  /** Lines of each worker's output kept for error messages. */
  readonly tailLines?: number;
  /** The worker entry point (default bin/worker.js). */
  readonly entry?: string;
  readonly log: Logger;
}

interface Child {
  readonly index: number;
  readonly proc: ChildProcess;
  readonly tail: string[];
  exit?: { code: number | null; signal: NodeJS.Signals | null };
  readonly exited: Promise<void>;
}

/**
 * Starts N local `worker` processes, worker i with `--device i`, and watches them: until
 * `expectExit()` is called, any worker that exits (during start-up or the run, with any code)
 * fails the job with its last output shown. The job token travels in the environment
 * (CXR_JOB_TOKEN), not on the command line where `ps` would show it.
 *
 * Workers run in their own process groups, so a Ctrl-C at the terminal reaches only the
 * coordinator, which then tears the workers down itself in a known order.
 */
export class WorkerProcesses {
  private readonly children: Child[] = [];
  private exitsExpected = false;
  private resolveFailure!: (f: JobFailure) => void;
  private ranks = new Map<number, number>();
  /** Settles when a worker exits unexpectedly; never rejects. */
  readonly failure: Promise<JobFailure>;
  private registered = false;

  constructor(private readonly opts: LaunchOptions) {
    this.failure = new Promise((r) => (this.resolveFailure = r));
  }

  start(): void {
    const out = this.opts.output ?? ((line: string) => process.stderr.write(line + '\n'));
    for (let i = 0; i < this.opts.count; i++) {
      const own = this.opts.perWorker?.(i) ?? {};
      // CXR_COORDINATOR_PID: while registering, a worker has no heartbeat yet that would notice this
      // process dying, and would keep retrying the registration for --connect-timeout.
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        ...this.opts.env,
        ...own.env,
        CXR_JOB_TOKEN: this.opts.token,
        CXR_COORDINATOR_PID: String(process.pid),
      };
      // CUDA_VISIBLE_DEVICES does not reach Vulkan drivers: WebGPU selects its device by this index itself.
      if (this.opts.gpu) {
        env.CUDA_VISIBLE_DEVICES = String(i);
        env[WEBGPU_DEVICE_ENV] = String(i);
      }
      const args = [
        this.opts.entry ?? workerEntry,
        '--coordinator',
        this.opts.coordinator,
        '--device',
        String(i),
        ...(this.opts.args ?? []),
        ...(own.args ?? []),
      ];
      const proc = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
      const tail: string[] = [];
      const child: Child = {
        index: i,
        proc,
        tail,
        exited: new Promise((resolve) =>
          proc.on('close', (code, signal) => {
            child.exit = { code, signal };
            this.onExit(child);
            resolve();
          }),
        ),
      };
      proc.on('error', (e) => {
        tail.push(`(spawn failed: ${e.message})`);
      });
      for (const stream of [proc.stdout!, proc.stderr!])
        forEachLine(stream, (line) => {
          tail.push(line);
          if (tail.length > (this.opts.tailLines ?? 30)) tail.shift();
          out(`[worker ${i}] ${line}`);
        });
      this.children.push(child);
    }
    this.opts.log.info(
      `started ${this.opts.count} worker processes (pids ${this.children.map((c) => c.proc.pid).join(', ')})${this.opts.gpu ? ', one GPU each' : ''}`,
    );
  }

  /** Record which rank each pid registered as, so that later failures name the rank too. */
  setRanks(byPid: ReadonlyMap<number, number>): void {
    this.ranks = new Map(byPid);
    this.registered = true;
  }

  /** From now on exits are the job ending; `waitExit` checks their codes. */
  expectExit(): void {
    this.exitsExpected = true;
  }

  /** Wait for every worker to exit (killing the stragglers after `timeoutMs`); the workers that did not exit 0. */
  async waitExit(timeoutMs: number): Promise<string[]> {
    this.exitsExpected = true;
    const all = Promise.all(this.children.map((c) => c.exited));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      all.then(() => false),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(true), timeoutMs))),
    ]);
    clearTimeout(timer);
    if (timedOut) await this.kill();
    return this.children
      .filter((c) => c.exit?.code !== 0)
      .map((c) => `${this.describe(c)} ${this.how(c)}${timedOut && c.exit?.signal ? ' (did not exit after shutdown, killed)' : ''}`);
  }

  /** SIGTERM every live worker, SIGKILL after `graceMs`, and wait for them to be gone. */
  async kill(graceMs = 3000): Promise<void> {
    this.exitsExpected = true;
    const live = this.children.filter((c) => !c.exit && c.proc.pid !== undefined);
    for (const c of live) signalGroup(c.proc.pid!, 'SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const done = Promise.all(live.map((c) => c.exited));
    const forced = await Promise.race([done.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), graceMs)))]);
    clearTimeout(timer);
    if (forced) {
      for (const c of live) if (!c.exit) signalGroup(c.proc.pid!, 'SIGKILL');
      await done;
    }
  }

  pids(): number[] {
    return this.children.map((c) => c.proc.pid ?? -1);
  }

  private onExit(c: Child): void {
    if (this.exitsExpected) return;
    const phase = this.registered ? 'during the run' : 'during start-up';
    const output = c.tail.length ? `; its last output:\n${c.tail.map((l) => `  | ${l}`).join('\n')}` : ' (it printed nothing)';
    this.resolveFailure(new JobFailure(`${this.describe(c)} ${this.how(c)} ${phase}${output}`, this.ranks.get(c.proc.pid ?? -1)));
  }

  private describe(c: Child): string {
    const rank = this.ranks.get(c.proc.pid ?? -1);
    return `worker ${c.index}${rank !== undefined ? ` (rank ${rank}, pid ${c.proc.pid})` : ` (pid ${c.proc.pid ?? 'none'})`}`;
  }

  private how(c: Child): string {
    if (!c.exit) return 'is still running';
    return c.exit.signal ? `was killed by ${c.exit.signal}` : `exited with code ${c.exit.code}`;
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      /* already gone */
    }
  }
}

function forEachLine(stream: NodeJS.ReadableStream, f: (line: string) => void): void {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      f(buf.slice(0, nl).replace(/\r$/, ''));
      buf = buf.slice(nl + 1);
    }
  });
  stream.on('end', () => {
    if (buf) f(buf);
    buf = '';
  });
}
