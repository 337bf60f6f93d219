/** The value after `--name` in a benchmark's argv, or `dflt` (a helper of the benchmarks, not one). */
export function arg(argv: string[], name: string, dflt: string): string {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] ? argv[i + 1]! : dflt;
}
