import { Worker } from 'node:worker_threads';
import type { AugmentPolicy } from '../shared/augment/policy.js';
import type { SampleBatch } from '../shared/dataset/columns.js';

/** workerData of the augment thread. */
export interface AugmentThreadData {
  readonly policy: AugmentPolicy;
  readonly seed: number;
}

/** One slice to prepare: its Arrow IPC bytes (the thread's own copy) and where its rows come from. */
export interface PrepareJob {
  readonly id: number;
  readonly payload: Uint8Array;
  readonly epoch: number;
  readonly indices: readonly number[];
}

export interface PrepareResult {
  readonly id: number;
  readonly ok: boolean;
  readonly batch?: SampleBatch;
  readonly error?: string;
}

/**
 * Training-time augmentation off the main thread (`--augment`): the data client hands each slice
 * here as it arrives, and a worker thread decodes it and augments its images (shared/augment/)
 * while the main thread computes the current step, so the step only waits for it when the thread
 * falls behind (that wait is the step's data wait). Every draw is keyed by (seed, epoch, dataset
 * index), so the pixels do not depend on the rank or the worker count.
 */
export class BatchAugmenter {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve(b: SampleBatch): void; reject(e: Error): void }>();
  private failure: Error | null = null;

  constructor(policy: AugmentPolicy, seed: number) {
    this.worker = new Worker(new URL('./augment-thread.js', import.meta.url), { workerData: { policy, seed } satisfies AugmentThreadData });
    this.worker.on('message', (r: PrepareResult) => {
      const p = this.pending.get(r.id);
      if (!p) return;
      this.pending.delete(r.id);
      if (r.ok) p.resolve(r.batch!);
      else p.reject(new Error(`augmenting a batch failed: ${r.error}`));
    });
    this.worker.on('error', (e) => this.failAll(new Error(`the augmentation thread crashed: ${e.message}`)));
    this.worker.on('exit', (code) => this.failAll(new Error(`the augmentation thread exited (code ${code})`)));
    this.worker.unref();
  }

  /** The decoded, augmented slice of `payload` (rows `indices` of the training split, in `epoch`). */
  prepare(payload: Uint8Array, epoch: number, indices: readonly number[]): Promise<SampleBatch> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    // A copy the thread owns: ZeroMQ's receive buffers are not ours to transfer.
    const own = payload.slice();
    const job: PrepareJob = { id, payload: own, epoch, indices };
    return new Promise<SampleBatch>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage(job, [own.buffer]);
    });
  }

  async close(): Promise<void> {
    this.failure ??= new Error('the augmentation thread was closed');
    await this.worker.terminate();
  }

  private failAll(e: Error): void {
    this.failure ??= e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }
}
