'use strict';

/*
 * Starts a throwaway redis-server and the real reboundd on free loopback
 * ports (and a Unix socket in a temporary directory) for the tests, and
 * stops them on every path. The same environment as the Python harness:
 *   REBOUND_BUILD_DIR    where reboundd was built (default <repo>/build)
 *   REBOUND_SOURCE_DIR   the source tree (default three levels up)
 *   REBOUND_FAST_POLICY  the policy (default tests/fast-policy.json, in
 *                        which a minute of the real policy is a millisecond)
 *   REBOUND_KEEP_LOGS    keep the temporary directories
 * Every wait here has a deadline.
 */

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const SOURCE_DIR = process.env.REBOUND_SOURCE_DIR || path.resolve(__dirname, '..', '..', '..');
const BUILD_DIR = process.env.REBOUND_BUILD_DIR || path.join(SOURCE_DIR, 'build');
const FAST_POLICY = process.env.REBOUND_FAST_POLICY || path.join(SOURCE_DIR, 'tests', 'fast-policy.json');
const KEEP_LOGS = Boolean(process.env.REBOUND_KEEP_LOGS);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves once a TCP connect to port succeeds and `probe` (if any) says yes. */
async function waitFor(pred, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      if (await pred()) return;
    } catch (e) {
      last = e;
    }
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
    await sleep(20);
  }
}

/** Sends one line to addr and resolves to the first line back (or rejects). */
function oneRequest(target, obj, timeoutMs = 1000) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(target);
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('no reply'));
    }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(JSON.stringify(obj) + '\n'));
    sock.on('data', (d) => {
      buf += d;
      const i = buf.indexOf('\n');
      if (i >= 0) {
        clearTimeout(timer);
        sock.destroy();
        try {
          resolve(JSON.parse(buf.slice(0, i)));
        } catch (e) {
          reject(e);
        }
      }
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

function exited(proc) {
  return proc.exitCode !== null || proc.signalCode !== null;
}

function stopProcess(proc, signal, timeoutMs = 5000) {
  if (!proc || exited(proc)) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
    }, timeoutMs);
    proc.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    proc.kill(signal);
  });
}

class Redis {
  async start() {
    // A restart keeps the port and directory, so reboundd finds it again.
    if (!this.dir) {
      this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rebound-node-redis-'));
      this.port = await freePort();
    }
    this.proc = spawn('redis-server', [
      '--port', String(this.port), '--bind', '127.0.0.1', '--daemonize', 'no',
      '--dir', this.dir, '--save', '', '--appendonly', 'no',
      '--logfile', path.join(this.dir, 'redis.log'),
    ], { stdio: 'ignore' });
    await waitFor(async () => {
      if (exited(this.proc)) throw new Error(`redis-server exited (${this.proc.exitCode})`);
      return new Promise((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port: this.port });
        s.setEncoding('utf8');
        s.on('connect', () => s.write('PING\r\n'));
        s.on('data', (d) => {
          s.destroy();
          resolve(d.startsWith('+PONG'));
        });
        s.on('error', () => resolve(false));
      });
    }, 10000, 'redis-server');
    return this;
  }

  get addr() {
    return `127.0.0.1:${this.port}`;
  }

  kill9() {
    return stopProcess(this.proc, 'SIGKILL');
  }

  async stop() {
    await stopProcess(this.proc, 'SIGKILL');
    if (!KEEP_LOGS && this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Writes a copy of the fast test policy with some limits changed (e.g. a
 * longer max_age) into dir and returns its path.
 * @param {string} dir
 * @param {object} limits merged into the policy's "limits"
 */
function policyWithLimits(dir, limits) {
  const policy = JSON.parse(fs.readFileSync(FAST_POLICY, 'utf8'));
  policy.limits = { ...policy.limits, ...limits };
  const file = path.join(dir, 'policy.json');
  fs.writeFileSync(file, JSON.stringify(policy));
  return file;
}

class Daemon {
  /**
   * @param {Redis} redis
   * @param {{policy?: string, config?: object}} [opts] config: written to a
   *   file and passed with -c (e.g. {token: 's3cret'})
   */
  constructor(redis, opts = {}) {
    this.redis = redis;
    this.policy = opts.policy || FAST_POLICY;
    this.config = opts.config;
    this.starts = 0;
  }

  get address() {
    return `127.0.0.1:${this.port}`;
  }

  get reboundd() {
    return path.join(BUILD_DIR, 'reboundd');
  }

  async start() {
    if (!this.dir) {
      this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rebound-node-d-'));
      this.port = await freePort();
      this.unixPath = path.join(this.dir, 'rebound.sock');
      this.logPath = path.join(this.dir, 'reboundd.log');
    }
    if (!fs.existsSync(this.reboundd)) throw new Error(`reboundd not built at ${this.reboundd}`);
    const args = ['--listen', this.address, '--unix', this.unixPath, '--redis', this.redis.addr, '--policy', this.policy];
    if (this.config) {
      const cfg = path.join(this.dir, 'reboundd.json');
      fs.writeFileSync(cfg, JSON.stringify(this.config));
      args.unshift('-c', cfg);
    }
    this.starts++;
    const log = fs.openSync(this.logPath, 'a');
    fs.writeSync(log, `---- start ${this.starts}: ${args.join(' ')}\n`);
    this.proc = spawn(this.reboundd, args, { stdio: ['ignore', log, log] });
    fs.closeSync(log);
    await this.waitReady();
    return this;
  }

  async waitReady(timeoutMs = 10000) {
    await waitFor(async () => {
      if (exited(this.proc)) throw new Error(`reboundd exited during start:\n${this.log()}`);
      const r = await oneRequest({ host: '127.0.0.1', port: this.port }, { op: 'ping' });
      return r.ok === true;
    }, timeoutMs, 'reboundd');
  }

  kill9() {
    return stopProcess(this.proc, 'SIGKILL');
  }

  term() {
    return stopProcess(this.proc, 'SIGTERM', 10000);
  }

  log() {
    try {
      return fs.readFileSync(this.logPath, 'utf8');
    } catch (e) {
      return '(no log)';
    }
  }

  async stop() {
    await stopProcess(this.proc, 'SIGKILL');
    if (!KEEP_LOGS && this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Starts redis-server and reboundd. `after` (node:test's, called where the
 * cleanup belongs) gets the function that stops both; it is also returned
 * as `stop`.
 * @returns {Promise<{redis: Redis, daemon: Daemon, stop: () => Promise<void>}>}
 */
async function startAll(after, opts = {}) {
  const redis = await new Redis().start();
  const daemon = new Daemon(redis, opts);
  const stop = async () => {
    await daemon.stop();
    await redis.stop();
  };
  if (after) after(stop);
  try {
    await daemon.start();
  } catch (e) {
    await stop();
    throw e;
  }
  return { redis, daemon, stop };
}

/**
 * Registers the end of a Client (destroy) or a Consumer (close) with
 * node:test's `after`, so that a failing test leaves nothing open.
 * @template T
 * @param {(fn: () => unknown) => void} after
 * @param {T} obj
 * @returns {T} obj
 */
function disposeAfter(after, obj) {
  after(() => (typeof obj.destroy === 'function' ? obj.destroy() : obj.close()));
  return obj;
}

let seq = 0;
/** A message id unique in this process. */
function uniqueId(prefix = 'm') {
  seq++;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${seq}`;
}

module.exports = { Redis, Daemon, startAll, disposeAfter, policyWithLimits, uniqueId, sleep, waitFor, freePort, SOURCE_DIR, BUILD_DIR, FAST_POLICY };
