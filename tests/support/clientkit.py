"""The device's OTA client (hanfw.client) under CPython for unit tests: a scripted tick source,
an in-memory state and banks, an HCALCS holding an image, frames captured instead of sent.

`client(monkeypatch, cfg, image_hash)` gives a namespace: `c` the `OtaClient` (in a session
with HUB), `ticks` (advance `ticks.t`), `sent` ((cluster, payload) of each frame it sent),
`resets`, `banks`, `state`; `run_for(d, ms)` ticks it along in 100 ms steps."""
from __future__ import annotations

import types

from hanfw import client as client_mod
from hanfw import clock, config

HUB = bytes.fromhex("0100a0b0c0d0e0f0")
HELD_VERSION = 0x00020000


class Ticks:
    def __init__(self):
        self.t = 1000

    def __call__(self):
        return self.t


class State(dict):
    """hanfw.state.State in memory: `update` with None removes the key."""

    def get(self, k, d=None):
        return dict.get(self, k, d)

    def update(self, **kw):
        for k, v in kw.items():
            if v is None:
                self.pop(k, None)
            else:
                self[k] = v


class Banks:
    """Running 1.0.0; the held image's target hash is `digest`; counts activations."""

    activated = 0

    def __init__(self, digest: bytes):
        self.digest = digest

    def running_version(self):
        return 0x00010000

    def target_sha256(self, length):
        return self.digest

    def activate(self):
        self.activated += 1


def client(monkeypatch, cfg: dict, image_hash: bytes) -> types.SimpleNamespace:
    """An HCALCS client with `cfg` (hanfw.config's dict) holding version 2.0.0 of
    `image_hash`, the device's one clock unset and driven by `Ticks`."""
    ticks = Ticks()
    monkeypatch.setattr(clock, "ticks", ticks)
    monkeypatch.setattr(client_mod, "_ticks", ticks)
    monkeypatch.setattr(clock, "base", None)  # the device's one clock, unset
    monkeypatch.setattr(clock, "due", None)
    state = State(held={"version": HELD_VERSION, "hash": image_hash.hex(), "length": 1000})
    role = types.SimpleNamespace(activation="command", on_link_up=lambda: None)
    resets = []
    banks = Banks(image_hash)
    c = client_mod.OtaClient(config.from_dict(cfg), None, banks, state, role,
                             lambda: resets.append(1), lambda m: None)
    sent = []
    c._send = lambda kind, dst, cluster, payload: sent.append((cluster, bytes(payload)))
    c.session, c.hub, c.hub_floor = True, HUB, 0
    return types.SimpleNamespace(c=c, ticks=ticks, sent=sent, resets=resets, banks=banks,
                                 state=state)


def run_for(d, ms):
    for _ in range(ms // 100):
        d.ticks.t += 100
        d.c.tick()
