"""rc-mta's commands and servers as new processes forked from one that has already imported
rc_mta, instead of a new interpreter each.

Why: ``python -m rc_mta`` spends about half a second of CPU importing before it does
anything, and the suite runs well over a thousand commands and servers. On two cores those
imports were a third of the suite's time. A forked child is still a process of its own: its
pid, file descriptors, working directory, environment, signals and exit status, running
``python -m rc_mta`` from its ``__main__`` on, and exiting through the interpreter's own
shutdown (threads joined, ``atexit`` run, streams flushed). What a fork cannot show, the
interpreter's start-up and rc-mta's imports, is tested where it matters by tests that start
``sys.executable -m rc_mta`` themselves (test_cli_imports, test_first_hour, ...).

The forking process (run as ``python launcher.py FD``) is single-threaded and talks over a
``SOCK_SEQPACKET`` pair: one message asks for a command (argv, cwd, environment, with the
child's stdin, stdout and stderr passed as descriptors) and is answered with its pid; a
message per child tells its exit status. ``Launcher`` is the tests' side: ``popen`` gives an
object with ``subprocess.Popen``'s ``pid``/``poll``/``wait``/``send_signal``/``terminate``/
``kill``, ``run`` a ``CompletedProcess`` as ``subprocess.run(capture_output=True)``.

A command whose environment differs from the forking process's in what is read as an
interpreter starts (``PYTHON*``, the locale, ``TZ``, ``SSL_CERT_*``) runs in a new
interpreter, and so does every command with ``RC_MTA_TEST_LAUNCHER=exec`` set for the run
(``RC_MTA_TEST_LAUNCHER=exec make test``: the suite as it ran before, to compare with)."""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

MESSAGE_BYTES = 1 << 20

# What ``serve`` and the commands import, so that no child imports it again.
PRELOAD = (
    "rc_mta.cli",
    "rc_mta.app",
    "rc_mta.api",
    "rc_mta.config",
    "rc_mta.store",
    "rc_mta.shapes",
    "rc_mta.dns",
    "rc_mta.dkim_signing",
    "rc_mta.outbound",
    "rc_mta.inbound.tls",
    "rc_mta.mailbox",
    "rc_mta.mailbox.imap",
    "rc_mta.mailbox.graph",
    "rc_mta.tasks",
    "rc_mta.tasks.embedded",
    "rc_mta.tasks.release",
    "rc_mta.tasks.webhook",
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.postgresql",
    "psycopg",
    "prometheus_client.parser",
    "urllib.request",
)


# The forking side -----------------------------------------------------------------------


def _serve(channel: socket.socket) -> dict[str, Any] | None:
    """Fork a child per request until the tests' side hangs up. Returns, in a child only,
    the request it is to run; ``None`` in the forking process when it is time to exit."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    assert threading.active_count() == 1, "a preloaded module started a thread: forking would copy it half"
    # What the imports made is never garbage: frozen, a child's collector never walks it
    # (which would copy every page the fork shares).
    gc.collect()
    gc.freeze()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_write)
    children: dict[int, int] = {}  # pid: the number of the request it runs
    while True:
        try:
            ready = select.select([channel, wake_read], [], [])[0]
        except InterruptedError:
            continue
        if wake_read in ready:
            while _drained(wake_read):
                pass
            for pid in list(children):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    number = children.pop(pid)
                    channel.send(json.dumps({"exited": number, "code": os.waitstatus_to_exitcode(status)}).encode())
        if channel in ready:
            message, fds, _flags, _address = socket.recv_fds(channel, MESSAGE_BYTES, 3)
            if not message:
                return None
            request = json.loads(message)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd in (wake_read, wake_write):
                    os.close(fd)
                channel.close()
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                    os.close(fd)
                return dict(request)
            for fd in fds:
                os.close(fd)
            children[pid] = request["id"]
            channel.send(json.dumps({"id": request["id"], "pid": pid}).encode())


def _drained(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def _become(request: dict[str, Any]) -> NoReturn:
    """Run ``python -m rc_mta ARGS`` in this (forked) process, and exit as the interpreter
    would: non-daemon threads joined, ``atexit`` run, streams flushed. Tearing down every
    module the fork shares is left out: nothing of it can be seen, and it cost 0.35 s."""
    import runpy

    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["rc_mta", *request["args"]]
    code = 0
    try:
        os.chdir(request["cwd"])
        sys.path[0] = os.getcwd()  # what -m puts first
        runpy.run_module("rc_mta", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    gc.collect()  # what the command left unclosed says so on stderr, as at a real exit (cheap: frozen)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120  # as Python's own exit does when it cannot flush
    os._exit(code)


def _exit_code(code: object) -> int:
    """What ``sys.exit(code)`` makes the process's status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


# The tests' side ------------------------------------------------------------------------


class LaunchedProcess:
    """A child of the forking process, driven like ``subprocess.Popen``."""

    stdout: IO[bytes] | None = None
    stderr: IO[bytes] | None = None

    def __init__(self, launcher: Launcher, number: int, pid: int, args: list[str]) -> None:
        self._launcher = launcher
        self._number = number  # the launcher's, unlike a pid never used again
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        # The forking process reaps its children at once: a signal by pid could reach a
        # process that got the number since. A pidfd names this process alone.
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None  # exited already

    def poll(self) -> int | None:
        if self.returncode is None:
            self._exited(self._launcher.exit_code(self._number, timeout=0))
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._exited(self._launcher.exit_code(self._number, timeout=timeout))
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def _exited(self, code: int | None) -> None:
        if code is not None:
            self.returncode = code
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None

    def send_signal(self, sig: int) -> None:
        if self.poll() is None and self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):  # exited: as Popen, no error
                signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Launcher:
    """The tests' side of one forking process (one per test process, started at first use)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._process = subprocess.Popen(
            # "rc_mta" on the command line, which the children share: rc-mta's pid-file check
            # looks for it there before it signals a process.
            [sys.executable, str(Path(__file__).resolve()), str(theirs.fileno()), "rc_mta"],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=BASE_ENVIRONMENT,  # not what the first test to launch happened to set
        )
        theirs.close()
        self._channel = ours
        self._sending = threading.Lock()
        self._changed = threading.Condition()
        self._requests = 0
        self._pids: dict[int, int] = {}  # request number: pid
        self._exits: dict[int, int] = {}  # request number: exit status
        self._gone = False
        threading.Thread(target=self._read, name="launcher-reader", daemon=True).start()

    def _read(self) -> None:
        try:
            while message := self._channel.recv(MESSAGE_BYTES):
                reply = json.loads(message)
                with self._changed:
                    if "pid" in reply:
                        self._pids[reply["id"]] = reply["pid"]
                    else:
                        self._exits[reply["exited"]] = reply["code"]
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._gone = True
                self._changed.notify_all()

    def popen(
        self,
        args: Sequence[str],
        *,
        cwd: Path | str,
        env: Mapping[str, str] | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> LaunchedProcess | subprocess.Popen[bytes]:
        """``python -m rc_mta *args`` in ``cwd``: stdout and stderr to the descriptors given
        (or ``subprocess.DEVNULL``; the tests' own where ``None``), stdin from /dev/null. A new interpreter instead
        where the environment differs from the forking process's in what an interpreter
        reads as it starts (``_needs_interpreter``)."""
        environment = dict(os.environ if env is None else env)
        if _needs_interpreter(environment):
            return subprocess.Popen(
                [sys.executable, "-m", "rc_mta", *args],
                cwd=cwd,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        devnull = os.open(os.devnull, os.O_RDWR)
        given = {None: None, subprocess.DEVNULL: devnull}
        try:
            fds = [devnull, given.get(stdout, stdout) or 1]
            fds.append(fds[1] if stderr == subprocess.STDOUT else given.get(stderr, stderr) or 2)
            with self._sending, self._changed:
                self._requests += 1
                number = self._requests
                request = {"id": number, "args": list(args), "cwd": str(cwd), "env": environment}
                socket.send_fds(self._channel, [json.dumps(request).encode()], fds)
                if not self._changed.wait_for(lambda: number in self._pids or self._gone, timeout=30):
                    raise RuntimeError("the forking process did not start a command within 30 s")
                if number not in self._pids:
                    raise RuntimeError("the forking process is gone")
                pid = self._pids.pop(number)
        finally:
            os.close(devnull)
        return LaunchedProcess(self, number, pid, ["rc-mta", *args])

    def exit_code(self, number: int, timeout: float | None) -> int | None:
        """The exit status of the command of request ``number``, once it has exited."""
        with self._changed:
            self._changed.wait_for(lambda: number in self._exits or self._gone, timeout=timeout)
            if number not in self._exits and self._gone:
                raise RuntimeError("the forking process is gone: the exit of its children is unknown")
            return self._exits.pop(number, None)

    def run(
        self, args: Sequence[str], *, cwd: Path | str, env: Mapping[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """As ``subprocess.run(..., capture_output=True, text=True, timeout=timeout)``."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            child = self.popen(args, cwd=cwd, env=env, stdout=out.fileno(), stderr=err.fileno())
            try:
                code = child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                raise
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(child.args, code, _text(out.read()), _text(err.read()))

    def close(self) -> None:
        self._channel.shutdown(socket.SHUT_RDWR)
        self._process.wait(10)


# What the forking process starts with, whatever a test sets later (at conftest's import).
BASE_ENVIRONMENT = dict(os.environ)
# Read as an interpreter or a module starts, so a child cannot take them from its request:
# Python's own settings, the locale, the time zone, the CA files (aiohttp builds its default
# TLS context as it is imported).
_READ_AT_START = ("PYTHON", "LANG", "LC_", "TZ", "SSL_CERT_")


def _needs_interpreter(environment: Mapping[str, str]) -> bool:
    """Whether a command with ``environment`` must start a new interpreter: it differs from
    the forking process's in what is read at start, or RC_MTA_TEST_LAUNCHER=exec (every
    command so, as before the launcher: a run to compare with)."""
    if environment.get("RC_MTA_TEST_LAUNCHER") == "exec":
        return True
    names = {name for name in (*environment, *BASE_ENVIRONMENT) if name.startswith(_READ_AT_START)}
    return any(environment.get(name) != BASE_ENVIRONMENT.get(name) for name in names)


def _text(data: bytes) -> str:
    """As ``text=True`` reads it: the locale's encoding, universal newlines."""
    return data.decode().replace("\r\n", "\n")


_launcher: Launcher | None = None
_starting = threading.Lock()


def launcher() -> Launcher:
    """This test process's forking process, started at first use."""
    global _launcher
    with _starting:
        if _launcher is None:
            _launcher = Launcher()
        return _launcher


if __name__ == "__main__":
    child_request = _serve(socket.socket(fileno=int(sys.argv[1])))
    if child_request is not None:
        _become(child_request)
