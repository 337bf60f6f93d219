import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { UserError } from '../../shared/util/errors.js';
import { configFileMiddleware, loadConfigFile, positionalsOf, validateConfig, type OptionSpec } from '../../shared/config/file.js';
import { coordinatorEntry } from '../../shared/util/paths.js';
import { writeFixtureRun } from '../fixtures/run-dir.js';

const isUser = (re: RegExp) => (e: unknown) => e instanceof UserError && re.test(e.message);

test('config files: YAML and JSON mappings load; bad syntax and non-mappings name the file and line', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-cfg-'));
  try {
    const w = async (name: string, text: string) => {
      await fsp.writeFile(path.join(dir, name), text);
      return path.join(dir, name);
    };
    assert.deepEqual(loadConfigFile(await w('a.yaml', 'steps: 100\nlr: 3.0e-4\nlabels: [a, b]\n')), {
      steps: 100,
      lr: 3e-4,
      labels: ['a', 'b'],
    });
    assert.deepEqual(loadConfigFile(await w('a.json', '{"steps": 100}')), { steps: 100 });
    assert.deepEqual(loadConfigFile(await w('empty.yaml', '# nothing yet\n')), {});
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('config files: syntax errors name the line; duplicates and lists at the top are refused', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-cfg-'));
  try {
    const bad = path.join(dir, 'bad.yaml');
    await fsp.writeFile(bad, 'steps: 1\nlr: [0.1\n');
    assert.throws(() => loadConfigFile(bad), isUser(/bad\.yaml: not valid YAML at line \d+, column \d+/));
    await fsp.writeFile(bad, 'steps: 1\nsteps: 2\n');
    assert.throws(() => loadConfigFile(bad), isUser(/bad\.yaml: not valid YAML at line 2/));
    await fsp.writeFile(bad, '- 1\n- 2\n');
    assert.throws(() => loadConfigFile(bad), isUser(/bad\.yaml: expected a mapping/));
    const badJson = path.join(dir, 'bad.json');
    await fsp.writeFile(badJson, '{"a": 1,}');
    assert.throws(() => loadConfigFile(badJson), isUser(/bad\.json: not valid JSON/));
    assert.throws(() => loadConfigFile(path.join(dir, 'none.yaml')), isUser(/none\.yaml not found/));
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('validation: unknown keys and wrong types name the key and the file; spellings and choices', () => {
  const specs: OptionSpec[] = [
    { key: 'batch-size', type: 'number', aliases: ['b'] },
    { key: 'backend', type: 'string', choices: ['wasm', 'cpu'], aliases: [] },
    { key: 'resume', type: 'boolean', aliases: [] },
    { key: 'labels', type: 'array', aliases: [] },
  ];
  const v = validateConfig({ batchSize: 64, backend: 'wasm', resume: false, labels: ['Edema'] }, specs, 'c.yaml', 'coordinator train');
  assert.deepEqual(
    [...v],
    [
      ['batch-size', 64],
      ['backend', 'wasm'],
      ['resume', false],
      ['labels', ['Edema']],
    ],
  );
  assert.deepEqual([...validateConfig({ b: 8 }, specs, 'c.yaml', 'x')], [['batch-size', 8]]);
  assert.throws(
    () => validateConfig({ batchsize: 64 }, specs, 'c.yaml', 'coordinator train'),
    isUser(/^config file c\.yaml: unknown key 'batchsize' for 'coordinator train' \(its options: backend, batch-size, labels, resume\)$/),
  );
  assert.throws(
    () => validateConfig({ 'batch-size': '64' }, specs, 'c.yaml', 'x'),
    isUser(/key 'batch-size': expected a number, got "64"/),
  );
  assert.throws(() => validateConfig({ backend: 'gpu' }, specs, 'c.yaml', 'x'), isUser(/key 'backend': must be one of "wasm", "cpu"/));
  assert.throws(
    () => validateConfig({ b: 1, batchSize: 2 }, specs, 'c.yaml', 'x'),
    isUser(/'batchSize' sets option 'batch-size' a second time/),
  );
  assert.deepEqual(positionalsOf('compare <run-a> <run-b> [files..]'), ['run-a', 'run-b', 'files']);
});

test('the hook on a real yargs command: file fills options, flags win, defaults lose, positionals stay on the command line', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-cfg-'));
  try {
    const file = path.join(dir, 'c.yaml');
    await fsp.writeFile(file, 'steps: 50\nlr: 0.01\nname: from-file\n');
    const mod = {
      command: 'train <data>',
      describe: 't',
      builder: (y: ReturnType<typeof yargs>) =>
        y
          .positional('data', { type: 'string' })
          .option('steps', { type: 'number', default: 10 })
          .option('lr', { type: 'number', demandOption: true })
          .option('name', { type: 'string', alias: 'n' }),
      handler: () => {},
    };
    const run = async (args: string[]) => {
      let seen: Record<string, unknown> = {};
      await yargs(args)
        .strict()
        .option('config', { type: 'string', global: true })
        .middleware(configFileMiddleware(args, [mod]) as never, true)
        .command({ ...mod, handler: (a: Record<string, unknown>) => void (seen = a) } as never)
        .fail((msg, err) => {
          throw err ?? new Error(msg);
        })
        .parseAsync();
      return seen;
    };
    const a = await run(['train', 'D', '--config', file, '-n', 'cli']);
    assert.equal(a.steps, 50, 'file beats default');
    assert.equal(a.lr, 0.01, 'file satisfies a required option');
    assert.equal(a.name, 'cli', 'flag (by alias) beats file');
    assert.equal(a.n, 'cli');
    assert.equal(a.data, 'D');
    const b = await run(['train', 'D', '--config', file, '--steps=7']);
    assert.equal(b.steps, 7);
    await fsp.writeFile(file, 'data: /elsewhere\n');
    await assert.rejects(
      run(['train', 'D', '--config', file, '--lr', '1']),
      isUser(/c\.yaml: 'data' is a positional argument of this command; give it on the command line/),
    );
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('the hook on nested commands: the innermost command options, its positionals kept out, its full name in errors', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-cfg-'));
  try {
    const file = path.join(dir, 'c.yaml');
    const run = async (args: string[]) => {
      let seen: Record<string, unknown> = {};
      const data = {
        command: 'data <command>',
        describe: 'd',
        builder: (y: ReturnType<typeof yargs>) =>
          y
            .command({
              command: 'inspect <dir>',
              describe: 'i',
              builder: (y2: ReturnType<typeof yargs>) =>
                y2.positional('dir', { type: 'string' }).option('deep', { type: 'boolean', default: false }),
              handler: (a: Record<string, unknown>) => void (seen = a),
            } as never)
            .demandCommand(1),
        handler: () => {},
      };
      await yargs(args)
        .strict()
        .option('config', { type: 'string', global: true })
        .middleware(configFileMiddleware(args, [data]) as never, true)
        .command(data as never)
        .fail((msg, err) => {
          throw err ?? new Error(msg);
        })
        .parseAsync();
      return seen;
    };
    await fsp.writeFile(file, 'deep: true\n');
    assert.equal((await run(['data', 'inspect', 'D', '--config', file])).deep, true);
    assert.equal((await run(['data', 'inspect', 'D', '--config', file, '--no-deep'])).deep, false);
    await fsp.writeFile(file, 'dir: /x\n');
    await assert.rejects(run(['data', 'inspect', 'D', '--config', file]), isUser(/'dir' is a positional argument/));
    await fsp.writeFile(file, 'shallow: 1\n');
    await assert.rejects(
      run(['data', 'inspect', 'D', '--config', file]),
      isUser(/unknown key 'shallow' for 'coordinator data inspect' \(its options: deep\)/),
    );
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('--config through the real coordinator CLI', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-cfg-cli-'));
  try {
    const a = path.join(dir, 'a'),
      b = path.join(dir, 'b');
    await writeFixtureRun(a, { steps: 10, testImages: 60, dim: 8 });
    await writeFixtureRun(b, { steps: 10, testImages: 60, dim: 8, seed: 4 });
    const cfg = path.join(dir, 'report.yaml');
    await fsp.writeFile(cfg, `compare: ${b}\nout: ${path.join(dir, 'from-config.html')}\n`);
    const cli = (args: string[]) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
        execFile(process.execPath, [coordinatorEntry, ...args], { timeout: 60_000 }, (err, stdout, stderr) =>
          resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        ),
      );
    const ok = await cli(['report', a, '--config', cfg, '--out', path.join(dir, 'from-flag.html')]);
    assert.equal(ok.code, 0, ok.stderr);
    const files = await fsp.readdir(dir);
    assert.ok(files.includes('from-flag.html') && !files.includes('from-config.html'), 'the flag overrides the file');
    assert.ok(files.includes('report-compare.svg'), 'compare came from the file');
    await fsp.writeFile(cfg, 'compare: x\nthreshold: 1\n');
    const bad = await cli(['report', a, '--config', cfg]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /config file .*report\.yaml: unknown key 'threshold' for 'coordinator report' \(its options: compare, out\)/);
    const json = path.join(dir, 'compare.json');
    await fsp.writeFile(json, '{"color": "always"}');
    const typed = await cli(['compare', a, b, '--config', json]);
    assert.equal(typed.code, 2);
    assert.match(typed.stderr, /compare\.json: key 'color': expected a boolean, got "always"/);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
