'use strict';

// The plugin's logic that the end-to-end test cannot steer: what a report
// holds when the server gave no reply, the ids and queue keys, and the spool
// (order, stop at the first failure, drop only what reboundd refuses).
// Runs with node's test runner, without Haraka: the plugin's functions are
// called on a stand-in for Haraka's plugin object.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const mod = require('..');

function plugin(client, dir) {
  const p = Object.assign(Object.create(null), mod);
  p.cfg = { spool: path.join(dir, 'spool.jsonl'), report_wait_ms: 100 };
  p.client = client;
  p.held = new Map();
  p.suppressedCache = new Map();
  p.logs = [];
  for (const level of ['loginfo', 'logwarn', 'logerror', 'logdebug']) p[level] = (m) => p.logs.push(`${level}: ${m}`);
  return p;
}

function tmpdir(t) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'rebound-haraka-'));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

function rcpt(user, host, extra) {
  return Object.assign({ user, host, address: () => `${user}@${host}` }, extra);
}

const HMAIL = {
  filename: '1796603659872_1796603659872_0_10504_6ZSfwD_1_mx.example',
  todo: {
    uuid: '24FD0D27-68D8-41D3-BBD9-730862936945.1',
    notes: { rebound: { campaign: 'june', message_id: '<m1@example.org>' } },
  },
};

test('address: one, or several reboundd comma-separated', () => {
  assert.equal(mod.addressList('127.0.0.1:7411'), '127.0.0.1:7411');
  assert.deepEqual(mod.addressList('10.0.0.1:7411, 10.0.0.2:7411,'), ['10.0.0.1:7411', '10.0.0.2:7411']);
  assert.equal(mod.addressList('/run/rebound/rebound.sock'), '/run/rebound/rebound.sock');
});

test('ids: one per recipient of a message, whatever the case of the address', () => {
  const a = mod.reboundId(HMAIL.todo.uuid, 'Alice@Example.com');
  assert.equal(a, mod.reboundId(HMAIL.todo.uuid, 'alice@example.com'));
  assert.notEqual(a, mod.reboundId(HMAIL.todo.uuid, 'bob@example.com'));
  assert.match(a, /^24FD0D27-68D8-41D3-BBD9-730862936945\.1\.[0-9a-f]{12}$/);
});

test('queue keys survive the renames of a deferral', () => {
  const key = mod.queueKey(HMAIL.filename);
  assert.equal(key, '1796603659872_6ZSfwD');
  // Haraka's rename: next attempt, attempts and counter change
  assert.equal(mod.queueKey('1796603659872_1796607263061_1_10504_6ZSfwD_2_mx.example'), key);
  assert.equal(mod.queueKey('not-a-queue-file'), null);
});

test('a report carries the server reply, the campaign and the message id', () => {
  const p = plugin(null, os.tmpdir());
  const r = p.report_for(HMAIL, rcpt('alice', 'example.com', {
    dsn_smtp_code: 450, dsn_smtp_extc: '4.2.0', dsn_smtp_response: '<alice@example.com>: Greylisted',
  }), { code: 451, enhanced: '4.4.1', text: 'fallback' });
  assert.deepEqual(
    { rcpt: r.rcpt, code: r.code, enhanced: r.enhanced, text: r.text, campaign: r.campaign },
    { rcpt: 'alice@example.com', code: 450, enhanced: '4.2.0', text: '<alice@example.com>: Greylisted', campaign: 'june' },
  );
  assert.deepEqual(r.meta, { q: '1796603659872_6ZSfwD', uuid: HMAIL.todo.uuid, message_id: '<m1@example.org>' });
});

test('no reply from a server: 451 4.4.1 with the local error; a malformed enhanced code is left out', () => {
  const p = plugin(null, os.tmpdir());
  const none = p.report_for(HMAIL, rcpt('bob', 'example.com'), { code: 451, enhanced: '4.4.1', text: 'Tried all MXs' });
  assert.deepEqual([none.code, none.enhanced, none.text], [451, '4.4.1', 'Tried all MXs']);
  const odd = p.report_for(HMAIL, rcpt('bob', 'example.com', { dsn_smtp_code: 421, dsn_smtp_extc: '#4.4.5' }), {});
  assert.deepEqual([odd.code, odd.enhanced], [421, undefined]);
});

function fakeClient(script) {
  const sent = [];
  const answer = (op, id) => {
    sent.push(`${op} ${id}`);
    const r = script(op, id);
    if (r instanceof Error) return Promise.reject(r);
    return Promise.resolve(r);
  };
  return {
    sent,
    bounce: (id) => answer('bounce', id),
    delivered: (id) => answer('delivered', id),
  };
}

function err(code) {
  return Object.assign(new Error(code), { code });
}

function spoolLines(p) {
  return fs.readFileSync(p.cfg.spool, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l).id);
}

test('the spool is sent in order and stops at the first report reboundd did not record', async (t) => {
  let down = true;
  const client = fakeClient((op, id) => (down && id === 'b' ? err('unavailable') : { ok: true, action: 'retry' }));
  const p = plugin(client, tmpdir(t));
  p.spool({ op: 'bounce', id: 'a', rcpt: 'a@example.com', code: 451 });
  p.spool({ op: 'bounce', id: 'b', rcpt: 'b@example.com', code: 451 });
  p.spool({ op: 'delivered', id: 'b', rcpt: 'b@example.com' });
  await p.flush_spool();
  assert.deepEqual(client.sent, ['bounce a', 'bounce b']);
  assert.deepEqual(spoolLines(p), ['b', 'b'], 'what was not recorded stays, in order');
  down = false;
  await p.flush_spool();
  assert.deepEqual(client.sent.slice(2), ['bounce b', 'delivered b']);
  assert.deepEqual(spoolLines(p), []);
});

test('a spooled report that reboundd refuses is dropped and logged; a suppress reply is remembered', async (t) => {
  const client = fakeClient((op, id) =>
    id === 'bad' ? err('bad_request') : { ok: true, action: 'suppress', reason: 'hard_invalid' });
  const p = plugin(client, tmpdir(t));
  p.spool({ op: 'bounce', id: 'bad', rcpt: 'x@example.com', code: 451 });
  p.spool({ op: 'bounce', id: 'c', rcpt: 'Carol@Example.com', code: 550, enhanced: '5.1.1' });
  await p.flush_spool();
  assert.deepEqual(client.sent, ['bounce bad', 'bounce c']);
  assert.deepEqual(spoolLines(p), []);
  assert.ok(p.logs.some((l) => /logerror: .*refused, dropped/.test(l)), p.logs.join('\n'));
  assert.ok(p.is_suppressed_cached('carol@example.com'));
});

test('reports spooled while a flush runs stay behind the ones it read', async (t) => {
  let release;
  const gate = new Promise((r) => (release = r));
  const client = {
    sent: [],
    bounce(id) {
      this.sent.push(id);
      return id === 'a' ? gate.then(() => ({ ok: true, action: 'retry' })) : Promise.resolve({ ok: true, action: 'retry' });
    },
  };
  const p = plugin(client, tmpdir(t));
  p.spool({ op: 'bounce', id: 'a', rcpt: 'a@example.com', code: 451 });
  const round = p.flush_spool();
  p.spool({ op: 'bounce', id: 'late', rcpt: 'l@example.com', code: 451 });
  release();
  await round;
  assert.deepEqual(spoolLines(p), ['late']);
  await p.flush_spool();
  assert.deepEqual(spoolLines(p), []);
  assert.deepEqual(client.sent, ['a', 'late']);
});
