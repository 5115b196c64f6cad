"""A hub killed with SIGKILL right after accepting frames, and restarted, refuses every one of
those frames replayed (issue 12 item 7: link counters persisted before they are used).

`hanota serve` runs as a child process with a long database poll, so that nothing but the
frame handling itself can have saved the device's last counter before the kill. A fake
device joins, opens a session (HELLO) and queries; its frames are captured as they leave.
The hub is killed as soon as the last answer arrived, started again on the same database,
and the captured frames are sent again from a fresh socket: not one may be answered (an
answer is a frame the hub acted on), while a new frame with a fresh counter is.
"""
from __future__ import annotations

import asyncio
import socket

import pytest

from hanfw import link as hlink
from hanfw import zcl
from hanota.hub import HubDB
from support.hubfixtures import AgentDevice, eui_str, register
from support.servekit import Serve, closing, free_udp_port, serve_log, serves  # noqa: F401

pytestmark = pytest.mark.timeout(90)


def _answered(port: int, frames: list[bytes], wait: float) -> int:
    """Send frames from a fresh UDP socket; how many datagrams came back within `wait`."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(wait)
    got = 0
    try:
        for f in frames:
            s.sendto(f, ("127.0.0.1", port))
        while True:
            try:
                s.recv(4096)
                got += 1
            except socket.timeout:
                return got
    finally:
        s.close()


@pytest.mark.parametrize("sessions", [1, 3])
def test_replayed_frames_refused_after_sigkill(tmp_path, serve_log, serves, sessions):
    db_path = str(tmp_path / "hub.db")
    with HubDB.open(db_path) as db:
        register(db, 7)
    port = free_udp_port()
    # poll 30 s: the scheduler's periodic save cannot be what protects the counters
    srv = Serve(db_path, port, serve_log, poll=30)
    serves.append(srv)
    srv.start()
    dev = AgentDevice(7, timeout=0.5, retries=6)
    sent: list[bytes] = []

    async def session() -> None:
        await dev.open_udp(("127.0.0.1", port))
        real = dev.link.send
        dev.link.send = lambda data, addr=None: (sent.append(bytes(data)), real(data, addr))
        assert await dev.join() == hlink.JOIN_OK
        for _ in range(sessions):
            await dev.hello()
            avail = await dev.query()
            assert avail.status == zcl.NO_IMAGE_AVAILABLE

    asyncio.run(closing([dev], session()))
    srv.kill()  # at once: the last frames were acted on a moment ago
    srv.start()
    after_join = [f for f in sent if f[0] != hlink.KIND_JOIN_REQ]
    assert after_join, "no frames captured"
    answered = _answered(port, after_join, 1.5)
    assert answered == 0, ("%d of %d replayed frames (HELLO, Query Next Image) were answered "
                           "by the restarted hub" % (answered, len(after_join)))
    # the hub is up and the device is still welcome with a fresh counter
    fresh = dev.frame(hlink.KIND_HELLO, hlink.pack_hello(b"\x01" * 8, dev.version),
                      cluster=0, dst=dev.hub)
    assert _answered(port, [fresh], 3.0) == 1, "the restarted hub does not answer a new frame"
    with HubDB.open(db_path) as db:
        last = db.one("SELECT last_counter FROM devices WHERE eui = ?", (eui_str(7),))[0]
    assert last is not None and last >= max(int.from_bytes(f[17:21], "little") for f in sent)
    assert srv.stop() == 0
