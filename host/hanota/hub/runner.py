"""A hub running in a background thread, for synchronous callers.

The hub is asyncio; the demo, the benchmarks and the tests that drive virtual boards
through their consoles are not. These runners give them the hub on its own event loop
thread, serving UDP on a loopback port chosen when it starts:

- `HubRunner(db_path, options=...)`: the Communications Hub (`hanota.hub.Hub`: registry,
  service requests, scheduler) over a database, as `hanota serve` runs it; with
  `dcc_url=...` also its WAN to the DCC (`hanota.dcc.wan.CommsHubWan`), as `hanota hub
  serve` runs it;
- `ServerRunner(hub_eui, policy)`: the bare OTA server (`hanota.server.OtaServer`) with
  an in-memory `Policy`, for measuring or exercising the link and the transfers alone.

Both start when made, expose `address` (host, port), run coroutines on their loop with
`call(coro)`, and stop with `stop()` or at the end of a `with` block:

    with HubRunner(db.path, options=HubOptions(max_in_flight=1)) as hub:
        board = VirtualBoard(..., hub=hub.address)
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any, Callable, Coroutine

from hanfw import link as hlink

from ..server import OtaServer, Policy, ServedImage
from .hub import Hub, HubOptions

LOOPBACK = ("127.0.0.1", 0)  # port 0: the system picks a free one when the hub starts


class LoopThread:
    """An asyncio event loop running forever on a daemon thread."""

    stop_timeout = 20.0  # seconds the runner's own shutdown coroutine may take

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine, timeout: float = 60) -> Any:
        """Run coro on the loop and wait (at most timeout seconds) for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Have the loop call fn(*args) without waiting for it."""
        self.loop.call_soon_threadsafe(fn, *args)

    async def _shutdown(self) -> None:
        """What stop() awaits on the loop before stopping it (subclasses close their hub)."""

    def stop(self) -> None:
        """Shut down (see `_shutdown`), stop the loop and join its thread."""
        if self.loop.is_closed():
            return
        try:
            self.call(self._shutdown(), timeout=self.stop_timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()

    def _abandon(self) -> None:
        """Stop the loop after a failed start (nothing of the hub to shut down)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class HubRunner(LoopThread):
    """A `Hub` over the database at db_path, started on its own loop thread.

    udp defaults to loopback on a free port (`address` tells which); other keyword
    arguments go to `Hub` (serial, on_event, clock). The Hub object is `hub`: its
    synchronous methods that touch the scheduler (pause, resume, wake) are run on the
    loop by the methods of the same name here."""

    def __init__(self, db_path: str | os.PathLike, *, options: HubOptions | None = None,
                 udp: tuple[str, int] | None = LOOPBACK, name: str = "hub",
                 dcc_url: str | None = None, premises: str | None = None,
                 wan_token: str | None = None, **hub_kw: Any):
        super().__init__(name)
        self.wan = None
        try:
            self.hub = self.call(self._make(db_path, dict(hub_kw, udp=udp, options=options)))
            self.call(self.hub.start())
            if dcc_url is not None:
                self.wan = self.call(self._make_wan(self.hub, dcc_url, premises, wan_token))
        except BaseException:
            if getattr(self, "hub", None) is not None and self.hub.started:
                self.call(self.hub.stop())
            self._abandon()
            raise

    @staticmethod
    async def _make_wan(hub: Hub, dcc_url: str, premises: str | None, token: str | None):
        from ..dcc.wan_nats import make_hub_wan  # the DCC package sits above the hub
        wan = make_hub_wan(hub, dcc_url, premises=premises, token=token)
        await wan.start()
        return wan

    @staticmethod
    async def _make(db_path, kw: dict) -> Hub:
        return Hub(db_path, **kw)

    async def _shutdown(self) -> None:
        if self.wan is not None:
            await self.wan.stop()
        await self.hub.stop()

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) the hub serves UDP on, None without UDP."""
        return self.hub.udp_address

    def attach_serial(self, path: str | os.PathLike | int) -> str:
        """Serve devices on a serial line too (a board's link pty); returns its name."""
        return self.call(self.hub.server.attach_serial(path))

    def pause(self) -> None:
        """Start no new transfers until resume() (waits until the hub has taken it)."""
        self.call(self._run(self.hub.pause))

    def resume(self) -> None:
        self.call(self._run(self.hub.resume))

    @staticmethod
    async def _run(fn: Callable[[], None]) -> None:
        fn()


class ServerRunner(LoopThread):
    """An `OtaServer` with an in-memory `Policy`, on its own loop thread, listening on UDP
    at loopback on a free port (`address`). Keyword arguments go to `OtaServer`."""

    stop_timeout = 10.0

    def __init__(self, hub_eui: bytes, policy: Policy | None = None, *,
                 udp: tuple[str, int] = LOOPBACK, name: str = "ota-server", **server_kw: Any):
        super().__init__(name)
        self.policy = policy if policy is not None else Policy()
        try:
            self.server = self.call(self._make(hub_eui, server_kw))
            self.address = self.call(self.server.listen_udp(*udp))
        except BaseException:
            self._abandon()
            raise

    async def _make(self, hub_eui: bytes, kw: dict) -> OtaServer:
        # made on the loop: the server's timers and locks belong to it
        return OtaServer(hub_eui, self.policy, **kw)

    async def _shutdown(self) -> None:
        await self.server.close()

    def attach_serial(self, path: str | os.PathLike | int) -> str:
        """Serve devices on a serial line too (a board's link pty); returns its name."""
        return self.call(self.server.attach_serial(path))

    def add_device(self, eui64_text: str, install_code: str) -> bytes:
        """Let a device join (its install code); returns its EUI-64 in wire order."""
        eui = hlink.eui_from_str(eui64_text)
        self.policy.install_codes[eui] = install_code
        return eui

    def add_image(self, path: str | os.PathLike) -> ServedImage:
        """Offer the upgrade file at path (the policy offers the newest that suits)."""
        img = ServedImage.from_file(path)
        self.policy.images.append(img)
        return img

    def events(self, name: str, eui: bytes | None = None) -> list[tuple]:
        """The policy's events called name (for eui only, if given), oldest first."""
        return [e for e in list(self.policy.events)
                if e[0] == name and (eui is None or e[1] == eui)]

    def wait_event(self, name: str, eui: bytes | None = None, timeout: float = 60,
                   count: int = 1) -> list[tuple]:
        """Wait until there are count events called name (for eui); returns them all."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.events(name, eui)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise TimeoutError("no %r event within %.0f s; events: %s"
                           % (name, timeout, [e[:3] for e in self.policy.events][-30:]))
