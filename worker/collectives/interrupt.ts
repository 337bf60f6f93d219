/**
 * The signal buffer a ThreadedProcessGroup's blocked main thread waits on, shared with whoever may
 * have to stop that wait. Kept free of imports: the heartbeat thread loads it, and must not load
 * ZeroMQ with it.
 *
 * Int32 slots: ANSWERED, the id of the last synchronous request the comm thread answered (the
 * word the main thread waits on); INTERRUPT, nonzero once the wait must end.
 */
export const ANSWERED = 0;
export const INTERRUPT = 1;
export const SIGNAL_BYTES = 8;

/** Sets the interrupt word of a group's signal buffer and wakes its blocked main thread; any thread may call it. */
export function interruptSignal(signal: SharedArrayBuffer): void {
  const words = new Int32Array(signal);
  Atomics.store(words, INTERRUPT, 1);
  // The main thread waits on the answer word; waking it makes it look at the interrupt word.
  Atomics.notify(words, ANSWERED);
}
