'use strict';

/*
 * The event consumer: one connection subscribed with a consumer group, its
 * events handed out through an async iterator, acks batched.
 *
 * Delivery is at least once and the daemon does the remembering: an event
 * that was delivered and not acked comes again on the group's next
 * connection. So on a dropped connection the consumer just reconnects,
 * subscribes again and sends again the acks that got no reply; the daemon
 * redelivers what was not acked. What it redelivers that this consumer
 * already holds (buffered, in the caller's hands, or acked but not yet
 * confirmed) is recognised by its `eid` and not handed out twice; anything
 * else may come again and the caller treats it as the same event.
 */

const { ReboundError } = require('./errors');
const { encodeLine, backoffMs } = require('./connection');
const { Link, answersHead } = require('./link');
const { Deque } = require('./deque');

const DEFAULTS = {
  types: undefined,
  token: undefined,
  ackBatch: 100,
  ackDelayMs: 1000,
  timeoutMs: 10000,
  pingIntervalMs: 30000,
  backoffMinMs: 50,
  backoffMaxMs: 2000,
};

// The protocol's cap on ids in one ack.
const MAX_ACK_IDS = 10000;
// reboundd stops delivering to a connection holding 1000 unacked events;
// acks go out by half that at the latest, so delivery never stalls on the
// ack delay.
const MAX_ACK_BATCH = 500;

// Where an eid this consumer knows stands.
const BUFFERED = 1; // received, not yet handed out
const HELD = 2; // handed out, not acked
const ACKED = 3; // acked by the caller, the daemon has not confirmed

/**
 * A subscription to reboundd's events for one consumer group, read as an
 * async iterator:
 *
 *     for await (const ev of consumer) { act(ev); consumer.ack(ev); }
 *
 * Events: `connect` (subscribed), `disconnect` (err; it reconnects and
 * subscribes again by itself).
 */
class Consumer extends Link {
  /**
   * @param {string} address "host:port" or a Unix socket path
   * @param {string} group the consumer group: letters, digits, `_ . : -`
   * @param {object} [options]
   * @param {string[]} [options.types] the event types wanted (default all);
   *   events of other types are acknowledged for the group and skipped, so
   *   give a filtering group its own name
   * @param {string} [options.token] the daemon's shared token
   * @param {number} [options.ackBatch=100] send the acks once this many
   *   are waiting (at most 500: reboundd pauses a connection that holds
   *   1000 unacked events)
   * @param {number} [options.ackDelayMs=1000] or once the oldest waiting
   *   ack is this old
   * @param {number} [options.timeoutMs=10000] the longest wait to connect
   *   or for a reply to subscribe, ack or ping; also how long close() waits
   *   for its last acks to be confirmed
   * @param {number} [options.pingIntervalMs=30000] a quiet connection is
   *   pinged this often, so that a dead one is noticed
   * @param {number} [options.backoffMinMs=50]
   * @param {number} [options.backoffMaxMs=2000]
   */
  constructor(address, group, options = {}) {
    if (typeof group !== 'string' || group === '') throw new TypeError('group must be a non-empty string');
    super(address, DEFAULTS, options);
    this.group = group;
    // _state: idle | connecting | subscribing | subscribed | closed
    this._control = new Deque(); // our requests written, unanswered, in order
    this._buffer = new Deque(); // events received, not yet handed out
    this._waiters = []; // next() calls waiting for an event
    this._known = new Map(); // eid -> BUFFERED | HELD | ACKED
    this._ackQueue = []; // eids acked by the caller, not yet sent
    this._ackTimer = null;
    this._reconnectTimer = null;
    this._pingTimer = null;
    // A consumer waits on events for hours: its timers must not hold the process.
    this._silenceUnref = true;
    this._ackRetries = 0; // acks answered unavailable in a row
    this._fatal = null;
    this._closing = null; // the close() promise once closing
    this._closeDone = null;
    /**
     * What the consumer did so far: `events` handed out, `redelivered`
     * events that came again while this consumer still held them (not
     * handed out twice), `acked` acks the daemon confirmed, `connects`
     * subscriptions made.
     */
    this.counters = { events: 0, redelivered: 0, acked: 0, connects: 0 };
    this._connect();
  }


  [Symbol.asyncIterator]() {
    return this;
  }

  /**
   * The next event. Resolves to `{value: event, done: false}`, or
   * `{done: true}` once the consumer is closed; rejects with a ReboundError
   * when the subscription was refused (a bad group or type, a wrong token).
   * @returns {Promise<IteratorResult<object>>}
   */
  next() {
    if (this._buffer.length > 0) return Promise.resolve({ value: this._handOut(this._buffer.shift()), done: false });
    if (this._fatal) return Promise.reject(this._fatal);
    if (this._closing) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
  }

  /**
   * Ends a `for await` loop early: closes the consumer (acks flushed).
   * @returns {Promise<IteratorResult<object>>}
   */
  async return() {
    await this.close();
    return { value: undefined, done: true };
  }

  /**
   * Acknowledges an event after acting on it. Acks are sent in batches
   * (ackBatch, ackDelayMs) and whatever is waiting is sent on close().
   * An event not acked comes again (to this group) after a reconnect.
   * @param {object|string|Array<object|string>} ev the event, its eid, or
   *   a list of them
   */
  ack(ev) {
    if (Array.isArray(ev)) {
      for (const e of ev) this.ack(e);
      return;
    }
    const eid = typeof ev === 'string' ? ev : ev && ev.eid;
    if (typeof eid !== 'string') throw new TypeError('ack() takes an event or its eid');
    if (this._known.get(eid) === ACKED) return;
    this._known.set(eid, ACKED);
    this._ackQueue.push(eid);
    if (this._ackQueue.length >= Math.min(this._opts.ackBatch, MAX_ACK_BATCH) && this._ackRetries === 0) {
      this._flushAcks();
    } else {
      this._scheduleAcks(this._opts.ackDelayMs);
    }
  }

  _scheduleAcks(delayMs) {
    if (this._ackTimer !== null) return;
    this._ackTimer = setTimeout(() => {
      this._ackTimer = null;
      this._flushAcks();
    }, delayMs);
  }

  /**
   * Stops: no more events are handed out (a pending next() ends the loop),
   * the waiting acks are sent and their confirmation awaited (at most
   * timeoutMs), then the connection is closed. Events received and not yet
   * handed out are left unacked, so the daemon gives them to the group again.
   * @returns {Promise<void>}
   */
  close() {
    if (this._closing) return this._closing;
    this._closing = new Promise((resolve) => {
      this._closeDone = resolve;
    });
    for (const w of this._waiters.splice(0)) w.resolve({ value: undefined, done: true });
    for (const x of this._buffer.drain()) this._known.delete(x.eid);
    this._flushAcks();
    const giveUp = setTimeout(() => this._finishClose(), this._opts.timeoutMs);
    giveUp.unref();
    this._maybeFinishClose();
    return this._closing;
  }

  // ---------------------------------------------------------- internals

  _handOut(ev) {
    this.counters.events++;
    if (typeof ev.eid === 'string') this._known.set(ev.eid, HELD);
    return ev;
  }

  _unconfirmedAcks() {
    let n = this._ackQueue.length;
    for (const c of this._control.items) if (c && c.kind === 'ack') n += c.ids.length;
    return n;
  }

  _maybeFinishClose() {
    if (this._closing && this._unconfirmedAcks() === 0) this._finishClose();
  }

  _finishClose() {
    if (this._state === 'closed') {
      // Failed before (a refused subscribe): nothing left to do.
      if (this._closeDone) this._closeDone();
      return;
    }
    this._state = 'closed';
    this._clearTimers(['_ackTimer', '_reconnectTimer', '_silenceTimer', '_pingTimer']);
    this._endSocket();
    this._closeDone();
  }

  async _connect() {
    const sock = await this._open((err) => this._retryLater(err));
    if (sock === null) return;
    this._lastHeard = Date.now();
    sock.setKeepAlive(true, 30000);
    this._watch(sock, 'line', (push) => {
      this._lastHeard = Date.now();
      push();
    });
    this._state = 'subscribing';
    if (this._opts.token !== undefined && this._opts.token !== null) {
      this._send({ kind: 'auth' }, { op: 'auth', token: this._opts.token });
    }
    this._send({ kind: 'subscribe' }, { op: 'subscribe', group: this.group, types: this._opts.types });
    this._armPing();
  }

  _send(entry, obj) {
    entry.req = this._nextReq++;
    if (this._control.length === 0) this._lastHeard = Date.now();
    this._control.push(entry);
    this._sock.write(encodeLine({ ...obj, req: entry.req }));
    this._armSilenceTimer();
  }

  _flushAcks() {
    if (this._ackTimer !== null) {
      clearTimeout(this._ackTimer);
      this._ackTimer = null;
    }
    // Acks go only after the subscribe is confirmed on this connection;
    // until then they wait (subscribe's reply flushes them).
    if (this._state !== 'subscribed') return;
    while (this._ackQueue.length > 0) {
      const ids = this._ackQueue.splice(0, MAX_ACK_IDS);
      this._send({ kind: 'ack', ids }, { op: 'ack', ids });
    }
  }

  _unanswered() {
    return this._control.length;
  }

  // A quiet subscribed connection may be dead without a reset (a peer
  // gone from the network): a ping now and then finds out.
  _armPing() {
    if (this._pingTimer !== null) clearTimeout(this._pingTimer);
    this._pingTimer = setTimeout(() => {
      this._pingTimer = null;
      if (this._sock === null || this._state === 'closed') return;
      if (Date.now() - this._lastHeard >= this._opts.pingIntervalMs && this._control.length === 0) {
        this._send({ kind: 'ping' }, { op: 'ping' });
      }
      this._armPing();
    }, this._opts.pingIntervalMs);
    this._pingTimer.unref();
  }

  _onMessage(sock, msg, line) {
    if (!('ok' in msg)) {
      this._onEvent(msg);
      return;
    }
    const head = this._control.peek();
    if (!answersHead(msg, head)) {
      const err = msg.ok === false ? ReboundError.fromReply(msg)
        : new ReboundError('protocol', `reply out of order: ${line.slice(0, 200)}`);
      this._onSocketGone(sock, err);
      return;
    }
    this._control.shift();
    if (this._control.length === 0) this._clearTimers(['_silenceTimer']);
    if (msg.ok !== true) {
      const err = ReboundError.fromReply(msg);
      if (head.kind === 'ack' && err.code === 'unavailable') {
        // Redis is down: the subscription stands, the acks wait and go
        // again after a back-off.
        this._ackQueue.unshift(...head.ids);
        this._scheduleAcks(backoffMs(this._ackRetries++, this._opts.backoffMinMs, this._opts.backoffMaxMs));
      } else if (err.code === 'unavailable' || err.code === 'busy' || head.kind === 'ping') {
        // Nothing was done: start over on a new connection, later (at the
        // owner when a standby named it: a subscribe is never relayed).
        if (head.kind === 'ack') this._ackQueue.unshift(...head.ids);
        this._followOwner(msg);
        this._onSocketGone(sock, err);
      } else if (head.kind === 'ack') {
        // The daemon refused the ids (not ours to ack): forget them, the
        // events come again if they were really pending.
        for (const id of head.ids) this._known.delete(id);
        this._maybeFinishClose();
      } else {
        // A refused subscribe or auth will not get better by retrying.
        this._fail(err);
      }
      return;
    }
    if (head.kind === 'subscribe') {
      this._state = 'subscribed';
      this._failures = 0;
      this.counters.connects++;
      this.emit('connect');
      this._flushAcks();
    } else if (head.kind === 'ack') {
      for (const id of head.ids) {
        if (this._known.get(id) === ACKED) this._known.delete(id);
      }
      this.counters.acked += head.ids.length;
      this._ackRetries = 0;
      this._maybeFinishClose();
    }
  }

  _onEvent(ev) {
    if (this._closing) return; // left unacked: the group gets it again
    const eid = ev.eid;
    if (typeof eid === 'string') {
      const st = this._known.get(eid);
      if (st !== undefined) {
        // Redelivered after a reconnect: already buffered, in the caller's
        // hands, or acked with the ack still to be confirmed.
        this.counters.redelivered++;
        if (st === ACKED && !this._ackQueue.includes(eid) && !this._ackInFlight(eid)) {
          this._ackQueue.push(eid);
          this._scheduleAcks(this._opts.ackDelayMs);
        }
        return;
      }
      this._known.set(eid, BUFFERED);
    }
    const w = this._waiters.shift();
    if (w) w.resolve({ value: this._handOut(ev), done: false });
    else this._buffer.push(ev);
  }

  _ackInFlight(eid) {
    for (const c of this._control.items) if (c && c.kind === 'ack' && c.ids.includes(eid)) return true;
    return false;
  }

  _fail(err) {
    this._fatal = err;
    for (const w of this._waiters.splice(0)) w.reject(err);
    const sock = this._sock;
    this._sock = null;
    this._state = 'closed';
    if (sock) sock.destroy();
    this._clearTimers(['_ackTimer', '_reconnectTimer', '_silenceTimer', '_pingTimer']);
    if (this._closeDone) this._closeDone();
  }

  _onSocketGone(sock, err) {
    if (this._sock !== sock) return;
    this._sock = null;
    this._socketLost();
    sock.destroy();
    this._clearTimers(['_silenceTimer']);
    // Acks written without a reply go again on the next connection; they
    // are harmless to repeat.
    const unanswered = this._control.drain();
    const ids = [];
    for (const c of unanswered) if (c.kind === 'ack') ids.push(...c.ids);
    this._ackQueue.unshift(...ids);
    if (this._state === 'closed') return;
    this._state = 'idle';
    this._retryLater(err || new ReboundError('unavailable', 'connection closed by reboundd'));
  }

  _retryLater(err) {
    this.emit('disconnect', err);
    if (this._state === 'closed') return;
    // Closing with nothing left to confirm: no reason to come back.
    if (this._closing && this._ackQueue.length === 0) {
      this._finishClose();
      return;
    }
    if (this._reconnectTimer !== null) return;
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      if (this._state === 'idle') this._connect();
    }, this._backoff());
  }
}

module.exports = { Consumer };
