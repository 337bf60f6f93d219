import type { TrainArgs } from '../coordinator/commands/train.js';

/**
 * The training flags of the benchmarks that time real training jobs (`freeze`, `scaling`): the
 * tiny text-head recipe with every loss term on, no evaluation, checkpoints or reports, so the
 * timed steps are the job's own. Each benchmark spreads them under what it varies.
 */
export function benchTrainArgs(o: Partial<TrainArgs> & Pick<TrainArgs, 'workers' | 'data' | 'out' | 'steps' | 'batch-size'>): TrainArgs {
  return {
    model: 'tiny',
    seed: 0,
    eval: 'none',
    backend: 'wasm',
    lr: 1e-3,
    'warmup-steps': 2,
    'min-lr-ratio': 0.1,
    'weight-decay': 0.05,
    'clip-norm': 1,
    head: 'text',
    'w-cls': 1,
    'w-con': 0.5,
    'w-prior': 0.1,
    'label-prior': 'graph',
    uncertainty: 'ignore',
    'uncertainty-label': [],
    blank: 'mask',
    'pos-weight': 'none',
    bootstrap: 0,
    gpu: false,
    prefetch: 2,
    'params-check-every': 0,
    report: false,
    'checkpoint-every': 0,
    'checkpoint-every-minutes': 0,
    'keep-checkpoints': 1,
    ...o,
  } as TrainArgs;
}
