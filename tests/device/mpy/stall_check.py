# A board that never answers is a defect: the real OTA client (hanfw.client) under the real
# MicroPython, fed by a stand-in hub that loses chosen frames, and with MemoryError raised
# where a 64 KiB board runs out of heap. Each scenario must end with the hub holding the
# device's Upgrade End, the client recovering by itself within seconds.
#   micropython stall_check.py WORKDIR V2_FILE V3_FILE PUBHEX SCENARIO...
#   micropython stall_check.py udp PORT    (the UDP transport's reads)
# Time is virtual (the client's tick source is replaced), so a scenario takes no wall time.
# Prints one JSON line per scenario: {"name", "done_ms", "ends", "escaped", "log"}.
import sys
import json

from hanfw import client, link, zcl, state, banks, bootctl, download
from mpykit import HUB_EUI, RamDev, Role, client_config, install_code, virtual_time
import mpykit

BANK_BLOCKS = 8
LIMIT_MS = 120000  # virtual time a scenario may take at most

NOW = virtual_time(client)


class Hub(mpykit.Hub):
    # Just enough of the hub: HELLO_ACK, Image Notify, Query Next Image, blocks, Upgrade End
    # (answered "wait": the device holds the image). `drops` names frames to lose, as
    # {"hello": {1, 2}}: the 1st and 2nd HELLO are lost (numbered per kind from 1).
    def __init__(self, path, install_code, drops=None):
        self.out = []
        self.drops = drops or {}
        self.seen = {}
        mpykit.Hub.__init__(self, path, install_code)

    def put(self, frame):
        self.out.append(frame)

    def _lost(self, kind):
        n = self.seen.get(kind, 0) + 1
        self.seen[kind] = n
        return n in self.drops.get(kind, ())

    def answer(self, what):
        return not self._lost(what)

    # the device's transport: send() reaches this hub, recv() returns the hub's next frame
    rx_frame = link.MAX_FRAME

    def send(self, frame):
        self.take(frame)

    def on_ota(self, tsn, cmd, payload, off):
        if cmd == zcl.CMD_IMAGE_BLOCK:
            r = zcl.parse_block_request(payload, off)
            o = r.file_offset
            n = min(r.max_data_size, len(self.data) - o)
            if o + n >= len(self.data) and self._lost("last-block"):
                return
            m, t, v = self.ident
            self._zcl(tsn, zcl.CMD_IMAGE_BLOCK_RESPONSE,
                      zcl.pack_block_response(m, t, v, o, self.data[o:o + n]))

    def recv(self, timeout_ms):
        if self.out:
            NOW[0] += 1
            return self.out.pop(0)
        NOW[0] += max(1, timeout_ms)  # nothing to say: the time waited passes
        return None


def oom_at(cls_or_mod, name, calls):
    # make cls_or_mod.name raise MemoryError at the given call numbers (from 1), as a
    # fragmented heap does when that code allocates
    orig = getattr(cls_or_mod, name)
    count = [0]

    def faulty(*a):
        count[0] += 1
        if count[0] in calls:
            raise MemoryError("memory allocation failed (injected)")
        return orig(*a)

    setattr(cls_or_mod, name, faulty)


class Board:
    # the device side as hal.py and app.py assemble it on an app-bank board; its flash and
    # state survive a power cut (a new client over the same Board)
    def __init__(self, work, pub_hex):
        self.work, self.pub_hex = work, pub_hex
        self.ic = install_code()
        self.ctl_dev = RamDev(2)
        self.devs = [(RamDev(BANK_BLOCKS), BANK_BLOCKS), (RamDev(BANK_BLOCKS), BANK_BLOCKS)]
        self.st = state.State(work + "/ota.json")
        bootctl.BootControl(self.ctl_dev).initialise(1, 0, 0, bytes(32))
        self.st.update(hub=HUB_EUI, dl=None, held=None, ctr=1)

    def client(self, hub, log):
        cfg = client_config(self.pub_hex, self.ic, max_data=64, page_size=0, checkpoint=1024)
        st = state.State(self.work + "/ota.json")  # read back from "flash", as at boot
        b = banks.AppBanks(self.devs, bootctl.BootControl(self.ctl_dev), st)
        return client.OtaClient(cfg, hub, b, st, Role(), lambda: None, log.append)


def run_until(c, hub, until, limit=LIMIT_MS):
    # poll as app.py does until until() holds or the virtual time runs out; an exception
    # out of poll is what would take the board down (main.py) and is reported
    end = NOW[0] + limit
    while NOW[0] < end:
        try:
            c.poll(50)
        except Exception as e:
            return "%s: %s" % (type(e).__name__, e)
        if until():
            return None
    return None


def ended(hub, version):
    return lambda: any(s == 0 and v == version for _, s, v in hub.ends)


def up(c, hub):
    c.start()
    return run_until(c, hub, lambda: c.session, 30000)


def scenario(name, work, v2, v3, pub_hex):
    log = []
    b = Board(work, pub_hex)
    hub = Hub(v2, b.ic)
    v = hub.ident[2]
    c = b.client(hub, log)
    escaped = None
    start = NOW[0]
    if name == "lost-query-answer":
        hub.drops = {"query-answer": {1}}
        escaped = up(c, hub)
        hub.notify()
    elif name == "held-then-lost-query-answer":
        # the bench's case: a board holding a verified image is offered a newer one
        escaped = up(c, hub) or (hub.notify() or run_until(c, hub, ended(hub, v)))
        hub.offer(v3)
        v = hub.ident[2]
        hub.drops = {"query-answer": {hub.seen.get("query-answer", 0) + 1}}
        start = NOW[0]
        hub.notify()
    elif name == "power-cut-then-slow-session":
        # cut after 80 blocks (resume points every 1 KiB), then a new boot whose first two
        # HELLOs are lost: the session comes up after the query that resumes was due
        escaped = up(c, hub)
        hub.notify()
        escaped = escaped or run_until(c, hub, lambda: c.blocks >= 80)
        hub.out = []
        hub.drops = {"hello": {hub.seen["hello"] + 1, hub.seen["hello"] + 2}}
        c = b.client(hub, log)
        start = NOW[0]
        escaped = escaped or up(c, hub)
    elif name == "oom-in-frame":
        oom_at(link, "unpack", (40,))
        escaped = up(c, hub)
        hub.notify()
    elif name == "oom-in-block-then-lost-query-answer":
        # out of heap taking a block: the download is suspended and resumed by a query,
        # whose answer is lost
        oom_at(download.Download, "take", (40,))
        hub.drops = {"query-answer": {2}}
        escaped = up(c, hub)
        hub.notify()
    elif name == "oom-in-resume":
        # out of heap taking a block, then again rebuilding the hashes to resume
        oom_at(download.Download, "take", (40,))
        oom_at(download.Download, "resume", (1,))
        escaped = up(c, hub)
        hub.notify()
    elif name == "lost-end-answer":
        hub.drops = {"end-answer": {1}}
        escaped = up(c, hub)
        hub.notify()
    elif name == "lost-last-block":
        hub.drops = {"last-block": {1}}
        escaped = up(c, hub)
        hub.notify()
    else:
        raise ValueError("unknown scenario %s" % name)
    if escaped is None:
        escaped = run_until(c, hub, ended(hub, v))
    if name == "lost-end-answer" and escaped is None:
        escaped = run_until(c, hub, lambda: len(hub.ends) >= 2, 30000)
    done = [t - start for t, s, ver in hub.ends if s == 0 and ver == v]
    return {"name": name, "done_ms": done[0] if done else None,
            "ends": [[t - start, s, ver] for t, s, ver in hub.ends], "escaped": escaped,
            "log": log[-6:]}


def udp_frames(port):
    # hanfw.transport.UdpTransport: two datagrams queued come out as two frames (a stream
    # read would run them together), and with nothing there recv gives None, never blocks
    import socket
    from hanfw.transport import UdpTransport
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    t = UdpTransport("127.0.0.1", port)
    t.send(b"hello")
    _, addr = peer.recvfrom(64)
    peer.sendto(b"a" * 4000, addr)
    peer.sendto(b"b" * 100, addr)
    got = [t.recv(1000), t.recv(1000)]

    class Liar:  # poll says a datagram is there; none is
        def poll(self, ms):
            return [(t.sock, 1)]

    t.poll = Liar()
    return {"name": "udp", "frames": [[len(f), f[:1].decode()] for f in got if f is not None],
            "empty": t.recv(0)}


def main():
    if sys.argv[1] == "udp":
        print(json.dumps(udp_frames(int(sys.argv[2]))))
        return
    work, v2, v3, pub_hex = sys.argv[1:5]
    for name in sys.argv[5:]:
        print(json.dumps(scenario(name, work, v2, v3, pub_hex)))


main()
