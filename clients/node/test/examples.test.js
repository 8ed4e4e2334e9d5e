'use strict';

// examples/node/reporter.js and consumer.js, run as a user would against
// the real reboundd: the reporter's greylisted message comes back to the
// consumer as a `retry`, its unknown user as a `suppress`.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const path = require('node:path');
const { startAll } = require('./harness');

const EXAMPLES = path.resolve(__dirname, '..', '..', '..', 'examples', 'node');

function run(script, args) {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [path.join(EXAMPLES, script), ...args], { timeout: 15000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${script} failed: ${err.message}\n${stdout}${stderr}`));
      else resolve(stdout);
    });
  });
}

test('the reporter reports, the consumer acts on the events and acks them', async () => {
  const { daemon } = await startAll(after);
  const out = await run('reporter.js', [daemon.address]);
  const greylisted = /^(\S+) greylist: retry #1 at \d{4}-/m.exec(out);
  assert.ok(greylisted, out);
  assert.match(out, /^\S+ hard_invalid: suppress \(hard_invalid\)$/m);
  assert.match(out, /^\S+ delivered \(rebound had it: false\)$/m);

  // Over the Unix socket this time; two events: the retry and the suppress.
  const events = await run('consumer.js', [daemon.unixPath, 'example-senders', '--max', '2']);
  assert.match(events, new RegExp(`^resend ${greylisted[1].replace(/[.]/g, '\\.')} to alice@example\\.com \\(attempt 1\\)$`, 'm'));
  assert.match(events, /^suppress nobody@example\.org \(hard_invalid\)$/m);

  // Both were acked: the group's next consumer has nothing (it is stopped
  // by SIGTERM, which closes it cleanly).
  const child = execFile(process.execPath, [path.join(EXAMPLES, 'consumer.js'), daemon.address, 'example-senders'], { timeout: 15000 });
  let more = '';
  child.stdout.on('data', (d) => { more += d; });
  await new Promise((resolve) => {
    let err = '';
    child.stderr.on('data', (d) => {
      err += d;
      if (err.includes('subscribed as example-senders')) resolve();
    });
  });
  // Anything left for the group would come right after the subscribe.
  await new Promise((r) => setTimeout(r, 300));
  child.kill('SIGTERM');
  const code = await new Promise((r) => child.on('exit', (c) => r(c)));
  assert.equal(code, 0);
  assert.equal(more, '');
});
