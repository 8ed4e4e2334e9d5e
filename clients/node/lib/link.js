'use strict';

/*
 * What the Client and the Consumer share: one socket to reboundd at a time,
 * opened and watched the same way, replies matched to the oldest request
 * written, timers cleared together, back-off between tries. Each subclass
 * keeps its own queue, its own reply handling and its own states beyond
 * idle, connecting and closed.
 */

const { EventEmitter } = require('node:events');
const { ReboundError } = require('./errors');
const { parseAddress, Targets } = require('./address');
const { openSocket, LineSplitter, backoffMs } = require('./connection');

/**
 * One line from reboundd as an object, or a `protocol` ReboundError
 * (returned, not thrown) when it is not a JSON object.
 * @param {string} line
 * @param {string} what how the error names the line ("reply", "line")
 * @returns {object|ReboundError}
 */
function parseLine(line, what) {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (e) {
    return new ReboundError('protocol', `${what} is not JSON: ${line.slice(0, 200)}`);
  }
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
    return new ReboundError('protocol', `${what} is not an object: ${line.slice(0, 200)}`);
  }
  return msg;
}

/**
 * Whether a reply answers head, the oldest request written: replies come
 * in request order, and the req echoed (when there is one) must agree.
 * @param {object} msg
 * @param {{req: number}|undefined} head
 * @returns {boolean}
 */
function answersHead(msg, head) {
  return head !== undefined && (msg.req === undefined || msg.req === head.req);
}

class Link extends EventEmitter {
  /**
   * @param {string|string[]} address "host:port" or a Unix socket path, or
   *   several: instances sharing one schedule, tried in turn (Targets)
   * @param {object} defaults every option with its default
   * @param {object} options the caller's; undefined members keep the default
   */
  constructor(address, defaults, options) {
    super();
    this.address = address;
    this._targets = new Targets(address);
    this._moving = false; // the socket is given up to follow an owner, not failed
    this._opts = { ...defaults };
    for (const [k, v] of Object.entries(options)) {
      if (v !== undefined) this._opts[k] = v;
    }
    this._sock = null;
    this._state = 'idle';
    this._nextReq = 1;
    this._failures = 0; // consecutive failures: the back-off's step
    this._silenceTimer = null;
    this._lastHeard = 0; // the last sign of life while requests wait
    this._silenceUnref = false; // whether the silence timer may let the process end
  }

  /**
   * Opens a socket (state `connecting`). Resolves to it, or to null when
   * the link was closed meanwhile or the connect failed; a failure goes
   * back to `idle` and to onFail(err).
   * @param {(err: Error) => void} onFail
   * @returns {Promise<import('node:net').Socket|null>}
   */
  async _open(onFail) {
    this._state = 'connecting';
    let sock;
    try {
      sock = await openSocket(parseAddress(this._targets.current), this._opts.timeoutMs);
    } catch (err) {
      if (this._state === 'closed') return null;
      this._state = 'idle';
      this._targets.failed();
      onFail(err);
      return null;
    }
    if (this._state === 'closed') {
      sock.destroy();
      return null;
    }
    return sock;
  }

  /**
   * Makes sock the current socket and routes its lines, as objects, to
   * this._onMessage(sock, msg, line) and its end to this._onSocketGone; a line
   * that is not a JSON object ends the connection with a `protocol` error
   * that names it as `lineWhat` ("reply", "line"). onChunk(push) is called for each chunk
   * read while sock is current, and must call push() to split it.
   * @param {import('node:net').Socket} sock
   * @param {string} lineWhat
   * @param {(push: () => void) => void} onChunk
   */
  _watch(sock, lineWhat, onChunk) {
    this._sock = sock;
    const splitter = new LineSplitter((line) => {
      // Lines left in a chunk after this connection was given up belong to it.
      if (this._sock !== sock) return;
      const msg = parseLine(line, lineWhat);
      if (msg instanceof ReboundError) {
        this._onSocketGone(sock, msg);
        sock.destroy();
        return;
      }
      this._onMessage(sock, msg, line);
    });
    sock.on('data', (chunk) => {
      if (this._sock !== sock) return;
      onChunk(() => splitter.push(chunk));
    });
    sock.on('error', (err) => this._onSocketGone(sock, err));
    sock.on('close', () => this._onSocketGone(sock, null));
    sock.on('end', () => this._onSocketGone(sock, null));
  }

  /**
   * Arms the silence timer: while requests are unanswered (the subclass's
   * _unanswered()), timeoutMs with no sign of life since _lastHeard takes
   * the connection for dead.
   */
  _armSilenceTimer() {
    if (this._silenceTimer !== null || this._unanswered() === 0) return;
    const wait = Math.max(1, this._lastHeard + this._opts.timeoutMs - Date.now());
    this._silenceTimer = setTimeout(() => {
      this._silenceTimer = null;
      if (this._unanswered() === 0 || this._sock === null) return;
      if (Date.now() - this._lastHeard >= this._opts.timeoutMs) {
        const sock = this._sock;
        this._onSocketGone(sock, new ReboundError('timeout', `no reply for ${this._opts.timeoutMs} ms`));
        sock.destroy();
      } else {
        this._armSilenceTimer();
      }
    }, wait);
    if (this._silenceUnref) this._silenceTimer.unref();
  }

  /**
   * Notes that the current socket is gone: the next connection goes to
   * the next instance, unless it was given up to follow an owner.
   */
  _socketLost() {
    if (this._moving) this._moving = false;
    else this._targets.failed();
  }

  /**
   * Follows an `unavailable` reply naming the owner; true when the current
   * socket should be given up (call _onSocketGone after).
   * @param {object} msg
   * @returns {boolean}
   */
  _followOwner(msg) {
    if (!this._targets.moved(msg)) return false;
    this._moving = true;
    return true;
  }

  /** The next back-off, in ms; each call grows the next one. */
  _backoff() {
    return backoffMs(this._failures++, this._opts.backoffMinMs, this._opts.backoffMaxMs);
  }

  /** @param {string[]} names the timer members to clear (and set to null) */
  _clearTimers(names) {
    for (const t of names) {
      if (this[t] !== null) {
        clearTimeout(this[t]);
        this[t] = null;
      }
    }
  }

  // Lets go of the current socket with a half-close, so that reboundd
  // finishes and closes its side; unref so a slow close never holds the
  // process.
  _endSocket() {
    if (this._sock !== null) {
      const sock = this._sock;
      this._sock = null;
      sock.end();
      sock.unref();
    }
  }
}

module.exports = { Link, parseLine, answersHead };
