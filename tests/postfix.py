"""A throw-away Postfix in front of rc-mta, built from the documented recipe in conf/postfix/.

The instance has its own config, queue and data directories under one temporary
directory, listens on loopback high ports only, and is started and stopped as root with
``postfix -c DIR``. Its main.cf is a few settings of its own followed by
conf/postfix/main.cf; its master.cf is the stock services (no chroot) followed by
conf/postfix/master.cf; its transport map is conf/postfix/transport. In those three
files only the example values the recipe marks "ADAPT" are replaced, so the tests run
exactly what the recipe tells a mail administrator to copy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import ROOT, free_port

POSTFIX = "/usr/sbin/postfix"
RECIPE_DIR = ROOT / "conf" / "postfix"

# The example values in conf/postfix/*, as the recipe names them.
DOC_REPLY_DOMAIN = "reply.example.com"
DOC_CONFIG_DIR = "/etc/postfix"
DOC_RC_MTA_SMTP = "127.0.0.1:2525"
DOC_RC_MTA_LMTP = "127.0.0.1:2424"
DOC_FILTER_LISTENER = "192.0.2.25:smtp"

# Which example values each recipe file must contain (else the recipe drifted from the tests).
RECIPE_VALUES = {
    "main.cf": (DOC_REPLY_DOMAIN, DOC_CONFIG_DIR),
    "master.cf": (DOC_FILTER_LISTENER, DOC_RC_MTA_SMTP),
    "transport": (DOC_REPLY_DOMAIN, DOC_RC_MTA_LMTP),
}

# The services a Postfix needs to receive, queue and deliver over LMTP, chroot off ("n").
STOCK_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def postfix_available() -> bool:
    """Postfix is installed and we may run it (its master must start as root)."""
    return os.path.exists(POSTFIX) and os.geteuid() == 0


def postconf_default(name: str) -> str:
    """A parameter's compiled-in default, e.g. Debian's daemon_directory."""
    return subprocess.run(["postconf", "-d", "-h", name], capture_output=True, text=True, check=True).stdout.strip()


class Postfix:
    """One Postfix instance: an MX smtpd that queues (then LMTP to rc-mta), and a
    before-queue listener that proxies each session to rc-mta's SMTP port."""

    def __init__(self, reply_domain: str, rc_mta_smtp: str, rc_mta_lmtp: str, keep_log_in: Path) -> None:
        self.reply_domain = reply_domain
        self.rc_mta_smtp = rc_mta_smtp
        self.rc_mta_lmtp = rc_mta_lmtp
        self.keep_log_in = keep_log_in
        # Not under pytest's tmp dir: that is 0700 root, and Postfix's daemons run as
        # user postfix and must reach their queue directory.
        self.root = Path(tempfile.mkdtemp(prefix="rc-mta-postfix-"))
        self.root.chmod(0o755)
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "spool"
        self.data_dir = self.root / "lib"
        self.maillog = self.root / "maillog"
        self.mx_port = free_port()
        self.filter_port = free_port()

    # Configuration ---------------------------------------------------------------------

    def render(self, name: str) -> str:
        """A recipe file with its marked example values replaced by this instance's."""
        text = (RECIPE_DIR / name).read_text()
        missing = [value for value in RECIPE_VALUES[name] if value not in text]
        if missing:
            raise AssertionError(f"conf/postfix/{name} no longer contains {missing}: update tests/postfix.py")
        for documented, actual in {
            DOC_REPLY_DOMAIN: self.reply_domain,
            DOC_CONFIG_DIR: str(self.config_dir),
            DOC_RC_MTA_SMTP: self.rc_mta_smtp,
            DOC_RC_MTA_LMTP: self.rc_mta_lmtp,
            DOC_FILTER_LISTENER: f"127.0.0.1:{self.filter_port}",
        }.items():
            text = text.replace(documented, actual)
        return text

    def instance_settings(self) -> str:
        """What makes this a throw-away loopback instance; the recipe is appended to it."""
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "daemon_directory": postconf_default("daemon_directory"),
            "shlib_directory": postconf_default("shlib_directory"),
            "myhostname": "front.example.test",
            "mydomain": "example.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            # Relay only relay_domains (the reply domain), even for mynetworks.
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions": "reject_non_fqdn_recipient, reject_unauth_destination",
            "smtputf8_enable": "no",
            "syslog_name": "postfix-rc-mta-test",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "import_environment": "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C POSTLOG_SERVICE POSTLOG_HOSTNAME",
            "alias_maps": "",
            "alias_database": "",
            # The system resolver knows nothing of tests/zones; rc-mta does FCrDNS itself.
            "smtpd_peername_lookup": "no",
            # Bounces to the test senders' domains go nowhere, at once.
            "default_transport": "error:this test instance sends no mail out",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
        lines = ["# Throw-away Postfix for rc-mta's tests (tests/postfix.py); conf/postfix/main.cf follows."]
        lines += [f"{name} = {value}" for name, value in settings.items()]
        return "\n".join(lines) + "\n\n"

    def write_config(self) -> None:
        self.config_dir.mkdir(mode=0o755)
        # Postfix wants its queue directory owned by root (it creates the queues inside)
        # and its data directory owned by mail_owner.
        self.queue_dir.mkdir(mode=0o755)
        self.data_dir.mkdir(mode=0o700)
        shutil.chown(self.data_dir, user="postfix")
        (self.config_dir / "main.cf").write_text(self.instance_settings() + self.render("main.cf"))
        master = f"127.0.0.1:{self.mx_port} inet n - n - - smtpd\n" + STOCK_SERVICES
        (self.config_dir / "master.cf").write_text(master + "\n" + self.render("master.cf"))
        (self.config_dir / "transport").write_text(self.render("transport"))
        self.postfix_command("postmap", "-c", str(self.config_dir), f"hash:{self.config_dir / 'transport'}")

    # Running ---------------------------------------------------------------------------

    def postfix_command(self, *argv: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}{self.log_tail()}")
        return result

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.postfix_command(POSTFIX, "-c", str(self.config_dir), *args)

    def start(self) -> None:
        self.write_config()
        # "check" creates the queue and data directories, owned as Postfix wants them.
        self.postfix("check")
        self.postfix("start")
        self.wait_for_banner(self.mx_port)
        self.wait_for_banner(self.filter_port)

    def read_master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def wait_for_banner(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    if sock.recv(512).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Postfix did not answer on port {port} within {timeout}s{self.log_tail()}")

    def flush(self) -> None:
        """Deliver what is queued now (postqueue -f)."""
        self.postfix_command("postqueue", "-c", str(self.config_dir), "-f")

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        tail = self.log().splitlines()[-lines:]
        return ("\nPostfix maillog:\n" + "\n".join(tail)) if tail else ""

    def stop(self) -> None:
        """Stop the instance (also after a failed start), kill what is left of it, remove it."""
        try:
            master_pid = self.read_master_pid()
            if master_pid is not None:
                subprocess.run([POSTFIX, "-c", str(self.config_dir), "stop"], capture_output=True, timeout=60)
                self.wait_for_exit(master_pid)
            for pid in self.leftover_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            if self.maillog.exists():
                shutil.copy(self.maillog, self.keep_log_in / "postfix-maillog")
            shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def wait_for_exit(pid: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def leftover_pids(self) -> list[int]:
        """Processes of this instance still alive: master passes MAIL_CONFIG to its children."""
        marker = f"MAIL_CONFIG={self.config_dir}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ and int(proc.name) != os.getpid():
                pids.append(int(proc.name))
        return pids
