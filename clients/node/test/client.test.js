'use strict';

// The Client against the real reboundd: every op, errors as ReboundError,
// the Unix socket, the token, resend on `unavailable` (Redis down) and on a
// daemon that is away, the resend deadline, close().

const { test, after, before } = require('node:test');
const assert = require('node:assert/strict');
const { Client, ReboundError } = require('..');
const { parseAddress } = require('../lib/address');
const { startAll, uniqueId, freePort, waitFor, disposeAfter } = require('./harness');

let env;
before(async () => {
  env = await startAll(null);
});
after(() => env && env.stop());

function client(opts) {
  return disposeAfter(after, new Client(env.daemon.address, opts));
}

test('addresses: host:port, [v6]:port, bare host, Unix path', () => {
  assert.deepEqual(parseAddress('127.0.0.1:7411'), { host: '127.0.0.1', port: 7411 });
  assert.deepEqual(parseAddress('[::1]:9'), { host: '::1', port: 9 });
  assert.deepEqual(parseAddress('localhost'), { host: 'localhost', port: 7411 });
  assert.deepEqual(parseAddress('/run/rebound/rebound.sock'), { path: '/run/rebound/rebound.sock' });
  assert.throws(() => parseAddress('host:0'), TypeError);
  assert.throws(() => parseAddress(''), TypeError);
});

test('bounce, get, delivered, cancel, classify, stats, ping', async () => {
  const c = client();
  assert.deepEqual(await c.ping(), { ok: true });
  const id = uniqueId();
  const notBefore = new Date(Date.now() + 2000);
  const r = await c.bounce(id, 'alice@example.com', 451, {
    enhanced: '4.7.1', text: 'Greylisted, please try again later', campaign: 'c1', meta: { tenant: 'acme' }, notBefore,
  });
  assert.equal(r.ok, true);
  assert.equal(r.req, undefined, 'the client keeps its req to itself');
  assert.equal(r.id, id);
  assert.equal(r.class, 'greylist');
  assert.equal(r.action, 'retry');
  assert.equal(r.attempt, 1);
  assert.equal(r.retry_at, notBefore.getTime());
  const g = await c.get(id);
  assert.equal(g.state, 'pending');
  assert.equal(g.campaign, 'c1');
  assert.deepEqual(g.meta, { tenant: 'acme' });
  assert.equal(g.history.length, 1);
  const d = await c.delivered(id, { rcpt: 'alice@example.com' });
  assert.deepEqual([d.found, d.unsuppressed], [true, false]);
  await assert.rejects(c.get(id), (e) => e instanceof ReboundError && e.code === 'not_found');

  const id2 = uniqueId();
  await c.bounce(id2, 'bob@example.com', 452, { enhanced: '4.2.2', text: 'Mailbox full' });
  assert.equal((await c.cancel(id2)).found, true);
  assert.equal((await c.cancel(id2)).found, false);

  const k = await c.classify(550, { enhanced: '5.1.1', text: 'User unknown' });
  assert.equal(k.class, 'hard_invalid');
  assert.equal(k.action, 'suppress');
  const k2 = await c.classify(null, { text: '421 4.7.0 Try again later' });
  assert.equal(k2.code, 421);

  const s = await c.stats();
  assert.equal(s.redis, 'up');
  assert.equal(typeof s.pending, 'number');
  await c.close();
});

test('suppression: a hard bounce suppresses, getRecipient, suppressed, unsuppress, domain', async () => {
  const c = client();
  const rcpt = `${uniqueId('nobody')}@example.org`;
  const r = await c.bounce(uniqueId(), rcpt, 550, { enhanced: '5.1.1', text: 'User unknown' });
  assert.deepEqual([r.action, r.reason], ['suppress', 'hard_invalid']);
  const again = await c.bounce(uniqueId(), rcpt, 451, { text: 'try later' });
  assert.deepEqual([again.action, again.reason], ['suppress', 'suppressed']);
  assert.equal((await c.getRecipient(rcpt)).recipient.suppressed, true);
  const page = await c.suppressed({ count: 1000 });
  assert.ok(page.items.some((x) => x.rcpt === rcpt));
  assert.equal((await c.unsuppress(rcpt)).found, true);
  assert.equal((await c.getRecipient(rcpt)).recipient.suppressed, false);
  assert.equal((await c.domain('example.org')).domain, 'example.org');
  await c.close();
});

test('errors carry the protocol code; the connection stays usable', async () => {
  const c = client();
  await assert.rejects(c.bounce(uniqueId(), 'a@example.com', '451'),
    (e) => e instanceof ReboundError && e.code === 'bad_request' && /code/.test(e.message) && e.reply.ok === false);
  await assert.rejects(c.bounce(uniqueId(), 'a@example.com', 250), (e) => e.code === 'bad_request');
  await assert.rejects(c.bounce(uniqueId(), 'a@example.com', 451, { text: 'x'.repeat(5000) }),
    (e) => e.code === 'too_large');
  // A line over 64 KiB would get the connection closed: refused here.
  await assert.rejects(c.bounce(uniqueId(), 'a@example.com', 451, { meta: { big: 'y'.repeat(70000) } }),
    (e) => e.code === 'too_large' && e.reply === undefined);
  await assert.rejects(c.request({ op: 'subscribe', group: 'g' }), (e) => e.code === 'bad_request');
  assert.deepEqual(await c.ping(), { ok: true });
  assert.equal(c.counters.connects, 1, 'no reconnect after the errors');
  await c.close();
  await assert.rejects(c.ping(), (e) => e.code === 'closed');
});

test('bounceMany: replies in order, a refused report holds its error reply', async () => {
  const c = client();
  const reports = [];
  for (let i = 0; i < 300; i++) {
    reports.push({ id: uniqueId('many'), rcpt: `u${i}@example.net`, code: 451, enhanced: '4.7.1', text: 'greylisted' });
  }
  reports[7] = { ...reports[7], code: 200 };
  const replies = await c.bounceMany(reports);
  assert.equal(replies.length, 300);
  replies.forEach((r, i) => {
    if (i === 7) {
      assert.equal(r.ok, false);
      assert.equal(r.error.code, 'bad_request');
    } else {
      assert.equal(r.ok, true);
      assert.equal(r.id, reports[i].id);
    }
  });
  await c.close();
});

test('the Unix socket', async () => {
  const c = disposeAfter(after, new Client(env.daemon.unixPath));
  const r = await c.bounce(uniqueId(), 'carol@example.com', 451, { enhanced: '4.7.1', text: 'greylisted' });
  assert.equal(r.action, 'retry');
  await c.close();
});

test('close() waits for what was asked; destroy() rejects it', async () => {
  const c = client();
  const calls = [];
  for (let i = 0; i < 50; i++) calls.push(c.bounce(uniqueId('cl'), `u${i}@example.com`, 451, { text: 'greylisted' }));
  await c.close();
  const settled = await Promise.allSettled(calls);
  assert.ok(settled.every((s) => s.status === 'fulfilled'));

  const c2 = client();
  const p = c2.ping();
  c2.destroy();
  await assert.rejects(p, (e) => e.code === 'closed');
});

test('a token: auth on every connection; a wrong one rejects with auth_required', async () => {
  const { daemon } = await startAll(after, { config: { token: 's3cret' } });
  const good = disposeAfter(after, new Client(daemon.address, { token: 's3cret', backoffMinMs: 10 }));
  assert.equal((await good.bounce(uniqueId(), 'a@example.com', 451, { text: 'greylisted' })).ok, true);
  // A restart: the new connection authenticates again.
  await daemon.kill9();
  await daemon.start();
  assert.equal((await good.stats()).ok, true);
  assert.equal(good.counters.connects, 2);
  await good.close();

  const none = disposeAfter(after, new Client(daemon.address));
  await assert.rejects(none.stats(), (e) => e.code === 'auth_required');
  const bad = disposeAfter(after, new Client(daemon.address, { token: 'wrong' }));
  await assert.rejects(bad.stats(), (e) => e.code === 'auth_required');
  await none.close();
  await bad.close();
});

test('Redis down: unavailable answers are resent until Redis is back', async () => {
  const { redis, daemon } = await startAll(after);
  const c = disposeAfter(after, new Client(daemon.address, { backoffMinMs: 20, backoffMaxMs: 100, resendDeadlineMs: 15000 }));
  assert.equal((await c.ping()).ok, true);
  await redis.kill9();
  const ids = Array.from({ length: 20 }, () => uniqueId('rd'));
  const calls = ids.map((id) => c.bounce(id, 'dave@example.com', 451, { enhanced: '4.7.1', text: 'greylisted' }));
  // Wait until the daemon has said unavailable at least once.
  const t0 = Date.now();
  while (c.counters.unavailable === 0 && Date.now() - t0 < 10000) await new Promise((r) => setTimeout(r, 20));
  assert.ok(c.counters.unavailable > 0, 'the daemon answered unavailable');
  await redis.start();
  const replies = await Promise.all(calls);
  replies.forEach((r, i) => {
    assert.equal(r.id, ids[i]);
    assert.equal(r.action, 'retry');
  });
  assert.ok(c.counters.resent >= 20);
  await c.close();
});

test('the resend deadline: a daemon that stays away rejects with timeout', async () => {
  const port = await freePort(); // nobody listens there
  const c = disposeAfter(after, new Client(`127.0.0.1:${port}`, { resendDeadlineMs: 300, backoffMinMs: 20, backoffMaxMs: 50 }));
  const disconnects = [];
  c.on('disconnect', (e) => disconnects.push(e));
  const t0 = Date.now();
  await assert.rejects(c.bounce(uniqueId(), 'a@example.com', 451), (e) => e instanceof ReboundError && e.code === 'timeout');
  const took = Date.now() - t0;
  assert.ok(took >= 300 && took < 3000, `rejected after ${took} ms`);
  assert.ok(disconnects.length >= 2, 'it kept trying');
  await c.close();
});

test('a daemon restarted with SIGTERM mid-batch: every request answered once', async () => {
  const c = client({ backoffMinMs: 20, backoffMaxMs: 200 });
  const n = 2000;
  let answered = 0;
  let restart = null;
  const ids = Array.from({ length: n }, () => uniqueId('term'));
  // Retries held back past the restart (within the fast policy's 4.32 s
  // maximum age), so that a resend is a duplicate and not an outcome.
  const notBefore = Date.now() + 4000;
  const calls = ids.map((id, i) => c.bounce(id, `u${i}@t${i % 50}.example`, 451, {
    enhanced: '4.7.1', text: 'greylisted', notBefore,
  }).then((r) => {
    if (++answered === 500) {
      restart = (async () => {
        await env.daemon.term();
        await env.daemon.start();
      })();
    }
    return r;
  }));
  const replies = await Promise.all(calls);
  await restart;
  replies.forEach((r, i) => {
    assert.equal(r.id, ids[i]);
    assert.equal(r.retry_at, notBefore);
  });
  assert.equal(env.daemon.starts, 2);
  // Whether anything needed a resend depends on how much the daemon had
  // read when it stopped (it answers all of that first); the kill test
  // covers resends. Here: the connection went, and every call was answered.
  assert.ok(c.counters.drops >= 1, JSON.stringify(c.counters));
  const gets = await Promise.all(ids.map((id) => c.get(id)));
  for (const g of gets) {
    assert.equal(g.history.length, 1);
    assert.equal(g.state, 'pending');
  }
  assert.equal(c.counters.connects, 2, 'the gets went to the restarted daemon');
  await c.close();
});

test('busy (too many connections): the client waits and comes back', async () => {
  const { daemon } = await startAll(after, { config: { max_connections: 1 } });
  const holder = disposeAfter(after, new Client(daemon.address));
  await holder.ping(); // the one connection allowed
  const c = disposeAfter(after, new Client(daemon.address, { backoffMinMs: 20, backoffMaxMs: 50 }));
  const disconnects = [];
  c.on('disconnect', (e) => disconnects.push(e.code));
  const p = c.bounce(uniqueId('busy'), 'erin@example.com', 451, { text: 'greylisted' });
  await waitFor(() => disconnects.includes('busy'), 5000, 'a busy answer');
  await holder.close();
  holder.destroy();
  const r = await p;
  assert.equal(r.action, 'retry');
  await c.close();
});

test('a connection silent for timeoutMs is dropped and its requests resent; a garbled reply too', async () => {
  // A stand-in server: the first connection never answers, the second
  // answers with a line that is not JSON, the third properly.
  const net = require('node:net');
  let conns = 0;
  const server = net.createServer((sock) => {
    const n = ++conns;
    sock.setEncoding('utf8');
    let buf = '';
    sock.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const req = JSON.parse(buf.slice(0, i));
        buf = buf.slice(i + 1);
        if (n === 2) sock.write('<html>\n');
        else if (n >= 3) sock.write(JSON.stringify({ ok: true, req: req.req, echo: req.op }) + '\n');
      }
    });
    sock.on('error', () => {});
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  after(() => server.close());
  const c = disposeAfter(after, new Client(`127.0.0.1:${server.address().port}`, { timeoutMs: 200, backoffMinMs: 10, backoffMaxMs: 20 }));
  const codes = [];
  c.on('disconnect', (e) => codes.push(e.code));
  const r = await c.ping();
  assert.deepEqual(r, { ok: true, echo: 'ping' });
  assert.deepEqual(codes, ['timeout', 'protocol']);
  assert.equal(c.counters.resent, 2);
  await c.close();
});
