import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as zmq from 'zeromq';
import { DataFeed, type RowSource } from '../../coordinator/job/data-feed.js';
import { Sampler } from '../../coordinator/job/sampler.js';
import { decodeHeader, encodeHeader, FEED_PROTOCOL_VERSION, type FeedToWorker } from '../../proto/feed.js';
import { DataClient, FeedAborted } from '../../worker/data-client.js';
import { createLogger } from '../../shared/util/log.js';

const log = createLogger('test', 'silent');

/** Rows encoded as their indices' little-endian uint32 bytes: the feed is payload-agnostic, so this checks order exactly. */
function indexSource(size: number, reads: number[][] = []): RowSource {
  return {
    size,
    async encode(indices) {
      reads.push([...indices]);
      return new Uint8Array(Uint32Array.from(indices).buffer);
    },
  };
}

function decodeIndices(payload: Uint8Array): number[] {
  return [...new Uint32Array(payload.buffer.slice(payload.byteOffset, payload.byteOffset + payload.byteLength))];
}

const until = async (cond: () => boolean, ms = 5000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 5));
  }
};

test('credit flow: the feed sends a worker exactly as many batches as it granted, never more, and reads nothing ahead', async () => {
  const sampler = new Sampler({ size: 40, globalBatch: 4, seed: 3 });
  const reads: number[][] = [];
  const feed = new DataFeed({
    bind: 'tcp://127.0.0.1:*',
    world: 2,
    generation: 7,
    sampler,
    source: indexSource(40, reads),
    startStep: 0,
    endStep: 6,
    prefetch: 2,
    log,
  });
  const endpoint = await feed.start();
  const dealer = new zmq.Dealer({ routingId: 'rank-1', linger: 0 });
  dealer.connect(endpoint);
  const got: FeedToWorker[] = [];
  const payloads: number[][] = [];
  void (async () => {
    for await (const [h, p] of dealer) {
      const m = decodeHeader<FeedToWorker>(h!, ['batch', 'end', 'abort'], 'feed');
      got.push(m);
      if (p) payloads.push(decodeIndices(p));
    }
  })().catch(() => {});
  try {
    await dealer.send(encodeHeader({ v: FEED_PROTOCOL_VERSION, type: 'hello', rank: 1, generation: 7, credit: 2 }));
    await until(() => got.length === 2);
    // A consumer that takes nothing: the feed stays at two batches, and has read only those two slices.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(got.length, 2);
    assert.equal(reads.length, 2);
    assert.deepEqual(feed.statsOf(1), { sent: 2, credit: 0, maxAhead: 2 });
    assert.deepEqual(feed.statsOf(0), { sent: 0, credit: 0, maxAhead: 0 });
    for (let k = 0; k < 4; k++) {
      await dealer.send(encodeHeader({ v: FEED_PROTOCOL_VERSION, type: 'credit', rank: 1, generation: 7, n: 1 }));
      await until(() => got.length >= 3 + k);
    }
    // Steps 0..5 in order, each the rank-1 slice of its global batch, then an explicit end.
    await until(() => got.length === 7);
    assert.deepEqual(
      got.map((m) => m.type),
      ['batch', 'batch', 'batch', 'batch', 'batch', 'batch', 'end'],
    );
    for (let s = 0; s < 6; s++) {
      const m = got[s]!;
      assert.ok(m.type === 'batch');
      assert.equal(m.step, s);
      assert.equal(m.generation, 7);
      assert.deepEqual(m.indices, [...sampler.rankSlice(sampler.positionAt(s), 2, 1)]);
      assert.deepEqual(payloads[s], m.indices);
    }
    assert.equal((got[6] as { step: number }).step, 6);
    // Granting more than the prefetch depth is a protocol error the feed reports, not buffering.
    await dealer.send(encodeHeader({ v: FEED_PROTOCOL_VERSION, type: 'credit', rank: 1, generation: 7, n: 3 }));
    const err = await feed.failure;
    assert.match(err.message, /rank 1 granted 3 credit on top of 0; the prefetch depth is 2/);
  } finally {
    dealer.close();
    await feed.close();
  }
});

test('data client: prefetch keeps the next batches queued while a slow consumer works; abort is delivered at once', async () => {
  const sampler = new Sampler({ size: 64, globalBatch: 2, seed: 1 });
  const feed = new DataFeed({
    bind: 'tcp://127.0.0.1:*',
    world: 1,
    generation: 1,
    sampler,
    source: indexSource(64),
    startStep: 5,
    endStep: 25,
    prefetch: 3,
    log,
  });
  const endpoint = await feed.start();
  const client = new DataClient({ endpoint, rank: 0, generation: 1, prefetch: 3 });
  try {
    await client.start();
    const steps: number[] = [];
    const queued: number[] = [];
    for (;;) {
      const item = await client.next();
      if (item.kind === 'end') {
        assert.equal(item.step, 25);
        break;
      }
      steps.push(item.header.step);
      queued.push(item.queued);
      assert.deepEqual(decodeIndices(item.payload), [...sampler.globalBatch(sampler.positionAt(item.header.step))]);
      assert.ok(feed.statsOf(0).sent - steps.length <= 3, 'the feed is never more than prefetch batches ahead of the consumer');
      await new Promise((r) => setTimeout(r, 30)); // a step slower than the feed
    }
    assert.deepEqual(
      steps,
      Array.from({ length: 20 }, (_, i) => 5 + i),
    );
    assert.ok(Math.max(...queued) <= 3);
    // In steady state the slow consumer finds its prefetch queue full: it does not wait for data.
    // (Most takes, not all: the machine is shared, and a stall elsewhere can delay one delivery.)
    const steady = queued.slice(3, -3);
    assert.ok(steady.filter((q) => q === 3).length >= steady.length * 0.75, `queue depth at take: ${queued}`);
    assert.equal(feed.statsOf(0).maxAhead, 3);
  } finally {
    client.close();
    await feed.close();
  }

  const feed2 = new DataFeed({
    bind: 'tcp://127.0.0.1:*',
    world: 1,
    generation: 1,
    sampler,
    source: indexSource(64),
    startStep: 0,
    endStep: 10,
    prefetch: 2,
    log,
  });
  const client2 = new DataClient({ endpoint: await feed2.start(), rank: 0, generation: 1, prefetch: 2 });
  try {
    await client2.start();
    await until(() => feed2.statsOf(0).sent === 2);
    await feed2.abort('rank 1 died');
    await until(() => feed2.statsOf(0).sent === 2 && true);
    await assert.rejects(
      (async () => {
        for (;;) await new Promise((r) => setTimeout(r, 5)).then(() => client2.next());
      })(),
      (e: unknown) => e instanceof FeedAborted && /rank 1 died/.test(e.message),
    );
  } finally {
    client2.close();
    await feed2.close();
  }
});
