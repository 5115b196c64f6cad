# What the scripts that run the real OTA client off the board share (loss_check.py,
# stall_check.py, bench/mpy/devcost.py; tests/support/ramflash.py under CPython): the block
# device protocol, a role that does nothing, the device's install code and configuration, a
# virtual clock, and the plain part of a stand-in hub. MicroPython first (the unix port runs
# it, on MICROPYPATH beside the scripts); it imports under CPython too. hanfw modules are
# imported where they are used, so that importing this costs a script's heap little.
import binascii

SECTOR = 4096
HUB_EUI = "0100a0b0c0d0e0f0"
DEV_EUI = "02:68:61:00:00:00:00:01"


class BlockDev:
    # The block protocol hanfw.banks and hanfw.bootctl use, as MicroPython's extended block
    # devices have it: 4 KiB blocks; writeblocks without an offset erases the blocks first;
    # ioctl 4 (count), 5 (size), 6 (erase = 0xFF). A subclass keeps the bytes: _read(addr,
    # buf), _write(addr, buf), _erase(block).
    def __init__(self, nblocks):
        self.n = nblocks

    def readblocks(self, n, buf, off=0):
        self._read(n * SECTOR + off, buf)

    def writeblocks(self, n, buf, off=None):
        if off is None:
            for i in range((len(buf) + SECTOR - 1) // SECTOR):
                self.ioctl(6, n + i)
            off = 0
        self._write(n * SECTOR + off, buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return SECTOR
        if op == 6:
            self._erase(arg)
        return 0


class RamDev(BlockDev):
    # a block device in RAM
    def __init__(self, nblocks):
        BlockDev.__init__(self, nblocks)
        self.mem = bytearray(b"\xff" * (nblocks * SECTOR))

    def _read(self, a, buf):
        buf[:] = self.mem[a:a + len(buf)]

    def _write(self, a, buf):
        self.mem[a:a + len(buf)] = buf

    def _erase(self, n):
        self.mem[n * SECTOR:(n + 1) * SECTOR] = b"\xff" * SECTOR


class Role:
    # a role with no link traffic of its own, activating at the time the hub gives (a PPMID)
    activation = "time"
    join_service = 0

    def on_link_up(self):
        pass

    def on_frame(self, cluster, payload, client):
        pass


def install_code():
    # the device's install code (with its CRC) as config.py takes it: hex
    from hanfw.link import install_code_with_crc

    return binascii.hexlify(install_code_with_crc(b"\x11\x22\x33\x44\x55\x66\x77\x88")).decode()


def client_config(pub_hex, ic, **kw):
    # a PPMID's hanfw.config pinning pub_hex, with kw over the defaults (max_data, page_size, ...)
    from hanfw import config

    d = {"eui64": DEV_EUI, "role": "ppmid", "manufacturer": 0x1234, "hw_version": 0x0100,
         "keys": [pub_hex], "install_code": ic, "query_interval": 3600}
    d.update(kw)
    return config.from_dict(d)


NOW = [0]  # virtual ms, once virtual_time() has made it the client's clock


def virtual_time(client):
    # the client's clock becomes virtual milliseconds: NOW[0] (the module's tick source is
    # looked up at each call); returns NOW for the script to move
    def ticks():
        return int(NOW[0])

    def diff(a, b):
        return a - b

    client._ticks = ticks
    client._diff = diff
    return NOW


class Hub:
    # The plain part of a stand-in hub: its MAC (the link key from the install code), its EUI,
    # its frame counter, the OTA file it offers (whole, in RAM), Image Notify; take(frame)
    # answers a HELLO, a Query Next Image and an Upgrade End ("wait": the device holds the
    # image), each unless answer(what) says no, and hands the other OTA commands to
    # on_ota(tsn, cmd, payload, off). A subclass says where a frame goes: put(frame).
    def __init__(self, path, install_code):
        from hanfw import link

        self.unpack = link.unpack  # the hub's own: untouched by faults injected into the client's
        self.mac = link.Mac(link.link_key(install_code))
        self.eui = bytes(reversed(binascii.unhexlify(HUB_EUI)))
        self.dev = None
        self.ctr = 1
        self.ends = []  # (virtual ms, status, version) of each Upgrade End
        self.offer(path)

    def offer(self, path):
        from hanfw import otafile

        with open(path, "rb") as f:
            self.data = f.read()
        h = otafile.Header.parse(self.data[:69])
        self.ident = (h.manufacturer, h.image_type, h.file_version)

    def _send(self, kind, cluster, payload):
        from hanfw import link

        self.put(link.pack(self.mac, kind, self.eui, self.dev, self.ctr, cluster, payload))
        self.ctr += 1

    def _zcl(self, tsn, cmd, payload):
        from hanfw import link, zcl

        self._send(link.KIND_DATA, zcl.CLUSTER_OTA, zcl.pack_header(0x19, tsn, cmd) + payload)

    def notify(self):
        from hanfw import zcl

        self._zcl(0, zcl.CMD_IMAGE_NOTIFY, zcl.pack_image_notify(0, 100))

    def answer(self, what):
        # "hello", "query-answer", "end-answer": whether this one is answered (or lost)
        return True

    def ended(self, end):
        # an Upgrade End came (recorded in self.ends), before its answer
        pass

    def on_ota(self, tsn, cmd, payload, off):
        pass

    def take(self, frame):
        from hanfw import link, zcl

        kind, src, dst, ctr, cluster, payload = self.unpack(frame, lambda s: self.mac)
        self.dev = src
        if kind == link.KIND_HELLO:
            if self.answer("hello"):
                nonce, _ = link.parse_hello(bytes(payload))
                self._send(link.KIND_HELLO_ACK, 0, link.pack_hello(nonce, self.ctr))
            return
        if cluster != zcl.CLUSTER_OTA:
            return
        payload = bytes(payload)
        fc, mfr, tsn, cmd, off = zcl.parse_header(payload)
        m, t, v = self.ident
        if cmd == zcl.CMD_QUERY_NEXT_IMAGE:
            if self.answer("query-answer"):
                self._zcl(tsn, zcl.CMD_QUERY_NEXT_IMAGE_RESPONSE,
                          zcl.pack_image_available(zcl.SUCCESS, m, t, v, len(self.data)))
        elif cmd == zcl.CMD_UPGRADE_END:
            e = zcl.parse_upgrade_end(payload, off)
            self.ends.append((NOW[0], e.status, e.file_version))
            self.ended(e)
            if self.answer("end-answer"):
                self._zcl(tsn, zcl.CMD_UPGRADE_END_RESPONSE,
                          zcl.pack_upgrade_end_response(m, t, v, 0, zcl.UPGRADE_TIME_WAIT))
        else:
            self.on_ota(tsn, cmd, payload, off)
