import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TrainingMetrics, serveMetrics } from '../../coordinator/ops/metrics-server.js';
import { UserError } from '../../shared/util/errors.js';

/** The value of one sample line `name{labels} value` in Prometheus text, or undefined. */
function sample(text: string, name: string, labels = ''): number | undefined {
  const re = new RegExp(`^${name}${labels ? `\\{${labels.replace(/[{}]/g, '')}\\}` : ''} (\\S+)$`, 'm');
  const m = re.exec(text);
  return m ? Number(m[1]) : undefined;
}

test('a real metrics server on an ephemeral port: scrape /metrics, /healthz flips with workers and stalls', async () => {
  let clock = 1_000_000;
  const metrics = new TrainingMetrics({ now: () => clock, stallAfterS: 60 });
  const server = await serveMetrics(metrics, { port: 0, host: '127.0.0.1' });
  try {
    assert.ok(server.port > 0);
    metrics.setWorkersExpected(4);
    metrics.setWorkersUp(4);
    metrics.observeStep({
      step: 120,
      epoch: 0.6,
      lr: 2.5e-4,
      images_per_s: 96.5,
      loss: 3.1,
      loss_contrastive: 2.7,
      loss_classification: 0.38,
      loss_label_prior: 0.02,
      time_compute_s: 0.5,
      time_gather_s: 0.03,
      time_reduce_s: 0.1,
      time_data_wait_s: 0.002,
    });
    const busbw = metrics.observeCollective('allreduce', 64 * 2 ** 20, 0.1, 4);
    assert.equal(busbw, ((64 * 2 ** 20) / 0.1) * 1.5);
    metrics.incRestarts('worker_exit');
    metrics.observeCheckpoint('save', 2.5, 100);
    metrics.observeEval({ auroc: { Edema: 0.91, Fracture: null }, mean_auroc: 0.88, mean_auroc_competition: 0.9 });

    const res = await fetch(`${server.url}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
    const text = await res.text();
    assert.equal(sample(text, 'cxr_train_step'), 120);
    assert.equal(sample(text, 'cxr_train_learning_rate'), 2.5e-4);
    assert.equal(sample(text, 'cxr_train_images_per_second'), 96.5);
    for (const [term, v] of [
      ['total', 3.1],
      ['contrastive', 2.7],
      ['classification', 0.38],
      ['label_prior', 0.02],
    ] as const) {
      assert.equal(sample(text, 'cxr_train_loss', `term="${term}"`), v, term);
    }
    assert.equal(sample(text, 'cxr_step_phase_seconds_count', 'phase="gather"'), 1);
    assert.equal(sample(text, 'cxr_step_phase_seconds_sum', 'phase="reduce"'), 0.1);
    assert.equal(sample(text, 'cxr_step_seconds_sum'), 0.5 + 0.03 + 0.1 + 0.002);
    assert.equal(sample(text, 'cxr_collective_bus_bandwidth_bytes_per_second', 'op="allreduce"'), busbw);
    assert.equal(sample(text, 'cxr_workers_up'), 4);
    assert.equal(sample(text, 'cxr_restarts_total', 'reason="worker_exit"'), 1);
    assert.equal(sample(text, 'cxr_checkpoint_duration_seconds_sum', 'kind="save"'), 2.5);
    assert.equal(sample(text, 'cxr_checkpoint_last_step'), 100);
    assert.equal(sample(text, 'cxr_eval_auroc', 'label="Edema"'), 0.91);
    assert.equal(sample(text, 'cxr_eval_auroc', 'label="Fracture"'), undefined);
    assert.equal(sample(text, 'cxr_run_phase', 'phase="training"'), 1);
    assert.ok(sample(text, 'cxr_process_resident_memory_bytes')! > 0, 'process metrics collected');

    let h = await fetch(`${server.url}/healthz`);
    assert.equal(h.status, 200);
    assert.deepEqual(((await h.json()) as { problems: string[] }).problems, []);
    metrics.setWorkersUp(3);
    h = await fetch(`${server.url}/healthz`);
    assert.equal(h.status, 503);
    assert.deepEqual(((await h.json()) as { problems: string[] }).problems, ['3 of 4 workers up']);
    metrics.setWorkersUp(4);
    clock += 61_000;
    h = await fetch(`${server.url}/healthz`);
    assert.equal(h.status, 503);
    assert.match(((await h.json()) as { problems: string[] }).problems[0], /no training step for 61 s/);
    metrics.setPhase('done');
    assert.equal((await fetch(`${server.url}/healthz`)).status, 200);
    assert.equal((await fetch(`${server.url}/nope`)).status, 404);
    assert.equal((await fetch(`${server.url}/metrics`, { method: 'POST' })).status, 405);

    // The same port again is a clear user error.
    await assert.rejects(
      serveMetrics(new TrainingMetrics({ processMetrics: false }), { port: server.port, host: '127.0.0.1' }),
      (e: unknown) => e instanceof UserError && new RegExp(`port ${server.port} .* in use`).test(e.message),
    );
  } finally {
    await server.close();
  }
});
