'use strict';

/*
 * The request client: one long-lived connection, requests pipelined on it.
 *
 * reboundd answers in request order, so the client keeps the requests it has
 * written in `inflight`, oldest first, and matches each reply to the head
 * (every request also carries a `req` number, checked against the echo, so a
 * desynchronised stream is noticed instead of answering the wrong caller).
 *
 * Every op this client sends is safe to repeat (a duplicate bounce while the
 * retry is pending is answered identically and counted once; delivered,
 * cancel and the reads are harmless), so failure handling is one rule:
 * whatever got no answer is sent again. A dropped connection puts its
 * unanswered requests back in front of the queue, in their order, and
 * reconnects after a back-off; an `unavailable` reply (Redis down, the daemon
 * loading) parks the request and resends it after a back-off. A request that
 * still has no real answer resendDeadlineMs after it was made is rejected
 * with `timeout`, so callers are never left waiting for ever.
 */

const { ReboundError } = require('./errors');
const { encodeLine } = require('./connection');
const { Link, answersHead } = require('./link');
const { Deque } = require('./deque');
const { ShardMap, routeRcpt, FETCH_DEADLINE_MS } = require('./shards');

const DEFAULTS = {
  token: undefined,
  timeoutMs: 10000,
  resendDeadlineMs: 60000,
  backoffMinMs: 50,
  backoffMaxMs: 2000,
  // reboundd reads at most 1024 unanswered requests per connection
  // (max_inflight); staying under it keeps the resend set after a drop small.
  window: 1000,
  // With shards: each request about one recipient straight to its owner.
  route: true,
};

// Errors that mean "nothing was done, ask again later".
const RESEND_CODES = new Set(['unavailable', 'busy']);

/** The ops a Client may send; subscribe and ack belong to a Consumer. */
const CLIENT_OPS = new Set([
  'bounce', 'delivered', 'cancel', 'get', 'classify', 'stats', 'ping',
  'suppressed', 'unsuppress', 'domain',
]);

function toEpochMs(v) {
  if (v === undefined || v === null) return undefined;
  if (v instanceof Date) return v.getTime();
  return v;
}

/**
 * A connection to reboundd for reports and queries. Requests are pipelined
 * on one connection; a connection dropped with requests unanswered, or an
 * `unavailable` answer, makes the client reconnect (or wait) with back-off
 * and send them again, until resendDeadlineMs has passed.
 *
 * Events: `connect` (the connection is up and authenticated), `disconnect`
 * (err: why; the client reconnects when it has work); with shards, those of
 * each owner's connection too.
 */
class Client extends Link {
  /**
   * @param {string} address "host:port" (TCP) or a Unix socket path (any
   *   string with a "/")
   * @param {object} [options]
   * @param {string} [options.token] the daemon's shared token, sent as
   *   `auth` on every new connection
   * @param {number} [options.timeoutMs=10000] the longest wait to connect,
   *   and the longest silence from the daemon while requests are
   *   unanswered before the connection is taken for dead (and resent on a
   *   new one)
   * @param {number} [options.resendDeadlineMs=60000] how long after a call a
   *   request may still be sent again; past it the call rejects with
   *   `timeout` (or the daemon's last `unavailable`)
   * @param {number} [options.backoffMinMs=50] the first back-off
   * @param {number} [options.backoffMaxMs=2000] the longest back-off
   * @param {number} [options.window=1000] the most requests written and
   *   unanswered at once (reboundd's max_inflight is 1024)
   * @param {boolean} [options.route=true] with shards (several reboundd,
   *   each owning some shards of the schedule by recipient), send each
   *   request about one recipient straight to its shard's owner, on a
   *   connection per owner; false sends everything to `address` (which
   *   relays what it does not own)
   */
  constructor(address, options = {}) {
    super(address, DEFAULTS, options);
    this._options = options;
    // Shards: the last `cluster` answer, a Client (route off) per owner
    // sent to, by address, and the requests waiting for the first answer.
    this._map = new ShardMap();
    this._lanes = new Map();
    // Lanes to owners that own nothing now, answering what was sent before.
    this._retired = new Set();
    this._waiting = [];
    this._mapFetch = null;
    this._targets.onChange = () => { this._map.stale = true; };
    // _state: idle | connecting | ready | closed
    this._queue = new Deque(); // not yet written, oldest first
    this._inflight = new Deque(); // written, unanswered, in order
    this._parked = []; // answered unavailable, waiting for the resend timer
    this._blocked = false; // the socket's buffer is full: wait for drain
    // _failures counts consecutive drops, failed connects, resend rounds
    this._reconnectTimer = null;
    this._resendTimer = null;
    this._lastError = null;
    this._closing = false;
    this._closeWaiters = [];
    /**
     * What the client did so far: `sent` request lines written (resends
     * included), `resent` of them were resends, `unavailable` answers
     * parked for a resend, `connects` connections made, `drops` connections
     * lost with work pending or not.
     */
    this.counters = { sent: 0, resent: 0, unavailable: 0, connects: 0, drops: 0 };
  }

  // ---------------------------------------------------------------- ops

  /**
   * Reports a failed delivery. Resolves to the decision, e.g.
   * `{ok:true, id, class, action:'retry', attempt, retry_at}` or
   * `{ok:true, id, class, action:'suppress', attempt, reason}`.
   * @param {string} id the message id
   * @param {string} rcpt the recipient address
   * @param {number} code the SMTP reply code, 4xx or 5xx
   * @param {object} [opts]
   * @param {string} [opts.enhanced] the enhanced status code, "4.7.1"
   * @param {string} [opts.text] the server's reply text
   * @param {string} [opts.campaign]
   * @param {object} [opts.meta] returned as is in this message's events
   * @param {number|Date} [opts.notBefore] the earliest retry, epoch ms
   * @returns {Promise<object>}
   */
  bounce(id, rcpt, code, opts = {}) {
    return this._send(bounceRequest(id, rcpt, code, opts));
  }

  /**
   * Reports many failed deliveries at once, pipelined. Resolves, once every
   * one is answered, to the replies in the order of `reports`. A report the
   * daemon refused (or that timed out) is not thrown: its place holds the
   * error reply, `{ok:false, error:{code, message}}`, so one bad report does
   * not hide the others' outcomes. Check `ok` on each.
   * @param {Array<{id: string, rcpt: string, code: number, enhanced?: string,
   *   text?: string, campaign?: string, meta?: object, notBefore?: number|Date}>} reports
   * @returns {Promise<object[]>}
   */
  bounceMany(reports) {
    return Promise.all(reports.map((r) =>
      this._send(bounceRequest(r.id, r.rcpt, r.code, r)).catch(errorReply)));
  }

  /**
   * Reports that a message (a retry, or a first send) was delivered.
   * Resolves to `{ok:true, id, found, unsuppressed}`.
   * @param {string} id
   * @param {{rcpt?: string}} [opts]
   * @returns {Promise<object>}
   */
  delivered(id, opts = {}) {
    return this._send({ op: 'delivered', id, rcpt: opts.rcpt });
  }

  /**
   * Forgets a message: its pending retry is dropped with no event.
   * Resolves to `{ok:true, id, found}`.
   * @param {string} id
   * @returns {Promise<object>}
   */
  cancel(id) {
    return this._send({ op: 'cancel', id });
  }

  /**
   * What reboundd knows about a message (state, attempt, history,
   * recipient). Rejects with code `not_found` for a message it does not know.
   * @param {string} id
   * @returns {Promise<object>}
   */
  get(id) {
    return this._send({ op: 'get', id });
  }

  /**
   * What reboundd knows about a recipient address (streak, suppression).
   * @param {string} rcpt
   * @returns {Promise<object>}
   */
  getRecipient(rcpt) {
    return this._send({ op: 'get', rcpt });
  }

  /**
   * A dry run of the policy: the class and action a reply would get.
   * @param {number|null} code the SMTP code (may be null when text starts with one)
   * @param {{enhanced?: string, text?: string}} [opts]
   * @returns {Promise<object>}
   */
  classify(code, opts = {}) {
    return this._send({ op: 'classify', code: code === null ? undefined : code, enhanced: opts.enhanced, text: opts.text });
  }

  /** The daemon's queue and counters. @returns {Promise<object>} */
  stats() {
    return this._send({ op: 'stats' });
  }

  /** A health check. Resolves to `{ok:true}`. @returns {Promise<object>} */
  ping() {
    return this._send({ op: 'ping' });
  }

  /**
   * One page of suppressed addresses.
   * @param {{cursor?: string, count?: number}} [opts]
   * @returns {Promise<object>} `{ok, cursor, items, total}`
   */
  suppressed(opts = {}) {
    return this._send({ op: 'suppressed', cursor: opts.cursor, count: opts.count });
  }

  /**
   * Takes an address off the suppression list.
   * @param {string} rcpt
   * @returns {Promise<object>} `{ok, rcpt, found}`
   */
  unsuppress(rcpt) {
    return this._send({ op: 'unsuppress', rcpt });
  }

  /**
   * One receiving domain's state (throttle, pending).
   * @param {string} domain
   * @returns {Promise<object>}
   */
  domain(domain) {
    return this._send({ op: 'domain', domain });
  }

  /**
   * Sends any request of the protocol (but subscribe and ack, which need a
   * Consumer) and resolves to its reply; an error reply rejects with a
   * ReboundError. Members that are undefined are left out. A `req` member
   * is set by the client.
   * @param {object} obj e.g. `{op: 'domain', domain: 'example.com'}`
   * @returns {Promise<object>}
   */
  request(obj) {
    if (obj === null || typeof obj !== 'object' || !CLIENT_OPS.has(obj.op)) {
      const op = obj && obj.op;
      return Promise.reject(new ReboundError('bad_request',
        op === 'subscribe' || op === 'ack' ? `op '${op}' belongs to a Consumer` : `unknown op ${JSON.stringify(op)}`));
    }
    return this._send({ ...obj });
  }

  /**
   * What routing knows now: `shards` (0 before the first `cluster` answer,
   * 1 without shards), `map` (each shard's owner) and `owners` (the
   * addresses with a connection of their own).
   * @returns {{shards: number, map: string[], owners: string[]}}
   */
  get routes() {
    return { shards: this._map.shards, map: [...this._map.owners], owners: [...this._lanes.keys()].sort() };
  }

  // Sends a request where it belongs; obj is the client's own.
  _send(obj) {
    if (this._closing || this._state === 'closed') {
      return Promise.reject(new ReboundError('closed', 'the client is closed'));
    }
    const deadline = Date.now() + this._opts.resendDeadlineMs;
    const rcpt = this._opts.route ? routeRcpt(obj) : undefined;
    if (rcpt === undefined) return this._enqueue(obj, deadline);
    if (this._map.due(Date.now())) this._fetchMap();
    if (!this._map.known) {
      // Until the first answer: sent here, all of it would be relayed.
      return new Promise((resolve, reject) => {
        this._waiting.push({ obj, rcpt, deadline, resolve, reject });
      });
    }
    return this._dispatch(obj, rcpt, deadline);
  }

  _dispatch(obj, rcpt, deadline) {
    const lane = this._laneFor(rcpt);
    return (lane === null ? this : lane)._enqueue(obj, deadline);
  }

  // The Client for the owner of rcpt's shard (made on first use), or null
  // for this one (no shards, the owner unknown, or connected there already).
  _laneFor(rcpt) {
    const addr = this._map.owner(rcpt);
    if (addr === null || addr === this._targets.current) return null;
    let lane = this._lanes.get(addr);
    if (lane !== undefined && lane._targets.away && !this._map.stale && lane._pending() === 0) {
      // It left its owner (a failure, an unavailable naming another) and
      // the map still names that owner: start over there.
      this._lanes.delete(addr);
      this._retire(lane);
      lane = undefined;
    }
    if (lane === undefined) {
      const fallbacks = this._targets.addresses.filter((a) => a !== addr);
      lane = new Client([addr, ...fallbacks], { ...this._options, route: false });
      lane._targets.onChange = () => { this._map.stale = true; };
      lane.on('connect', () => this.emit('connect'));
      lane.on('disconnect', (err) => this.emit('disconnect', err));
      this._lanes.set(addr, lane);
    }
    return lane;
  }

  // Asks `cluster` here (one ask at a time); the requests waiting for the
  // first answer go on once it came, or failed.
  _fetchMap() {
    if (this._mapFetch !== null) return;
    const deadline = Date.now() + Math.min(FETCH_DEADLINE_MS, this._opts.resendDeadlineMs);
    this._mapFetch = this._enqueue({ op: 'cluster' }, deadline).then((r) => r, (e) => e).then((r) => {
      this._mapFetch = null;
      this._tookMap(r);
      const waiting = this._waiting;
      this._waiting = [];
      for (const w of waiting) this._dispatch(w.obj, w.rcpt, w.deadline).then(w.resolve, w.reject);
      this._maybeFinishClose();
    });
  }

  // Takes a cluster answer (or the error that came instead).
  _tookMap(r) {
    this._map.update(r, Date.now());
    this._targets.add(this._map.instances);
    for (const [addr, lane] of this._lanes) {
      if (!this._map.owners.includes(addr)) {
        // It owns nothing now (it died, or handed its shards over): nothing
        // new goes there; what was sent already is answered (or fails over
        // to the other instances) before its connection closes.
        this._lanes.delete(addr);
        this._retire(lane);
      } else {
        lane._targets.add(this._map.instances);
      }
    }
  }

  _retire(lane) {
    this._retired.add(lane);
    lane.close().then(() => this._retired.delete(lane));
  }

  // Queues a request on this client's own connection; its req is set here.
  _enqueue(obj, deadline) {
    let line;
    const req = this._nextReq++;
    obj.req = req;
    try {
      line = encodeLine(obj);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise((resolve, reject) => {
      this._queue.push({ req, line, resolve, reject, internal: false, tries: 0, deadline });
      this._kick();
    });
  }

  /**
   * Closes the client: no new request is taken, the ones already made are
   * answered (or time out at their deadline), then the connection is closed.
   * @returns {Promise<void>}
   */
  close() {
    this._closing = true;
    const own = new Promise((resolve) => {
      this._closeWaiters.push(resolve);
      this._maybeFinishClose();
    });
    // The owners' connections once nothing more can be routed to them.
    return own.then(() => Promise.all([...this._lanes.values(), ...this._retired].map((l) => l.close())))
      .then(() => {});
  }

  /**
   * Closes at once: every unanswered request rejects with `closed` (a
   * report may or may not have been recorded).
   */
  destroy() {
    this._closing = true;
    const err = new ReboundError('closed', 'the client was destroyed');
    this._failAll(err);
    for (const w of this._waiting.splice(0)) w.reject(err);
    for (const lane of [...this._lanes.values(), ...this._retired]) lane.destroy();
    this._maybeFinishClose();
  }

  // ---------------------------------------------------------- internals

  _pending() {
    return this._queue.length + this._inflight.length + this._parked.length + this._waiting.length;
  }

  // Called whenever there may be something to do.
  _kick() {
    if (this._state === 'idle' && this._reconnectTimer === null && this._queue.length > 0) {
      this._connect();
    } else if (this._state === 'ready') {
      this._pump();
    }
  }

  async _connect() {
    const sock = await this._open((err) => this._dropped(err));
    if (sock === null) return;
    this._blocked = false;
    this._watch(sock, 'reply', (push) => {
      push();
      // One write for the room a whole chunk of replies made, not one per
      // reply: a pipelined batch costs a few hundred syscalls, not 10,000.
      this._pump();
    });
    sock.on('drain', () => {
      if (this._sock === sock) {
        this._blocked = false;
        this._pump();
      }
    });
    this._state = 'ready';
    this.counters.connects++;
    if (this._opts.token !== undefined && this._opts.token !== null) {
      // Ahead of everything queued: replies come in order, so the requests
      // pipelined behind it are read after it.
      this._queue.unshiftAll([{
        req: this._nextReq++, internal: true, deadline: Infinity,
        line: encodeLine({ op: 'auth', token: this._opts.token, req: this._nextReq - 1 }),
      }]);
    }
    this.emit('connect');
    this._pump();
  }

  _pump() {
    if (this._state !== 'ready' || this._blocked) return;
    let chunk = '';
    while (this._queue.length > 0 && this._inflight.length < this._opts.window) {
      const r = this._queue.shift();
      if (this._inflight.length === 0) this._lastHeard = Date.now();
      this._inflight.push(r);
      chunk += r.line;
      if (!r.internal) {
        this.counters.sent++;
        if (r.tries++ > 0) this.counters.resent++;
      }
      // Keep single writes moderate so that replies are read in between.
      if (chunk.length >= 262144) {
        if (!this._sock.write(chunk)) {
          this._blocked = true;
          chunk = '';
          break;
        }
        chunk = '';
      }
    }
    if (chunk !== '' && !this._sock.write(chunk)) this._blocked = true;
    this._armSilenceTimer();
    this._refSocket();
  }

  // An idle connection does not keep the process alive; one with work does.
  _refSocket() {
    if (this._sock === null) return;
    if (this._pending() > 0) this._sock.ref();
    else this._sock.unref();
  }

  _unanswered() {
    return this._inflight.length;
  }

  _onMessage(sock, msg) {
    if (!('ok' in msg)) return; // an event; a Client never subscribes
    const head = this._inflight.peek();
    if (msg.ok === false && msg.req === undefined) {
      // An error about the connection rather than a request (busy, a
      // line the daemon could not read): nothing was done, start over.
      const err = ReboundError.fromReply(msg);
      this._onSocketGone(sock, err);
      sock.destroy();
      return;
    }
    if (!answersHead(msg, head)) {
      this._protocolError(sock, new ReboundError('protocol',
        `reply out of order (req ${JSON.stringify(msg.req)}, expected ${head ? head.req : 'none'})`));
      return;
    }
    this._inflight.shift();
    this._lastHeard = Date.now();
    // The req is the client's own bookkeeping, not part of the answer.
    delete msg.req;
    if (head.internal) {
      if (msg.ok !== true) {
        // A wrong token will not get better by retrying.
        const err = ReboundError.fromReply(msg);
        this._failAll(err);
        this._onSocketGone(sock, err);
        sock.destroy();
      }
      return;
    }
    if (msg.ok === true) {
      this._failures = 0;
      head.resolve(msg);
    } else {
      const err = ReboundError.fromReply(msg);
      if (RESEND_CODES.has(err.code) && Date.now() < head.deadline) {
        this._lastError = err;
        this.counters.unavailable++;
        if (this._followOwner(msg)) {
          // The instance named the owner: what is in flight goes there.
          this._inflight.unshiftAll([head]);
          this._onSocketGone(sock, err);
          return;
        }
        this._park(head);
      } else {
        head.reject(err);
      }
    }
    if (this._inflight.length === 0) this._clearTimers(['_silenceTimer']);
    this._maybeFinishClose();
  }

  _protocolError(sock, err) {
    this._onSocketGone(sock, err);
    sock.destroy();
  }

  // One resend timer for everything answered `unavailable`: the back-off
  // grows once per round, not once per request.
  _park(r) {
    this._parked.push(r);
    if (this._resendTimer !== null) return;
    this._resendTimer = setTimeout(() => {
      this._resendTimer = null;
      const parked = this._parked;
      this._parked = [];
      this._queue.unshiftAll(parked);
      this._expire();
      this._kick();
      this._maybeFinishClose();
    }, this._backoff());
  }

  _onSocketGone(sock, err) {
    if (this._sock !== sock) return;
    this._sock = null;
    this._socketLost();
    this.counters.drops++;
    this._state = this._state === 'closed' ? 'closed' : 'idle';
    this._blocked = false;
    this._clearTimers(['_silenceTimer']);
    sock.destroy();
    // The unanswered requests go back in front, in order; a half-sent auth
    // is dropped (the next connection sends its own).
    const unanswered = this._inflight.drain().filter((r) => !r.internal);
    this._queue.filter((r) => !r.internal);
    this._queue.unshiftAll(unanswered);
    this._dropped(err || new ReboundError('unavailable', 'connection closed by reboundd'));
  }

  _dropped(err) {
    this._lastError = err;
    this.emit('disconnect', err);
    this._expire();
    if (this._state === 'closed') return;
    if (this._queue.length > 0 && this._reconnectTimer === null) {
      this._reconnectTimer = setTimeout(() => {
        this._reconnectTimer = null;
        this._expire();
        this._kick();
        this._maybeFinishClose();
      }, this._backoff());
    }
    this._maybeFinishClose();
  }

  // Rejects the queued requests whose resend deadline has passed.
  _expire() {
    const now = Date.now();
    const last = this._lastError;
    const expired = [];
    this._queue.filter((r) => {
      if (r.deadline > now) return true;
      expired.push(r);
      return false;
    });
    for (const r of expired) {
      const why = last ? `: last error ${last.code}: ${last.message}` : '';
      r.reject(new ReboundError(last && last.code === 'unavailable' ? 'unavailable' : 'timeout',
        `no answer within the resend deadline of ${this._opts.resendDeadlineMs} ms${why}`));
    }
  }

  _failAll(err) {
    const all = [...this._inflight.drain(), ...this._queue.drain(), ...this._parked];
    this._parked = [];
    for (const r of all) if (!r.internal) r.reject(err);
  }

  _maybeFinishClose() {
    if (!this._closing || this._pending() > 0) return;
    this._state = 'closed';
    this._clearTimers(['_reconnectTimer', '_resendTimer', '_silenceTimer']);
    this._endSocket();
    const waiters = this._closeWaiters;
    this._closeWaiters = [];
    for (const w of waiters) w();
  }
}

function bounceRequest(id, rcpt, code, o) {
  return {
    op: 'bounce', id, rcpt, code,
    enhanced: o.enhanced, text: o.text, campaign: o.campaign, meta: o.meta,
    not_before: toEpochMs(o.notBefore),
  };
}

function errorReply(err) {
  if (err instanceof ReboundError && err.reply) return err.reply;
  return { ok: false, error: { code: err.code || 'internal', message: err.message } };
}

module.exports = { Client };
