# Device cost on the MicroPython unix port, one job per run (bench/device.py drives it):
#   micropython devcost.py sha
#   micropython devcost.py p256 ROUNDS
#   micropython devcost.py stream WORKDIR OTAFILE CHUNK
#   micropython devcost.py download WORKDIR OTAFILE PUBHEX MAX_DATA PAGE_SIZE TRACK LEAVE
#   micropython devcost.py resume WORKDIR OTAFILE PUBHEX MAX_DATA PAGE_SIZE CUT_AFTER_FRAMES
# Each prints one JSON line. `download` runs the real OTA client (hanfw.client) with
# app banks (hanfw.banks, hanfw.bootctl) on a file-backed flash, fed by a minimal hub
# in this process; TRACK=1 samples the live heap (gc.collect + mem_alloc) at every frame;
# LEAVE > 0 leaves only that many bytes of heap free for the client (see download()).
# mpykit (tests/device/mpy/mpykit.py, shared with the device tests' scripts) is compiled beside
# it by bench/device.py.
import gc
import sys
import json
import time
import hashlib
import binascii

from mpykit import HUB_EUI, SECTOR, BlockDev, Role, client_config, install_code


def ms_since(t0):
    return time.ticks_diff(time.ticks_us(), t0) / 1000


def sha():
    # hashlib.sha256 over 1 MiB in 4 KiB updates (a flash sector) and 64-byte updates (a block)
    out = {}
    for chunk in (4096, 64):
        buf = bytes(chunk)
        h = hashlib.sha256()
        t0 = time.ticks_us()
        for _ in range((1 << 20) // chunk):
            h.update(buf)
        h.digest()
        out["sha256_%d_mb_s" % chunk] = (1 << 20) / 1e6 / (ms_since(t0) / 1000)
    return out


def p256(rounds):
    # The known-answer vector of bench/p256_bench.py
    from hanfw import p256 as p

    pub = binascii.unhexlify(
        "0471c5dac424730f426de4214662f0d5cf46e12796d190470cb44f60defda470cc"
        "29d478625d05a90ab9585d3ed8e06fdf76f007890df3c2e235fefd5025084c70"
    )
    digest = binascii.unhexlify("1000f67013503e3d4c6a1ad410bb7dab7e9d1b26b12fbc6c514c161aa2342f1c")
    sig = binascii.unhexlify(
        "740924c95ff8e73f186a099c8dae6757230fe9616465cb935c7ccaa7169a8fd6"
        "7918265d4515126c3877c0bdd049960d781f058f5b7ad0a6a651b4977c1fe3e9"
    )
    assert p.verify(pub, digest, sig)
    times = []
    for _ in range(rounds):
        gc.collect()
        t0 = time.ticks_us()
        ok = p.verify(pub, digest, sig)
        times.append(ms_since(t0))
        assert ok
    return {"p256_ms": times}


class FileDev(BlockDev):
    # A block device over part of a file (from block `first`); counts erases and writes.
    ff = b"\xff" * SECTOR

    def __init__(self, f, first, nblocks, counts):
        BlockDev.__init__(self, nblocks)
        self.f, self.base, self.counts = f, first * SECTOR, counts

    def _read(self, a, buf):
        self.f.seek(self.base + a)
        self.f.readinto(buf)

    def _write(self, a, buf):
        self.f.seek(self.base + a)
        self.f.write(buf)
        self.counts[1] += 1

    def _erase(self, n):
        self.f.seek(self.base + n * SECTOR)
        self.f.write(self.ff)
        self.counts[0] += 1


class MiniHub:
    # Just enough of the hub for one download: HELLO_ACK, Query Next Image, blocks and pages.
    def __init__(self, path, install_code, hub_eui, dev_eui):
        from hanfw import link, otafile

        self.link = link
        self.f = open(path, "rb")
        self.f.seek(0, 2)
        self.size = self.f.tell()
        self.f.seek(0)
        h = otafile.Header.parse(self.f.read(69))
        self.ident = (h.manufacturer, h.image_type, h.file_version)
        self.mac = link.Mac(link.link_key(install_code))
        self.eui, self.dev = hub_eui, dev_eui
        self.ctr = 1
        self.out = []
        self.page = None  # [tsn, offset, end, step]
        self.result = None
        self.frames = 0

    def _send(self, kind, cluster, payload):
        self.out.append(
            self.link.pack(self.mac, kind, self.eui, self.dev, self.ctr, cluster, payload)
        )
        self.ctr += 1

    def _block(self, tsn, offset, n):
        from hanfw import zcl

        self.f.seek(offset)
        data = self.f.read(n)
        self._send(
            0,
            zcl.CLUSTER_OTA,
            zcl.pack_header(0x19, tsn, zcl.CMD_IMAGE_BLOCK_RESPONSE)
            + zcl.pack_block_response(self.ident[0], self.ident[1], self.ident[2], offset, data),
        )

    # the device's transport: send() delivers to this hub, recv() returns the hub's next frame
    def send(self, frame):
        from hanfw import zcl

        link = self.link
        kind, src, dst, ctr, cluster, payload = link.unpack(frame, lambda s: self.mac)
        if kind == link.KIND_HELLO:
            nonce, _ = link.parse_hello(bytes(payload))
            self._send(link.KIND_HELLO_ACK, 0, link.pack_hello(nonce, self.ctr))
            return
        payload = bytes(payload)
        fc, mfr, tsn, cmd, off = zcl.parse_header(payload)
        if cmd == zcl.CMD_QUERY_NEXT_IMAGE:
            self._send(
                0,
                zcl.CLUSTER_OTA,
                zcl.pack_header(0x19, tsn, zcl.CMD_QUERY_NEXT_IMAGE_RESPONSE)
                + zcl.pack_image_available(
                    zcl.SUCCESS, self.ident[0], self.ident[1], self.ident[2], self.size
                ),
            )
        elif cmd == zcl.CMD_IMAGE_BLOCK:
            r = zcl.parse_block_request(payload, off)
            self._block(tsn, r.file_offset, min(r.max_data_size, self.size - r.file_offset))
        elif cmd == zcl.CMD_IMAGE_PAGE:
            r = zcl.parse_page_request(payload, off)
            self.page = [
                tsn,
                r.file_offset,
                min(self.size, r.file_offset + r.page_size),
                r.max_data_size,
            ]
        elif cmd == zcl.CMD_UPGRADE_END:
            self.result = zcl.parse_upgrade_end(payload, off).status

    def recv(self, timeout_ms):
        if not self.out and self.page:
            tsn, o, end, step = self.page
            n = min(step, end - o)
            self._block(tsn, o, n)
            self.page = None if o + n >= end else [tsn, o + n, end, step]
        if self.out:
            self.frames += 1
            return self.out.pop(0)
        return None


BANK_BLOCKS = (1 << 20) // SECTOR + 16  # a bank holds a 1 MiB image and then some


def harness(work, path, fresh=True):
    # a file-backed flash (boot control + two banks) and the stand-in hub: not the device's heap
    ic = install_code()
    counts = [0, 0]  # erases, writes
    fl = open(work + "/flash.bin", "w+b" if fresh else "r+b")
    if fresh:
        fl.seek((2 + 2 * BANK_BLOCKS) * SECTOR - 1)
        fl.write(b"\xff")
    devs = [(FileDev(fl, 2 + i * BANK_BLOCKS, BANK_BLOCKS, counts), BANK_BLOCKS) for i in (0, 1)]
    eui = b"\x01\x00\x00\x00\x00\x61\x68\x02"
    hub = MiniHub(path, ic, bytes(reversed(binascii.unhexlify(HUB_EUI))), eui)
    return ic, counts, FileDev(fl, 0, 2, counts), devs, hub


def largest_block():
    # the largest block that can be allocated now (the free heap may be in pieces)
    lo, hi = 0, gc.mem_free()
    while hi - lo > 16:
        mid = (lo + hi) // 2
        try:
            b = bytearray(mid)
            del b
            lo = mid
        except MemoryError:
            hi = mid
    gc.collect()
    return lo


def note_errors(errors):
    # The client maps any exception to a rejection reason: keep the exception itself too.
    from hanfw import client, banks, otafile, p256

    def noted(where, method):
        def wrapper(*a):
            try:
                return method(*a)
            except Exception as e:
                errors.append("%s in %s: %s" % (type(e).__name__, where, e))
                raise

        return wrapper

    client.OtaClient._take = noted("receiving a block", client.OtaClient._take)
    banks.BankWriter.flush = noted("flushing the bank", banks.BankWriter.flush)
    banks.AppBanks.target_sha256 = noted("reading the bank back", banks.AppBanks.target_sha256)
    otafile.OtaStream.finish = noted("finishing the stream", otafile.OtaStream.finish)
    p256.verify = noted("verifying the signature", p256.verify)


def make_client(work, pub_hex, ic, ctl_dev, devs, hub, max_data, page_size, log, fresh=True):
    # the device side, as hal.py and app.py would assemble it on an app-bank board
    from hanfw import client, state, banks, bootctl

    ctl = bootctl.BootControl(ctl_dev)
    st = state.State(work + "/ota.json")
    if fresh:
        ctl.initialise(1, 0, 0, bytes(32))
        st.update(hub=HUB_EUI, dl=None, held=None)
    cfg = client_config(pub_hex, ic, max_data=max_data, page_size=page_size)
    return client.OtaClient(
        cfg, hub, banks.AppBanks(devs, ctl, st), st, Role(), lambda: None, log.append
    )


def drive(c, hub, track=False, stop=None):
    # session, query, then frames until the hub has an Upgrade End (or `stop` frames, a power cut);
    # returns the peak of gc.mem_alloc() sampled after a collection at every frame (track)
    peak = gc.mem_alloc()
    c.start()
    while not c.session:
        c.poll(0)
    c._query()
    while hub.result is None and (stop is None or hub.frames < stop):
        c.poll(0)
        if track:
            gc.collect()
            peak = max(peak, gc.mem_alloc())
        if hub.page is None and not hub.out and c.dl is None and c.pending is None:
            break  # rejected: nothing more will happen
    return peak


def download(work, path, pub_hex, max_data, page_size, track, leave):
    # The real OTA client downloads and verifies the image at path. With leave > 0, a ballast
    # takes all the heap but `leave` bytes once the code is loaded (a board keeps its code in
    # flash), so the client's data must fit in `leave`.
    from hanfw import client, config, state, banks, bootctl, otafile, p256  # noqa: F401

    gc.collect()
    code = gc.mem_alloc()
    ic, counts, ctl_dev, devs, hub = harness(work, path)
    errors, log = [], []
    note_errors(errors)
    gc.collect()
    ballast = bytearray(max(0, gc.mem_free() - leave - 32)) if leave else None  # noqa: F841
    gc.collect()
    base, free, largest = gc.mem_alloc(), gc.mem_free(), largest_block()
    t0 = time.ticks_us()
    c = make_client(work, pub_hex, ic, ctl_dev, devs, hub, max_data, page_size, log)
    peak = drive(c, hub, track)
    return {
        "status": hub.result,
        "ms": ms_since(t0),
        "frames": hub.frames,
        "code": code,
        "free": free,
        "largest": largest,
        "peak_data": peak - base,
        "erases": counts[0],
        "writes": counts[1],
        "log": log[-2:],
        "errors": errors[:2],
    }


def resume(work, path, pub_hex, max_data, page_size, cut):
    # A download cut (the power fails) after `cut` frames, then resumed by a new client over the
    # same flash and state, as after a reboot.
    errors, log = [], []
    note_errors(errors)
    ic, _, ctl_dev, devs, hub = harness(work, path)
    drive(
        make_client(work, pub_hex, ic, ctl_dev, devs, hub, max_data, page_size, log), hub, stop=cut
    )
    ic, _, ctl_dev, devs, hub = harness(work, path, fresh=False)
    c = make_client(work, pub_hex, ic, ctl_dev, devs, hub, max_data, page_size, log, fresh=False)
    try:
        drive(c, hub)
    except Exception as e:
        errors.append("%s: %s" % (type(e).__name__, e))
    return {"status": hub.result, "log": log[-3:], "errors": errors[:2]}


def stream(work, path, chunk):
    # OtaStream fed chunk by chunk into a bank (BankWriter), as the client does with each block:
    # parse + SHA-256 of the signed bytes + SHA-256 of the image + bank writes; then the readback.
    from hanfw import otafile, banks

    _, counts, _, devs, _ = harness(work, path)
    dev, n = devs[1]
    w = banks.BankWriter(dev, n)
    s = otafile.OtaStream(integrity=False, sink=w.write)
    buf = bytearray(chunk)
    mv = memoryview(buf)
    f = open(path, "rb")
    t0 = time.ticks_us()
    while True:
        k = f.readinto(buf)
        if not k:
            break
        s.feed(mv[:k])
    w.flush()
    s.finish()
    ms = ms_since(t0)
    t0 = time.ticks_us()
    ok = banks.region_sha256(dev, s.image_length) == s.descriptor.image_hash
    return {"bytes": s.received, "ms": ms, "readback_ms": ms_since(t0), "readback_ok": ok}


def main():
    job = sys.argv[1]
    if job == "sha":
        out = sha()
    elif job == "p256":
        out = p256(int(sys.argv[2]))
    elif job == "stream":
        out = stream(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif job == "resume":
        a = sys.argv[2:]
        out = resume(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]))
    else:
        a = sys.argv[2:]
        out = download(a[0], a[1], a[2], int(a[3]), int(a[4]), a[5] == "1", int(a[6]))
    print(json.dumps(out))


main()
