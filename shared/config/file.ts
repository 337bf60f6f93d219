import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { Parser } from 'yargs/helpers';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { UserError } from '../util/errors.js';

/**
 * `--config FILE` for every command: a YAML or JSON mapping of option names to values. Flags
 * on the command line override the file, the file overrides defaults. Keys are validated
 * against the options of the command being run (so one mechanism serves every command,
 * including ones added later): an unknown key or a value of the wrong type is an error naming
 * the key and the file.
 */

export type OptionType = 'string' | 'number' | 'boolean' | 'array' | 'count' | 'any';

export interface OptionSpec {
  /** The option's name as declared (`--batch-size` -> 'batch-size'). */
  key: string;
  type: OptionType;
  choices?: readonly unknown[];
  aliases: string[];
}

/** Read a config file: YAML (.yaml/.yml, and anything else) or JSON (.json); a mapping at the top. */
export function loadConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(code === 'ENOENT' ? `config file ${file} not found` : `config file ${file}: cannot read (${(e as Error).message})`);
  }
  let doc: unknown;
  if (path.extname(file).toLowerCase() === '.json') {
    try {
      doc = JSON.parse(text);
    } catch (e) {
      throw new UserError(`config file ${file}: not valid JSON (${(e as Error).message})`);
    }
  } else {
    const parsed = parseDocument(text, { uniqueKeys: true, prettyErrors: true });
    if (parsed.errors.length) {
      const err = parsed.errors[0]!;
      const where = err.linePos?.[0] ? ` at line ${err.linePos[0].line}, column ${err.linePos[0].col}` : '';
      throw new UserError(
        `config file ${file}: not valid YAML${where}: ${err.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')}`,
      );
    }
    doc = parsed.toJS();
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    throw new UserError(`config file ${file}: expected a mapping of option names to values at the top level`);
  }
  return doc as Record<string, unknown>;
}

const camel = (k: string) => k.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
const kebab = (k: string) => k.replace(/([a-z0-9])([A-Z])/g, '$1-$2').toLowerCase();

/** The part of yargs' `getOptions()` this module reads. */
export interface YargsOptionsView {
  key: Record<string, unknown>;
  string?: string[];
  number?: string[];
  boolean?: string[];
  array?: string[];
  count?: string[];
  choices?: Record<string, unknown[]>;
  alias?: Record<string, string[]>;
}

/** Option specs from a yargs instance's `getOptions()`, minus `exclude` (help, positionals, ...). */
export function optionSpecsFromYargs(o: YargsOptionsView, exclude: ReadonlySet<string>): OptionSpec[] {
  const has = (list: string[] | undefined, k: string) => list?.includes(k) ?? false;
  return Object.keys(o.key)
    .filter((k) => !exclude.has(k) && !exclude.has(camel(k)))
    .map((key) => {
      const type: OptionType = has(o.array, key)
        ? 'array'
        : has(o.boolean, key)
          ? 'boolean'
          : has(o.number, key)
            ? 'number'
            : has(o.count, key)
              ? 'count'
              : has(o.string, key)
                ? 'string'
                : 'any';
      const choices = o.choices?.[key];
      return { key, type, ...(choices?.length ? { choices } : {}), aliases: o.alias?.[key] ?? [] };
    });
}

function valueSchema(spec: OptionSpec): z.ZodType {
  const scalar = z.union([z.string(), z.number(), z.boolean()]);
  let s: z.ZodType =
    spec.type === 'string'
      ? z.string()
      : spec.type === 'number'
        ? z.number()
        : spec.type === 'boolean'
          ? z.boolean()
          : spec.type === 'count'
            ? z.number().int().nonnegative()
            : spec.type === 'array'
              ? // One value is a list of one, as on the command line (`--compare b`).
                z.union([z.array(scalar), scalar.transform((v) => [v])])
              : scalar;
  if (spec.choices) {
    const allowed = spec.choices;
    const inner = s;
    s = inner.refine((v: unknown) => (Array.isArray(v) ? v : [v]).every((x) => allowed.includes(x)), {
      message: `must be one of ${allowed.map((c) => JSON.stringify(c)).join(', ')}`,
    });
  }
  return s;
}

/**
 * Validate a config document against option specs. Keys may be spelled as declared, in
 * camelCase, or as an alias. Returns the values keyed by declared name.
 */
export function validateConfig(
  doc: Record<string, unknown>,
  specs: readonly OptionSpec[],
  source: string,
  command: string,
): Map<string, unknown> {
  const byName = new Map<string, OptionSpec>();
  for (const s of specs) for (const name of [s.key, camel(s.key), kebab(s.key), ...s.aliases]) byName.set(name, s);
  const out = new Map<string, unknown>();
  for (const [key, value] of Object.entries(doc)) {
    const spec = byName.get(key);
    if (!spec) {
      const known = specs.map((s) => s.key).sort();
      throw new UserError(
        `config file ${source}: unknown key '${key}' for '${command}'` +
          (known.length ? ` (its options: ${known.join(', ')})` : ' (this command takes no options)'),
      );
    }
    if (out.has(spec.key)) throw new UserError(`config file ${source}: '${key}' sets option '${spec.key}' a second time`);
    const parsed = valueSchema(spec).safeParse(value);
    if (!parsed.success) {
      const expected =
        spec.type === 'any'
          ? 'a string, number or boolean'
          : spec.type === 'array'
            ? 'a list'
            : `a ${spec.type === 'count' ? 'non-negative integer' : spec.type}`;
      const why =
        parsed.error.issues[0]?.code === 'custom' ? parsed.error.issues[0].message : `expected ${expected}, got ${JSON.stringify(value)}`;
      throw new UserError(`config file ${source}: key '${key}': ${why}`);
    }
    out.set(spec.key, parsed.data);
  }
  return out;
}

/** Options given on the command line itself (not defaults), by declared name and every spelling. */
export function optionsGivenOnCli(
  rawArgs: readonly string[],
  o: YargsOptionsView & { configuration?: Record<string, unknown> },
): Set<string> {
  const parsed = Parser.detailed([...rawArgs], {
    alias: o.alias ?? {},
    boolean: o.boolean ?? [],
    number: o.number ?? [],
    string: o.string ?? [],
    array: o.array ?? [],
    count: o.count ?? [],
    configuration: { ...(o.configuration ?? {}) } as never,
  });
  const given = new Set<string>();
  for (const k of Object.keys(parsed.argv)) if (k !== '_' && k !== '--') given.add(k);
  return given;
}

/**
 * Merge a validated config into parsed arguments: a value is taken for every option not given
 * on the command line, under its declared name, its camelCase name and its aliases (yargs
 * exposes all of them to handlers).
 */
export function mergeConfig(
  argv: Record<string, unknown>,
  values: Map<string, unknown>,
  specs: readonly OptionSpec[],
  givenOnCli: ReadonlySet<string>,
): string[] {
  const applied: string[] = [];
  for (const [key, value] of values) {
    const spec = specs.find((s) => s.key === key)!;
    const names = [key, camel(key), ...spec.aliases];
    if (names.some((n) => givenOnCli.has(n))) continue;
    for (const n of names) argv[n] = value;
    applied.push(key);
  }
  return applied;
}

/** Positional names in a yargs command string: 'compare <run-a> <run-b> [files..]' -> run-a, run-b, files. */
export function positionalsOf(command: string): string[] {
  return [...command.matchAll(/[<[]([^\]>]+)[>\]]/g)].flatMap((m) => m[1]!.replace(/\.\.$/, '').split('|')).map((n) => n.trim());
}

/** What the config hook needs to know about a command module. */
export interface CommandShape {
  command?: string | readonly string[];
  aliases?: string | readonly string[];
}

/**
 * The yargs middleware behind `--config` (register with `applyBeforeValidation = true`, so
 * values from the file count for required options): validate the file against the running
 * command's options and fill in every option the command line did not give.
 */
export function configFileMiddleware(rawArgs: readonly string[], modules: readonly CommandShape[]) {
  // yargs runs global middleware once per command level, innermost first; the innermost has
  // the options of the command actually run, so the file is applied there and only there.
  let applied = false;
  return (
    argv: Record<string, unknown>,
    y: {
      getOptions(): YargsOptionsView & { configuration?: Record<string, unknown> };
      getInternalMethods?: () => { getContext?: () => { fullCommands?: string[] } };
    },
  ): void => {
    const file = argv.config;
    if (file === undefined || applied) return;
    applied = true;
    if (typeof file !== 'string' || file === '') throw new UserError('--config needs a file name (YAML or JSON)');
    // The chain of command strings being run ('data <command>', 'inspect <dir>'), when yargs
    // exposes it; else the top-level module named by the first word.
    let chain = y.getInternalMethods?.().getContext?.().fullCommands;
    if (!chain) {
      const name = (argv._ as unknown[] | undefined)?.[0];
      const words = (m: CommandShape) => [...[m.command ?? []].flat(), ...[m.aliases ?? []].flat()];
      const mod = modules.find((m) =>
        words(m).some((w) => {
          const first = w.split(/\s+/)[0]!;
          return name === undefined ? first === '$0' || first === '*' : first === String(name);
        }),
      );
      chain = mod ? [[mod.command ?? []].flat()[0] ?? ''] : [];
    }
    const positionals = chain.flatMap(positionalsOf);
    const name = chain
      .map((c) => c.trim().split(/\s+/)[0]!)
      .filter((w) => w && w !== '$0' && w !== '*')
      .join(' ');
    // --debug is read from the command line before parsing (coordinator/cli.ts), never from a file.
    const exclude = new Set(['help', 'version', 'config', 'debug', '$0', '_', ...positionals]);
    const o = y.getOptions();
    const specs = optionSpecsFromYargs(o, exclude);
    const resolved = path.resolve(file);
    const doc = loadConfigFile(resolved);
    for (const key of Object.keys(doc)) {
      if (positionals.some((p) => p === key || camel(p) === key)) {
        throw new UserError(`config file ${file}: '${key}' is a positional argument of this command; give it on the command line`);
      }
    }
    const values = validateConfig(doc, specs, file, `coordinator${name ? ` ${name}` : ''}`);
    mergeConfig(argv, values, specs, optionsGivenOnCli(rawArgs, o));
  };
}
