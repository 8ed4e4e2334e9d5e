'use strict';

// Three reboundd sharing one schedule in six shards by recipient: a Client
// given one address asks `cluster` and sends each report straight to its
// shard's owner (the instances' `forwarded` counters stay put), every report
// is acknowledged and gets its retry event; kill -9 of one owner mid-batch:
// the batch goes on through the others (relayed until the shards are taken
// over), 0 acknowledged reports without their retry event, and the next
// batch goes straight to the new owners. The shard this client computes is
// checked against the daemons' own routing for many recipients.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { Client, Consumer, ReboundError } = require('..');
const { crc16, shardOf, routeRcpt, ShardMap } = require('../lib/shards');
const { Targets } = require('../lib/address');
const { Redis, Daemon, disposeAfter, uniqueId, waitFor, sleep } = require('./harness');

const SHARDS = 6;

// Sends lines to a daemon and resolves to its replies (one per line).
function raw(daemon, objs, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port: daemon.port });
    const out = [];
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`${out.length} of ${objs.length} replies in ${timeoutMs} ms`));
    }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(objs.map((o) => JSON.stringify(o) + '\n').join('')));
    sock.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        out.push(JSON.parse(buf.slice(0, i)));
        buf = buf.slice(i + 1);
      }
      if (out.length === objs.length) {
        clearTimeout(timer);
        sock.destroy();
        resolve(out);
      }
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

const cluster = async (d) => (await raw(d, [{ op: 'cluster' }], 2000))[0];

async function forwarded(ds) {
  let n = 0;
  for (const d of ds) n += (await cluster(d)).forwarded;
  return n;
}

// Every shard served by one of ds, none more than its fair share, and every
// one of ds telling the same complete map.
async function waitSpread(ds, timeoutMs) {
  const share = Math.ceil(SHARDS / ds.length);
  await waitFor(async () => {
    const got = await Promise.all(ds.map(cluster));
    const flat = got.flatMap((g) => g.serving).sort((x, y) => x - y);
    const maps = new Set(got.map((g) => JSON.stringify(g.map)));
    return flat.join() === [0, 1, 2, 3, 4, 5].join() && got.every((g) => g.serving.length <= share) &&
      maps.size === 1 && !got[0].map.includes('');
  }, timeoutMs, `the shards spread over ${ds.length}`);
}

async function three() {
  const redis = await new Redis().start();
  after(() => redis.stop());
  const ds = [];
  for (const id of ['a', 'b', 'c']) {
    const d = new Daemon(redis, { config: { lease_ttl: '1500ms', instance_id: id, shards: SHARDS } });
    after(() => d.stop());
    await d.start();
    ds.push(d);
  }
  await waitSpread(ds, 15000);
  return ds;
}

// Upper and lower case (the hash lowers A-Z), many domains (no domain's pace
// holds the retries back).
function rcptOf(tag, i) {
  const user = i % 3 === 0 ? `User${i}` : `u${i}`;
  return i % 2 ? `${user}.${tag}@D${i % 64}.Example` : `${user}.${tag}@d${i % 64}.example`;
}

const grey = (id, rcpt) => ({ id, rcpt, code: 451, enhanced: '4.7.1', text: 'greylisted' });

// Collects retry events until every id has one (or the time is up); the
// ids without one, and how many came more than once.
async function collectRetries(consumer, ids, timeoutMs) {
  const seen = new Map();
  const want = new Set(ids);
  const deadline = Date.now() + timeoutMs;
  while (want.size > 0 && Date.now() < deadline) {
    let timer;
    const late = new Promise((resolve) => { timer = setTimeout(() => resolve(null), Math.max(10, deadline - Date.now())); });
    const r = await Promise.race([consumer.next(), late]);
    clearTimeout(timer);
    if (r === null) break;
    if (r.done) break;
    const ev = r.value;
    if (ev.type === 'retry') {
      seen.set(ev.id, (seen.get(ev.id) || 0) + 1);
      want.delete(ev.id);
    }
    consumer.ack(ev);
  }
  return { missing: [...want], dups: ids.filter((i) => (seen.get(i) || 0) > 1).length };
}

function assertAllRetry(replies, ids) {
  const bad = replies.filter((r) => r.ok !== true || r.action !== 'retry');
  assert.deepEqual(bad.slice(0, 3), [], `${bad.length} of ${replies.length} reports not acknowledged`);
  assert.deepEqual(replies.map((r) => r.id), ids);
}

test('the routing bookkeeping, no daemon', () => {
  // CRC-16/XMODEM's check value; only ASCII letters are lowered
  assert.equal(crc16(Buffer.from('123456789')), 0x31c3);
  assert.equal(shardOf('Alice@EXAMPLE.com', SHARDS), shardOf('alice@example.com', SHARDS));
  assert.equal(shardOf('\u00c9@x', 64), crc16(Buffer.from('\u00c9@x')) % 64);
  assert.equal(shardOf('a@b', 1), 0);
  assert.equal(routeRcpt({ op: 'bounce', id: 'm', rcpt: 'a@b' }), 'a@b');
  assert.equal(routeRcpt({ op: 'get', id: 'm' }), undefined);
  assert.equal(routeRcpt({ op: 'stats' }), undefined);

  const m = new ShardMap();
  assert.equal(m.due(0), true);
  m.update({ ok: true, shards: 3, map: ['h:1', 'h:2', ''], instances: [{ addr: 'h:1' }, { addr: 'h:2' }] }, 1000);
  const owners = new Map();
  for (let i = 0; i < 200; i++) owners.set(shardOf(`u${i}@x`, 3), m.owner(`u${i}@x`));
  assert.deepEqual([...owners.entries()].sort(), [[0, 'h:1'], [1, 'h:2'], [2, null]]);
  assert.deepEqual(m.instances, ['h:1', 'h:2']);
  assert.equal(m.due(1000 + 4999), false);
  assert.equal(m.due(1000 + 5000), true);
  m.stale = true;
  assert.equal(m.due(1000 + 100), false);
  assert.equal(m.due(1000 + 250), true);
  m.update(new Error('nobody answered'), 2000); // the map as it was
  assert.deepEqual([m.shards, m.stale], [3, true]);
  m.update(ReboundError.fromReply({ ok: false, error: { code: 'unknown_op' } }), 3000);
  assert.deepEqual([m.shards, m.owner('u1@x'), m.stale], [1, null, false]);

  const t = new Targets('h:9');
  const moves = [];
  t.onChange = () => moves.push(t.current);
  t.add(['h:1', 'h:9', 'h:0', 'h:2']); // port 0: not an address
  assert.deepEqual(t.addresses, ['h:9', 'h:1', 'h:2']);
  t.failed();
  assert.deepEqual([t.current, t.away], ['h:1', true]);
  assert.equal(t.moved({ owner: 'h:2' }), true);
  assert.deepEqual(moves, ['h:1', 'h:2']);
});

test('a lane still busy when its address owns nothing leaves the routes at once, closing after', async () => {
  const cluster3 = { ok: true, shards: 3, map: ['h:1', 'h:2', ''], instances: [{ addr: 'h:1' }, { addr: 'h:2' }] };
  const client = new Client('h:9');
  client._tookMap(cluster3);
  const rcpt = Array.from({ length: 200 }, (_, i) => `u${i}@x`).find((r) => shardOf(r, 3) === 0);
  const lane = client._laneFor(rcpt);
  assert.deepEqual(client.routes.owners, ['h:1']);
  let closed = false;
  lane.close = () => { closed = true; return Promise.resolve(); };
  lane._queue.push({}); // a request not answered yet
  client._tookMap({ ...cluster3, map: ['h:2', 'h:2', ''] });
  assert.deepEqual(client.routes.owners, [], 'a busy lane kept in the routes');
  assert.equal(closed, true, 'its close (which answers what it holds first) not begun');
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(client._retired.size, 0);
  lane._queue.shift();
  client.destroy();
});

test('the shard computed here is the one the daemons serve', { timeout: 60000 }, async () => {
  const ds = await three();
  const owners = (await cluster(ds[0])).map;
  const per = new Map(ds.map((d) => [d.address, []]));
  for (let i = 0; i < 600; i++) {
    // some with UTF-8 (SMTPUTF8): only A-Z are lowered, by byte
    const r = i % 10 ? rcptOf('h', i) : `J\u00d6RG${i}.\u00e9t\u00c9@D${i % 7}.Example`;
    per.get(owners[shardOf(r, SHARDS)]).push({ op: 'get', rcpt: r });
  }
  for (const reqs of per.values()) assert.ok(reqs.length > 100, `${reqs.length} of 600 on one instance`);
  const before = await forwarded(ds);
  for (const d of ds) {
    const reps = await raw(d, per.get(d.address));
    assert.deepEqual(reps.filter((r) => !r.ok), []);
  }
  assert.equal(await forwarded(ds), before, 'a get sent to the owner computed here was relayed');
});

test('reports go straight to their owners; kill -9 of an owner mid-batch loses none', { timeout: 90000 }, async () => {
  const ds = await three();
  const [a, b, c] = ds;
  const lost = (await cluster(b)).serving;
  const cons = disposeAfter(after, new Consumer(c.address, 'shards-node', { types: ['retry'], ackBatch: 200 }));
  const client = disposeAfter(after, new Client(a.address, { resendDeadlineMs: 30000, backoffMaxMs: 500 }));
  const ids = [];

  // 1. Straight to the owners: none relayed.
  const before = await forwarded(ds);
  const first = Array.from({ length: 1500 }, () => uniqueId('sh'));
  assertAllRetry(await client.bounceMany(first.map((x, i) => grey(x, rcptOf('s', i)))), first);
  ids.push(...first);
  const one = uniqueId('sh-one');
  assert.equal((await client.bounce(one, rcptOf('s', 7), 451, { enhanced: '4.7.1' })).action, 'retry');
  assert.equal((await client.getRecipient(rcptOf('s', 7))).recipient.address, rcptOf('s', 7).toLowerCase());
  assert.equal((await client.stats()).ok, true); // any instance
  assert.equal(await forwarded(ds), before, 'reports relayed by an instance: the client did not route them');
  assert.deepEqual(client.routes.owners, [b.address, c.address].sort());
  assert.equal(client.routes.shards, SHARDS);
  ids.push(one);

  // 2. kill -9 of b once 1000 of 5000 reports are acknowledged.
  const batch = Array.from({ length: 5000 }, () => uniqueId('k'));
  let acked = 0;
  let killed = null;
  const replies = await Promise.all(batch.map((x, i) => client.bounce(x, rcptOf('k', i), 451, { enhanced: '4.7.1' })
    .then((r) => {
      if (++acked === 1000) killed = b.kill9();
      return r;
    }, (e) => ({ ok: false, error: { code: e.code, message: e.message } }))));
  assert.ok(killed !== null, 'b was never killed');
  await killed;
  assertAllRetry(replies, batch);
  ids.push(...batch);

  // 3. After the takeover: the map asked again, straight to the new owners.
  await waitSpread([a, c], 10000);
  await sleep(300); // past the least time between two cluster asks
  await client.bounce(uniqueId('k-probe'), rcptOf('k', 0), 451); // asks cluster anew, may go on the old map
  await sleep(200);
  const before2 = await forwarded([a, c]);
  const later = Array.from({ length: 600 }, () => uniqueId('k-after'));
  assertAllRetry(await client.bounceMany(later.map((x, i) => grey(x, rcptOf('n', i)))), later);
  assert.equal(await forwarded([a, c]), before2, 'relayed after the takeover');
  assert.ok(!client.routes.map.includes(b.address), JSON.stringify(client.routes));
  assert.deepEqual(client.routes.owners, [c.address], 'the dead owner\'s connection given up');
  ids.push(...later);

  const { missing, dups } = await collectRetries(cons, ids, 30000);
  assert.deepEqual(missing.slice(0, 5), [], `${missing.length} of ${ids.length} acknowledged reports without a retry event`);
  console.log(`# kill -9 of an owner (shards ${lost}) after 1000 of 5000: ${ids.length} acknowledged, 0 without a retry event, ${dups} more than once`);
  await cons.close();
  await client.close();
});
