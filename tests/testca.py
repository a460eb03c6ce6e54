"""A certificate authority of the test's own, made with the openssl command (rc-mta does not
depend on ``cryptography``), and the server certificates it issues."""

from __future__ import annotations

import itertools
import shutil
import ssl
import subprocess
from pathlib import Path


def openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {result.stderr}")


class TestCa:
    """``issue`` a server certificate for a name (and 127.0.0.1), signed by this CA;
    ``client_context`` trusts only this CA and checks the host name."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, directory: Path) -> None:
        from conftest import require_server

        require_server(shutil.which("openssl") is not None, "the openssl command (Debian package openssl)")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.cert = directory / "ca.pem"
        self.key = directory / "ca.key"
        self._serials = itertools.count(1000)
        openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(self.key), "-out", str(self.cert), "-days", "30", "-subj", "/CN=rc-mta test CA",
        )  # fmt: skip

    def issue(self, name: str, days: int = 30, stem: str | None = None) -> tuple[Path, Path, int]:
        """A certificate for ``name`` and 127.0.0.1 and its key: (cert, key, serial)."""
        serial = next(self._serials)
        stem = stem or f"{name}-{serial}"
        cert, key, csr = (self.directory / f"{stem}.{ext}" for ext in ("crt", "key", "csr"))
        extensions = self.directory / f"{stem}.ext"
        extensions.write_text(
            f"subjectAltName=DNS:{name},IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        )
        openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-set_serial", str(serial), "-days", str(days), "-extfile", str(extensions), "-out", str(cert),
        )  # fmt: skip
        return cert, key, serial

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.cert))
        context.check_hostname = True
        return context


def serial_of(ssl_object: ssl.SSLSocket | ssl.SSLObject) -> int:
    """The serial number of the certificate a verified peer presented."""
    seen = ssl_object.getpeercert()
    assert seen, "the peer presented no verified certificate"
    return int(str(seen["serialNumber"]), 16)
