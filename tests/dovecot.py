"""A throw-away Dovecot IMAP server for the mailbox-mode tests: Debian's own binary with a
config of its own (Maildir, base_dir and logs in a temporary directory, plain auth on
loopback, one passwd-file user), in the foreground, so the tests talk to the real server
rc-mta will meet in production. The system-wide instance is never touched."""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

from conftest import free_port
from processes import stop_process

DOVECOT = "/usr/sbin/dovecot"


def available() -> bool:
    return os.path.exists(DOVECOT)


class Dovecot:
    """One Dovecot instance with one user; ``oauth2_introspection_url`` adds XOAUTH2/OAUTHBEARER."""

    def __init__(
        self,
        workdir: Path,
        username: str = "replies@example.test",
        password: str = "imap-secret",
        oauth2_introspection_url: str | None = None,
        tls: bool = False,
    ) -> None:
        # base_dir holds UNIX sockets, whose paths must stay short, and Dovecot's unprivileged
        # login processes must reach it: a short world-readable directory of its own.
        self.base_dir = Path(tempfile.mkdtemp(prefix="dc-"))
        self.base_dir.chmod(0o755)
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.username = username
        self.password = password
        self.port = free_port()
        self.config_path = workdir / "dovecot.conf"
        self.log_path = workdir / "dovecot.log"
        self.mail_dir = self.base_dir / "mail"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca_file: Path | None = None
        self._write_config(oauth2_introspection_url)
        if tls:
            self._enable_tls()

    def _enable_tls(self) -> None:
        """STARTTLS on the IMAP port with a fresh self-signed certificate for 127.0.0.1;
        ``ca_file`` is what a client must trust (e.g. through SSL_CERT_FILE)."""
        cert, key = self.base_dir / "cert.pem", self.base_dir / "key.pem"
        request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        request += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
        subprocess.run(request, check=True, capture_output=True)
        self.ca_file = cert
        config = self.config_path.read_text().replace(
            "ssl = no\n", f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n"
        )
        self.config_path.write_text(config)

    def _write_config(self, introspection_url: str | None) -> None:
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        if os.getuid() == 0:
            # Dovecot refuses mail access as root: the mail belongs to an unprivileged user then.
            user, group = "nobody", grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
            self.mail_dir.mkdir(exist_ok=True)
            shutil.chown(self.mail_dir, user, group)
        # Dovecot's auth process runs as its own unprivileged user: its files live in base_dir.
        passwd = self.base_dir / "users"
        passwd.write_text(f"{self.username}:{{PLAIN}}{self.password}:::::\n")
        self.mail_dir.mkdir(exist_ok=True)
        lines = [
            f"base_dir = {self.base_dir}",
            f"state_dir = {self.base_dir}/state",
            "protocols = imap",
            "listen = 127.0.0.1",
            "ssl = no",
            "disable_plaintext_auth = no",
            f"log_path = {self.log_path}",
            f"info_log_path = {self.log_path}",
            "auth_verbose = yes",
            "login_trusted_networks =",
            "auth_mechanisms = plain login" + (" xoauth2 oauthbearer" if introspection_url else ""),
            f"mail_location = maildir:{self.mail_dir}/%u",
            f"mail_uid = {user}",
            f"mail_gid = {group}",
            "first_valid_uid = 0",
            "first_valid_gid = 0",
            # Unprivileged runs (a developer's machine) cannot switch users at all.
            *([] if os.getuid() == 0 else [f"default_login_user = {user}", f"default_internal_user = {user}"]),
            "mail_max_userip_connections = 50",
            "namespace inbox {",
            "  inbox = yes",
            "  separator = /",
            "}",
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=PLAIN {passwd}",
            "}",
        ]
        if introspection_url:
            oauth2_conf = self.base_dir / "oauth2.conf.ext"
            oauth2_conf.write_text(
                f"introspection_mode = post\nintrospection_url = {introspection_url}\n"
                "username_attribute = username\nactive_attribute = active\nactive_value = true\n"
                "force_introspection = yes\n"
            )
            lines += [
                "passdb {",
                "  driver = oauth2",
                "  mechanisms = xoauth2 oauthbearer",
                f"  args = {oauth2_conf}",
                "}",
            ]
        lines += [
            "userdb {",
            "  driver = passwd-file",
            f"  args = {passwd}",
            "}",
            "service imap-login {",
            "  inet_listener imap {",
            f"    port = {self.port}",
            "  }",
            "  inet_listener imaps {",
            "    port = 0",
            "  }",
            "}",
            "service anvil {",
            "  chroot =",
            "}",
            "service imap-login {",
            "  chroot =",
            "}",
            "protocol imap {",
            "  mail_max_userip_connections = 50",
            "}",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> Dovecot:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([DOVECOT, "-c", str(self.config_path), "-F"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                with imaplib.IMAP4("127.0.0.1", self.port, timeout=1) as probe:
                    probe.logout()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dovecot did not listen on {self.port}: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the master and every process it started: Dovecot lets a running IMAP session
        outlive its master for a while, and a restart must really cut clients off."""
        if self.proc is not None and self.proc.poll() is None:
            children = _descendants(self.proc.pid)
            stop_process(self.proc)
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # A real IMAP client, as another mail program would use the mailbox.
    def client(self) -> imaplib.IMAP4:
        conn = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        conn.login(self.username, self.password)
        return conn

    def deliver(self, message: EmailMessage | bytes, folder: str = "INBOX", flags: str = "") -> None:
        """APPEND ``message`` to ``folder`` with ``flags`` (e.g. ``(\\Draft)``: a mail client
        saving a draft there)."""
        raw = message if isinstance(message, bytes) else message.as_bytes()
        with self.client() as conn:
            status, data = conn.append(folder, flags, imaplib.Time2Internaldate(time.time()), raw)
            assert status == "OK", data

    def messages(self, folder: str = "INBOX") -> list[tuple[set[str], bytes]]:
        """(flags, raw message) of every message in ``folder``; [] when it doesn't exist.
        Reads with BODY.PEEK so looking never changes what the poller sees."""
        with self.client() as conn:
            status, _ = conn.select(f'"{folder}"', readonly=True)
            if status != "OK":
                return []
            _, data = conn.uid("SEARCH", "ALL")
            found = []
            for uid in data[0].split():
                _, parts = conn.uid("FETCH", uid, "(FLAGS BODY.PEEK[])")
                meta, raw = parts[0] if isinstance(parts[0], tuple) else (b"", b"")
                flags = re.search(rb"FLAGS \(([^)]*)\)", meta)
                found.append((set((flags.group(1) if flags else b"").decode().split()), raw))
            return found

    def logins(self) -> int:
        """How many IMAP logins the server logged so far."""
        return len(re.findall(r"imap-login: Info: Login: user=<", self.log_path.read_text(errors="replace")))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (children first found, grandchildren after)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return found
