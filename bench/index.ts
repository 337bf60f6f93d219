/**
 * `npm run bench -- NAME [options]`: each benchmark is a module `bench/NAME.ts` exporting
 * `run(argv)`; every figure it prints is next to the reference it is compared against,
 * measured in the same run.
 */
import { isUserError } from '../shared/util/errors.js';

const name = process.argv[2];
if (!name || name.startsWith('-')) {
  process.stderr.write(
    'usage: npm run bench -- <name> [options]   (names: prepare, synth, allreduce, step, batch-matmul, norm-gelu, dense, transpose, optimizer, scaling, checkpoint, feed, freeze, report)\n',
  );
  process.exit(2);
}
if (!/^[a-z][a-z0-9-]*$/.test(name)) {
  process.stderr.write(`bench: '${name}' is not a benchmark name\n`);
  process.exit(2);
}
let mod: { run?: (argv: string[]) => Promise<void> };
try {
  mod = await import(`./${name}.js`);
} catch (e) {
  process.stderr.write(`bench: no benchmark named '${name}' (${(e as Error).message})\n`);
  process.exit(2);
}
// bench/ also holds the benchmarks' helpers (median, scaling-probe, torch-reference, ...).
if (typeof mod.run !== 'function') {
  process.stderr.write(`bench: '${name}' is a helper of the benchmarks, not a benchmark\n`);
  process.exit(2);
}
try {
  await mod.run(process.argv.slice(3));
} catch (e) {
  // A wrong option is the user's to fix: its message, not a stack.
  if (!isUserError(e)) throw e;
  process.stderr.write(`bench ${name}: error: ${e.message}\n`);
  process.exit(e.exitCode);
}
