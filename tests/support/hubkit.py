"""A hub's OTA server running in a background thread, for tests that drive real boards."""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

from hanota.server import OtaServer, Policy, ServedImage

HUB_EUI = bytes.fromhex("0100a0b0c0d0e0f0")


class ForcePolicy(Policy):
    """With `force`, offers its newest image to any querying device, compatible or not,
    under the identity the device asked for (a hub serving a file whose header disagrees
    with what it announced): only the device's own checks stand in the way."""

    def __init__(self, *a, force: bool = False, **kw):
        super().__init__(*a, **kw)
        self.force = force

    def offer(self, eui, manufacturer, image_type, file_version, hw_version):
        if self.force and self.images:
            img = self.images[-1]
            if (img.manufacturer, img.image_type) != (manufacturer, image_type):
                img = dataclasses.replace(img, manufacturer=manufacturer, image_type=image_type)
                self.images.append(img)
            return img
        return super().offer(eui, manufacturer, image_type, file_version, hw_version)


class HubThread:
    def __init__(self, policy: Policy | None = None, **server_kw):
        self.policy = policy or ForcePolicy()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hubkit", daemon=True)
        self.thread.start()
        server_kw.setdefault("stall_timeout", 30)
        self.server = self.call(self._make(server_kw))
        self.udp = self.call(self.server.listen_udp("127.0.0.1", 0))

    async def _make(self, kw):
        return OtaServer(HUB_EUI, self.policy, **kw)

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def attach_serial(self, path: str):
        return self.call(self.server.attach_serial(path))

    def add_device(self, eui64_text: str, install_code: str) -> bytes:
        eui = bytes(reversed(bytes.fromhex(eui64_text.replace(":", ""))))
        self.policy.install_codes[eui] = install_code
        return eui

    def add_image(self, path) -> ServedImage:
        img = ServedImage.from_file(path)
        self.policy.images.append(img)
        return img

    def events(self, name: str, eui: bytes | None = None) -> list[tuple]:
        return [e for e in list(self.policy.events) if e[0] == name and (eui is None or e[1] == eui)]

    def wait_event(self, name: str, eui: bytes | None = None, timeout: float = 60, count: int = 1) -> list[tuple]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.events(name, eui)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError("no %r event within %.0f s; events: %s"
                             % (name, timeout, [e[:3] for e in self.policy.events][-30:]))

    def stop(self) -> None:
        try:
            self.call(self.server.close(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()
