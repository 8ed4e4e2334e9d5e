#!/usr/bin/env node
'use strict';

// A minimal reporter: what an MTA's delivery hook does with rebound.
//
//   node examples/node/reporter.js [ADDRESS]
//
// ADDRESS is "host:port" or a Unix socket path (default $REBOUND_ADDRESS or
// 127.0.0.1:7411); $REBOUND_TOKEN is sent if the daemon wants one. Every
// failed attempt (4xx or 5xx) is reported with `bounce`; every success of a
// message that rebound had scheduled a retry for is reported with
// `delivered`. The outcomes below stand in for the MTA's own.

const path = require('node:path');
const { Client, ReboundError } = require(path.join(__dirname, '..', '..', 'clients', 'node'));

const address = process.argv[2] || process.env.REBOUND_ADDRESS || '127.0.0.1:7411';
const run = Date.now().toString(36);

// What the MTA saw for three messages.
const outcomes = [
  { id: `${run}-1@mta.example`, rcpt: 'alice@example.com', code: 451, enhanced: '4.7.1',
    text: 'Greylisted, please try again in 5 minutes', campaign: 'welcome' },
  { id: `${run}-2@mta.example`, rcpt: 'nobody@example.org', code: 550, enhanced: '5.1.1',
    text: 'The email account that you tried to reach does not exist', campaign: 'welcome' },
  { id: `${run}-3@mta.example`, rcpt: 'bob@example.net', code: 250 },
];

async function main() {
  const client = new Client(address, { token: process.env.REBOUND_TOKEN });
  try {
    // Reports are pipelined: fire them all, then wait.
    await Promise.all(outcomes.map(async (o) => {
      if (o.code < 400) {
        // Sent for every success; found:false for a message rebound never
        // had is not an error.
        const r = await client.delivered(o.id, { rcpt: o.rcpt });
        console.log(`${o.id} delivered (rebound had it: ${r.found})`);
        return;
      }
      const r = await client.bounce(o.id, o.rcpt, o.code, o);
      if (r.action === 'retry') {
        // Keep the message; rebound sends a `retry` event at retry_at.
        console.log(`${o.id} ${r.class}: retry #${r.attempt} at ${new Date(r.retry_at).toISOString()}`);
      } else {
        // give_up or suppress: the message is done, tell the sender.
        console.log(`${o.id} ${r.class}: ${r.action} (${r.reason})`);
      }
    }));
  } finally {
    await client.close();
  }
}

main().catch((err) => {
  const what = err instanceof ReboundError ? `${err.code}: ${err.message}` : err.stack;
  console.error(`reporter: ${what}`);
  process.exit(1);
});
