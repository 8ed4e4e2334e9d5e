#!/usr/bin/env node
'use strict';

// A minimal consumer: acts on rebound's events and acks each one after
// acting on it.
//
//   node examples/node/consumer.js [ADDRESS] [GROUP] [--max N]
//
// ADDRESS as for reporter.js; GROUP defaults to "senders". Runs until
// SIGINT/SIGTERM (or N events with --max), then flushes its acks and exits.
// An event is delivered at least once: a `retry` seen twice for the same id
// and attempt is one retry.

const path = require('node:path');
const { Consumer, ReboundError } = require(path.join(__dirname, '..', '..', 'clients', 'node'));

const args = process.argv.slice(2);
let max = Infinity;
const i = args.indexOf('--max');
if (i >= 0) {
  max = Number(args[i + 1]);
  args.splice(i, 2);
}
const address = args[0] || process.env.REBOUND_ADDRESS || '127.0.0.1:7411';
const group = args[1] || 'senders';

// Stand-ins for the platform's own actions.
const actions = {
  retry: (ev) => console.log(`resend ${ev.id} to ${ev.rcpt} (attempt ${ev.attempt})`),
  give_up: (ev) => console.log(`failed ${ev.id} to ${ev.rcpt}: ${ev.reason}, bounce it to the sender`),
  suppress: (ev) => console.log(`suppress ${ev.rcpt} (${ev.reason})`),
};

async function main() {
  const consumer = new Consumer(address, group, {
    types: Object.keys(actions),
    token: process.env.REBOUND_TOKEN,
  });
  const stop = () => consumer.close();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  consumer.on('connect', () => console.error(`consumer: subscribed as ${group}`));
  consumer.on('disconnect', (err) => console.error(`consumer: connection lost (${err.message}), reconnecting`));

  let n = 0;
  for await (const ev of consumer) {
    actions[ev.type](ev);
    consumer.ack(ev); // after acting: a crash before this gets the event again
    if (++n >= max) break; // break closes the consumer, flushing the acks
  }
  await consumer.close();
}

main().catch((err) => {
  const what = err instanceof ReboundError ? `${err.code}: ${err.message}` : err.stack;
  console.error(`consumer: ${what}`);
  process.exit(1);
});
