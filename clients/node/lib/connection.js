'use strict';

const net = require('node:net');
const { ReboundError } = require('./errors');

/** The protocol's line limit (config max_line): longer lines close the connection. */
const MAX_LINE = 65536;

/**
 * Opens one socket to reboundd and resolves once it is connected.
 * Rejects with the socket's error, or a `timeout` ReboundError after
 * timeoutMs. The socket is returned with UTF-8 decoding on and no idle
 * time-out; the caller owns it.
 * @param {{path: string} | {host: string, port: number}} target
 * @param {number} timeoutMs
 * @returns {Promise<net.Socket>}
 */
function openSocket(target, timeoutMs) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(target);
    let done = false;
    const timer = setTimeout(() => {
      finish(new ReboundError('timeout', `connecting took more than ${timeoutMs} ms`));
      sock.destroy();
    }, timeoutMs);
    function finish(err) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.removeListener('error', finish);
      sock.removeListener('connect', onConnect);
      if (err) reject(err);
      else resolve(sock);
    }
    function onConnect() {
      if (target.host !== undefined) sock.setNoDelay(true);
      sock.setEncoding('utf8');
      finish(null);
    }
    sock.once('connect', onConnect);
    sock.once('error', finish);
  });
}

/**
 * Splits a stream of text into lines. push() takes a chunk and calls
 * onLine for each complete line (without its "\n" or "\r\n"), in order.
 * A line that never ends grows the buffer; reboundd's lines are bounded
 * (replies and events are at most a few tens of KiB), so no cap is kept here.
 */
class LineSplitter {
  /** @param {(line: string) => void} onLine */
  constructor(onLine) {
    this.onLine = onLine;
    this.rest = '';
  }

  /** @param {string} chunk */
  push(chunk) {
    let text = this.rest === '' ? chunk : this.rest + chunk;
    let start = 0;
    for (;;) {
      const nl = text.indexOf('\n', start);
      if (nl < 0) break;
      let end = nl;
      if (end > start && text.charCodeAt(end - 1) === 13) end--;
      if (end > start) this.onLine(text.slice(start, end));
      start = nl + 1;
    }
    this.rest = start === 0 ? text : text.slice(start);
    text = null;
  }
}

/**
 * Encodes one request as a protocol line. Members whose value is undefined
 * are left out (JSON.stringify does that), so optional options can be
 * passed through as they are.
 * @param {object} obj
 * @returns {string} the line, "\n" included
 * @throws {ReboundError} `too_large` when the line is over the daemon's
 *   64 KiB limit: sent, it would get the connection closed
 */
function encodeLine(obj) {
  const line = JSON.stringify(obj);
  // Byte length only matters near the limit; a string of n UTF-16 units is
  // at most 3n bytes, so short lines skip the count.
  if (line.length * 3 > MAX_LINE && Buffer.byteLength(line, 'utf8') > MAX_LINE) {
    throw new ReboundError('too_large', `request is ${Buffer.byteLength(line, 'utf8')} bytes, the line limit is ${MAX_LINE}`);
  }
  return line + '\n';
}

/**
 * The back-off before reconnect or resend number `attempt` (0-based):
 * doubling from minMs, capped at maxMs, with up to 25 % jitter down so
 * that many clients cut off together do not come back in step.
 * @param {number} attempt
 * @param {number} minMs
 * @param {number} maxMs
 * @returns {number} milliseconds
 */
function backoffMs(attempt, minMs, maxMs) {
  const base = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 20));
  return Math.max(1, Math.round(base * (1 - Math.random() * 0.25)));
}

module.exports = { openSocket, LineSplitter, encodeLine, backoffMs, MAX_LINE };
