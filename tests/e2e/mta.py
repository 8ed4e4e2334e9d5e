"""The mail servers of the end-to-end test, each a private instance on free
loopback ports in its own temporary directory, stopped and removed on every
path:

  Postgrey  the greylisting policy server (Debian's postgrey)
  Postfix   the receiving MTA (Debian's postfix, its own config, queue and
            maildirs), asking Postgrey about every recipient
  Haraka    the sending MTA (from npm, installed by the e2e.setup fixture),
            with the rebound plugin and a test plugin that routes every
            domain to the receiving Postfix

They need root (Postfix's master, Postgrey's change of user), as the test
suite runs in CI.
"""

import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time

import harness
from harness import free_port


class ServerDied(Exception):
    pass


def wait_until(pred, timeout, interval, what):
    """harness.wait_until, but a server that died ends the wait at once."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except ServerDied:
            raise
        except Exception as e:  # not up yet
            last = e
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.0fs waiting for %s (last error: %r)" % (timeout, what, last))
        time.sleep(interval)

HERE = os.path.dirname(os.path.abspath(__file__))
KEEP = harness.KEEP_LOGS

DOMAIN = "dest.test"


def _read(path, missing=""):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return missing


class _Server:
    """A child process with a temp directory; stop() ends it (SIGTERM, then
    SIGKILL) and cleanup() removes the directory."""

    proc = None
    log_path = None

    def stop(self):
        harness._stop_process(self.proc, signal.SIGTERM, 10.0)

    def cleanup(self):
        self.stop()
        if not KEEP:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self):
        return _read(self.log_path, "(no log)")


class Postgrey(_Server):
    def __init__(self, delay, exempt=()):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rebound-e2e-postgrey-")
        os.chmod(self.dir, 0o755)
        db = os.path.join(self.dir, "db")
        os.mkdir(db)
        pg = pwd.getpwnam("postgrey")
        os.chown(db, pg.pw_uid, pg.pw_gid)
        clients = os.path.join(self.dir, "whitelist_clients")
        rcpts = os.path.join(self.dir, "whitelist_recipients")
        with open(clients, "w"):
            pass
        with open(rcpts, "w") as f:
            f.write("".join(a + "\n" for a in exempt))
        self.log_path = os.path.join(self.dir, "postgrey.log")
        log = open(self.log_path, "ab")
        try:
            self.proc = harness._popen(
                ["postgrey", "--inet=127.0.0.1:%d" % self.port, "--delay=%d" % delay,
                 "--dbdir=" + db, "--whitelist-clients=" + clients,
                 "--whitelist-recipients=" + rcpts, "--auto-whitelist-clients=0"],
                stdout=log, stderr=log)
        finally:
            log.close()
        wait_until(lambda: self._listening(), 15, 0.05, "postgrey to listen")

    def _listening(self):
        if self.proc.poll() is not None:
            raise ServerDied("postgrey exited:\n" + self.log_text())
        import socket
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True


MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.{domain}
mydomain = {domain}
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {dir}/mail
virtual_mailbox_maps = texthash:{dir}/etc/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = reject_unlisted_recipient,
    check_recipient_access texthash:{dir}/etc/rcpt_access,
    check_policy_service inet:127.0.0.1:{policy_port}
maillog_file_prefixes = {dir}
maillog_file = {dir}/maillog
smtputf8_enable = no
biff = no
"""

# Only what a receiving server needs, nothing chrooted (the instance lives
# in a temp directory).
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
showq     unix  n - n - - showq
"""


class Postfix(_Server):
    """Receives for DOMAIN into maildirs under dir/mail/<user>/; unknown
    users get 550 5.1.1, users in `replies` ({user: "452 4.2.2 Mailbox
    full"}) get that reply on every attempt, the others go through
    Postgrey."""

    def __init__(self, users, policy_port, replies=None):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rebound-e2e-postfix-")
        os.chmod(self.dir, 0o755)
        nobody = pwd.getpwnam("nobody")
        etc = os.path.join(self.dir, "etc")
        for d in ("etc", "spool", "data", "mail"):
            os.mkdir(os.path.join(self.dir, d))
        os.chown(os.path.join(self.dir, "data"), pwd.getpwnam("postfix").pw_uid, -1)
        os.chown(os.path.join(self.dir, "mail"), nobody.pw_uid, nobody.pw_gid)
        with open(os.path.join(etc, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(dir=self.dir, domain=DOMAIN, uid=nobody.pw_uid, gid=nobody.pw_gid,
                                   policy_port=policy_port))
        with open(os.path.join(etc, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=self.port))
        with open(os.path.join(etc, "rcpt_access"), "w") as f:
            f.write("".join("%s@%s %s\n" % (u, DOMAIN, r) for u, r in (replies or {}).items()))
        with open(os.path.join(etc, "vmailbox"), "w") as f:
            f.write("".join("%s@%s %s/\n" % (u, DOMAIN, u) for u in users))
        self.etc = etc
        self.log_path = os.path.join(self.dir, "maillog")
        self.out_path = os.path.join(self.dir, "master.out")
        out = open(self.out_path, "ab")
        try:
            # start-fg keeps the master in the foreground: it is our child,
            # and dies with the test.
            self.proc = harness._popen(["postfix", "-c", etc, "start-fg"], stdout=out, stderr=out)
        finally:
            out.close()
        wait_until(self._listening, 30, 0.05, "postfix to listen")

    def _listening(self):
        if self.proc.poll() is not None:
            raise ServerDied("postfix exited:\n%s\n%s" % (_read(self.out_path), self.log_text()))
        import socket
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(["postfix", "-c", self.etc, "stop"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=20)
        harness._stop_process(self.proc, signal.SIGTERM, 10.0)

    def mailbox(self, user):
        """The messages delivered to user, as text, oldest first."""
        out = []
        base = os.path.join(self.dir, "mail", user)
        for sub in ("new", "cur"):
            d = os.path.join(base, sub)
            if os.path.isdir(d):
                for name in sorted(os.listdir(d)):
                    out.append(_read(os.path.join(d, name)))
        return out

    def log_lines(self, pattern):
        return [l for l in self.log_text().splitlines() if re.search(pattern, l)]


class Haraka(_Server):
    """Haraka from the e2e node_modules, listening on a free loopback port,
    relaying everything to `postfix` with the rebound plugin talking to
    `daemon_addr`."""

    def __init__(self, modules, plugin_dir, postfix_port, daemon_addr, grace, temp_fail_intervals,
                 group="haraka"):
        modules = os.path.abspath(modules)
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rebound-e2e-haraka-")
        cfg = os.path.join(self.dir, "config")
        plugins = os.path.join(self.dir, "plugins")
        # Haraka's shipped defaults (connection.ini, the bounce templates),
        # then the test's own files over them.
        shutil.copytree(os.path.join(modules, "Haraka", "config"), cfg)
        os.makedirs(plugins)
        os.symlink(os.path.realpath(plugin_dir), os.path.join(plugins, "rebound"))
        shutil.copy(os.path.join(HERE, "haraka", "e2e_route.js"), plugins)
        files = {
            "smtp.ini": ("listen=127.0.0.1:%d\nnodes=1\n"
                         "graceful_shutdown=true\nforce_shutdown_timeout=5\n" % self.port),
            "me": "haraka.src.test\n",
            "host_list": "",
            "plugins": "e2e_route\nrebound\n",
            "log.ini": "[main]\nlevel=info\ntimestamps=true\n",
            "outbound.ini": ("local_mx_ok=true\nenable_tls=false\n"
                             "temp_fail_intervals=%s\n" % temp_fail_intervals),
            "e2e_route.ini": "[main]\nport=%d\n" % postfix_port,
            "rebound.ini": ("[main]\naddress=%s\ngroup=%s\ngrace=%d\nreport_wait_ms=3000\n"
                            "spool_interval_ms=500\nfind_wait_ms=5000\n" % (daemon_addr, group, grace)),
        }
        for name, text in files.items():
            with open(os.path.join(cfg, name), "w") as f:
                f.write(text)
        self.queue_dir = os.path.join(self.dir, "queue")
        self.spool_path = os.path.join(self.dir, "rebound-spool.jsonl")
        self.log_path = os.path.join(self.dir, "haraka.log")
        log = open(self.log_path, "ab")
        env = dict(os.environ, HARAKA=self.dir)
        try:
            self.proc = harness._popen(["node", os.path.join(modules, "Haraka", "bin", "haraka"), "-c", self.dir],
                                       stdout=log, stderr=log, env=env, cwd=self.dir)
        finally:
            log.close()
        wait_until(self._ready, 30, 0.05, "haraka to answer SMTP")

    def _ready(self):
        if self.proc.poll() is not None:
            raise ServerDied("haraka exited:\n" + self.log_text()[-4000:])
        s = smtplib.SMTP("127.0.0.1", self.port, timeout=2)
        try:
            return s.noop()[0] == 250
        finally:
            s.close()

    def stop(self):
        # Haraka stops gracefully on SIGINT (SIGTERM only as PID 1): the
        # master stops its worker and waits for it, leaving no orphan.
        harness._stop_process(self.proc, signal.SIGINT, 15.0)

    def send(self, sender, rcpt, subject, headers=None):
        """Submits one message; returns its Message-ID. Raises
        smtplib.SMTPRecipientsRefused when Haraka refuses the recipient."""
        msgid = "<%s@src.test>" % subject.replace(" ", "-")
        lines = ["From: <%s>" % sender, "To: <%s>" % rcpt, "Subject: %s" % subject,
                 "Message-ID: %s" % msgid, "Date: %s" % time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())]
        for k, v in (headers or {}).items():
            lines.append("%s: %s" % (k, v))
        body = "\r\n".join(lines) + "\r\n\r\nThe body of %s.\r\n" % subject
        s = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
        try:
            s.sendmail(sender, [rcpt], body)
        finally:
            try:
                s.quit()
            except smtplib.SMTPException:
                s.close()
        return msgid

    def queue_files(self):
        try:
            return [f for f in os.listdir(self.queue_dir) if not f.startswith(".") and not f.startswith("__tmp__")]
        except OSError:
            return []
