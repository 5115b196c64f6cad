# hanota device: one download in progress, and its resume point on flash.
# The OTA client (client.py) owns the protocol; this holds where the transfer
# stands (offset, header bytes, the hashing stream, the bank writer), builds the
# next request, and writes/reads the resume record kept in the state file
# under "dl": {"id": [m, t, v], "size", "head": hex, "poff", "dur"}, and for a compressed or
# delta file "seg": [file offset of the next segment, its SHA-256 hex, target bytes before
# it (= dur), segments before it]. That record is read back after a power cut: keep its
# format (a record without "seg" is a full image's, as before).

from hanfw import zcl, otafile, reasons
from hanfw.rtt import Rtt

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_HEAD_MAX = const(69 + 6 + 116 + 6)  # header + descriptor element (v2) + image element header
_NONE = bytearray(0)  # no reorder buffer


def qualify(cfg, banks, mfr, itype, version, size):
    # Query Next Image Response: why this offer is refused before any byte is asked for, or None
    if mfr != cfg.manufacturer:
        return "wrong-manufacturer"
    if itype != cfg.image_type:
        return "wrong-image-type"
    if version <= banks.running_version():
        return "version-not-newer"
    if size > banks.bank_size() + _HEAD_MAX + otafile.SIGNATURE_ELEMENT_LEN:
        return "too-big"
    return None


def fail_reason(reason):
    # an OtaError's reason as a rejection reason the hub knows (reasons.py)
    if reason in reasons.REASONS:
        return reason
    if reason in ("truncated", "truncated-header"):
        return "truncated"
    if reason in ("bad-descriptor",):
        return "bad-descriptor"
    return "malformed"


def running_dev(banks):
    # the running bank's block device: a delta's base
    if banks.kind == "firmware":
        return banks.running
    return banks.devs[banks.record().active][0]


def resumable(saved, ident, size):
    # a resume record from an earlier boot fits only the same file (id and size)
    return bool(saved) and saved.get("id") == list(ident) and saved.get("size") == size


class Download:
    # Plain attributes (MicroPython ignores __slots__). The client makes one at boot and
    # reuses it for every transfer: MicroPython grows an instance's attribute table one
    # rehash at a time, each leaving a hole, and holes made while a download starts
    # cost a 64 KiB board the 4.4 KiB it needs for each bundled page.
    def __init__(self, timeout_ms=1500):
        # the link's round trip, kept from one transfer to the next: to a page's first block
        # (on a bundled link that is a whole long frame's time) and to a single block
        self.rtt = Rtt(timeout_ms)
        self.rtt1 = Rtt(timeout_ms)
        # the reorder buffer of a page (blocks that came after a lost one), and one bit per
        # block in it: made once, on the first gap, and kept (see hold)
        self.hold = _NONE  # empty: none made yet
        self.flags = _NONE
        self.start(None, 0)

    def start(self, ident, size):
        # a new transfer (ident None: idle); every attribute is set here, always all of them
        self.id = ident  # (manufacturer, image type, file version)
        self.v = ident[2] if ident else 0
        self.size = size
        self.offset = 0  # the next file offset to ask for
        self.tries = 0  # unanswered requests at this offset
        self.head = bytearray()  # the file's bytes before the body (kept for the resume record)
        self.body = False  # True once the header qualified and the bank is being written
        self.poff = 0  # file offset of the first byte written to the bank
        self.stream = otafile.OtaStream(integrity=False, max_total=size) if ident else None
        self.writer = None
        self.dec = None  # hanfw.delta.Decoder of a compressed or delta file
        self.last_ckpt = 0  # bank bytes durable at the last resume record
        self.page_end = 0  # with Image Page Requests: blocks are awaited below this offset
        self.sent = 0  # tick the last request went out
        self.timing = None  # its estimator (rtt or rtt1) while its first answer is awaited
        self.wait = self.rtt1  # the estimator of what is awaited (a page, or single blocks)
        self.last_rx = 0  # tick the last block of the page came
        f = self.flags  # an earlier transfer's held blocks (a download cut short) are gone
        for i in range(len(f)):
            f[i] = 0
        self.hbase = 0  # file offset of hold[0]
        self.step = 0  # the page's block length
        self.held = 0  # blocks in the hold
        self.htop = 0  # file offset after the highest block held
        self.repair = False  # the page is over: its missing blocks were asked for one by one
        self.ask_top = 0  # just past the last block asked for (the page's repair)

    def resume(self, saved, banks):
        # continue from a resume record; one that does not fit (a torn or foreign record)
        # starts the transfer over rather than stopping the client
        try:
            self._resume(saved, banks)
        except MemoryError:
            raise
        except Exception:
            self.start(self.id, self.size)

    def _resume(self, saved, banks):
        # rebuild the hashes from what the bank holds
        head = bytes.fromhex(saved["head"])
        s = self.stream
        s.feed(head)
        durable = saved["dur"]
        self.head = bytearray(head)
        self.body = True
        self.poff = saved["poff"]
        seg = saved.get("seg")
        if seg is not None:
            # encoded: on at the next segment, knowing its hash (the chain vouches for it)
            if seg[2] != durable:
                raise otafile.OtaError("malformed", "resume record: segment and bank disagree")
            s.resume_chain(seg[0], bytes.fromhex(seg[1]), seg[2], seg[3])
            self.writer = banks.writer(durable)
            self._decoder(banks)
            self.offset = seg[0]
        else:
            banks.feed_target(durable, s.feed)
            self.writer = banks.writer(durable)
            s.sink = self.writer.write
            self.offset = saved["poff"] + durable
        self.last_ckpt = durable

    def _decoder(self, banks):
        # a compressed or delta body goes through the decoder (loaded only for such files)
        from hanfw import delta
        s = self.stream
        d = s.descriptor
        self.dec = delta.Decoder(d, self.writer.write,
                                 running_dev(banks) if d.encoding == otafile.ENC_DELTA else None)
        s.sink = self.dec.data
        s.seg_end = self.dec.end

    def base_reason(self, banks):
        # a delta whose base is not the running image: "wrong-base", before any download
        d = self.stream.descriptor
        if d is None or d.encoding != otafile.ENC_DELTA:
            return None
        from hanfw import delta
        if d.base_size > banks.bank_size() or \
                delta.base_sha256(running_dev(banks), d.base_size) != d.base_hash:
            return "wrong-base"
        return None

    def target_length(self):
        d = self.stream.descriptor
        return d.target_size if d.encoded else self.stream.image_length

    def open_body(self, banks):
        # the header qualified and the bank was begun: the body goes to the bank from here
        self.body = True
        self.poff = self.stream.received
        self.writer = banks.writer(0)
        if self.stream.descriptor.encoded:
            self._decoder(banks)
        else:
            self.stream.sink = self.writer.write

    def record(self):
        # the resume record for the state file (format fixed: see the top of this file)
        r = {"id": list(self.id), "size": self.size, "head": bytes(self.head).hex(),
             "poff": self.poff, "dur": self.writer.durable}
        s = self.stream
        if self.dec is not None and s.seg_expect is not None:
            r["seg"] = [s.seg_next, bytes(s.seg_expect).hex(), s.target_seen, s.segments]
        return r

    def request(self, cfg, min_period):
        # the next request as (command, payload): header bytes first, then blocks or pages
        m, t, v = self.id
        off = self.offset
        if not self.body:
            want = min(self.head_need(), cfg.max_data)
            return zcl.CMD_IMAGE_BLOCK, zcl.pack_block_request(m, t, v, off, want)
        if cfg.page_size:
            page = min(cfg.page_size, self.size - off)
            self.page_end = off + page
            return zcl.CMD_IMAGE_PAGE, zcl.pack_page_request(m, t, v, off, cfg.max_data, page, 0)
        return zcl.CMD_IMAGE_BLOCK, zcl.pack_block_request(
            m, t, v, off, cfg.max_data, min_block_period=min_period if min_period else None)

    # ---- blocks of a page that came after a lost one (selective repeat, no copy per block
    # beyond the one into the preallocated hold)
    def hold_block(self, off, data, size):
        # keep a block beyond the next one awaited (one before it was lost); False if it
        # cannot be kept (outside the page or the hold, or no hold of `size` bytes)
        n = len(data)
        if off <= self.offset or off + n > self.page_end or size <= 0:
            return False
        h = self.hold
        if len(h) < size:
            try:
                self.hold = self.flags = _NONE  # the old one goes before the new one is made
                h = self.hold = bytearray(size)
                self.flags = bytearray((size >> 6) + 1)  # one bit per block of 8 bytes or more
            except MemoryError:
                self.hold = self.flags = _NONE
                return False  # no room: the lost block's page is asked again from it
        if self.held == 0:
            self.hbase = self.offset
            self.htop = self.offset
        step = self.step
        if not step:
            if off + n == self.page_end:
                return False  # the page's last block may be short: not a block length
            step = self.step = n
        at = off - self.hbase
        i = at // step
        if at % step or at + n > size or step < 8 or (n != step and off + n != self.page_end) \
                or (i >> 3) >= len(self.flags):
            return False
        f = self.flags
        if f[i >> 3] & (1 << (i & 7)):
            return True  # already held
        h[at:at + n] = data
        f[i >> 3] |= 1 << (i & 7)
        self.held += 1
        if off + n > self.htop:
            self.htop = off + n
        return True

    def is_held(self, off):
        # whether the block at off is in the hold
        if not self.held or off < self.hbase or off >= self.htop:
            return False
        at = off - self.hbase
        i = at // self.step
        return not at % self.step and bool(self.flags[i >> 3] & (1 << (i & 7)))

    def unhold(self):
        # the held block at self.offset (a memoryview into the hold), taken out; or None
        off = self.offset
        if not self.is_held(off):
            return None
        at = off - self.hbase
        i = at // self.step
        self.flags[i >> 3] &= ~(1 << (i & 7)) & 0xFF
        self.held -= 1
        n = min(self.step, self.page_end - off)
        return memoryview(self.hold)[at:at + n]

    def drop_held(self):
        # forget what the hold has (a new page from the frontier supersedes it)
        if self.held:
            f = self.flags
            for i in range(len(f)):
                f[i] = 0
        self.held = 0
        self.repair = False

    def head_need(self):
        # bytes still needed before the body: to the end of the image element's header
        got = len(self.head)
        s = self.stream
        if s.header is None:
            return max(10, otafile.MAX_HEADER_LEN) - got if got < 10 else s._need - got
        hl = s.header.header_length
        dl = otafile.DESCRIPTOR_LEN
        if s.elements and s.elements[0][0] == otafile.TAG_DESCRIPTOR:
            dl = s.elements[0][1]  # version 2 is longer
        return max(1, hl + 6 + dl + 6 - got)

    def take(self, data, checkpoint):
        # one block in; True when a new resume record is due (every `checkpoint` bytes)
        s = self.stream
        n = len(data)
        if not self.body:
            self.head += data
            s.feed(data)
            self.offset += n
            return False
        if self.dec is not None:
            # encoded: a resume point only where a segment ended (the bank holds its target)
            before = s.segments
            s.feed(data)
            self.offset += n
            w = self.writer
            if s.segments != before and s.seg_expect is not None \
                    and w.durable - self.last_ckpt >= checkpoint:
                self.last_ckpt = w.durable
                return True
            return False
        s.feed(data)
        self.offset += n
        w = self.writer
        if w.durable - self.last_ckpt >= checkpoint:
            self.last_ckpt = w.durable
            return True
        return False

    def verify(self, keys, banks):
        # all of the file is in: flush, check the signature, and read the bank back
        s = self.stream
        self.writer.flush()
        s.finish()
        otafile.check_signed(s, keys)
        d = s.descriptor
        if banks.target_sha256(self.target_length()) != d.image_hash:
            if d.encoded:  # the decoded target is checked here, from the bank
                raise otafile.OtaError("payload-hash", "decoded image differs from the descriptor's hash")
            raise otafile.OtaError("readback", "bank contents differ from the image after writing")
