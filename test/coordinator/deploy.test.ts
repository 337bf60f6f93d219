import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { COLLECTIVES_ENV } from '../../shared/config/worker-env.js';
import { coordinatorEntry, packageRoot, workerEntry } from '../../shared/util/paths.js';

/**
 * The Kubernetes manifests and the image are only as good as their agreement with the CLI: every
 * flag they pass must exist, and the ports on both sides of each connection must match. There is
 * no cluster here, so this checks that agreement and that kustomize renders the set.
 */
const k8s = path.join(packageRoot, 'deploy', 'k8s');

// eslint-disable-next-line @typescript-eslint/no-explicit-any
// biome-ignore lint/suspicious/noExplicitAny: parsed YAML manifests, read field by field in the assertions
type Doc = any;

function docs(file: string): Doc[] {
  return parseAllDocuments(readFileSync(path.join(k8s, file), 'utf8')).map((d) => {
    assert.equal(d.errors.length, 0, `${file}: ${d.errors.join('; ')}`);
    return d.toJS();
  });
}

function container(file: string, kind: string): Doc {
  const d = docs(file).find((x) => x.kind === kind);
  assert.ok(d, `${file} has no ${kind}`);
  return d.spec.template.spec.containers[0];
}

/** `--name=value` pairs of a container's args. */
function flags(args: string[]): Map<string, string> {
  return new Map(
    args.map((a) => {
      const m = /^--([a-z][a-z0-9-]*)=(.*)$/.exec(a);
      assert.ok(m, `manifest argument '${a}' is not of the form --flag=value`);
      return [m[1]!, m[2]!];
    }),
  );
}

function helpFlags(entry: string): Set<string> {
  const out = execFileSync(process.execPath, [entry, '--help'], { encoding: 'utf8' });
  return new Set([...out.matchAll(/--([a-z][a-z0-9-]*)/g)].map((m) => m[1]!));
}

test('every flag the manifests pass exists in the coordinator and worker CLIs', () => {
  const coord = flags(container('coordinator.yaml', 'Job').args);
  const known = helpFlags(coordinatorEntry);
  for (const f of coord.keys()) assert.ok(known.has(f), `coordinator.yaml passes --${f}, which 'coordinator --help' does not list`);
  const work = container('workers.yaml', 'Job');
  assert.deepEqual(work.command.slice(1), ['/opt/cxr-align/bin/worker.js']);
  const workerKnown = helpFlags(workerEntry);
  for (const f of flags(work.args).keys()) assert.ok(workerKnown.has(f), `workers.yaml passes --${f}, which 'worker --help' does not list`);
});

test('ports, names and the token agree across the coordinator, its Service and the workers', () => {
  const service = docs('coordinator.yaml').find((d) => d.kind === 'Service');
  const port = (name: string) => service.spec.ports.find((p: Doc) => p.name === name).port as number;
  const coord = flags(container('coordinator.yaml', 'Job').args);
  const work = container('workers.yaml', 'Job');
  const workFlags = flags(work.args);
  assert.equal(coord.get('listen'), `0.0.0.0:${port('control')}`);
  assert.equal(Number(coord.get('data-port')), port('data'));
  assert.equal(Number(coord.get('metrics-port')), port('metrics'));
  assert.equal(workFlags.get('coordinator'), `${service.metadata.name}:${port('control')}`);
  assert.equal(coord.get('advertise'), service.metadata.name);
  assert.equal(coord.get('resume'), 'auto', 'a restarted coordinator must resume from its last checkpoint');

  const workersJob = docs('workers.yaml').find((d) => d.kind === 'Job');
  assert.equal(workersJob.spec.completionMode, 'Indexed');
  assert.equal(workersJob.spec.completions, Number(coord.get('workers')), 'worker pods must equal --workers');
  assert.equal(workersJob.spec.parallelism, Number(coord.get('workers')));
  assert.equal(work.resources.limits['nvidia.com/gpu'], 1);

  const secretOf = (c: Doc) => c.env.find((e: Doc) => e.name === 'CXR_JOB_TOKEN').valueFrom.secretKeyRef;
  assert.deepEqual(secretOf(work), secretOf(container('coordinator.yaml', 'Job')));
  const mounts = (c: Doc) => c.volumeMounts.find((m: Doc) => m.name === 'shared').mountPath;
  assert.equal(mounts(work), mounts(container('coordinator.yaml', 'Job')), 'checkpoint shards need one shared path');
  assert.ok(coord.get('out')!.startsWith(mounts(work) + '/'));
  for (const [k, v] of Object.entries(COLLECTIVES_ENV))
    assert.equal(
      work.env.find((e: Doc) => e.name === k)?.value,
      v,
      `worker pods need ${k}=${v} (COLLECTIVES_ENV), as local workers get it`,
    );
});

test('kustomize renders the set', (t) => {
  if (spawnSync('kubectl', ['version', '--client'], { stdio: 'ignore' }).status !== 0) {
    t.skip('kubectl not installed (Debian: kubernetes-client)');
    return;
  }
  const rendered = execFileSync('kubectl', ['kustomize', k8s], { encoding: 'utf8' });
  const kinds = parseAllDocuments(rendered).map((d) => (d.toJS() as Doc).kind);
  assert.deepEqual(kinds.sort(), ['Job', 'Job', 'PersistentVolumeClaim', 'Service']);
});

/** Source folders the built CLIs need (tsconfig's include without the tests and benchmarks). */
function sourceFolders(): string[] {
  const ts = JSON.parse(readFileSync(path.join(packageRoot, 'tsconfig.json'), 'utf8')) as { include: string[] };
  return ts.include.filter((d) => d !== 'test' && d !== 'bench');
}

for (const file of ['Dockerfile', 'Dockerfile.webgpu']) {
  test(`deploy/${file} copies only what exists, and every source folder the build needs`, () => {
    const dockerfile = readFileSync(path.join(packageRoot, 'deploy', file), 'utf8');
    const sources = [...dockerfile.matchAll(/^COPY\s+(.+)\s+\S+$/gm)].flatMap((m) => m[1]!.trim().split(/\s+/));
    assert.ok(sources.length > 0);
    for (const s of sources) assert.ok(existsSync(path.join(packageRoot, s)), `deploy/${file} copies '${s}', which does not exist`);
    for (const d of ['bin', ...sourceFolders()])
      assert.ok(sources.includes(d), `deploy/${file} does not copy ${d}/, which the build needs`);
  });
}

test('the WebGPU set (deploy/k8s-webgpu) is the base with --backend webgpu, its own image and the graphics capability', () => {
  const overlay = parseAllDocuments(
    readFileSync(path.join(packageRoot, 'deploy', 'k8s-webgpu', 'kustomization.yaml'), 'utf8'),
  )[0]!.toJS() as Doc;
  assert.deepEqual(overlay.resources, ['../k8s']);
  assert.match(overlay.images[0].newName, /cxr-align-webgpu$/);
  // Apply the JSON patches to the base by hand (kubectl may be missing): each `test` op must hold.
  const targets: Record<string, Doc> = {
    'cxr-align-coordinator': docs('coordinator.yaml').find((d) => d.kind === 'Job'),
    'cxr-align-workers': docs('workers.yaml').find((d) => d.kind === 'Job'),
  };
  for (const p of overlay.patches as Doc[]) {
    const doc = targets[p.target.name];
    assert.ok(doc, `the overlay patches ${p.target.name}, which the base does not have`);
    for (const op of parseAllDocuments(p.patch)[0]!.toJS() as Doc[]) {
      const keys = (op.path as string).split('/').slice(1);
      const last = keys.pop()!;
      const parent = keys.reduce((o: Doc, k) => o[k], doc);
      if (op.op === 'test') assert.deepEqual(parent[last], op.value, `${p.target.name} ${op.path}`);
      else if (op.op === 'replace') parent[last] = op.value;
      else if (op.op === 'add' && last === '-') parent.push(op.value);
      else assert.fail(`unexpected patch op ${op.op} ${op.path}`);
    }
  }
  const coord = flags(targets['cxr-align-coordinator'].spec.template.spec.containers[0].args);
  assert.equal(coord.get('backend'), 'webgpu');
  const help = execFileSync(process.execPath, [coordinatorEntry, '--help'], { encoding: 'utf8' });
  assert.match(help, /"webgpu"/, "'coordinator --help' lists webgpu among the backends");
  const env = targets['cxr-align-workers'].spec.template.spec.containers[0].env as Doc[];
  assert.match(env.find((e) => e.name === 'NVIDIA_DRIVER_CAPABILITIES')?.value ?? '', /\bgraphics\b/);
  const dockerfile = readFileSync(path.join(packageRoot, 'deploy', 'Dockerfile.webgpu'), 'utf8');
  assert.match(dockerfile, /NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics/);
  assert.match(dockerfile, /libvulkan1/);
  if (spawnSync('kubectl', ['version', '--client'], { stdio: 'ignore' }).status === 0) {
    const rendered = execFileSync('kubectl', ['kustomize', path.join(packageRoot, 'deploy', 'k8s-webgpu')], { encoding: 'utf8' });
    assert.match(rendered, /--backend=webgpu/);
    assert.match(rendered, /image: registry\.example\.com\/cxr-align-webgpu:/);
  }
});
