"""A real DNS server for the tests: NSD (Debian's ``nsd``) on a loopback high port,
serving every zone file in ``tests/zones/`` (the file name, minus ``.zone``, is the zone),
over UDP and TCP. Also a "black hole" that accepts queries and never answers, for timeouts,
and a slow server that answers every query correctly but late."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset
from processes import stop_process

ZONES_DIR = Path(__file__).parent / "zones"


class NsdServer:
    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        nsd = shutil.which("nsd") or "/usr/sbin/nsd"
        zones = sorted(ZONES_DIR.glob("*.zone"))
        lines = [
            "server:",
            f"  ip-address: 127.0.0.1@{self.port}",
            '  username: ""',
            '  chroot: ""',
            f'  zonesdir: "{ZONES_DIR}"',
            f'  pidfile: "{self.workdir / "nsd.pid"}"',
            '  database: ""',
            f'  xfrdfile: "{self.workdir / "xfrd.state"}"',
            f'  zonelistfile: "{self.workdir / "zone.list"}"',
            f'  logfile: "{self.workdir / "nsd.log"}"',
            "  server-count: 1",
            "  verbosity: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        for zone in zones:
            lines += ["zone:", f"  name: {zone.name.removesuffix('.zone')}", f"  zonefile: {zone.name}"]
        config = self.workdir / "nsd.conf"
        config.write_text("\n".join(lines) + "\n")
        check = subprocess.run([shutil.which("nsd-checkconf") or "nsd-checkconf", str(config)], capture_output=True)
        if check.returncode != 0:
            raise RuntimeError(f"nsd config rejected: {check.stderr.decode()}")
        self.proc = subprocess.Popen([nsd, "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_until_serving(zones)

    def _wait_until_serving(self, zones: list[Path]) -> None:
        import dns.message
        import dns.query

        first = zones[0].name.removesuffix(".zone")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                log = (self.workdir / "nsd.log").read_text() if (self.workdir / "nsd.log").exists() else ""
                raise RuntimeError(f"nsd exited: {log}")
            try:
                reply = dns.query.udp(dns.message.make_query(first, "SOA"), "127.0.0.1", port=self.port, timeout=0.5)
                if reply.answer:
                    return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("nsd did not start serving")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class BlackHole:
    """A DNS 'server' that reads queries and never answers (UDP and TCP): on a free loopback
    port, or on ``host``'s port 53, where the system resolver asks (which takes root)."""

    def __init__(self, host: str | None = None) -> None:
        if host is not None:
            self.port = 53
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.udp.bind((host, self.port))
            self.tcp.bind((host, self.port))
            self.tcp.listen(16)
            return
        # The same port for UDP and TCP: retry until a UDP port is free for TCP too.
        for _ in range(50):
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.port = int(self.udp.getsockname()[1])
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                self.tcp.bind(("127.0.0.1", self.port))
            except OSError:
                self.udp.close()
                self.tcp.close()
                continue
            self.tcp.listen(16)
            return
        raise RuntimeError("no loopback port free for both UDP and TCP")

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


class SlowDns:
    """Test-only DNS server (UDP, loopback) that answers every query right but ``delay``
    seconds late, each in a thread of its own: NSD cannot be made to answer late on purpose.

    Its records make the costliest SPF evaluation there is: the TXT of ``spf.D`` is
    ``v=spf1 mx:m0.D … mx:m9.D -all``, each ``mx`` names ``hosts`` hosts, each has an A
    record, so one check looks up 1 + 10 + 100 names. ``queries`` counts what it was asked."""

    def __init__(self, delay: float, hosts: int = 10, mechanisms: int = 10) -> None:
        self.delay = delay
        self.hosts = hosts
        self.mechanisms = mechanisms
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            self.queries += 1
            threading.Thread(target=self._answer, args=(data, peer), daemon=True).start()

    def _answer(self, data: bytes, peer: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        name = query.question[0].name.to_text()
        rdtype = query.question[0].rdtype
        label, _, parent = name.partition(".")
        if rdtype == dns.rdatatype.TXT and label == "spf":
            mechanisms = " ".join(f"mx:m{i}.{parent}" for i in range(self.mechanisms))
            response.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT", f'"v=spf1 {mechanisms} -all"'))
        elif rdtype == dns.rdatatype.MX:
            exchanges = [f"10 h{i}.{name}" for i in range(self.hosts)]
            response.answer.append(dns.rrset.from_text(name, 60, "IN", "MX", *exchanges))
        elif rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.1"))
        if self._closed.wait(self.delay):
            return
        try:
            self.sock.sendto(response.to_wire(), peer)
        except OSError:
            pass

    def close(self) -> None:
        self._closed.set()
        self.sock.close()
