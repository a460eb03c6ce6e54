"""Real mail clients for the tests: smtplib for SMTP, a small RFC 2033 client for LMTP
(smtplib.LMTP reads a single reply after DATA, not one per recipient)."""

from __future__ import annotations

import email.policy
import smtplib
import socket
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid

from rc_mta.request_mail import MAIL_POLICY


def reply_message(
    to: str,
    body: str = "Looks good, ship it",
    sender: str = "alice@example.com",
    subject: str = "Re: Action needed",
    in_reply_to: str | None = None,
    html: str | None = None,
    charset: str = "utf-8",
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    """A reply as a mail client writes it: In-Reply-To and References as ids, however long
    (the library's default would write a long one as an encoded word, as no client does)."""
    message = EmailMessage(policy=MAIL_POLICY)
    message["From"] = f"Alice <{sender}>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="example.com")
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    for name, value in (headers or {}).items():
        message[name] = value
    if html is not None and not body:
        message.set_content(html, subtype="html", charset=charset)
    else:
        message.set_content(body, charset=charset)
        if html is not None:
            message.add_alternative(html, subtype="html")
    return message


@dataclass
class SmtpOutcome:
    code: int
    text: str

    @property
    def enhanced(self) -> str:
        return self.text.split(" ", 1)[0]


def send_smtp(
    port: int,
    message: EmailMessage | bytes,
    rcpt: str | list[str],
    mail_from: str = "alice@example.com",
    source_address: str = "127.0.0.1",
    helo: str = "mail.example.com",
) -> SmtpOutcome:
    """Send like a real MTA would and report the server's final answer for the message."""
    rcpts = [rcpt] if isinstance(rcpt, str) else rcpt
    # On the wire every line ends in CRLF, as a real MTA sends it.
    raw = message.as_bytes(policy=email.policy.SMTP) if isinstance(message, EmailMessage) else message
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source_address, 0)) as client:
        client.ehlo(helo)
        code, text = client.mail(mail_from)
        if code != 250:
            return SmtpOutcome(code, text.decode())
        accepted = 0
        last: tuple[int, bytes] = (0, b"")
        for address in rcpts:
            last = client.rcpt(address)
            if last[0] == 250:
                accepted += 1
        if not accepted:
            return SmtpOutcome(last[0], last[1].decode())
        code, text = client.data(raw)
        return SmtpOutcome(code, text.decode())


def rcpt_reply(port: int, rcpt: str, mail_from: str = "alice@example.com") -> SmtpOutcome:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mail.example.com")
        client.mail(mail_from)
        code, text = client.rcpt(rcpt)
        return SmtpOutcome(code, text.decode())


class LmtpClient:
    """Speaks LMTP over a socket and reads one DATA reply per accepted recipient."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.read_reply()  # greeting

    def read_reply(self) -> SmtpOutcome:
        lines = []
        while True:
            line = self.file.readline().decode().rstrip("\r\n")
            if not line:
                raise ConnectionError("connection closed")
            lines.append(line[4:])
            if line[3:4] == " ":
                return SmtpOutcome(int(line[:3]), "\n".join(lines))

    def command(self, line: str) -> SmtpOutcome:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.read_reply()

    def send(self, message: EmailMessage, rcpts: list[str], mail_from: str = "alice@example.com") -> list[SmtpOutcome]:
        self.command("LHLO mail.example.com")
        self.command(f"MAIL FROM:<{mail_from}>")
        accepted = [r for r in rcpts if self.command(f"RCPT TO:<{r}>").code == 250]
        if not accepted:
            return []
        assert self.command("DATA").code == 354
        data = message.as_bytes(policy=email.policy.SMTP)
        data = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in data.split(b"\r\n"))
        self.sock.sendall(data.rstrip(b"\r\n") + b"\r\n.\r\n")
        return [self.read_reply() for _ in accepted]

    def close(self) -> None:
        try:
            self.command("QUIT")
        finally:
            self.sock.close()
