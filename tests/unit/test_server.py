"""hanota.server: the hub's OTA server against fake devices over UDP and a serial pty."""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time

import pytest

from hanfw import link as hlink
from hanfw import zcl
from hanota import images
from hanota.server import (DeviceTimeout, OtaServer, Policy, ServedImage, ServerError,
                           UPGRADE_WAIT)
from support import otabuild
from support.fakedevice import C2S, C2S_MFR, FakeBus, FakeDevice, install_code

pytestmark = pytest.mark.timeout(30)

HUB = bytes.fromhex("a8a7a6a5a4a3a2a1")
MFR = images.DEFAULT_MANUFACTURER


def eui(n: int) -> bytes:
    return bytes([n, 0x00, 0x00, 0x00, 0x00, 0x5e, 0xa1, 0x70])


def run(coro, timeout: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(pred, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in %.1f s" % timeout)
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def key():
    return otabuild.new_key()


@pytest.fixture
def make_image(tmp_path, key):
    def make(version: int = 2, size: int = 6000, role: str = "ppmid", **kw) -> ServedImage:
        payload = random.Random(version * 7919 + size).randbytes(size)
        path = tmp_path / ("%s-%08x-%d.ota" % (role, version, size))
        path.write_bytes(images.build_image(payload, key=key, version=version, role=role, **kw))
        return ServedImage.from_file(path)
    return make


def file_bytes(img: ServedImage) -> bytes:
    with open(img.path, "rb") as f:
        return f.read()


def events(policy: Policy, name: str) -> list[tuple]:
    return [e for e in policy.events if e[0] == name]


@contextlib.asynccontextmanager
async def serving(policy: Policy, **kw):
    server = OtaServer(HUB, policy, **kw)
    addr = await server.listen_udp("127.0.0.1", 0)
    try:
        yield server, addr
    finally:
        await server.close()


async def joined(policy: Policy, addr, n: int, *, role: str = "ppmid", version: int = 1,
                 **kw) -> FakeDevice:
    """A fake device on UDP that is known to the policy, joined and in session."""
    code = install_code(n)
    policy.install_codes[eui(n)] = code
    dev = FakeDevice(eui(n), code, role=role, version=version,
                     image_type=images.ROLE_IMAGE_TYPES[role], **kw)
    await dev.open_udp(addr)
    assert await dev.join() == hlink.JOIN_OK
    await dev.hello()
    return dev


# ---------------------------------------------------------------- downloads

@pytest.mark.parametrize("pages", [False, True], ids=["blocks", "pages"])
def test_full_download_over_udp_is_byte_exact(make_image, pages):
    img = make_image(size=9000)

    async def main():
        policy = Policy(images=[img])
        async with serving(policy, block_cap=48) as (server, addr):
            dev = await joined(policy, addr, 1)
            avail = await dev.query()
            assert (avail.status, avail.manufacturer, avail.image_type, avail.file_version,
                    avail.image_size) == (zcl.SUCCESS, MFR, 0x0084, 2, img.size)
            await dev.download(avail, pages=pages, max_data=64, page_size=700)
            assert bytes(dev.image) == file_bytes(img)
            # data size = min(requested 64, server cap 48), short only at the end of a page
            assert max(dev.block_sizes) == 48
            cmd, rsp = await dev.upgrade_end(zcl.SUCCESS)
            assert cmd == zcl.CMD_UPGRADE_END_RESPONSE
            assert rsp == (MFR, 0x0084, 2, 0, 0)  # default policy: a ppmid activates now
            t = server.transfers[eui(1)]
            assert (t.state, t.offset, t.size, t.status) == ("complete", img.size, img.size, 0)
            assert t.bytes_served == img.size and t.rate > 0
            assert events(policy, "progress")[-1] == ("progress", eui(1), img.size, img.size)
            assert events(policy, "upgrade_end") == [("upgrade_end", eui(1), img, zcl.SUCCESS)]
            assert events(policy, "joined") == [("joined", eui(1), "ppmid", 1)]
            assert events(policy, "hello") == [("hello", eui(1), 1)]
            assert server.stats["dropped"] == 0
            dev.close()
    run(main())


@pytest.mark.parametrize("rx_frame,spacing_ms", [(hlink.RX_FRAME, 0), (1000, 0), (0, 0),
                                                  (hlink.RX_FRAME, 1)],
                         ids=["bundles", "small-bundles", "no-bundles-announced",
                              "spacing-asked"])
def test_page_blocks_are_bundled_for_a_device_that_takes_long_frames(make_image, rx_frame,
                                                                     spacing_ms):
    img = make_image(size=9000)

    async def main():
        policy = Policy(images=[img])
        async with serving(policy, block_cap=255) as (server, addr):
            dev = await joined(policy, addr, 1, rx_frame=rx_frame)
            assert server.devices[eui(1)].rx_frame == max(rx_frame, hlink.MAX_FRAME)
            avail = await dev.query()
            await dev.download(avail, pages=True, max_data=255, page_size=4096,
                               spacing_ms=spacing_ms)
            assert bytes(dev.image) == file_bytes(img)
            st = server.stats
            pages = -(-img.size // 4096)
            if rx_frame > hlink.MAX_FRAME and not spacing_ms:
                # as many 272-byte block responses (+2 length bytes) as fit in the frame
                per = (rx_frame - hlink.OVERHEAD) // 274
                assert st["bundles"] == dev.bundles >= pages
                assert st["blocks"] == len(dev.block_sizes)
                expected = 0
                for p in range(0, img.size, 4096):
                    blocks = -(-min(4096, img.size - p) // 255)
                    # frames of `per` blocks; a lone block goes out as a plain DATA frame
                    expected += blocks // per + (blocks % per > 1)
                assert dev.bundles == expected
            else:
                assert st["bundles"] == dev.bundles == 0
            assert server.transfers[eui(1)].bytes_served == img.size
            dev.close()
    run(main())


def test_serial_pty_several_devices_on_one_line_blocks_and_pages(make_image):
    img = make_image(size=5000)
    master, slave = os.openpty()

    async def main():
        policy = Policy(images=[img])
        server = OtaServer(HUB, policy)
        bus = FakeBus(slave)
        try:
            name = await server.attach_serial(master)
            assert name.startswith("serial:")
            devs = []
            for n in (1, 2):
                code = install_code(n)
                policy.install_codes[eui(n)] = code
                dev = FakeDevice(eui(n), code)
                bus.attach(dev)
                assert await dev.join() == hlink.JOIN_OK
                await dev.hello()
                devs.append(dev)
            avails = [await d.query() for d in devs]
            await asyncio.gather(devs[0].download(avails[0]),
                                 devs[1].download(avails[1], pages=True, page_size=1024))
            for d in devs:
                assert bytes(d.image) == file_bytes(img)
                assert (await d.upgrade_end())[0] == zcl.CMD_UPGRADE_END_RESPONSE
            assert server.stats["dropped"] == 0
            # garbage on the line is counted (bad CRC) and the line keeps working
            os.write(slave, b"\xc0garbage\xc0")
            await until(lambda: server.stats["bad-crc"] == 1)
            assert (await devs[0].query()).status == zcl.SUCCESS
        finally:
            bus.close()
            await server.close()
    try:
        run(main())
    finally:
        os.close(master)
        os.close(slave)


def test_several_devices_at_once(make_image):
    imgs = {"ppmid": make_image(size=7000), "hcalcs": make_image(size=5000, role="hcalcs")}

    async def main():
        policy = Policy(images=imgs.values())
        async with serving(policy) as (server, addr):
            devs = [await joined(policy, addr, n, role="ppmid" if n % 2 else "hcalcs")
                    for n in range(1, 7)]
            avails = [await d.query() for d in devs]
            await asyncio.gather(*(d.download(a, pages=bool(n % 3), page_size=512)
                                   for n, (d, a) in enumerate(zip(devs, avails))))
            for d in devs:
                assert bytes(d.image) == file_bytes(imgs[d.role])
                cmd, rsp = await d.upgrade_end()
                # the default policy makes hcalcs wait for an Activate Image
                assert rsp.upgrade_time == (0 if d.role == "ppmid" else zcl.UPGRADE_TIME_WAIT)
                d.close()
            assert all(t.state == "complete" for t in server.transfers.values())
            assert len(server.transfers) == 6 and not server.in_flight
    run(main())


def test_resume_after_device_restart_and_after_hub_restart(make_image):
    img = make_image(size=8000)

    async def main():
        policy = Policy(images=[img])
        async with serving(policy) as (server, addr):
            dev = await joined(policy, addr, 3)
            avail = await dev.query()
            assert await dev.download(avail, stop_at=2501) == 2501
            dev.close()
            # the device reboots: new socket (new address); it kept its counters and the
            # partial image with its offset, and resumes without a new query
            old = dev
            dev = FakeDevice(old.eui, install_code(3), counter=old.counter, hub=old.hub,
                             hub_floor=old.hub_floor)
            dev.image, dev.offset = old.image, old.offset
            await dev.open_udp(addr)
            await dev.hello()
            assert await dev.download(avail, pages=True, stop_at=5003) == 5003
            hub_floor, counter, partial = dev.hub_floor, dev.counter, bytes(dev.image)
            dev.close()
        assert policy.counter > hub_floor  # the hub persisted counters ahead of their use
        # the hub restarts: a new server with the same policy serves the rest statelessly
        async with serving(policy) as (server, addr):
            dev = FakeDevice(eui(3), install_code(3), counter=counter, hub=HUB,
                             hub_floor=hub_floor)
            dev.image, dev.offset = bytearray(partial), 5003
            await dev.open_udp(addr)
            # the device still holds the old hub's floor: it accepts the new hub's frames
            # only because the new hub never reuses a counter
            await dev.hello()
            await dev.download(avail)
            assert bytes(dev.image) == file_bytes(img)
            assert dev.dropped["replay"] == 0
            assert (await dev.upgrade_end())[1].file_version == img.file_version
            dev.close()
    run(main())


def test_blocks_served_from_arbitrary_offsets(make_image):
    img = make_image(size=3000)
    data = None

    async def main():
        policy = Policy(images=[img])
        async with serving(policy, block_cap=200) as (server, addr):
            dev = await joined(policy, addr, 4)
            avail = await dev.query()
            for off in (img.size - 1, 0, 1777, 3, img.size - 150):
                cmd, r = await dev.request(C2S, zcl.CMD_IMAGE_BLOCK, zcl.pack_block_request(
                    MFR, 0x0084, 2, off, 180))
                assert r.status == zcl.SUCCESS and r.file_offset == off
                assert bytes(r.data) == data[off:off + 180]
            assert avail.image_size == len(data)
            dev.close()
    data = file_bytes(img)
    run(main())


def test_a_block_request_inside_the_page_under_way_leaves_the_page_going(make_image):
    # a device that lost a block of a page asks for that one alone (Image Block Request)
    # and keeps the rest of the page: the hub answers it and goes on with the page; a block
    # request elsewhere (a device that started over) still stops the page under way
    img = make_image(size=8000)
    ident = (MFR, 0x84, 2)

    async def page(dev, off, size):
        tsn = dev._next_tsn()
        q: asyncio.Queue = asyncio.Queue()
        dev._streams[tsn] = q
        # 64-byte blocks 10 ms apart: the page lasts about 0.3 s
        dev.send_zcl(C2S, tsn, zcl.CMD_IMAGE_PAGE, zcl.pack_page_request(*ident, off, 64, size, 10))
        await until(lambda: q.qsize() >= 3)
        return q

    async def main():
        policy = Policy(images=[img])
        async with serving(policy, block_cap=64) as (server, addr):
            dev = await joined(policy, addr, 9)
            await dev.query()
            q = await page(dev, 0, 2048)
            cmd, r = await dev.request(C2S, zcl.CMD_IMAGE_BLOCK,
                                       zcl.pack_block_request(*ident, 1024, 64))
            assert (r.status, r.file_offset) == (zcl.SUCCESS, 1024)
            await until(lambda: q.qsize() >= 32)  # every block of the page came
            assert server.stats["block-requests"] == 1
            q = await page(dev, 2048, 2048)
            cmd, r = await dev.request(C2S, zcl.CMD_IMAGE_BLOCK,
                                       zcl.pack_block_request(*ident, 6000, 64))
            assert (r.status, r.file_offset) == (zcl.SUCCESS, 6000)
            await asyncio.sleep(0.5)
            assert q.qsize() < 32  # stopped
            dev.close()
    run(main())


# ---------------------------------------------------------------- statuses

def test_past_end_is_malformed_and_unknown_image_aborts(make_image):
    img = make_image(size=2000)

    async def main():
        policy = Policy(images=[img])
        async with serving(policy) as (server, addr):
            dev = await joined(policy, addr, 5)
            await dev.query()
            for cmd_id, payload in (
                    (zcl.CMD_IMAGE_BLOCK, zcl.pack_block_request(MFR, 0x84, 2, img.size, 64)),
                    (zcl.CMD_IMAGE_PAGE, zcl.pack_page_request(MFR, 0x84, 2, img.size + 9, 64,
                                                               512, 0))):
                cmd, r = await dev.request(C2S, cmd_id, payload)
                assert (cmd, r.status) == (zcl.CMD_IMAGE_BLOCK_RESPONSE, zcl.MALFORMED_COMMAND)
            for ident in ((MFR, 0x84, 3), (MFR, 0x85, 2), (0x9999, 0x84, 2)):
                cmd, r = await dev.request(C2S, zcl.CMD_IMAGE_BLOCK,
                                           zcl.pack_block_request(*ident, 0, 64))
                assert (cmd, r.status) == (zcl.CMD_IMAGE_BLOCK_RESPONSE, zcl.ABORT)
            # an Upgrade End SUCCESS for an image the hub does not know is refused
            cmd, r = await dev.upgrade_end(zcl.SUCCESS, (MFR, 0x84, 3))
            assert (cmd, r) == (zcl.GLOBAL_DEFAULT_RESPONSE, (zcl.CMD_UPGRADE_END, zcl.ABORT))
            assert server.stats["unknown-image"] == 4 and server.stats["past-end"] == 2
            dev.close()
    run(main())


def test_no_image_available(make_image):
    img = make_image(version=5, size=1000, min_hw=0x0200, max_hw=0x02FF)

    async def main():
        policy = Policy(images=[img])
        async with serving(policy) as (server, addr):
            newest = await joined(policy, addr, 6, version=5, hw=0x0200)   # already runs it
            wrong_hw = await joined(policy, addr, 7, version=1, hw=0x0100)  # out of HW range
            hcalcs = await joined(policy, addr, 8, role="hcalcs")           # other image type
            for d in (newest, wrong_hw, hcalcs):
                assert (await d.query()).status == zcl.NO_IMAGE_AVAILABLE
                d.close()
            right = await joined(policy, addr, 9, version=4, hw=0x0250)
            assert (await right.query()).file_version == 5
            right.close()
    run(main())


def test_throttle_answers_wait_for_data_then_serves(make_image):
    img = make_image(size=1500)

    async def main():
        policy = Policy(images=[img])
        async with serving(policy) as (server, addr):
            dev = await joined(policy, addr, 10)
            avail = await dev.query()
            server.throttle(dev.eui, 0.5)
            await dev.download(avail, min_block_period=20)
            assert bytes(dev.image) == file_bytes(img)
            # relative time (current 0), at least 1 s, and the device's own block period
            assert [(w.status, w.current_time, w.request_time, w.min_block_period)
                    for w in dev.waits] == [(zcl.WAIT_FOR_DATA, 0, 1, 20)]
            assert server.stats["throttled"] == 1
            dev.close()
    run(main())


def test_max_in_flight_makes_other_devices_wait(make_image):
    img = make_image(size=3000)

    async def main():
        policy = Policy(images=[img])
        async with serving(policy, max_in_flight=1, busy_retry_s=1) as (server, addr):
            a = await joined(policy, addr, 11)
            b = await joined(policy, addr, 12)
            avail = await a.query()
            await b.query()
            await a.download(avail, stop_at=1000)
            assert server.in_flight == {a.eui}
            b_task = asyncio.create_task(b.download(avail, pages=True))
            await until(lambda: b.waits)
            assert (b.waits[0].status, b.waits[0].request_time) == (zcl.WAIT_FOR_DATA, 1)
            assert eui(12) not in server.transfers
            await a.download(avail)
            await a.upgrade_end()
            assert server.in_flight == set()
            await b_task
            assert bytes(b.image) == bytes(a.image) == file_bytes(img)
            assert server.stats["busy"] >= 1
            a.close()
            b.close()
    run(main())


def test_upgrade_end_times_from_policy_and_failures(make_image):
    img = make_image(size=1200)

    async def main():
        policy = Policy(images=[img])
        async with serving(policy) as (server, addr):
            ok = await joined(policy, addr, 13)
            bad = await joined(policy, addr, 14)
            policy.upgrade_times[ok.eui] = (0x2A000000, 0x2A000E10)  # UTC: in an hour
            for d in (ok, bad):
                await d.download(await d.query())
            cmd, rsp = await ok.upgrade_end(zcl.SUCCESS)
            assert (cmd, rsp) == (zcl.CMD_UPGRADE_END_RESPONSE,
                                  (MFR, 0x84, 2, 0x2A000000, 0x2A000E10))
            cmd, rsp = await bad.upgrade_end(zcl.INVALID_IMAGE)
            assert (cmd, rsp) == (zcl.GLOBAL_DEFAULT_RESPONSE, (zcl.CMD_UPGRADE_END, zcl.SUCCESS))
            assert events(policy, "upgrade_end") == [
                ("upgrade_end", ok.eui, img, zcl.SUCCESS),
                ("upgrade_end", bad.eui, img, zcl.INVALID_IMAGE)]
            assert server.transfers[bad.eui].state == "failed"
            assert server.transfers[bad.eui].status == zcl.INVALID_IMAGE
            # a hcalcs device is told to wait; the hub later pushes the time (device acks)
            hc = await joined(policy, addr, 15, role="hcalcs")
            policy.images.append(hc_img := make_image(size=900, role="hcalcs"))
            await hc.download(await hc.query())
            assert (await hc.upgrade_end())[1][3:] == UPGRADE_WAIT
            assert await server.upgrade_end_response(hc.eui, None, 0, 30) == (0, 30)
            assert hc.pushed == [(MFR, 0x86, 2, 0, 30)]
            assert server.transfers[hc.eui].image == hc_img
            for d in (ok, bad, hc):
                d.close()
    run(main())


def test_activate_image_round_trip_and_timeouts(make_image):
    img = make_image(size=800, role="hcalcs")

    async def main():
        policy = Policy(images=[img])
        async with serving(policy, request_timeout=0.5, retries=1) as (server, addr):
            dev = await joined(policy, addr, 16, role="hcalcs", version=1)
            await dev.download(await dev.query())
            await dev.upgrade_end()
            assert await server.activate(dev.eui, img.image_hash, 0, 7) \
                == (zcl.ACTIVATE_NO_IMAGE_HELD, 1, 7)
            dev.held_hash = img.image_hash
            assert await server.activate(dev.eui, bytes(32), 0, 8) \
                == (zcl.ACTIVATE_HASH_MISMATCH, 1, 8)
            assert await server.activate(dev.eui, img.image_hash, 0x2B000000, 9) \
                == (zcl.ACTIVATE_SUCCESS, 1, 9)
            a = dev.activations[-1]
            assert (a.image_hash, a.execution_time, a.counter) == (img.image_hash, 0x2B000000, 9)
            assert [e[2:] for e in events(policy, "activate_response")] == [
                (zcl.ACTIVATE_NO_IMAGE_HELD, 1, 7), (zcl.ACTIVATE_HASH_MISMATCH, 1, 8),
                (zcl.ACTIVATE_SUCCESS, 1, 9)]
            assert server.devices[dev.eui].alert_image == img  # now awaiting its alert
            dev.silent = True
            retries = server.stats["retries"]
            with pytest.raises(DeviceTimeout):
                await server.activate(dev.eui, img.image_hash, 0, 10)
            assert server.stats["retries"] == retries + 1  # sent twice, then gave up
            with pytest.raises(ServerError) as ei:
                await server.activate(eui(99), img.image_hash)
            assert ei.value.reason == "unknown-device"
            dev.close()
    run(main())


def test_read_attributes_and_notify_round_trips(make_image):
    img = make_image(version=0x02000000, size=500)

    async def main():
        policy = Policy(images=[img])
        async with serving(policy, request_timeout=0.5, retries=1) as (server, addr):
            dev = await joined(policy, addr, 17, version=0x01020304)
            recs = await server.read_attributes(dev.eui, [zcl.ATTR_CURRENT_FILE_VERSION,
                                                          zcl.ATTR_IMAGE_UPGRADE_STATUS, 0x4444])
            assert recs == [(2, zcl.SUCCESS, zcl.TYPE_UINT32, 0x01020304),
                            (6, zcl.SUCCESS, zcl.TYPE_ENUM8, 0),
                            (0x4444, zcl.UNSUPPORTED_ATTRIBUTE, None, None)]
            assert await server.notify(dev.eui) is True
            assert dev.notifies[0] == (zcl.NOTIFY_JITTER, 100, None, None, None)
            assert server.devices[dev.eui].offered == img  # its query was answered
            dev.answer_notify = False
            sent = len(dev.notifies)
            assert await server.notify(dev.eui) is False  # not fatal: the device may poll
            assert len(dev.notifies) == sent + 2  # the notify and one retry
            dev.close()
    run(main())


def test_activation_alert_reaches_policy_and_is_acknowledged(make_image):
    async def main():
        policy = Policy()
        async with serving(policy) as (server, addr):
            dev = await joined(policy, addr, 18, version=3)
            cmd, rsp = await dev.alert(2, 3, True, zcl.ALERT_HEALTH_CHECK_FAILED, 0x2B000000)
            assert (cmd, rsp) == (zcl.GLOBAL_DEFAULT_RESPONSE,
                                  (zcl.CMD_ACTIVATION_ALERT, zcl.SUCCESS))
            assert events(policy, "alert") == [
                ("alert", dev.eui, 2, 3, True, zcl.ALERT_HEALTH_CHECK_FAILED)]
            assert server.devices[dev.eui].file_version == 2
            dev.close()
    run(main())


def test_unsupported_and_malformed_commands_get_default_responses():
    async def main():
        policy = Policy()
        async with serving(policy) as (server, addr):
            dev = await joined(policy, addr, 19)
            cases = [
                (C2S, 0x0A, b"", None, zcl.UNSUP_CLUSTER_COMMAND),
                (C2S, zcl.CMD_IMAGE_NOTIFY, b"\x00\x64", None, zcl.UNSUP_CLUSTER_COMMAND),
                (zcl.FC_GLOBAL, 0x05, b"", None, zcl.UNSUP_GENERAL_COMMAND),
                (C2S_MFR, 0xF5, b"", MFR, zcl.UNSUP_MANUF_CLUSTER_COMMAND),
                (C2S, zcl.CMD_QUERY_NEXT_IMAGE, b"\x00\x34\x12", None, zcl.MALFORMED_COMMAND),
                (C2S, zcl.CMD_IMAGE_BLOCK, bytes(15), None, zcl.MALFORMED_COMMAND),
                (C2S, zcl.CMD_UPGRADE_END, bytes(10), None, zcl.MALFORMED_COMMAND),
                (C2S_MFR, zcl.CMD_ACTIVATION_ALERT, bytes(13), MFR, zcl.MALFORMED_COMMAND),
            ]
            for fc, cmd_id, payload, mfr, status in cases:
                cmd, rsp = await dev.request(fc, cmd_id, payload, mfr)
                assert (cmd, rsp) == (zcl.GLOBAL_DEFAULT_RESPONSE, (cmd_id, status)), hex(cmd_id)
            cmd, rsp = await dev.request(C2S, zcl.CMD_QUERY_SPECIFIC_FILE,
                                         zcl.pack_query_specific_file(dev.eui, MFR, 0x84, 1, 2))
            assert (cmd, rsp.status) == (zcl.CMD_QUERY_SPECIFIC_FILE_RESPONSE,
                                         zcl.NO_IMAGE_AVAILABLE)
            dev.close()
    run(main())


# ---------------------------------------------------------------- link

def test_join_services_and_refusals():
    async def main():
        policy = Policy()
        async with serving(policy) as (server, addr):
            devs = {}
            for n, role in ((20, "althan"), (21, "ppmid")):
                policy.install_codes[eui(n)] = install_code(n)
                devs[n] = FakeDevice(eui(n), install_code(n), role=role, timeout=0.3,
                                     retries=3)
                await devs[n].open_udp(addr)
            althan, ppmid = devs[20], devs[21]
            # the answer is authenticated with the device's key (the fake checks the MAC)
            assert await althan.join(hlink.SERVICE_ORDINARY) == hlink.JOIN_ALT_HAN_REFUSED
            assert await ppmid.join(hlink.SERVICE_ALT_HAN_P2P) == hlink.JOIN_SERVICE_REFUSED
            assert server.devices[althan.eui].joined is False
            # a refused device gets no OTA service: its frames are dropped
            althan.hub, althan.retries = HUB, 0
            with pytest.raises(TimeoutError):
                await althan.query()
            althan.retries = 3
            assert server.stats["not-joined"] >= 1
            policy.p2p_available = False  # e.g. after a Trust Centre Swap-Out
            assert await althan.join(hlink.SERVICE_ALT_HAN_P2P) == hlink.JOIN_P2P_UNAVAILABLE
            policy.p2p_available = True
            assert await althan.join(hlink.SERVICE_ALT_HAN_P2P) == hlink.JOIN_OK
            assert (await althan.query()).status == zcl.NO_IMAGE_AVAILABLE
            # a device the hub has no install code for gets no answer at all
            stranger = FakeDevice(eui(22), install_code(22), timeout=0.2, retries=0)
            await stranger.open_udp(addr)
            with pytest.raises(TimeoutError):
                await stranger.join()
            assert server.stats["unknown-sender"] == 1
            assert events(policy, "joined") == [("joined", althan.eui, "althan", 1)]
            for d in (althan, ppmid, stranger):
                d.close()
    run(main())


def test_bad_frames_are_dropped_and_counted_while_a_transfer_completes(make_image):
    img = make_image(size=20000)

    async def main():
        policy = Policy(images=[img])
        async with serving(policy) as (server, addr):
            dev = await joined(policy, addr, 23)
            avail = await dev.query()
            good = dev.frame(hlink.KIND_DATA, zcl.pack_header(C2S, 1, zcl.CMD_QUERY_NEXT_IMAGE)
                             + zcl.pack_query_next_image(MFR, 0x84, 1))
            rogue = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            stranger = FakeDevice(eui(24), install_code(24), hub=HUB)
            forged = bytearray(dev.frame(hlink.KIND_DATA, b"\x01\x02\x01", counter=1 << 30))
            forged[-1] ^= 0x40
            wrong_key = hlink.pack(hlink.Mac(b"k" * 16), hlink.KIND_DATA, dev.eui, HUB,
                                   1 << 30, 0x19, b"\x01\x02\x01")
            attacks = {
                "short": [b"", b"\x00" * 10, good[:30]],
                "long": [good + bytes(400)],
                "bad-mac": [bytes(forged), wrong_key, good[:-9] + good[-8:]],
                "replay": [good],  # the device has sent newer frames since
                "unknown-sender": [stranger.frame(hlink.KIND_DATA, b"\x01\x02\x01")],
                "kind": [bytes([9]) + good[1:]],
            }
            # paced pages (2 ms apart, ~0.6 s in all) so the attacks land mid-transfer
            task = asyncio.create_task(dev.download(avail, pages=True, page_size=2048,
                                                    spacing_ms=2))
            await until(lambda: dev.block_sizes)
            for frames in attacks.values():
                for f in frames:
                    rogue.sendto(f, addr)
            # the device's own replay (same frame again from its address) is dropped too
            dev.send_raw(good)
            await task
            rogue.close()
            assert bytes(dev.image) == file_bytes(img)
            assert (await dev.upgrade_end())[0] == zcl.CMD_UPGRADE_END_RESPONSE
            expect = {reason: len(frames) for reason, frames in attacks.items()}
            expect["replay"] += 1
            assert {r: server.stats[r] for r in expect} == expect
            assert server.stats["dropped"] == sum(expect.values())
            assert len(events(policy, "bad_frame")) == sum(expect.values())
            assert server.devices[dev.eui].addr == dev.link.local  # not hijacked
            dev.close()
    run(main())


def test_stall_and_post_activation_timeouts_are_distinct_events(make_image):
    img = make_image(size=3000)
    now = [1_700_000_000.0]

    async def main():
        policy = Policy(images=[img])
        async with serving(policy, stall_timeout=30, activation_timeout=300,
                           watch_interval=0.02, clock=lambda: now[0]) as (server, addr):
            dev = await joined(policy, addr, 25)
            quiet = await joined(policy, addr, 26)
            avail = await dev.query()
            await quiet.query()
            await dev.download(avail, stop_at=1000)
            now[0] += 29
            await asyncio.sleep(0.1)
            assert events(policy, "stall") == []
            now[0] += 2
            await until(lambda: events(policy, "stall"))
            assert events(policy, "stall") == [("stall", dev.eui, img, 1000)]
            assert server.transfers[dev.eui].state == "stalled" and not server.in_flight
            # it comes back: the same transfer carries on
            await dev.download(avail)
            assert server.transfers[dev.eui].state == "downloading"
            await dev.upgrade_end()  # activate now; an alert is due within 300 s
            await quiet.download(avail)
            await quiet.upgrade_end()
            now[0] += 200
            await dev.alert(2, 1)  # dev reports in time, quiet never does
            now[0] += 101
            await until(lambda: events(policy, "activation_timeout"))
            await asyncio.sleep(0.1)
            assert events(policy, "activation_timeout") == [
                ("activation_timeout", quiet.eui, img)]
            assert events(policy, "stall") == [("stall", dev.eui, img, 1000)]
            assert server.transfers[quiet.eui].state == "complete"
            dev.close()
            quiet.close()
    run(main())


def test_hub_counter_is_reserved_ahead_and_commands_need_a_route():
    async def main():
        policy = Policy(install_codes={eui(27): install_code(27)})
        policy.counter = 5000
        async with serving(policy) as (server, addr):
            with pytest.raises(ServerError) as ei:
                await server.read_attributes(eui(27), [2])
            assert ei.value.reason == "no-route"
            dev = FakeDevice(eui(27), install_code(27))
            await dev.open_udp(addr)
            await dev.join()
            assert dev.hub_floor == 5000  # the join response used the first counter
            baseline = await dev.hello()
            assert baseline == 5001 and policy.counter > baseline
            dev.close()
    run(main())


def test_open_image_files_are_bounded_and_closed_when_idle(tmp_path):
    """The server reads images through an LRU of descriptors: at most `limit` open, and one
    not read for `idle` seconds is closed (the watchdog's close_idle), so a server whose
    transfers ended holds none; a closed file is opened again on the next read."""
    from hanota.server.blocks import Files

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    paths = []
    for k in range(3):
        p = tmp_path / ("img%d" % k)
        p.write_bytes(bytes([k]) * 100)
        paths.append(str(p))
    files = Files(limit=2, idle=60.0)
    before = fds()
    assert [files.read(p, 10, 2) for p in paths] == [b"\0\0", b"\1\1", b"\2\2"]
    assert len(files) == 2 and fds() == before + 2  # img0 was closed for img2
    files._used[paths[1]] -= 120  # img1 last read two minutes ago
    assert files.close_idle() == 1 and len(files) == 1 and fds() == before + 1
    assert files.close_idle() == 0  # img2 was read just now
    assert files.close_idle(now=time.monotonic() + 61) == 1 and len(files) == 0
    assert fds() == before
    assert files.read(paths[1], 99, 5) == b"\1"  # opened again; a short read at the end
    files.close()
    assert fds() == before
