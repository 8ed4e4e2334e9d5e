'use strict';

/* global DENY, DENYSOFT */ // Haraka's return codes, globals in plugins

// haraka-plugin-rebound: Haraka's outbound queue hands its temporary failures
// to reboundd and retries when reboundd says so. See README.md for the model;
// the short version:
//   deferred  -> report `bounce`; on `retry` hold the queue file until the
//                `retry` event (Haraka's own retry stays armed at retry_at +
//                grace as a safety net); on `give_up`/`suppress` bounce it.
//   bounce    -> report the permanent failure; remember a suppression.
//   delivered -> report `delivered` after a retry.
//   rcpt      -> refuse relayed mail to a suppressed address.
// Whatever cannot reach reboundd in time is spooled to a file and sent later,
// and Haraka keeps its own retry schedule for that message.

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

function loadClient() {
  try {
    return require('rebound-client');
  } catch (err) {
    if (err.code !== 'MODULE_NOT_FOUND') throw err;
    // Inside the rebound source tree the client sits two levels up.
    return require(path.join(__dirname, '..', '..', 'clients', 'node'));
  }
}

const { Client, Consumer } = loadClient();

// For the plugin's own tests (Haraka registers only hook_* and named hooks).
exports.reboundId = reboundId;
exports.queueKey = queueKey;
exports.addressList = addressList;

// Errors that refuse the report itself: sending it again cannot help. Any
// other failure (unavailable, timeout, closed, auth_required, ...) means it was
// not recorded and is sent again later.
const REFUSED = new Set(['bad_request', 'too_large', 'unknown_op']);

/**
 * The rebound message id of one recipient of a queued message: Haraka's
 * transaction uuid (kept by the queue file, its renames and its splits) and a
 * digest of the address, so each recipient has its own retry in reboundd.
 */
function reboundId(uuid, rcpt) {
  const h = crypto.createHash('sha1').update(rcpt.toLowerCase()).digest('hex').slice(0, 12);
  return `${uuid}.${h}`;
}

/**
 * The part of a queue file name that survives Haraka's renames (arrival time
 * and unique tag): `$arrival_$next_$attempts_$pid_$uid_$counter_$host`.
 */
function queueKey(filename) {
  const p = String(filename).split('_');
  if (p.length !== 7) return null;
  return `${p[0]}_${p[4]}`;
}

/** "a:1, b:2" as the client takes it: one address, or a list of several. */
function addressList(text) {
  const list = String(text).split(',').map((x) => x.trim()).filter((x) => x !== '');
  return list.length === 1 ? list[0] : list;
}

function addressOf(a) {
  if (!a) return '';
  if (typeof a.address === 'function') return a.address();
  if (a.user !== undefined && a.host) return `${a.user}@${a.host}`;
  return String(a).replace(/^<|>$/g, '');
}

exports.register = function () {
  this.load_rebound_ini();
  // id -> {key, attempt}: which queue file holds the recipient's message.
  this.held = new Map();
  // lower-cased address -> time it was seen suppressed
  this.suppressedCache = new Map();
  this.register_hook('rcpt', 'check_suppressed');
  this.register_hook('data_post', 'note_message');
  this.register_hook('deferred', 'report_deferred');
  this.register_hook('bounce', 'report_bounce');
  this.register_hook('delivered', 'report_delivered');
};

exports.load_rebound_ini = function () {
  const cfg = this.config.get(
    'rebound.ini',
    { booleans: ['+main.check_rcpt', '-main.report_all_deliveries'] },
    () => this.load_rebound_ini(),
  );
  const m = cfg.main || {};
  const num = (v, d) => (v === undefined || v === '' || Number.isNaN(Number(v)) ? d : Number(v));
  this.cfg = {
    // several reboundd sharing one schedule: comma-separated, tried in turn
    address: addressList(m.address || '127.0.0.1:7411'),
    token: m.token || undefined,
    group: m.group || 'haraka',
    campaign_header: m.campaign_header || 'X-Campaign',
    report_wait_ms: num(m.report_wait_ms, 3000),
    grace: num(m.grace, 3600),
    spool: m.spool || path.join(process.env.HARAKA || process.cwd(), 'rebound-spool.jsonl'),
    spool_interval_ms: num(m.spool_interval_ms, 5000),
    find_wait_ms: num(m.find_wait_ms, 30000),
    check_rcpt: m.check_rcpt !== false,
    suppressed_ttl: num(m.suppressed_ttl, 300),
    report_all_deliveries: m.report_all_deliveries === true,
  };
};

// Outbound runs in the worker processes under cluster, in the one process
// otherwise: start the connections where the queue is.
exports.hook_init_master = function (next, server) {
  if (!server.cluster) this.start_rebound();
  next();
};

exports.hook_init_child = function (next) {
  this.start_rebound();
  next();
};

exports.start_rebound = function () {
  if (this.client) return;
  const c = this.cfg;
  this.client = new Client(c.address, {
    token: c.token,
    timeoutMs: c.report_wait_ms,
    resendDeadlineMs: c.report_wait_ms,
  });
  this.client.on('disconnect', (err) => this.logdebug(`rebound: connection dropped: ${err && err.message}`));
  this.consumer = new Consumer(c.address, c.group, { token: c.token, types: ['retry', 'give_up', 'suppress'] });
  this.consumer.on('disconnect', (err) => this.logdebug(`rebound: event connection dropped: ${err && err.message}`));
  this.consume();
  this.spoolTimer = setInterval(() => this.flush_spool(), c.spool_interval_ms);
  this.spoolTimer.unref();
  this.flush_spool();
};

exports.shutdown = function () {
  this.loginfo('rebound: closing the connections to reboundd');
  this.stopping = true;
  if (this.spoolTimer) clearInterval(this.spoolTimer);
  if (this.consumer) this.consumer.close();
  if (this.client) this.client.close();
};

// ------------------------------------------------------------------ inbound

exports.note_message = function (next, connection) {
  const txn = connection.transaction;
  if (!txn || !connection.relaying) return next();
  const campaign = txn.header.get(this.cfg.campaign_header).trim();
  const messageId = txn.header.get('Message-ID').trim();
  // transaction.notes goes into the queue file (todo.notes): the reports
  // made days later, after restarts, still have these.
  txn.notes.rebound = { campaign: campaign || undefined, message_id: messageId || undefined };
  next();
};

exports.is_suppressed_cached = function (addr) {
  const at = this.suppressedCache.get(addr);
  if (at === undefined) return false;
  if (Date.now() - at > this.cfg.suppressed_ttl * 1000) {
    this.suppressedCache.delete(addr);
    return false;
  }
  return true;
};

exports.check_suppressed = function (next, connection, params) {
  if (!connection.relaying || !this.cfg.check_rcpt || !this.client) return next();
  const addr = addressOf(params[0]).toLowerCase();
  const refuse = () =>
    next(DENY, `5.1.1 <${addr}>: recipient suppressed after earlier failures; not sent`);
  if (this.is_suppressed_cached(addr)) return refuse();
  // A live look-up, so a suppression made by another sender or before a
  // restart counts too; when reboundd does not answer, the mail is accepted
  // (the report of its bounce will be answered `suppress` later).
  let done = false;
  const timer = setTimeout(() => {
    if (!done) { done = true; next(); }
  }, Math.min(this.cfg.report_wait_ms, 2000));
  this.client.getRecipient(addr).then(
    (r) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (r.recipient && r.recipient.suppressed) {
        this.suppressedCache.set(addr, Date.now());
        return refuse();
      }
      next();
    },
    () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      next();
    },
  );
};

// ------------------------------------------------------------------ reports

/** The report for one recipient of hmail, or null when it is not relayable. */
exports.report_for = function (hmail, rcpt, fallback) {
  const todo = hmail.todo;
  const notes = (todo.notes && todo.notes.rebound) || {};
  const addr = addressOf(rcpt);
  let code = Number(rcpt.dsn_smtp_code || rcpt.dsn_code);
  let enhanced = rcpt.dsn_smtp_extc || rcpt.dsn_status;
  let text = rcpt.dsn_smtp_response || rcpt.dsn_msg;
  if (!(code >= 400 && code <= 599)) {
    // No reply from a server (connection refused, DNS, TLS): a local
    // deferral. RFC 3463's 4.4.1 (no answer from host) says what it was.
    code = fallback.code;
    enhanced = fallback.enhanced;
    text = fallback.text;
  }
  if (enhanced && !/^[245]\.\d{1,3}\.\d{1,3}$/.test(enhanced)) enhanced = undefined;
  const meta = { q: queueKey(hmail.filename), uuid: todo.uuid };
  if (notes.message_id) meta.message_id = notes.message_id.slice(0, 900);
  return {
    id: reboundId(todo.uuid, addr),
    rcpt: addr,
    code,
    enhanced: enhanced || undefined,
    text: text ? String(text).slice(0, 4000) : undefined,
    campaign: notes.campaign ? notes.campaign.slice(0, 200) : undefined,
    meta,
  };
};

exports.send_bounce = function (r) {
  return this.client.bounce(r.id, r.rcpt, r.code, {
    enhanced: r.enhanced,
    text: r.text,
    campaign: r.campaign,
    meta: r.meta,
  });
};

function notRecorded(err) {
  return !(err && REFUSED.has(err.code));
}

exports.report_deferred = function (next, hmail, params) {
  if (!this.client) return next();
  const err = String((params && params.err) || 'deferred');
  const fallback = { code: 451, enhanced: '4.4.1', text: err };
  const reports = hmail.todo.rcpt_to.map((rc) => this.report_for(hmail, rc, fallback));
  Promise.allSettled(reports.map((r) => this.send_bounce(r))).then((results) => {
    const failed = [];
    const replies = [];
    results.forEach((res, i) => {
      if (res.status === 'fulfilled') replies.push(res.value);
      else if (notRecorded(res.reason)) failed.push(reports[i]);
      else this.logerror(`rebound: bounce report refused: ${res.reason.message}`);
    });
    for (const r of failed) this.spool({ op: 'bounce', ...r });
    for (const r of replies) if (r.action === 'suppress') this.suppressedCache.set(r.rcpt || '', Date.now());
    if (failed.length || replies.length === 0) {
      // reboundd did not take it: Haraka's own schedule, reported later.
      this.logwarn(`rebound: unreachable, ${hmail.filename} keeps Haraka's own retry (${params.delay}s)`);
      return next();
    }
    const retries = replies.filter((r) => r.action === 'retry');
    if (retries.length === 0) {
      // give_up or suppress for every recipient: the sender gets the bounce.
      const why = replies.map((r) => `${r.action} (${r.reason || r.class})`).join(', ');
      // Held a minute, long enough for give_up to find it and short enough
      // that Haraka itself tries again if that fails.
      this.give_up_later(queueKey(hmail.filename), `${err}; rebound: ${why}`);
      return next(DENYSOFT, '60');
    }
    const key = queueKey(hmail.filename);
    let due = 0;
    for (const r of retries) {
      this.held.set(r.id, { key, attempt: r.attempt });
      due = Math.max(due, r.retry_at || 0);
    }
    const hold = Math.max(0, Math.ceil((due - Date.now()) / 1000)) + this.cfg.grace;
    const ids = retries.map((r) => r.id).join(' ');
    this.loginfo(`rebound: ${hmail.filename} held for the retry event of ${ids} (Haraka's own retry in ${hold}s)`);
    next(DENYSOFT, String(hold));
  });
};

exports.report_bounce = function (next, hmail, err) {
  if (!this.client || hmail.rebound_give_up) return next();
  const intervals = (this.haraka_require('outbound/config').cfg || {}).temp_fail_intervals || [];
  if (hmail.num_failures > intervals.length) {
    // Haraka's own give-up after its schedule ran out (reboundd was away):
    // the deferrals were reported, this is not the receiver's verdict.
    return next();
  }
  const text = String((err && err.message) || err || 'bounced');
  const list = (err && err.bounced_rcpt) || hmail.todo.rcpt_to;
  const reports = list
    .map((rc) => this.report_for(hmail, rc, { code: 550, enhanced: '5.4.4', text }))
    .filter((r) => r.code >= 500);
  Promise.allSettled(reports.map((r) => this.send_bounce(r))).then((results) => {
    results.forEach((res, i) => {
      if (res.status === 'fulfilled') {
        this.held.delete(reports[i].id);
        if (res.value.action === 'suppress') this.suppressedCache.set(reports[i].rcpt.toLowerCase(), Date.now());
      } else if (notRecorded(res.reason)) {
        this.spool({ op: 'bounce', ...reports[i] });
      }
    });
    next(); // Haraka sends its bounce to the sender as usual
  });
};

exports.report_delivered = function (next, hmail, params) {
  if (!this.client) return next();
  const okRecips = (params && params[6]) || [];
  const retried = hmail.num_failures > 0;
  for (const rc of okRecips) {
    const rcpt = addressOf(rc);
    const id = reboundId(hmail.todo.uuid, rcpt);
    const known = this.held.delete(id);
    if (!retried && !known && !this.cfg.report_all_deliveries) continue;
    this.client.delivered(id, { rcpt }).then(
      () => {},
      (err) => {
        if (notRecorded(err)) this.spool({ op: 'delivered', id, rcpt });
      },
    );
  }
  next();
};

// ------------------------------------------------------------------ spool

exports.spool = function (rec) {
  try {
    fs.appendFileSync(this.cfg.spool, `${JSON.stringify(rec)}\n`);
  } catch (err) {
    this.logerror(`rebound: cannot spool a report to ${this.cfg.spool}: ${err.message}`);
  }
};

/**
 * Sends the spooled reports in order; stops at the first that fails. Resolves
 * once this round is done (at once when one is already running).
 */
exports.flush_spool = function () {
  if (this.flushing) return Promise.resolve();
  let lines;
  try {
    lines = fs.readFileSync(this.cfg.spool, 'utf8').split('\n').filter(Boolean);
  } catch {
    return Promise.resolve();
  }
  if (lines.length === 0) return Promise.resolve();
  this.flushing = true;
  return (async () => {
    let sent = 0;
    for (const line of lines) {
      let rec;
      try {
        rec = JSON.parse(line);
      } catch {
        sent++;
        continue;
      }
      try {
        const r =
          rec.op === 'delivered' ? await this.client.delivered(rec.id, { rcpt: rec.rcpt }) : await this.send_bounce(rec);
        if (r && r.action === 'suppress') this.suppressedCache.set(String(rec.rcpt).toLowerCase(), Date.now());
        sent++;
      } catch (err) {
        if (notRecorded(err)) break;
        this.logerror(`rebound: spooled report refused, dropped: ${err.message}: ${line}`);
        sent++;
      }
    }
    if (sent > 0) this.rewrite_spool(sent);
  })().finally(() => {
    this.flushing = false;
  });
};

exports.rewrite_spool = function (sent) {
  // Reports spooled while the flush ran were appended behind the ones read.
  const all = fs.readFileSync(this.cfg.spool, 'utf8').split('\n').filter(Boolean);
  const rest = all.slice(sent);
  const tmp = `${this.cfg.spool}.tmp`;
  fs.writeFileSync(tmp, rest.length ? `${rest.join('\n')}\n` : '');
  fs.renameSync(tmp, this.cfg.spool);
  this.loginfo(`rebound: ${sent} spooled reports sent, ${rest.length} left`);
};

// ------------------------------------------------------------------ events

exports.consume = async function () {
  try {
    for await (const ev of this.consumer) {
      this.handle_event(ev).then(
        () => this.consumer.ack(ev),
        (err) => this.logerror(`rebound: event ${ev.eid} not handled (it will come again): ${err.message}`),
      );
    }
  } catch (err) {
    this.logerror(`rebound: the event subscription ended: ${err.message}`);
  }
};

exports.handle_event = async function (ev) {
  const held = ev.id ? this.held.get(ev.id) : undefined;
  const key = (held && held.key) || (ev.meta && ev.meta.q);
  if (ev.type === 'suppress' && ev.rcpt) this.suppressedCache.set(ev.rcpt.toLowerCase(), Date.now());
  if (!key) return;
  if (ev.type === 'retry') {
    // A late duplicate of an earlier retry must not cut the next wait short.
    if (held && typeof ev.attempt === 'number' && ev.attempt < held.attempt) return;
    const t = await this.find_held(key);
    if (!t) return; // delivered, bounced, or being sent already
    const send = t.cb; // discard() clears it
    this.temp_fail_queue().discard(t.id);
    this.loginfo(`rebound: retry ${ev.attempt} of ${ev.id}: sending ${t.id} now`);
    if (send) send();
    return;
  }
  const why = `${ev.code || ''} ${ev.enhanced || ''} rebound: ${ev.type} (${ev.reason || ev.class})`.trim();
  if (held) this.held.delete(ev.id);
  await this.give_up(key, why);
};

exports.temp_fail_queue = function () {
  return this.haraka_require('outbound/queue').temp_fail_queue;
};

/**
 * The temp-fail timer of the queue file with this key. The file may not be
 * there yet (Haraka still loading its queue, or renaming it after a
 * deferral): look again for a while before concluding it is gone.
 */
exports.find_held = async function (key) {
  const deadline = Date.now() + this.cfg.find_wait_ms;
  for (;;) {
    const t = this.temp_fail_queue().queue.find((x) => queueKey(x.id) === key);
    if (t) return t;
    // Stopping: the event stays unacked and comes again after the restart.
    if (this.stopping) throw new Error('shutting down');
    if (Date.now() >= deadline) return null;
    await new Promise((r) => setTimeout(r, 200));
  }
};

exports.give_up_later = function (key, why) {
  this.give_up(key, why).catch((err) => this.logerror(`rebound: bounce of ${key} failed: ${err.message}`));
};

/** Takes the held file off the retry timers and bounces it to the sender. */
exports.give_up = async function (key, why) {
  const t = await this.find_held(key);
  if (!t) return;
  const q = this.haraka_require('outbound/queue');
  const HMailItem = this.haraka_require('outbound/hmail');
  q.temp_fail_queue.discard(t.id);
  const hmail = new HMailItem(t.id, path.join(q.queue_dir, t.id));
  await new Promise((resolve, reject) => {
    hmail.once('ready', resolve);
    hmail.once('error', reject);
  });
  hmail.rebound_give_up = true;
  this.loginfo(`rebound: bouncing ${t.id} to its sender: ${why}`);
  hmail.convert_temp_failed_to_bounce(why);
};
