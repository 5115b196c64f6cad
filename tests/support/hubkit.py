"""A hub's OTA server running in a background thread, for tests that drive real boards
(virtual boards, the device code as it runs on a chip)."""
from __future__ import annotations

import dataclasses

from hanota.hub.runner import ServerRunner
from hanota.server import Policy

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


class HubThread(ServerRunner):
    """The package's `ServerRunner` with the tests' defaults: this hub's EUI, a
    `ForcePolicy`, a 30 s stall timeout; `udp` is its address."""

    def __init__(self, policy: Policy | None = None, **server_kw):
        server_kw.setdefault("stall_timeout", 30)
        super().__init__(HUB_EUI, policy or ForcePolicy(), name="hubkit", **server_kw)

    @property
    def udp(self) -> tuple[str, int]:
        return self.address
