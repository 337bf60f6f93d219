import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ControlServer, JobFailure, type StepSummary } from '../../coordinator/job/control-server.js';
import { register, type ControlSession } from '../../worker/control-client.js';
import { UserError } from '../../shared/util/errors.js';
import { createLogger } from '../../shared/util/log.js';
import type { RegisterRequest } from '../../proto/control.js';

const log = createLogger('test', 'silent');

function server(world: number, extra: Partial<ConstructorParameters<typeof ControlServer>[0]> = {}): ControlServer {
  return new ControlServer({
    listen: '127.0.0.1:0',
    token: 'sekret',
    world,
    configJson: '{"job":{}}',
    dataEndpoint: 'tcp://127.0.0.1:1',
    generation: 3,
    heartbeatIntervalMs: 100,
    heartbeatTimeoutMs: 10_000,
    log,
    ...extra,
  });
}

function req(i: number, over: Partial<RegisterRequest> = {}): RegisterRequest {
  return {
    jobToken: 'sekret',
    host: 'h',
    device: i,
    pid: 1000 + i,
    collectiveEndpoint: `tcp://127.0.0.1:${20000 + i}`,
    requestedRank: -1,
    backend: 'cpu',
    ...over,
  };
}

const join = (port: number, r: RegisterRequest, connectTimeoutMs = 5000) =>
  register({ address: `127.0.0.1:${port}`, request: r, connectTimeoutMs, log, initialBackoffMs: 20 });

test('rendezvous: Register blocks until the world is complete, then every rank gets every endpoint; requested ranks are honoured', async () => {
  const s = server(3);
  const port = await s.start();
  const sessions: ControlSession[] = [];
  try {
    const a = join(port, req(0));
    const b = join(port, req(1, { requestedRank: 2 }));
    // Nobody is answered before the third worker arrives.
    const early = await Promise.race([a.then(() => 'answered'), new Promise((r) => setTimeout(() => r('waiting'), 200))]);
    assert.equal(early, 'waiting');
    const c = join(port, req(2));
    sessions.push(...(await Promise.all([a, b, c])));
    const [ra, rb, rc] = sessions.map((x) => x.reply);
    assert.equal(rb!.rank, 2, 'requested rank 2');
    assert.deepEqual([ra!.rank, rc!.rank], [0, 1], 'the others in arrival order');
    for (const r of [ra, rb, rc]) {
      assert.equal(r!.worldSize, 3);
      assert.equal(r!.generation, 3);
      assert.equal(r!.dataEndpoint, 'tcp://127.0.0.1:1');
      assert.equal(r!.peerEndpoints[rb!.rank], 'tcp://127.0.0.1:20001');
      assert.equal(r!.peerEndpoints[ra!.rank], 'tcp://127.0.0.1:20000');
    }
    assert.deepEqual(
      (await s.world).map((w) => w.pid),
      [1000, 1002, 1001],
    );
    // A fourth worker is refused: the world is full; so is a second claim on a requested rank.
    await assert.rejects(join(port, req(3)), /all 3 ranks are taken/);
    await assert.rejects(join(port, req(3, { requestedRank: 2 })), /rank 2 is already taken by rank 2 \(host h, pid 1001, device 1\)/);
  } finally {
    sessions.forEach((x) => x.close());
    await s.close(100);
  }
});

test('a wrong job token is refused on both sides with a clear error, without retrying', async () => {
  const s = server(1);
  const port = await s.start();
  try {
    const t0 = Date.now();
    await assert.rejects(
      join(port, req(0, { jobToken: 'guess' }), 30_000),
      (e: unknown) => e instanceof UserError && /refused this worker: job token refused/.test(e.message),
    );
    assert.ok(Date.now() - t0 < 5000, 'refusal is final, not retried until the connect timeout');
    assert.equal(s.workers().length, 0);
  } finally {
    await s.close(100);
  }
});

test('a worker started before its coordinator retries with backoff until it answers; without one it gives up naming the address', async () => {
  // Find a port that is free, start the worker against it, and only then start the coordinator there.
  const probe = server(1);
  const port = await probe.start();
  await probe.close(100);
  const session = join(port, req(0), 20_000);
  await new Promise((r) => setTimeout(r, 700));
  const s = server(1, { listen: `127.0.0.1:${port}` });
  await s.start();
  try {
    const sess = await session;
    assert.equal(sess.reply.rank, 0);
    sess.close();
  } finally {
    await s.close(100);
  }
  await assert.rejects(
    join(port, req(0), 600),
    (e: unknown) => e instanceof UserError && new RegExp(`no coordinator answered at 127.0.0.1:${port} within 0.6 s`).test(e.message),
  );
});

test('parameter hashes: equal hashes pass; a mismatch fails the job naming the ranks, at rendezvous and in step reports', async () => {
  const steps: StepSummary[] = [];
  const s = server(3, { onStep: (x) => steps.push(x) });
  const port = await s.start();
  const sessions = await Promise.all([0, 1, 2].map((i) => join(port, req(i, { requestedRank: i }))));
  try {
    const ok = await Promise.all(sessions.map((x) => x.verifyParams(0, 'aa'.repeat(32))));
    assert.ok(ok.every((v) => v.ok));
    const timings = { compute: 1, gather: 0.5, reduce: 0.25, dataWait: 0, total: 2 };
    await Promise.all(
      sessions.map((x, r) =>
        x.reportStep({
          step: 0,
          epoch: 0,
          losses: { total: 0.5 },
          counters: { rows: r + 1 },
          timings: { ...timings, compute: r },
          images: 4,
          paramsHash: 'ab',
        }),
      ),
    );
    assert.equal(steps.length, 1);
    assert.deepEqual(steps[0]!.counters, { rows: 6 });
    assert.equal(steps[0]!.images, 12);
    assert.equal(steps[0]!.timings.compute, 2, 'the slowest rank');
    assert.deepEqual(steps[0]!.losses, { total: 0.5 });
    const verdicts = await Promise.all(sessions.map((x, r) => x.verifyParams(1, r === 2 ? 'cc'.repeat(32) : 'bb'.repeat(32))));
    assert.ok(verdicts.every((v) => !v.ok && /ranks 0, 1: bbbb.*rank 2: cccc/.test(v.message)));
    const f = await s.failure;
    assert.match(f.message, /parameter hashes differ at step 1/);
  } finally {
    sessions.forEach((x) => x.close());
    await s.close(100);
  }
  const s2 = server(2);
  const port2 = await s2.start();
  const two = await Promise.all([0, 1].map((i) => join(port2, req(i, { requestedRank: i }))));
  try {
    await Promise.all(
      two.map((x, r) =>
        x.reportStep({
          step: 9,
          epoch: 0,
          losses: {},
          counters: {},
          timings: { compute: 0, gather: 0, reduce: 0, dataWait: 0, total: 0 },
          images: 1,
          paramsHash: r ? 'y' : 'x',
        }),
      ),
    );
    assert.match((await s2.failure).message, /parameter hashes differ at step 9, .*rank 0: x.*rank 1: y/);
  } finally {
    two.forEach((x) => x.close());
    await s2.close(100);
  }
});

test('a registered worker that goes silent is named after the heartbeat timeout; one that disconnects is named at once; errors are relayed', async () => {
  const s = server(2, { heartbeatTimeoutMs: 1500 });
  const port = await s.start();
  const sessions = await Promise.all([0, 1].map((i) => join(port, req(i, { requestedRank: i }))));
  try {
    // Rank 0 heartbeats; rank 1 never starts its heartbeat (a hung process keeps its connection open).
    sessions[0]!.start(5000);
    const t0 = Date.now();
    const f = await s.failure;
    assert.ok(f instanceof JobFailure);
    assert.equal(f.rank, 1);
    assert.match(f.message, /worker rank 1 \(host h, pid 1001, device 1\) sent no heartbeat for 1\.\d s \(timeout 1\.5 s/);
    assert.ok(Date.now() - t0 < 5000);
    // The surviving rank is told to stop.
    s.abortAll(f.message);
    const c = await sessions[0]!.command;
    assert.equal(c.command, 'abort');
  } finally {
    sessions.forEach((x) => x.close());
    await s.close(100);
  }

  const s2 = server(2);
  const port2 = await s2.start();
  const two = await Promise.all([0, 1].map((i) => join(port2, req(i, { requestedRank: i }))));
  try {
    two.forEach((x) => x.start(5000));
    await new Promise((r) => setTimeout(r, 200));
    two[1]!.close();
    const f = await s2.failure;
    assert.equal(f.rank, 1);
    assert.match(f.message, /rank 1 \(host h, pid 1001, device 1\) disconnected from the control plane/);
  } finally {
    two.forEach((x) => x.close());
    await s2.close(100);
  }

  const s3 = server(1);
  const port3 = await s3.start();
  const one = await join(port3, req(0));
  try {
    await one.reportError(new UserError('dataset shard train-00001.arrow is truncated'));
    const f = await s3.failure;
    assert.ok(f.userError);
    assert.match(f.message, /worker rank 0 \(host h, pid 1000, device 0\) failed: dataset shard train-00001.arrow is truncated/);
  } finally {
    one.close();
    await s3.close(100);
  }
});

test("a checkpoint shard report crosses the control plane unchanged, in the checkpoint writer's shape", async () => {
  const got: unknown[] = [];
  const s = server(2, { onCheckpointShard: (w) => got.push(w) });
  const port = await s.start();
  const two = await Promise.all([0, 1].map((i) => join(port, req(i, { requestedRank: i }))));
  try {
    const w = {
      file: 'shard-00001-of-00002.bin',
      path: '/runs/a/checkpoints/step-0000020/shard-00001-of-00002.bin',
      rank: 1,
      world: 2,
      step: 20,
      start: 5_000_001,
      end: 10_000_000,
      bytes: 120_000_123,
      digest: 'ab'.repeat(32),
      seconds: 0.75,
    };
    await two[1]!.commitCheckpoint(w);
    assert.deepEqual(got, [w]);
    await assert.rejects(two[0]!.commitCheckpoint(w), /checkpoint shard of rank 1 reported by rank 0/);
  } finally {
    two.forEach((x) => x.close());
    await s.close(100);
  }
});
