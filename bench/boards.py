"""Board start-up: from starting a virtual board to its REPL answering on the console pty,
in-process (`VirtualBoard.start()`) and through the CLI (`hanota vboard start`, which runs the
board in a background process)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
import tty

from hanota import boardspec, flasher
from hanota.vboard.board import VirtualBoard

from .common import BIN, summary

KINDS = tuple(boardspec.board_names(virtual=True))


def wait_prompt(pty_path: str, timeout: float = 10.0) -> None:
    """Poke the REPL with a return until it prints its `>>> ` prompt."""
    fd = os.open(pty_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)
        deadline = time.monotonic() + timeout
        seen = b""
        poke = 0.0
        while b">>> " not in seen:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError("no REPL prompt on %s within %.0f s" % (pty_path, timeout))
            if now >= poke:
                os.write(fd, b"\r")
                poke = now + 0.2
            if select.select([fd], [], [], 0.02)[0]:
                try:
                    seen = (seen + os.read(fd, 4096))[-64:]
                except BlockingIOError:
                    pass
    finally:
        os.close(fd)


def prepare(ws, kind: str, name: str):
    """A board folder whose flash holds firmware (an ESP32 without firmware does not boot)."""
    d = ws.dir / "startup" / name
    b = VirtualBoard(d, board=kind, name=name).start()
    try:
        if kind == "vboard-esp32":
            flasher.flash_firmware(b.romloader.url, ws.firmware(kind)["firmware"], board=kind)
        b.console.wait_ready(20)
    finally:
        b.stop()
    return d


def in_process(d, kind: str) -> float:
    t0 = time.perf_counter()
    b = VirtualBoard(d, board=kind).start()
    try:
        wait_prompt(b.console.pty_path)
        return time.perf_counter() - t0
    finally:
        b.stop()


def cli(d, kind: str, name: str) -> float:
    hanota = str(BIN / "hanota")
    t0 = time.perf_counter()
    r = subprocess.run(
        [hanota, "vboard", "start", "--board", kind, "--name", name, "--dir", str(d), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        if r.returncode != 0:
            raise RuntimeError("hanota vboard start failed: %s" % (r.stderr or r.stdout))
        wait_prompt(json.loads(r.stdout)["console"])
        return time.perf_counter() - t0
    finally:
        subprocess.run([hanota, "vboard", "stop", name], capture_output=True, timeout=60)


def run(ws, scale: str, log=print) -> dict:
    reps = 1 if scale == "smoke" else 5
    out = {}
    for kind in KINDS:
        name = "start-" + kind.split("-")[1]
        d = prepare(ws, kind, name)
        out[kind] = {
            "in_process": summary(in_process(d, kind) for _ in range(reps)),
            "cli": summary(cli(d, kind, name) for _ in range(min(reps, 3))),
        }
        log(
            "  %s: REPL after %.2f s in-process, %.2f s with `hanota vboard start`"
            % (kind, out[kind]["in_process"]["median"], out[kind]["cli"]["median"])
        )
    return out
