'use strict';

// The Consumer against the real reboundd: events through the async
// iterator, types, acks in batches and on close, redelivery of what was not
// acked to the group's next connection, a refused subscribe, a token.

const { test, after, before } = require('node:test');
const assert = require('node:assert/strict');
const { Client, Consumer, ReboundError } = require('..');
const { startAll, uniqueId, waitFor, disposeAfter } = require('./harness');

let env;
let client;
before(async () => {
  env = await startAll(null);
  client = new Client(env.daemon.address);
});
after(async () => {
  if (client) client.destroy();
  if (env) await env.stop();
});

function consumer(group, opts) {
  return disposeAfter(after, new Consumer(env.daemon.address, group, opts));
}

/**
 * Takes n events from the consumer (rejects after timeoutMs). With `only`
 * (a set of message ids), other events (earlier tests', since a new group
 * starts at the beginning of the stream) are acked and skipped.
 */
async function take(cons, n, timeoutMs = 10000, only = null) {
  const out = [];
  const timer = new Promise((_, reject) => {
    const t = setTimeout(() => reject(new Error(`only ${out.length} of ${n} events in ${timeoutMs} ms`)), timeoutMs);
    t.unref();
  });
  while (out.length < n) {
    const r = await Promise.race([cons.next(), timer]);
    if (r.done) break;
    if (only && !only.has(r.value.id)) {
      cons.ack(r.value);
      continue;
    }
    out.push(r.value);
  }
  return out;
}

async function greylist(n, tag) {
  const ids = Array.from({ length: n }, () => uniqueId(tag));
  const replies = await client.bounceMany(ids.map((id, i) => ({
    id, rcpt: `${tag}${i}@example.com`, code: 451, enhanced: '4.7.1', text: 'greylisted', meta: { i },
  })));
  for (const r of replies) assert.equal(r.action, 'retry');
  return ids;
}

test('retry events through the async iterator, acked; the next connection of the group gets only the unacked', async () => {
  const group = uniqueId('g').replace(/[^A-Za-z0-9_.:-]/g, '');
  const a = consumer(group, { types: ['retry'], ackBatch: 1000, ackDelayMs: 60000 });
  const ids = await greylist(6, 'it');
  const got = await take(a, 6, 10000, new Set(ids));
  assert.deepEqual(new Set(got.map((e) => e.id)), new Set(ids));
  for (const ev of got) {
    assert.equal(ev.type, 'retry');
    assert.equal(ev.attempt, 1);
    assert.equal(typeof ev.eid, 'string');
    assert.equal(ev.ok, undefined);
  }
  // Four acked (held back by the batch settings until close), two not.
  a.ack(got.slice(0, 3));
  a.ack(got[3].eid);
  assert.equal(a.counters.acked, 0, 'acks wait for the batch');
  await a.close();
  assert.equal(a.counters.acked, 4, 'close() flushed the acks');
  assert.deepEqual(await a.next(), { value: undefined, done: true });

  const b = consumer(group, { types: ['retry'] });
  const again = await take(b, 2, 10000, new Set(ids));
  assert.deepEqual(new Set(again.map((e) => e.eid)), new Set([got[4].eid, got[5].eid]));
  b.ack(again);
  await b.close();
  assert.equal(b.counters.acked, 2);
});

test('acks go out at ackBatch; for await ... break closes the consumer', async () => {
  const group = uniqueId('gb').replace(/[^A-Za-z0-9_.:-]/g, '');
  const c = consumer(group, { types: ['retry'], ackBatch: 5, ackDelayMs: 60000 });
  const ids = await greylist(10, 'ab');
  const seen = new Set();
  const want = new Set(ids);
  for await (const ev of c) {
    c.ack(ev);
    if (!want.has(ev.id)) continue; // an earlier test's
    seen.add(ev.id);
    if (seen.size === 10) break;
  }
  assert.deepEqual(seen, new Set(ids));
  assert.ok(c.counters.acked >= 10);
  assert.deepEqual(await c.next(), { value: undefined, done: true });
});

test('types: a give_up/suppress consumer sees the suppress of a hard bounce', async () => {
  const group = uniqueId('gs').replace(/[^A-Za-z0-9_.:-]/g, '');
  const c = consumer(group, { types: ['suppress'], ackDelayMs: 10 });
  const id = uniqueId('hard');
  const r = await client.bounce(id, `${id}@example.org`, 550, { enhanced: '5.1.1', text: 'User unknown' });
  assert.equal(r.action, 'suppress');
  let ev;
  for (;;) {
    [ev] = await take(c, 1);
    c.ack(ev);
    if (ev.id === id) break; // a fresh group starts at the stream's beginning
  }
  assert.equal(ev.type, 'suppress');
  assert.equal(ev.reason, 'hard_invalid');
  await c.close();
});

test('a refused subscribe rejects the iterator with the protocol code', async () => {
  const c = consumer('no spaces allowed');
  await assert.rejects(c.next(), (e) => e instanceof ReboundError && e.code === 'bad_request');
  const d = consumer('fine', { types: ['nonsense'] });
  await assert.rejects(d.next(), (e) => e.code === 'bad_request');
});

test('a daemon killed and started again: the consumer subscribes again, what comes again is not handed out twice, the acks go on the new connection', async () => {
  const { daemon } = await startAll(after);
  const c2 = disposeAfter(after, new Client(daemon.address));
  const cons = disposeAfter(after, new Consumer(daemon.address, 'workers', {
    types: ['retry'], ackBatch: 1000, ackDelayMs: 60000, backoffMinMs: 20, backoffMaxMs: 100,
  }));
  const ids = Array.from({ length: 20 }, () => uniqueId('rk'));
  await c2.bounceMany(ids.map((id, i) => ({ id, rcpt: `rk${i}@example.com`, code: 451, enhanced: '4.7.1', text: 'greylisted' })));
  const first = await take(cons, 20);
  // Ten handled and acked (the acks wait in the batch), ten still in hand.
  cons.ack(first.slice(0, 10));
  await daemon.kill9();
  await daemon.start();
  await waitFor(() => cons.counters.connects === 2, 10000, 'the consumer to subscribe again');
  // The daemon gives the group's unacked events to its next connection: at
  // least the ten still in hand (the ten acked may be confirmed first, as
  // the acks waiting in the batch go out right after the new subscribe).
  await waitFor(() => cons.counters.redelivered >= 10, 10000, 'the redelivery');
  // The acks are sent on the new connection; what came again is not handed
  // out a second time, since this consumer still holds it.
  cons.ack(first.slice(10));
  await cons.close();
  assert.equal(cons.counters.events, 20);
  assert.equal(cons.counters.acked, 20);
  // Nothing is left for the group.
  const after2 = disposeAfter(after, new Consumer(daemon.address, 'workers', { types: ['retry'] }));
  await assert.rejects(take(after2, 1, 500), /only 0 of 1/);
  await after2.close();
  await c2.close();
});

test('a token is sent before subscribe', async () => {
  const { daemon } = await startAll(after, { config: { token: 'sesame' } });
  const c2 = disposeAfter(after, new Client(daemon.address, { token: 'sesame' }));
  const id = uniqueId('tok');
  await c2.bounce(id, 'tok@example.com', 451, { enhanced: '4.7.1', text: 'greylisted' });
  const cons = disposeAfter(after, new Consumer(daemon.address, 'tok', { token: 'sesame', types: ['retry'] }));
  const [ev] = await take(cons, 1);
  assert.equal(ev.id, id);
  cons.ack(ev);
  await cons.close();
  assert.equal(cons.counters.acked, 1);
  const bad = disposeAfter(after, new Consumer(daemon.address, 'tok', { token: 'nope' }));
  await assert.rejects(bad.next(), (e) => e.code === 'auth_required');
  await c2.close();
});

test('a consumer that subscribed while Redis was down gets the events once it is back', async () => {
  const { redis, daemon } = await startAll(after);
  await redis.kill9();
  const cons = disposeAfter(after, new Consumer(daemon.address, 'while-down', { types: ['retry'], backoffMinMs: 20, backoffMaxMs: 100 }));
  await waitFor(() => cons.counters.connects === 1, 5000, 'the subscribe');
  await redis.start();
  const c2 = disposeAfter(after, new Client(daemon.address, { backoffMinMs: 20, backoffMaxMs: 100 }));
  const id = uniqueId('wd');
  assert.equal((await c2.bounce(id, 'wd@example.com', 451, { enhanced: '4.7.1', text: 'greylisted' })).action, 'retry');
  const [ev] = await take(cons, 1, 10000, new Set([id]));
  assert.equal(ev.id, id);
  cons.ack(ev);
  await cons.close();
  assert.equal(cons.counters.acked, 1);
  await c2.close();
});

test('an ack answered unavailable (Redis down) is sent again on the same subscription', async () => {
  const { redis, daemon } = await startAll(after);
  const cons = disposeAfter(after, new Consumer(daemon.address, 'acks', { types: ['retry'], ackDelayMs: 10, backoffMinMs: 20, backoffMaxMs: 100 }));
  const drops = [];
  cons.on('disconnect', (e) => drops.push(e.code));
  const c2 = disposeAfter(after, new Client(daemon.address));
  const id = uniqueId('ak');
  await c2.bounce(id, 'ak@example.com', 451, { enhanced: '4.7.1', text: 'greylisted' });
  const [ev] = await take(cons, 1, 10000, new Set([id]));
  await redis.kill9();
  cons.ack(ev);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(cons.counters.acked, 0, 'not confirmed while Redis is down');
  await redis.start();
  await waitFor(() => cons.counters.acked === 1, 10000, 'the ack confirmed');
  assert.deepEqual(drops, [], 'the subscription stood');
  assert.equal(cons.counters.connects, 1);
  await cons.close();
  await c2.close();
});
