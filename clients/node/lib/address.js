'use strict';

const DEFAULT_PORT = 7411;

/**
 * Turns an address as users write it into net.connect() options.
 * A string that contains "/" is a Unix socket path; otherwise "host:port",
 * "[v6]:port", or a bare host (port 7411, reboundd's default).
 * @param {string} address
 * @returns {{path: string} | {host: string, port: number}}
 * @throws {TypeError} when the address is empty or its port is not 1-65535
 */
function parseAddress(address) {
  if (typeof address !== 'string' || address === '') {
    throw new TypeError('address must be "host:port" or a Unix socket path');
  }
  if (address.includes('/')) return { path: address };
  let host = address;
  let port = DEFAULT_PORT;
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(address);
  if (v6) {
    host = v6[1];
    if (v6[2] !== undefined) port = Number(v6[2]);
  } else {
    const i = address.lastIndexOf(':');
    // More than one colon and no brackets: a bare IPv6 address, no port.
    if (i >= 0 && address.indexOf(':') === i) {
      host = address.slice(0, i);
      port = Number(address.slice(i + 1));
    }
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535 || host === '') {
    throw new TypeError(`bad address ${JSON.stringify(address)}: expected "host:port"`);
  }
  return { host, port };
}

/**
 * The reboundd instances a client talks to, and which one it uses now.
 * Given several (an array: instances sharing one schedule under a lease), a
 * connection that cannot be made or that drops moves to the next one in
 * turn; an `unavailable` reply that names the `owner` (a standby that could
 * not relay, or a subscribe, which is never relayed) moves to that owner
 * until a connection to it fails.
 */
class Targets {
  /** @param {string|string[]} address */
  constructor(address) {
    const list = Array.isArray(address) ? [...address] : [address];
    if (list.length === 0) throw new TypeError('no address given');
    for (const a of list) parseAddress(a); // a malformed address fails here
    this.addresses = list;
    this.index = 0;
    this.owner = null;
    // Called after every move (failed or moved): a routing client asks for
    // the shard map again then.
    this.onChange = () => {};
  }

  /**
   * Appends the instances not yet listed (the others a `cluster` answer
   * named), tried after those given.
   * @param {string[]} addresses
   */
  add(addresses) {
    for (const a of addresses) {
      if (this.addresses.includes(a)) continue;
      try {
        parseAddress(a);
      } catch (e) {
        continue;
      }
      this.addresses.push(a);
    }
  }

  /** @returns {boolean} whether it moved off its first address */
  get away() {
    return this.owner !== null || this.index !== 0;
  }

  /** @returns {string} the address to connect to now */
  get current() {
    return this.owner !== null ? this.owner : this.addresses[this.index];
  }

  /** The current instance could not be reached, or dropped the connection. */
  failed() {
    if (this.owner !== null) this.owner = null;
    else this.index = (this.index + 1) % this.addresses.length;
    this.onChange();
  }

  /**
   * Follows a reply's `owner`; true when it names another instance than
   * the current one (the connection should be given up for it).
   * @param {object} msg
   * @returns {boolean}
   */
  moved(msg) {
    const owner = msg && msg.owner;
    if (typeof owner !== 'string' || owner === '' || owner === this.current) return false;
    try {
      parseAddress(owner);
    } catch (e) {
      return false;
    }
    this.owner = owner;
    this.onChange();
    return true;
  }
}

module.exports = { parseAddress, Targets, DEFAULT_PORT };
