/** Per-epoch evaluation files; the run's final one is eval.json. */
export const evalEpochFile = (epoch: number): string => `eval-epoch-${epoch}.json`;
