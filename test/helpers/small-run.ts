import type { TrainFlags } from '../../model/train-config.js';

/**
 * The training flags the coordinator tests share (the tiny model, the text head with every
 * loss term on, no evaluation bootstrap); each test spreads them first and sets what it is about.
 */
export const SMALL_RUN_FLAGS = {
  model: 'tiny',
  'min-lr-ratio': 0.1,
  'weight-decay': 0.05,
  'clip-norm': 1,
  head: 'text',
  'w-cls': 1,
  'w-con': 0.5,
  'w-prior': 0.1,
  'label-prior': 'graph',
  'uncertainty-label': [],
  blank: 'mask',
  bootstrap: 0,
} satisfies Partial<TrainFlags>;
