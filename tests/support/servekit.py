"""Test support for `hanota serve` as a real child process, driven by the CLI commands.

`Serve` starts (and restarts, on the same database and port) `hanota serve` in a child
process with test pacing; `cli` runs any other hub command in-process and returns its
output; `RUNNER` is the `python -c` program that is the `hanota` command line of the hub
commands (for a request from a separate process). The `serves` fixture makes sure every
serve a test started is gone when the test ends.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner

from hanota.hub.cli import COMMANDS

RUNNER = ("import click; from hanota.hub.cli import COMMANDS; "
          "click.Group('hanota', commands={c.name: c for c in COMMANDS})(prog_name='hanota')")

# `hanota serve` options with test pacing: everything in fractions of a second.
SERVE_OPTIONS = {"max-in-flight": 2, "poll": 0.05, "retry-base": 0.2, "retry-max": 1,
                 "answer-timeout": 2, "stall-timeout": 1.5, "request-timeout": 0.3,
                 "activation-timeout": 3}


def group() -> click.Group:
    return click.Group("hanota", commands={c.name: c for c in COMMANDS})


def cli(*args: str) -> str:
    r = CliRunner().invoke(group(), list(args), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Serve:
    """`hanota serve` in a child process, output to a file (log, opened "w+").

    options override `SERVE_OPTIONS` (max_in_flight=3 gives --max-in-flight 3). Every
    process started is kept in `procs`; `proc` is the latest."""

    def __init__(self, db: str, port: int, log, **options):
        opts = dict(SERVE_OPTIONS)
        opts.update({k.replace("_", "-"): v for k, v in options.items()})
        self.args = [sys.executable, "-c", RUNNER, "serve", "--db", db,
                     "--udp", "127.0.0.1:%d" % port]
        for name, value in opts.items():
            self.args += ["--" + name, str(value)]
        self.log = log
        self.proc = None
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        """Start serve and wait until it says it is serving."""
        start = self.log.tell()
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.procs.append(self.proc)
        deadline = time.monotonic() + 20
        while True:
            with open(self.log.name) as f:
                f.seek(start)
                if "serving on udp" in f.read():
                    return
            assert self.proc.poll() is None, "serve exited early"
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL serve (no chance to save anything) and wait until it is gone."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM serve (a clean stop) if it runs; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


@pytest.fixture
def serve_log(tmp_path):
    with open(tmp_path / "serve.log", "w+") as f:
        yield f


@pytest.fixture
def serves():
    """Every `hanota serve` a test starts is gone when it ends, whatever happened."""
    made: list[Serve] = []
    yield made
    for s in made:
        for p in s.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


async def closing(devices, coro):
    """Await coro; the fake devices are closed afterwards, whatever happened."""
    try:
        return await coro
    finally:
        for d in devices:
            d.close()
