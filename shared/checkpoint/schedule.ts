/**
 * When to checkpoint. The coordinator alone decides (its clock, its step counter) and tells every
 * rank to save the same step, so a time-based trigger cannot split the ranks.
 */
export interface CheckpointSchedule {
  /** --checkpoint-every STEPS (0 or undefined: off). */
  readonly everySteps?: number;
  /** --checkpoint-every-minutes M (0 or undefined: off). */
  readonly everyMinutes?: number;
}

export interface ScheduleState {
  /** Steps completed so far (the step a checkpoint taken now would record). */
  readonly step: number;
  /** Step of the last checkpoint taken (or resumed from); the run's first step counts as one. */
  readonly lastStep: number;
  /** When that checkpoint was taken (or the run started), ms since the epoch. */
  readonly lastAtMs: number;
}

/** Due after a completed step: every N steps counted from step 0, or M minutes since the last one. */
export function checkpointDue(s: CheckpointSchedule, st: ScheduleState, nowMs: number): boolean {
  if (st.step <= st.lastStep) return false;
  if (s.everySteps && s.everySteps > 0 && st.step % s.everySteps === 0) return true;
  if (s.everyMinutes && s.everyMinutes > 0 && nowMs - st.lastAtMs >= s.everyMinutes * 60_000) return true;
  return false;
}
