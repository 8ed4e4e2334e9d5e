'use strict';

/**
 * rebound-client: a client for reboundd, the retry scheduler for email.
 *
 *     const { Client, Consumer, ReboundError } = require('rebound-client');
 *
 * Client reports deliveries and queries the daemon (pipelined, resent after
 * a drop or an `unavailable`); Consumer reads a consumer group's events as
 * an async iterator and acks them in batches. No dependencies beyond Node.
 */

const { Client } = require('./lib/client');
const { Consumer } = require('./lib/consumer');
const { ReboundError } = require('./lib/errors');

module.exports = { Client, Consumer, ReboundError };
