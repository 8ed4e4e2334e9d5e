'use strict';

// The must-hold of the client: reboundd killed with SIGKILL in the middle of
// a pipelined batch of 10,000 reports and started again. Every report is
// answered exactly once to the caller, with the decision the daemon holds
// (one bounce in each message's history, attempt 1, the retry time the
// caller was told), and a consumer that lived through the kill sees the
// retry event of every message at least once.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { Client, Consumer } = require('..');
const { startAll, policyWithLimits, uniqueId, waitFor } = require('./harness');

const N = 10000;
const EARLY = 1200; // retries due at once: fired before the kill, 200 of them not yet acked (ackBatch 500)
const KILL_AT = 4000; // answers received before the kill
// The others' not_before, after the start of the batch: the batch, the kill,
// the restart and the resends fit well within it (about 2 s plain, 4 s with
// sanitizers on a busy machine), so every resend is a duplicate of a pending
// report and not the outcome of a fired retry.
const LEAD_MS = 10000;

test('kill -9 of reboundd in the middle of a pipelined batch of 10,000 reports', { timeout: 60000 }, async () => {
  // The fast policy with a long max_age: a not_before seconds ahead would
  // otherwise be past the message's maximum age (4.32 s) and given up.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rebound-node-policy-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const policy = policyWithLimits(dir, { max_age: '120s', awaiting: '120s' });
  const { daemon } = await startAll(after, { policy });

  const seen = new Map(); // id -> retry events received
  const dueAt = new Map(); // id -> due_at of its retry event
  let consumerDrops = 0;
  const consumer = new Consumer(daemon.address, 'senders', {
    types: ['retry'], ackBatch: 500, ackDelayMs: 5000, backoffMinMs: 20, backoffMaxMs: 200,
  });
  consumer.on('disconnect', () => consumerDrops++);
  after(() => consumer.close());
  const consuming = (async () => {
    for await (const ev of consumer) {
      assert.equal(ev.type, 'retry');
      seen.set(ev.id, (seen.get(ev.id) || 0) + 1);
      assert.equal(ev.attempt, 1, `retry of ${ev.id}`);
      dueAt.set(ev.id, ev.due_at);
      consumer.ack(ev);
    }
  })();

  const client = new Client(daemon.address, {
    resendDeadlineMs: 30000, backoffMinMs: 20, backoffMaxMs: 200,
  });
  after(() => client.destroy());
  const t0 = Date.now();
  const reports = [];
  for (let i = 0; i < N; i++) {
    reports.push({
      id: uniqueId('k9'),
      rcpt: `user${i}@d${i % 100}.example`,
      code: 451,
      enhanced: '4.7.1',
      text: 'Greylisted, please try again later',
      campaign: 'kill9',
      notBefore: i < EARLY ? undefined : t0 + LEAD_MS,
    });
  }

  const answers = new Array(N).fill(0);
  const replies = new Array(N);
  let answered = 0;
  let killed = null;
  let answeredAtKill = -1;
  const killAndRestart = async () => {
    answeredAtKill = answered;
    await daemon.kill9();
    await daemon.start();
  };
  const calls = reports.map((r, i) => client.bounce(r.id, r.rcpt, r.code, r).then((reply) => {
    answers[i]++;
    replies[i] = reply;
    if (++answered === KILL_AT) killed = killAndRestart();
  }));
  const results = await Promise.allSettled(calls);
  await killed;
  const batchMs = Date.now() - t0;

  assert.ok(batchMs < LEAD_MS, `the batch took ${batchMs} ms, longer than the ${LEAD_MS} ms lead`);
  const rejected = results.filter((r) => r.status === 'rejected');
  assert.equal(rejected.length, 0, `rejected: ${rejected.slice(0, 3).map((r) => r.reason).join('; ')}`);
  assert.ok(answeredAtKill >= KILL_AT && answeredAtKill < N, `killed after ${answeredAtKill} answers`);
  assert.ok(client.counters.drops >= 1, 'the connection was dropped');
  assert.ok(client.counters.resent >= 1, 'something was resent');
  assert.equal(daemon.starts, 2);
  for (let i = 0; i < N; i++) {
    assert.equal(answers[i], 1, `report ${i} answered ${answers[i]} times`);
    const r = replies[i];
    assert.equal(r.id, reports[i].id);
    assert.equal(r.action, 'retry', `report ${i}: ${JSON.stringify(r)}`);
    assert.equal(r.attempt, 1, `report ${i}: ${JSON.stringify(r)}`);
    if (i >= EARLY) assert.equal(r.retry_at, t0 + LEAD_MS, `report ${i}`);
  }

  // Every retry event at least once, each due when the caller was told.
  await waitFor(() => seen.size === N, LEAD_MS + 20000, `retry events (have ${seen.size} of ${N})`);
  for (let i = 0; i < N; i++) {
    assert.equal(dueAt.get(reports[i].id), replies[i].retry_at, `retry event of report ${i}`);
  }

  // The daemon's state: every message recorded once, awaiting its outcome.
  const checks = await Promise.all(reports.map((r) => client.get(r.id)));
  for (let i = 0; i < N; i++) {
    const g = checks[i];
    assert.equal(g.history.length, 1, `history of ${reports[i].id}: ${JSON.stringify(g.history)}`);
    assert.equal(g.attempt, 1);
    assert.equal(g.state, 'awaiting');
  }
  const st = await client.stats();
  assert.equal(st.pending, 0);
  assert.equal(st.awaiting, N);

  await consumer.close();
  await consuming;
  await client.close();
  const dups = [...seen.values()].filter((n) => n > 1).length;
  console.log(`# batch ${batchMs} ms, killed after ${answeredAtKill} answers; client: ${JSON.stringify(client.counters)}; `
    + `consumer drops: ${consumerDrops}, ${dups} retry events seen twice; consumer: ${JSON.stringify(consumer.counters)}`);
});
