'use strict';

/*
 * Shards: which reboundd owns the reports about a recipient. With several
 * instances sharing one schedule in shards (docs/protocol.md, `cluster`), a
 * report for recipient r belongs to shard CRC16(lower(r)) mod shards, and the
 * `cluster` answer's `map` names each shard's owner; a client that sends it
 * there spares the instances a relay. Pure arithmetic and bookkeeping: no
 * I/O, the clock only through the callers' `now`.
 */

const TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let crc = i << 8;
    for (let b = 0; b < 8; b++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    t[i] = crc;
  }
  return t;
})();

/**
 * CRC-16/XMODEM (polynomial 0x1021, initial 0, not reflected): the checksum
 * Redis Cluster hashes keys with, and reboundd its recipients.
 * @param {Uint8Array} bytes
 * @returns {number}
 */
function crc16(bytes) {
  let crc = 0;
  for (let i = 0; i < bytes.length; i++) crc = ((crc << 8) & 0xffff) ^ TABLE[(crc >> 8) ^ bytes[i]];
  return crc;
}

/**
 * The shard of a recipient: CRC16 of its UTF-8 bytes with A-Z in lower case
 * (reboundd lowers ASCII letters only), mod shards; 0 below 2 shards.
 * @param {string} rcpt
 * @param {number} shards
 * @returns {number}
 */
function shardOf(rcpt, shards) {
  if (shards < 2) return 0;
  const bytes = Buffer.from(rcpt, 'utf8');
  for (let i = 0; i < bytes.length; i++) if (bytes[i] >= 65 && bytes[i] <= 90) bytes[i] += 32;
  return crc16(bytes) % shards;
}

/**
 * The ops that run on the owner of their recipient's shard when they carry
 * `rcpt` (docs/protocol.md: "A request about one message runs on its
 * shard's owner").
 */
const ROUTED_OPS = new Set(['bounce', 'delivered', 'cancel', 'get', 'unsuppress']);

/**
 * The recipient whose shard's owner should get this request, or undefined
 * when any instance may take it (ops by id alone, stats, ...).
 * @param {object} obj
 * @returns {string|undefined}
 */
function routeRcpt(obj) {
  return ROUTED_OPS.has(obj.op) && typeof obj.rcpt === 'string' && obj.rcpt !== '' ? obj.rcpt : undefined;
}

/** How often `cluster` is asked again while nothing moved (an instance that
 * joined gets its share within this); with one schedule, less often. */
const REFRESH_MS = 5000;
const REFRESH_UNSHARDED_MS = 30000;
/** The least time between two asks after something moved: a dead owner is
 * not asked about in a tight loop while its shards wait for a taker. */
const REFRESH_MIN_MS = 250;
/** How long one ask may keep trying before requests go on with the map as
 * it was. */
const FETCH_DEADLINE_MS = 2000;

/** The last `cluster` answer as a routing client keeps it. */
class ShardMap {
  constructor() {
    this.shards = 0;
    this.owners = [];
    this.instances = [];
    this.fetched = null; // Date.now() of the last ask's end
    this.stale = false; // something moved since
    this.refreshes = 0; // answers taken
  }

  get known() {
    return this.fetched !== null;
  }

  /** @param {number} now @returns {boolean} whether to ask `cluster` now */
  due(now) {
    if (this.fetched === null) return true;
    const age = now - this.fetched;
    if (this.stale) return age >= REFRESH_MIN_MS;
    return age >= (this.shards >= 2 ? REFRESH_MS : REFRESH_UNSHARDED_MS);
  }

  /**
   * Takes a `cluster` reply, or the error that came instead: an error reply
   * (a daemon without the op) means one schedule, nothing to route; an error
   * without a reply (nobody answered) keeps the map as it was.
   * @param {object|Error} r
   * @param {number} now
   */
  update(r, now) {
    this.fetched = now;
    const body = r instanceof Error ? r.reply : r;
    if (body === undefined) return;
    this.stale = false;
    this.refreshes++;
    const shards = body && body.ok === true ? body.shards : undefined;
    const map = body ? body.map : undefined;
    if (!Number.isInteger(shards) || shards < 2 || !Array.isArray(map) || map.length !== shards) {
      this.shards = 1;
      this.owners = [];
      return;
    }
    this.shards = shards;
    this.owners = map.map((a) => (typeof a === 'string' ? a : ''));
    const insts = Array.isArray(body.instances) ? body.instances : [];
    this.instances = insts.map((m) => m && m.addr).filter((a) => typeof a === 'string' && a !== '');
  }

  /**
   * @param {string} rcpt
   * @returns {string|null} the address of the owner of rcpt's shard; null
   *   without shards or while that shard's owner is unknown
   */
  owner(rcpt) {
    if (this.shards < 2) return null;
    return this.owners[shardOf(rcpt, this.shards)] || null;
  }
}

module.exports = { crc16, shardOf, routeRcpt, ROUTED_OPS, ShardMap, FETCH_DEADLINE_MS };
