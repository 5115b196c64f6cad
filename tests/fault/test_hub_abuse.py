"""The hub's OTA server under abuse while well-behaved devices download.

Malformed link frames, forged MACs, replayed counters, a flood from one address (junk and
authenticated requests), a device asking for blocks far past the end, malformed ZCL from an
authenticated device, and a device that vanishes mid-transfer -- all at once, over UDP and
over a shared serial line. The well-behaved devices must get byte-exact images with no
request lost (every block served exactly once: nothing had to be asked again) and no
WAIT_FOR_DATA imposed on them; every bad frame is dropped and counted under its reason;
the vanished transfer is reported stalled and released.

(A hub killed at random points of a campaign and restarted -- nothing lost, nothing
delivered twice -- is tests/fault/test_hub_kills.py.)
"""
from __future__ import annotations

import asyncio
import os
import random
import socket
import time

import pytest

from hanfw import link as hlink
from hanfw import zcl
from hanota import images
from hanota.server import OtaServer, Policy, ServedImage
from support import otabuild
from support.fakedevice import C2S, FakeBus, FakeDevice, install_code

from fault import results

pytestmark = pytest.mark.timeout(120)

HUB = bytes.fromhex("a8a7a6a5a4a3a2a1")
MFR = images.DEFAULT_MANUFACTURER
GOOD = 4
BURST = 50  # frames per burst (then wait until the server has read them: no kernel drops)


def eui(n: int) -> bytes:
    return bytes([n, 0x00, 0x00, 0x00, 0x00, 0x5e, 0xa1, 0x70])


class CountingPolicy(Policy):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.offers: dict[bytes, int] = {}

    def offer(self, eui, manufacturer, image_type, file_version, hw_version):
        self.offers[eui] = self.offers.get(eui, 0) + 1
        return super().offer(eui, manufacturer, image_type, file_version, hw_version)


@pytest.fixture
def image(tmp_path):
    payload = random.Random(7).randbytes(60000)
    p = tmp_path / "img.ota"
    p.write_bytes(images.build_image(payload, key=otabuild.new_key(), version=2, role="ppmid"))
    return ServedImage.from_file(p)


async def until(pred, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in %.1f s" % timeout)
        await asyncio.sleep(0.005)


async def joined(policy, addr, n) -> FakeDevice:
    code = install_code(n)
    policy.install_codes[eui(n)] = code
    dev = FakeDevice(eui(n), code, image_type=0x84, timeout=2.0)
    await dev.open_udp(addr)
    assert await dev.join() == hlink.JOIN_OK
    await dev.hello()
    return dev


def sniff(dev: FakeDevice, into: list) -> None:
    """Keep a copy of every frame dev sends (an eavesdropper's capture)."""
    send = dev.send_raw

    def capture(data):
        into.append(bytes(data))
        send(data)
    dev.send_raw = capture


async def burst(server, sock, addr, frames, counted) -> None:
    """Send frames in bursts, each time waiting until the server has read them."""
    for i in range(0, len(frames), BURST):
        before = counted()
        chunk = frames[i:i + BURST]
        for f in chunk:
            sock.sendto(f, addr)
        await until(lambda: counted() >= before + len(chunk))


def test_hub_serves_well_behaved_devices_through_abuse(image):
    size = image.size
    rng = random.Random(2024)

    async def main():
        policy = CountingPolicy(images=[image])
        server = OtaServer(HUB, policy, stall_timeout=1.0, watch_interval=0.1)
        addr = await server.listen_udp("127.0.0.1", 0)
        rogue = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # the same downloads with nobody abusing the hub, for comparison (not asserted)
            calm = [await joined(policy, addr, n) for n in range(11, 11 + GOOD)]
            calm_avails = [await d.query() for d in calm]
            t0 = time.monotonic()
            await asyncio.gather(*(d.download(a) for d, a in zip(calm, calm_avails)))
            calm_rate = int(GOOD * size / (time.monotonic() - t0))
            for d in calm:
                d.close()
            good = [await joined(policy, addr, n) for n in range(1, GOOD + 1)]
            captured: list[bytes] = []
            for d in good:
                sniff(d, captured)
            flooder = await joined(policy, addr, 40)
            past_end = await joined(policy, addr, 41)
            sloppy = await joined(policy, addr, 42)
            vanishing = await joined(policy, addr, 43)
            avails = [await d.query() for d in good]
            v_avail = await vanishing.query()
            dropped0 = dict(server.stats)
            t0 = time.monotonic()
            downloads = [asyncio.create_task(d.download(a)) for d, a in zip(good, avails)]
            await until(lambda: all(d.block_sizes for d in good))

            sent: dict[str, int] = {}

            def count(reason, n=1):
                sent[reason] = sent.get(reason, 0) + n

            def dropped():
                return server.stats["dropped"] - dropped0.get("dropped", 0)

            def downloading():
                return not all(t.done() for t in downloads)

            def junk_frames(n):
                frames = []
                for i in range(n):
                    kind = i % 6
                    if kind == 0:
                        frames.append(rng.randbytes(rng.randrange(0, hlink.OVERHEAD)))
                        count("short")
                    elif kind == 1:
                        frames.append(rng.randbytes(hlink.MAX_FRAME + 1 + rng.randrange(100)))
                        count("long")
                    elif kind == 2:
                        f = bytearray(good[i % GOOD].frame(hlink.KIND_DATA, b"\x01\x02\x01",
                                                           counter=1 << 30))
                        # a kind above every defined one (BUNDLE is the last)
                        f[0] = hlink.KIND_BUNDLE + 1 + rng.randrange(255 - hlink.KIND_BUNDLE)
                        frames.append(bytes(f))
                        count("kind")
                    elif kind == 3:
                        frames.append(stranger.frame(hlink.KIND_DATA, b"\x01\x02\x01"))
                        count("unknown-sender")
                    else:  # a good device's EUI, a forged MAC (or a wrong key)
                        f = bytearray(good[i % GOOD].frame(hlink.KIND_DATA, rng.randbytes(20),
                                                           counter=(1 << 30) + i))
                        f[-1 - rng.randrange(8)] ^= 1 << rng.randrange(8)
                        frames.append(bytes(f))
                        count("bad-mac")
                return frames

            stranger = FakeDevice(eui(99), install_code(99), hub=HUB)
            q = zcl.pack_header(C2S, 1, zcl.CMD_QUERY_NEXT_IMAGE) \
                + zcl.pack_query_next_image(MFR, 0x84, 1)
            offers0 = policy.offers.get(flooder.eui, 0)
            flooded = [0]
            during = {"junk": 0, "replay": 0, "flood": 0, "past-end": 0, "malformed": 0}

            async def junk():  # 1. junk and forged frames from one address
                while downloading() or not during["junk"]:
                    await burst(server, rogue, addr, junk_frames(BURST), dropped)
                    during["junk"] += downloading()

            async def replay():  # 2. what the good devices sent, again, from another address
                done = 0
                while downloading() or not done:
                    frames = captured[done:done + BURST]
                    if not frames:
                        await asyncio.sleep(0.01)
                        continue
                    await burst(server, rogue, addr, frames, dropped)
                    count("replay", len(frames))
                    done += len(frames)
                    during["replay"] += downloading()

            async def flood():  # 3. an authenticated device flooding Query Next Image
                while downloading() or not flooded[0]:
                    frames = [flooder.frame(hlink.KIND_DATA, q) for _ in range(BURST)]
                    await burst(server, rogue, addr, frames, lambda: policy.offers.get(
                        flooder.eui, 0) - offers0 + server.stats["overload"])
                    flooded[0] += len(frames)
                    during["flood"] += downloading()

            async def beyond():  # 4. blocks far past the end
                i = 0
                while downloading() or not i:
                    cmd, r = await past_end.request(C2S, zcl.CMD_IMAGE_BLOCK,
                                                    zcl.pack_block_request(
                                                        MFR, 0x84, 2, size + i * 100000, 64))
                    assert r.status == zcl.MALFORMED_COMMAND
                    i += 1
                    during["past-end"] += downloading()
                return i

            async def malformed():  # ... and malformed ZCL from an authenticated device
                i = 0
                while downloading() or not i:
                    payload = zcl.pack_block_request(MFR, 0x84, 2, 0, 64)[:rng.randrange(1, 9)]
                    sloppy.send_zcl(C2S, 5, zcl.CMD_IMAGE_BLOCK, payload)
                    i += 1
                    during["malformed"] += downloading()
                    await asyncio.sleep(0.002)
                return i

            async def vanish():  # 5. a device that vanishes mid-transfer
                await vanishing.download(v_avail, stop_at=size // 3)
                vanishing.close()

            abuse = await asyncio.gather(junk(), replay(), flood(), beyond(), malformed(),
                                         vanish())
            n_past, n_malformed = abuse[3], abuse[4]
            await asyncio.gather(*downloads)
            elapsed = time.monotonic() - t0
            await until(lambda: server.stats["zcl-malformed"] >= n_malformed)
            assert all(during.values()), "some abuse did not overlap the downloads: %s" % during
            await until(lambda: any(e[0] == "stall" and e[1] == vanishing.eui
                                    for e in policy.events), timeout=10)

            for d in good:
                assert bytes(d.image) == open(image.path, "rb").read()
                assert d.waits == []  # nothing made them wait
                t = server.transfers[d.eui]
                assert t.bytes_served == size, "a request of %s was lost (served %d of %d)" % (
                    hlink.eui_str(d.eui), t.bytes_served, size)
                assert (await d.upgrade_end())[0] == zcl.CMD_UPGRADE_END_RESPONSE
            got = {r: server.stats[r] - dropped0.get(r, 0) for r in sent}
            assert got == sent
            assert dropped() == sum(sent.values()) + server.stats["overload"]
            assert len([e for e in policy.events if e[0] == "bad_frame"]) == dropped()
            answered = policy.offers.get(flooder.eui, 0) - offers0
            assert answered + server.stats["overload"] == flooded[0]
            assert server.stats["past-end"] == n_past
            assert server.stats["zcl-malformed"] == n_malformed
            assert vanishing.eui not in server.in_flight
            assert server.transfers[vanishing.eui].state == "stalled"
            for d, a in zip(good, avails):  # the hub still answers them
                assert (await d.query()).status == zcl.SUCCESS
            for r, n in sorted(sent.items()):
                results.record("hub-abuse", "dropped as " + r, frames=n, dropped=got[r])
            results.record("hub-abuse", "authenticated flood (Query Next Image)",
                           frames=flooded[0], served=answered, dropped=server.stats["overload"])
            results.record("hub-abuse", "blocks far past the end", frames=n_past, served=0,
                           answered_malformed=n_past)
            results.record("hub-abuse", "malformed ZCL from a joined device", frames=n_malformed,
                           answered_malformed=server.stats["zcl-malformed"])
            results.record("hub-abuse", "device vanished mid-transfer", stalled=1, released=1)
            results.record("hub-abuse", "well-behaved devices (UDP)", devices=GOOD,
                           bytes=GOOD * size, lost_requests=0,
                           **{"bytes/s under abuse (attackers share the hub's process)":
                              int(GOOD * size / elapsed), "bytes/s without abuse": calm_rate})
            for d in good + [flooder, past_end, sloppy]:
                d.close()
        finally:
            rogue.close()
            await server.close()
    asyncio.run(asyncio.wait_for(main(), 100))


def test_garbage_on_a_shared_serial_line_does_not_disturb_its_devices(image):
    master, slave = os.openpty()
    rng = random.Random(5)

    async def main():
        policy = Policy(images=[image])
        server = OtaServer(HUB, policy)
        bus = FakeBus(slave)
        try:
            await server.attach_serial(master)
            devs = []
            for n in (1, 2, 3):
                code = install_code(n)
                policy.install_codes[eui(n)] = code
                d = FakeDevice(eui(n), code, timeout=2.0)
                bus.attach(d)
                assert await d.join() == hlink.JOIN_OK
                await d.hello()
                devs.append(d)
            avails = [await d.query() for d in devs]
            tasks = [asyncio.create_task(d.download(a)) for d, a in zip(devs, avails)]
            junk = 0
            while not all(t.done() for t in tasks):
                # whole junk frames between the devices' frames: END, junk, END
                os.write(slave, b"\xc0" + rng.randbytes(rng.randrange(5, 60)).replace(b"\xc0", b"")
                         + b"\xc0")
                junk += 1
                await asyncio.sleep(0.01)
            await asyncio.gather(*tasks)
            await until(lambda: server.stats["bad-crc"] >= junk)
            for d in devs:
                assert bytes(d.image) == open(image.path, "rb").read()
                assert server.transfers[d.eui].bytes_served == image.size
            assert server.stats["bad-crc"] == junk
            results.record("hub-abuse", "junk frames on a shared serial line", frames=junk,
                           dropped=server.stats["bad-crc"])
        finally:
            bus.close()
            await server.close()
    try:
        asyncio.run(asyncio.wait_for(main(), 100))
    finally:
        os.close(master)
        os.close(slave)
