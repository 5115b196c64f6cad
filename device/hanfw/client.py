# hanota device: the OTA cluster client (zigbee_ota.md 2.5) over the hub link.
# Joins / opens a session, answers Image Notify and also polls Query Next Image
# on a timer, checks the header before the body, downloads with Image Block or
# Image Page Requests (WAIT_FOR_DATA and MinimumBlockPeriod honoured, the same
# offset retried with bounded backoff), persists its resume point, streams into
# the inactive bank while hashing, verifies everything, then sends Upgrade End
# and activates when the hub says (or on Activate Image for hcalcs).

import os

from hanfw import link, zcl, otafile, reasons, imagecheck, clock
from hanfw.clock import ticks as _ticks, diff as _diff
from hanfw.download import Download, resumable, qualify, fail_reason

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_C2S = const(0x01)  # cluster-specific, client to server
_C2S_NODR = const(0x11)  # ... default response disabled
_GLOBAL_NODR = const(0x10)
_TIME_TRUSTED = const(0x03)  # TimeStatus Master or Synchronized: a clock to sync to
_UTC_INVALID = const(0xFFFFFFFF)
_NO_VERSION = const(0xFFFFFFFF)
# Silence from the hub this long after a query (or after running out of heap) means ask
# again: every state that waits for the hub has a timer (see _watchdog)
_RETRY_MS = const(5000)
_OOM_RESET = const(10)  # MemoryErrors in a row with no frame handled between: reset the board
_HOLE_ASKS = const(16)  # Image Block Requests at once for the missing blocks of a page


# UTC from the hub (Time cluster) is hanfw.clock, for every future-dated decision; clock.due
# is the hub's UTC at which the pending image activates (None: when the timer fires). Not
# client attributes: one more regrows its instance dict (29 slots, full) to 53, and a
# 64 KiB heap has not those bytes to spare in one piece.
class OtaClient:
    def __init__(self, cfg, transport, banks, state, role, reset, log=print):
        self.cfg = cfg
        self.t = transport
        self.banks = banks
        self.state = state
        self.role = role
        self.reset = reset
        self.log = log
        self.mac = link.Mac(link.link_key(cfg.install_code))
        # the longest frame taken: above MAX_FRAME, HELLO asks the hub for bundles
        limit = getattr(transport, "rx_frame", link.MAX_FRAME)
        if not cfg.page_size:
            limit = link.MAX_FRAME  # block requests: one block per frame, no bundles to ask for
        self.rx_frame = max(link.MAX_FRAME, min(cfg.link_frame or limit, limit))
        if hasattr(transport, "rx_frame"):
            transport.rx_frame = self.rx_frame  # its receive buffer holds what the hub sends
        self.eui = cfg.eui64
        hub = state.get("hub")
        self.hub = bytes(reversed(bytes.fromhex(hub))) if hub else None
        self.session = False
        self.hub_floor = None
        self.nonce = None
        self.link_tries = 0
        reserved = state.get("ctr", 1)
        self.counter = reserved
        self._reserve(reserved)
        self.tsn = 0
        self.status = zcl.UPGRADE_NORMAL
        self.rejection = 0
        self.min_period = 0
        # made once, reused by every transfer (see download.py); it keeps the link's round trip
        self._download = Download(cfg.block_timeout_ms)
        self.dl = None  # self._download while a transfer is in progress, else None
        self.pending = None  # (manufacturer, image type, version) waiting for activation
        self.timers = {}  # timer name -> due tick (ms); tick runs the timer's handler
        self.queries = 0
        self.unanswered = 0  # queries sent since the hub last said anything
        self.blocks = 0
        # "oom": MemoryErrors since the last frame handled (see _starved); a stats entry, not
        # an attribute: a 30th attribute would regrow the instance's 29-slot table to 53
        self.stats = {"rejected": 0, "bad-frames": 0, "oom": 0}
        if state.get("held"):
            h = state.get("held")
            self.pending = (cfg.manufacturer, cfg.image_type, h["version"])
            self.status = zcl.UPGRADE_WAITING_EXTERNAL if role.activation == "command" else zcl.UPGRADE_WAITING_TO_UPGRADE
            if state.get("dl"):
                state.update(dl=None)  # cut after staging: the download is complete

    # ------------------------------------------------------------ timers
    def _at(self, name, delay_ms):
        self.timers[name] = _ticks() + int(delay_ms)

    def _cancel(self, name):
        self.timers.pop(name, None)

    def next_timeout(self):
        now = _ticks()
        best = 1000
        for t in self.timers.values():
            best = min(best, max(0, _diff(t, now)))
        return best

    def tick(self):
        now = _ticks()
        due = [n for n, t in self.timers.items() if _diff(t, now) <= 0]
        for n in due:
            self.timers.pop(n, None)
            # what each timer runs: direct calls, not a table of bound methods, so no
            # heap is held for it (a 64 KiB board has none to spare while a page arrives)
            if n == "block":
                self._on_block()
            elif n == "next":  # MinimumBlockPeriod waited out
                self._request()
            elif n == "query":
                self._on_query()
            elif n == "answer":  # no Query Next Image Response: ask again
                self._query()
            elif n == "end":
                self._on_end()
            elif n == "link":
                self._on_link()
            elif n == "activate":  # the upgrade time the hub gave has come, by the hub's clock
                at = clock.due
                now = clock.now()
                if at is not None and (now is None or now < at):
                    # not yet, or no clock yet: wait (asking the hub again) rather than guess
                    if now is None:
                        self._read_time()
                    self._at("activate", 1000 if now is None else min((at - now) * 1000, 60000))
                else:
                    clock.due = None
                    self.activate_now()
            elif n == "gbcs":  # a future-dated GBCS CS06 (hanfw.activation)
                from hanfw import activation
                activation.on_timer(self)

    def poll(self, timeout_ms):
        # Out of heap anywhere in here (a fragmented heap on a 64 KiB board) must not stop
        # the client: it lets go of the download, keeps its resume point and carries on
        try:
            frame = self.t.recv(min(timeout_ms, self.next_timeout()))
            if frame is not None:
                self.on_frame(frame)
                self.stats["oom"] = 0
            self.tick()
        except MemoryError:
            self._starved()
        self._watchdog()

    def _starved(self):
        import gc
        gc.collect()
        st = self.stats
        st["oom"] += 1
        if st["oom"] >= 3 and self.rx_frame > link.MAX_FRAME:
            # no room for a whole bundle (the transport takes rx_frame bytes per datagram):
            # ask the hub for frames half as long, by a new HELLO
            self.rx_frame = max(link.MAX_FRAME, self.rx_frame // 2)
            if hasattr(self.t, "rx_frame"):
                self.t.rx_frame = self.rx_frame
            st["oom"] = 0
            self.log("ota: out of memory for a frame; asking for shorter frames")
            if self.session:
                self.session = False
                self.link_tries = 0
                self._hello()
            return
        if st["oom"] >= _OOM_RESET:
            # the heap is in pieces too small for anything: a reset gives it back whole
            # (the resume point and a held image survive it); better than a silent board
            self.log("ota: out of memory again and again; resetting")
            st["oom"] = 0
            self.reset()
            return
        if self.dl is not None:
            self._out_of_memory()  # suspended: the query timer resumes it
        else:
            self.log("ota: out of memory; carrying on")

    def _watchdog(self):
        # Every state that waits for the hub has a timer, whatever cut a handler short
        # between a timer firing and its re-arming (MemoryError): a board never goes quiet
        t = self.timers
        if "query" not in t:
            self._at("query", _RETRY_MS)
        if not self.session and "link" not in t:
            self._at("link", _RETRY_MS)
        if self.dl is not None and "block" not in t and "next" not in t:
            self._at("block", self.dl.wait.rto)
        if self.pending is not None and self.status == zcl.UPGRADE_DOWNLOAD_COMPLETE and "end" not in t:
            self._at("end", _RETRY_MS)

    # ------------------------------------------------------------ link layer
    def _reserve(self, upto):
        # frame counters are reserved in blocks so a reboot never reuses one
        self.reserved = upto + 256
        self.state.update(ctr=self.reserved)

    def _send(self, kind, dst, cluster, payload):
        if self.counter >= self.reserved:
            self._reserve(self.counter)
        f = link.pack(self.mac, kind, self.eui, dst, self.counter, cluster, payload)
        self.counter += 1
        try:
            self.t.send(f)
        except OSError as e:
            self.log("link: send failed: %s" % e)

    def start(self):
        self.link_tries = 0
        if self.hub is None:
            self._join()
        else:
            self._hello()
        # soon after boot when a download was interrupted (resume); else on the regular poll
        self._at("query", 2000 if self.state.get("dl") else self.cfg.query_interval * 1000)
        if self.pending is not None:
            # holding a verified image after a reset: tell the hub again (Upgrade End),
            # which answers when to activate it (or to wait for an Activate Image)
            self._at("end", 2000)
        if self.state.get("fdact"):
            self._at("gbcs", 2000)  # a future-dated GBCS activation still waits for its time

    def _join(self):
        service = self.role.join_service
        asked = self.cfg.raw.get("join_service")
        if asked == "ordinary" and service != link.SERVICE_ORDINARY:
            self.log("link: %s refuses the ordinary join service (code %d: %s)"
                     % (self.cfg.role, link.JOIN_SERVICE_REFUSED, link.JOIN_STATUS_NAMES[link.JOIN_SERVICE_REFUSED]))
        self.nonce = os.urandom(8)
        self._send(link.KIND_JOIN_REQ, link.BROADCAST, 0,
                   link.pack_join_req(service, self.cfg.role, self.cfg.manufacturer, self.cfg.image_type,
                                      self.cfg.hw_version, self.running_version(), self.nonce))
        self._at("link", 1000 + 500 * min(self.link_tries, 20))

    def _hello(self):
        self.nonce = os.urandom(8)
        rx = self.rx_frame if self.rx_frame > link.MAX_FRAME else 0
        self._send(link.KIND_HELLO, self.hub, 0, link.pack_hello(self.nonce, self.running_version(), rx))
        self._at("link", 1000 + 250 * min(self.link_tries, 8))

    def _on_link(self):
        # no answer to JOIN/HELLO: try again; after a few unanswered HELLOs, rejoin
        self.link_tries += 1
        if self.hub is not None and self.link_tries < 4:
            self._hello()
        else:
            self._join()

    def on_frame(self, frame):
        try:
            kind, src, dst, ctr, cluster, payload = link.unpack(frame, lambda s: self.mac, self.rx_frame)
        except link.LinkError:
            self.stats["bad-frames"] += 1
            return
        if dst != self.eui:
            return
        if kind == link.KIND_JOIN_RSP:
            self._joined(src, ctr, bytes(payload))
            return
        if self.hub is None or src != self.hub:
            self.stats["bad-frames"] += 1
            return
        if kind == link.KIND_HELLO_ACK:
            nonce, baseline = link.parse_hello(bytes(payload))
            if nonce == self.nonce:
                self.hub_floor = baseline
                self.session = True
                self.link_tries = 0
                self._cancel("link")
                self._read_time()  # every new session: the hub's UTC again
                self.role.on_link_up()
            return
        if self.hub_floor is None or ctr <= self.hub_floor:
            self.stats["bad-frames"] += 1  # replay, or no session yet
            return
        self.hub_floor = ctr
        self.unanswered = 0
        if kind == link.KIND_DATA:
            self._data(cluster, payload)
        elif kind == link.KIND_BUNDLE:
            try:
                items = link.split_bundle(payload)
            except link.LinkError as e:
                self.stats["bad-frames"] += 1
                self.log("link: %s" % e)
                return
            for item in items:
                self._data(cluster, item)

    def _data(self, cluster, payload):
        if cluster == zcl.CLUSTER_OTA:
            self._zcl(payload)
        elif cluster == zcl.CLUSTER_TIME:
            # the hub's Read Attributes Response; its time counts only from a master or
            # synchronised clock (TimeStatus), as a Zigbee device syncs to a time server
            try:
                fc, mfr, tsn, cmd, off = zcl.parse_header(payload)
                if cmd != zcl.GLOBAL_READ_ATTRIBUTES_RESPONSE or fc & zcl.FC_FRAME_TYPE_MASK:
                    return
                utc = status = None
                for r in zcl.parse_read_attributes_response(payload, off):
                    if r.status == zcl.SUCCESS and r.attr_id == zcl.ATTR_TIME:
                        utc = r.value
                    elif r.status == zcl.SUCCESS and r.attr_id == zcl.ATTR_TIME_STATUS:
                        status = r.value
            except zcl.ZclError:
                self.stats["bad-frames"] += 1
                return
            if utc is not None and utc != _UTC_INVALID and status is not None and status & _TIME_TRUSTED:
                clock.set(utc)
        else:
            self.role.on_frame(cluster, payload, self)

    def _joined(self, src, ctr, payload):
        try:
            status, hub, hub_ctr, nonce = link.parse_join_rsp(payload)
        except link.LinkError:
            return
        if nonce != self.nonce:
            return
        if status != link.JOIN_OK:
            self.log("link: join refused: %s (code %d)" % (link.JOIN_STATUS_NAMES[status]
                                                          if status < len(link.JOIN_STATUS_NAMES) else "?", status))
            self.state.update(join_error=status)
            self._at("link", 30000)
            return
        self.hub = hub
        self.state.update(hub="".join("%02x" % b for b in reversed(hub)), join_error=None)
        self.link_tries = 0
        self._hello()

    def send_app(self, cluster, payload):
        if self.session:
            self._send(link.KIND_DATA, self.hub, cluster, payload)

    # ------------------------------------------------------------ ZCL plumbing
    def _next_tsn(self):
        self.tsn = (self.tsn + 1) & 0xFF
        return self.tsn

    def _zsend(self, fc, cmd, payload, tsn=None, mfr=None):
        if not self.session:
            return
        if tsn is None:
            tsn = self._next_tsn()
        self._send(link.KIND_DATA, self.hub, zcl.CLUSTER_OTA, zcl.pack_header(fc, tsn, cmd, mfr) + payload)

    def _zcl(self, buf):
        try:
            fc, mfr, tsn, cmd, off = zcl.parse_header(buf)
            if fc & zcl.FC_FRAME_TYPE_MASK == zcl.FC_GLOBAL:
                if cmd == zcl.GLOBAL_READ_ATTRIBUTES:
                    self._read_attributes(tsn, zcl.parse_read_attributes(buf, off))
                return
            if cmd == zcl.CMD_IMAGE_BLOCK_RESPONSE:
                self._block_response(zcl.parse_block_response(buf, off))
            elif cmd == zcl.CMD_QUERY_NEXT_IMAGE_RESPONSE:
                self._query_response(zcl.parse_image_available(buf, off))
            elif cmd == zcl.CMD_IMAGE_NOTIFY:
                n = zcl.parse_image_notify(buf, off)
                if (os.urandom(1)[0] % 100) + 1 <= n.jitter:
                    self._query()
            elif cmd == zcl.CMD_UPGRADE_END_RESPONSE:
                self._end_response(zcl.parse_upgrade_end_response(buf, off), tsn, fc)
            elif cmd == zcl.CMD_ACTIVATE_IMAGE and mfr is not None:
                self._activate_command(zcl.parse_activate_image(buf, off), tsn, mfr)
            elif cmd == zcl.CMD_GBCS and mfr is not None:
                from hanfw import activation  # loaded with the first GBCS command only
                activation.on_command(self, bytes(buf[off:]), tsn, mfr)
            elif not fc & zcl.FC_DISABLE_DEFAULT_RESPONSE:
                self._default_response(tsn, cmd, zcl.UNSUP_CLUSTER_COMMAND)
        except zcl.ZclError as e:
            self.stats["bad-frames"] += 1
            self.log("ota: malformed frame from hub: %s" % e)

    def _default_response(self, tsn, cmd, status):
        self._zsend(_GLOBAL_NODR, zcl.GLOBAL_DEFAULT_RESPONSE, zcl.pack_default_response(cmd, status), tsn)

    def _read_attributes(self, tsn, ids):
        d = self.dl
        recs = []
        for a in ids:
            v = None
            if a == zcl.ATTR_UPGRADE_SERVER_ID:
                v = (zcl.TYPE_EUI64, self.hub or b"\xff" * 8)
            elif a == zcl.ATTR_FILE_OFFSET:
                v = (zcl.TYPE_UINT32, d.offset if d else 0xFFFFFFFF)
            elif a == zcl.ATTR_CURRENT_FILE_VERSION:
                v = (zcl.TYPE_UINT32, self.running_version())
            elif a == zcl.ATTR_CURRENT_STACK_VERSION:
                v = (zcl.TYPE_UINT16, 2)
            elif a == zcl.ATTR_DOWNLOADED_FILE_VERSION:
                v = (zcl.TYPE_UINT32, d.v if d else (self.pending[2] if self.pending else _NO_VERSION))
            elif a == zcl.ATTR_IMAGE_UPGRADE_STATUS:
                v = (zcl.TYPE_ENUM8, self.status)
            elif a == zcl.ATTR_MANUFACTURER_ID:
                v = (zcl.TYPE_UINT16, self.cfg.manufacturer)
            elif a == zcl.ATTR_IMAGE_TYPE_ID:
                v = (zcl.TYPE_UINT16, self.cfg.image_type)
            elif a == zcl.ATTR_MINIMUM_BLOCK_PERIOD:
                v = (zcl.TYPE_UINT16, self.min_period)
            elif a == reasons.ATTR_LAST_REJECTION:
                v = (zcl.TYPE_UINT8, self.rejection)
            recs.append((a, zcl.SUCCESS) + v if v else (a, zcl.UNSUPPORTED_ATTRIBUTE, None, None))
        self._zsend(_GLOBAL_NODR, zcl.GLOBAL_READ_ATTRIBUTES_RESPONSE, zcl.pack_read_attributes_response(recs), tsn)

    def running_version(self):
        return self.banks.running_version()

    # ------------------------------------------------------------ time (Time cluster 0x000A)
    def _read_time(self):
        if self.session:
            self._send(link.KIND_DATA, self.hub, zcl.CLUSTER_TIME,
                       zcl.pack_header(_GLOBAL_NODR, self._next_tsn(), zcl.GLOBAL_READ_ATTRIBUTES)
                       + zcl.pack_read_attributes((zcl.ATTR_TIME, zcl.ATTR_TIME_STATUS)))

    # ------------------------------------------------------------ query
    def _on_query(self):
        self._at("query", self.cfg.query_interval * 1000)
        clock.now()  # re-anchors the clock's ticks while they are in ticks_diff's range
        if self.dl is None and self.status == zcl.UPGRADE_NORMAL:
            self._query()

    def _query(self):
        if self.dl is not None:
            return
        # asked and not answered (the query or its answer lost, or no session yet): the
        # "answer" timer asks again, whatever the regular poll interval is
        self._at("answer", _RETRY_MS)
        if not self.session:
            return  # the link timer brings the session back; the answer timer then asks
        self.queries += 1
        self.unanswered += 1
        if self.unanswered > 3:
            # the hub stopped answering (replaced by a TCSO, or gone): new session or rejoin
            self.log("link: no answer from the hub to %d queries; reconnecting" % (self.unanswered - 1))
            self.unanswered = 0
            self.session = False
            self.link_tries = 0
            self._hello()
            return
        self._zsend(_C2S_NODR, zcl.CMD_QUERY_NEXT_IMAGE,
                    zcl.pack_query_next_image(self.cfg.manufacturer, self.cfg.image_type,
                                              self.running_version(), self.cfg.hw_version))

    def _query_response(self, r):
        self._cancel("answer")
        if r.status != zcl.SUCCESS or self.dl is not None:
            return
        ident = (r.manufacturer, r.image_type, r.file_version)
        if self.pending == ident:
            return  # already held: waiting for activation
        why = qualify(self.cfg, self.banks, r.manufacturer, r.image_type, r.file_version, r.image_size)
        if why:
            self._reject(ident, why)
            return
        self._begin(ident, r.image_size)

    # ------------------------------------------------------------ download
    def _begin(self, ident, size):
        saved = self.state.get("dl")
        if self.banks.is_trial():
            # esp_ota_begin's rule: no new update while the running image is unconfirmed
            self._reject(ident, "unconfirmed")
            return
        d = self._download
        d.start(ident, size)
        self.dl = d
        self.status = zcl.UPGRADE_DOWNLOAD_IN_PROGRESS
        if resumable(saved, ident, size):
            d.resume(saved, self.banks)
        self.log("ota: downloading version 0x%08x (%d bytes) from offset %d" % (ident[2], size, d.offset))
        self._request()

    def _request(self):
        d = self.dl
        if d is None:
            return
        d.drop_held()  # a page from the frontier brings all of it again
        cmd, payload = d.request(self.cfg, self.min_period)
        self._zsend(_C2S_NODR, cmd, payload)
        self.blocks += 1
        self._sent(d, d.rtt if cmd == zcl.CMD_IMAGE_PAGE else d.rtt1)

    def _sent(self, d, est):
        # a request went out: its first answer times the round trip (est: of pages, or of
        # single blocks) if it was sent once (Karn's rule); no answer within the RTO means
        # it, or its answer, was lost
        d.sent = _ticks()
        d.timing = est if d.tries == 0 else None
        d.wait = est
        d.last_rx = 0
        self._at("block", est.rto)

    def _on_block(self):
        # no answer, or a page went quiet before its end: ask again (the same offset, or
        # the page's missing blocks), waiting twice as long each time (bounded)
        d = self.dl
        if d is None:
            return
        d.tries += 1
        self.stats["timeouts"] = self.stats.get("timeouts", 0) + 1
        if d.tries > self.cfg.retry_limit:
            self.log("ota: no answer at offset %d after %d tries; will resume later" % (d.offset, d.tries - 1))
            self._suspend()
            return
        d.wait.backoff()
        if d.held:
            self._holes()
        else:
            self._request()

    def _reorder(self):
        # bytes of a page kept after a lost block (config "reorder"; -1: the page size when
        # a link frame carries one block, none when blocks come bundled)
        r = getattr(self.cfg, "reorder", -1)
        if r < 0:
            r = self.cfg.page_size if self.rx_frame <= link.MAX_FRAME else 0
        return r

    def _holes(self):
        # the page is over (its last block came, or it went quiet) and blocks before the
        # last one held are missing: ask for each at once (Image Block Requests); with
        # nothing held, the page again from the first missing byte
        d = self.dl
        if not d.held:
            self._request()
            return
        d.repair = True
        m, t, v = d.id
        o = d.offset
        asked = 0
        while o < d.htop and asked < _HOLE_ASKS:
            if not d.is_held(o):
                self._zsend(_C2S_NODR, zcl.CMD_IMAGE_BLOCK, zcl.pack_block_request(m, t, v, o, d.step))
                self.blocks += 1
                asked += 1
                self.stats["holes"] = self.stats.get("holes", 0) + 1
                d.ask_top = o + 1  # answers come in the order asked: past this, all came
            o += d.step
        self._sent(d, d.rtt1)

    def _page_more(self, d, end):
        # after a block of the page (in order or held) while some of it is still missing:
        # wait for more, or, once the page is over, ask for what is missing
        if d.repair and d.held and end < d.ask_top:
            self._at("block", d.rtt1.rto)  # answers to the blocks asked for are coming
        elif d.repair or end >= d.page_end:
            if d.held:
                if d.repair:  # the last block asked for came: the missing ones were lost
                    d.tries += 1
                    if d.tries > self.cfg.retry_limit:
                        self._on_block()
                        return
                self._holes()
            else:
                self.stats["again"] = self.stats.get("again", 0) + 1
                self._request()  # the rest of the page from the first missing byte
        else:
            self._at("block", d.rtt.silence())  # the page goes on

    def _feed(self, data):
        # one block, in order, into the download; False if the download ended on it
        try:
            self._take(data)
        except otafile.OtaError as e:
            self._fail(fail_reason(e.reason))
            return False
        except MemoryError:
            self._out_of_memory()
            return False
        except Exception as e:  # BankError (full bank, flash error)
            self._fail(getattr(e, "reason", "malformed"))
            return False
        return self.dl is not None

    # Our own shortage, not a bad image: never INVALID_IMAGE. Keep the resume point and
    # try again later (the next query resumes from the last persisted sector).
    def _out_of_memory(self):
        import gc
        self._end_download()
        gc.collect()
        self.log("ota: out of memory while downloading; will resume from the last resume point")
        self._suspend()

    def _end_download(self):
        # the transfer is over (done, failed or put off): its buffers go, its id stays
        d = self.dl
        self.dl = None
        if d is not None:
            d.head = d.stream = d.writer = d.dec = None
        return d

    def _suspend(self):
        self._end_download()
        self.status = zcl.UPGRADE_NORMAL
        self._cancel("block")
        self._at("query", 5000)

    def _block_response(self, r):
        d = self.dl
        if d is None:
            return
        if r.status == zcl.WAIT_FOR_DATA:
            wait = r.request_time if r.current_time == 0 else max(0, r.request_time - r.current_time)
            if r.min_block_period:
                self.min_period = r.min_block_period
            self._at("block", max(wait * 1000, 50))
            return
        if r.status != zcl.SUCCESS:
            self.log("ota: server aborted the transfer (%s)" % zcl.status_name(r.status))
            self._fail("server-abort", send_end=False)
            return
        if (r.manufacturer, r.image_type, r.file_version) != d.id:
            return  # a stale block
        off = r.file_offset
        n = len(r.data)
        now = _ticks()
        if d.timing is not None:
            d.timing.sample(_diff(now, d.sent))
            d.timing = None
        elif d.last_rx:
            d.rtt.arrival(_diff(now, d.last_rx))
        d.last_rx = now
        paging = self.cfg.page_size and d.body
        if off != d.offset:
            # a block after one that was lost: kept (if there is room) until the lost one
            # comes again; an old one (already taken) is dropped
            if paging and d.offset < off < d.page_end:
                d.hold_block(off, r.data, self._reorder())
                self._page_more(d, off + n)
            return
        if paging and not d.step and off + n < d.page_end:
            d.step = n  # the page's block length
        if not self._feed(r.data):
            return
        d.tries = 0
        while d.held and not d.stream.done:
            m = d.unhold()  # held blocks that follow on, in order
            if m is None or not self._feed(m):
                break
        if self.dl is None:
            return
        if d.stream.done:
            self._cancel("block")
            self._complete()
        elif paging and d.offset < d.page_end:
            self._page_more(d, off + n)
        else:
            if self.min_period:
                self._cancel("block")
                self._at("next", self.min_period)
            else:
                self._request()

    def _take(self, data):
        d = self.dl
        if not d.body:
            d.take(data, 0)
            self._check_head()
        elif d.take(data, self.cfg.checkpoint):
            self._checkpoint()

    # Once the header, the descriptor and the image element header are in:
    # reject on the header alone, before any of the body is fetched.
    def _check_head(self):
        d = self.dl
        s = d.stream
        h = s.header
        if h is None:
            return
        els = s.elements
        if not els:
            return
        if els[0][0] != otafile.TAG_DESCRIPTOR:
            self._fail("bad-descriptor")
            return
        if len(els) < 2 or s.descriptor is None:
            return
        why = imagecheck.reason(h, s.descriptor, els[1][0], els[1][1], self.cfg, self.banks.floor(),
                                self.banks.bank_size(), self.banks.kind, d.v) or d.base_reason(self.banks)
        if why:
            self._fail(why)
            return
        # the header qualifies: only now is the inactive bank invalidated and written
        self.pending = None
        try:
            self.banks.begin()
        except Exception as e:  # BankError
            self._fail(getattr(e, "reason", "unconfirmed"))
            return
        d.open_body(self.banks)
        self._checkpoint()

    def _checkpoint(self):
        self.state.update(dl=self.dl.record())

    def _complete(self):
        d = self.dl
        s = d.stream
        try:
            d.verify(self.cfg.keys, self.banks)
        except otafile.OtaError as e:
            self._fail(fail_reason(e.reason))
            return
        except MemoryError:
            self._out_of_memory()
            return
        except Exception as e:
            self._fail(getattr(e, "reason", "malformed"))
            return
        self.banks.stage(d.v, d.target_length(), s.descriptor.security_version, s.descriptor.image_hash)
        self.state.update(dl=None)
        self.pending = d.id
        self._end_download()
        self.status = zcl.UPGRADE_DOWNLOAD_COMPLETE
        g = self.stats.get
        self.log("ota: version 0x%08x downloaded and verified (since boot: %d silences waited out, %d lost blocks asked, %d pages asked again)"
                 % (self.pending[2], g("timeouts", 0), g("holes", 0), g("again", 0)))
        self._send_end()

    def _send_end(self):
        if self.pending is None:
            return
        m, t, v = self.pending
        self._zsend(_C2S, zcl.CMD_UPGRADE_END, zcl.pack_upgrade_end(zcl.SUCCESS, m, t, v))
        self._at("end", 5000)

    def _on_end(self):
        # no Upgrade End Response yet (or told to wait): ask again
        if self.pending is not None and self.status != zcl.UPGRADE_COUNT_DOWN:
            self._send_end()
            if self.status in (zcl.UPGRADE_WAITING_TO_UPGRADE, zcl.UPGRADE_WAITING_EXTERNAL):
                self._at("end", 60000)

    def _reject(self, ident, why):
        self.rejection = reasons.code(why)
        self.stats["rejected"] += 1
        self.log("ota: rejected version 0x%08x: %s" % (ident[2], why))
        self._zsend(_C2S_NODR, zcl.CMD_UPGRADE_END, zcl.pack_upgrade_end(
            zcl.ABORT if why in ("unconfirmed", "too-big") else zcl.INVALID_IMAGE, ident[0], ident[1], ident[2]))

    def _fail(self, why, send_end=True):
        d = self._end_download()
        self._cancel("block")
        self.state.update(dl=None)
        self.status = zcl.UPGRADE_NORMAL
        if d is not None and send_end:
            self._reject(d.id, why)
        else:
            self.rejection = reasons.code(why)

    # ------------------------------------------------------------ activation
    def _end_response(self, r, tsn, fc):
        if self.pending is None or (r.manufacturer, r.image_type, r.file_version) != self.pending:
            return
        self._cancel("end")
        if not fc & zcl.FC_DISABLE_DEFAULT_RESPONSE:
            self._default_response(tsn, zcl.CMD_UPGRADE_END_RESPONSE, zcl.SUCCESS)
        if r.upgrade_time == zcl.UPGRADE_TIME_WAIT:
            if self.role.activation == "command":
                self.status = zcl.UPGRADE_WAITING_EXTERNAL
            else:
                self.status = zcl.UPGRADE_WAITING_TO_UPGRADE
                self._at("end", 60000)
            return
        self.status = zcl.UPGRADE_COUNT_DOWN
        if r.current_time == 0:  # no UTC: upgrade_time is an offset in seconds
            clock.due = None
            self._at("activate", r.upgrade_time * 1000)
            return
        # UTC times: activate at the hub's upgrade_time by the hub's clock. The
        # response's CurrentTime is the hub's clock too, so an unset clock takes it.
        if clock.base is None:
            clock.set(r.current_time)
        clock.due = r.upgrade_time
        self._at("activate", 0)  # the timer compares it with the clock

    def activate_now(self):
        try:
            self.banks.activate()
        except Exception as e:
            self.log("ota: activation failed: %s" % e)
            self.status = zcl.UPGRADE_NORMAL
            self.pending = None
            return False
        self.log("ota: activating; resetting into the new image")
        self.reset()
        return True

    def _activate_command(self, a, tsn, mfr):
        code = zcl.ACTIVATE_NO_IMAGE_HELD
        held = self.state.get("held")
        if self.role.activation != "command":
            self._default_response(tsn, zcl.CMD_ACTIVATE_IMAGE, zcl.UNSUP_MANUF_CLUSTER_COMMAND)
            return
        if getattr(self.cfg, "gbcs", None):
            # commissioned with a Supplier: only a Supplier-signed GBCS CS06 activates
            self._default_response(tsn, zcl.CMD_ACTIVATE_IMAGE, zcl.NOT_AUTHORIZED)
            return
        if held:
            if bytes.fromhex(held["hash"]) != bytes(a.image_hash):
                code = zcl.ACTIVATE_HASH_MISMATCH
            elif self.banks.target_sha256(held["length"]) != bytes(a.image_hash):
                code = zcl.ACTIVATE_FAILURE  # the bank no longer holds what was verified
            else:
                code = zcl.ACTIVATE_SUCCESS
        self._zsend(_C2S_NODR | zcl.FC_MANUFACTURER, zcl.CMD_ACTIVATE_IMAGE_RESPONSE,
                    zcl.pack_activate_image_response(code, self.running_version(), a.counter), tsn, mfr)
        if code == zcl.ACTIVATE_SUCCESS:
            clock.due = a.execution_time or None  # UTC, by the clock the hub set
            self.status = zcl.UPGRADE_COUNT_DOWN
            self._cancel("end")
            self._at("activate", 200)  # let the response leave first

    # ------------------------------------------------------------ after boot
    def send_alert(self, running, previous, rolled_back, reason):
        self._zsend(_C2S | zcl.FC_MANUFACTURER, zcl.CMD_ACTIVATION_ALERT,
                    zcl.pack_activation_alert(running, previous, 1 if rolled_back else 0, reason,
                                              clock.now() or 0),
                    mfr=self.cfg.manufacturer)
