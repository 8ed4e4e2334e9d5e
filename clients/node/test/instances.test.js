'use strict';

// Several reboundd sharing one schedule under a lease: an `unavailable`
// reply naming the owner followed there by the Client and by a Consumer
// subscribed at a standby (a subscribe is never relayed), and a list of
// addresses that keeps answering when the instance in use is killed.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { Client, Consumer } = require('..');
const { Redis, Daemon, disposeAfter, uniqueId, waitFor } = require('./harness');

const TTL = '1500ms';

function stats(daemon) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port: daemon.port });
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write('{"op":"stats"}\n'));
    sock.on('data', (d) => {
      buf += d;
      const i = buf.indexOf('\n');
      if (i >= 0) {
        sock.destroy();
        resolve(JSON.parse(buf.slice(0, i)));
      }
    });
    sock.on('error', reject);
  });
}

async function pair(forward) {
  const redis = await new Redis().start();
  after(() => redis.stop());
  const start = async (id) => {
    const d = new Daemon(redis, { config: { lease_ttl: TTL, instance_id: id, lease_forward: forward } });
    after(() => d.stop());
    await d.start();
    return d;
  };
  const a = await start('a');
  await waitFor(async () => (await stats(a)).lease.role === 'owner', 10000, 'a to own the schedule');
  const b = await start('b');
  await waitFor(async () => (await stats(b)).lease.role === 'standby', 5000, 'b to stand by');
  return { a, b };
}

const grey = (id, rcpt) => ({ id, rcpt, code: 451, enhanced: '4.7.1', text: 'greylisted' });

test('an unavailable naming the owner is followed by the Client and by a Consumer', { timeout: 60000 }, async () => {
  const { a, b } = await pair(false);
  const client = disposeAfter(after, new Client(b.address, { resendDeadlineMs: 10000 }));
  const id = uniqueId('own');
  const r = await client.bounce(id, 'alice@example.com', 451, { enhanced: '4.7.1', text: 'greylisted' });
  assert.equal(r.id, id);
  const ids = Array.from({ length: 300 }, () => uniqueId('own-many'));
  const rs = await client.bounceMany(ids.map((x, i) => grey(x, `u${i}@example.org`)));
  assert.deepEqual(rs.map((x) => x.id), ids);
  const direct = disposeAfter(after, new Client(a.address));
  assert.equal((await direct.get(id)).id, id);

  const cons = disposeAfter(after, new Consumer(b.address, 'inst', { types: ['retry'] }));
  const wanted = uniqueId('sub');
  await client.bounce(wanted, 'carol@example.net', 451, { enhanced: '4.7.1', text: 'greylisted' });
  for (;;) {
    const { value, done } = await cons.next();
    assert.equal(done, false);
    cons.ack(value);
    if (value.id === wanted) break;
  }
  // Before the daemons stop (the after hooks run in the order they were
  // added): a consumer's close waits for its acks to be confirmed.
  await cons.close();
  client.destroy();
  direct.destroy();
});

test('a list of addresses keeps answering when the instance in use is killed', { timeout: 60000 }, async () => {
  const { a, b } = await pair(true);
  const client = disposeAfter(after, new Client([a.address, b.address], { resendDeadlineMs: 20000 }));
  const before = Array.from({ length: 200 }, () => uniqueId('list-a'));
  await client.bounceMany(before.map((x, i) => grey(x, `u${i}@d.example`)));
  await a.kill9();
  const afterKill = Array.from({ length: 200 }, () => uniqueId('list-b'));
  const rs = await client.bounceMany(afterKill.map((x, i) => grey(x, `v${i}@d.example`)));
  assert.deepEqual(rs.map((x) => x.id), afterKill);
  const direct = disposeAfter(after, new Client(b.address));
  for (const id of [before[0], before[199], afterKill[0], afterKill[199]]) {
    assert.equal((await direct.get(id)).id, id);
  }
  client.destroy();
  direct.destroy();
});
