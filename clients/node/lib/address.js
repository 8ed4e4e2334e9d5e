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

module.exports = { parseAddress, DEFAULT_PORT };
