# Loss costs a round trip: the real OTA client (hanfw.client) under the real MicroPython, in
# page mode over a virtual Zigbee-like link (a rate in bytes per ms each way, a fixed delay,
# frames queued behind each other) that loses each frame, either way, with a seeded
# probability. Time is virtual (the client's tick source is replaced).
#   micropython loss_check.py WORKDIR FILE PUBHEX DROP_RATE SEED REORDER [PAGE_DELAY]
# PAGE_DELAY (ms): the hub's first block of each page comes that much later than a single
# block would (as a long bundled frame does on a slow link).
#   micropython loss_check.py rtt SAMPLE...     (the estimator's RTO after each sample)
# Prints one JSON line: {"done_ms", "status", "lost_up", "lost_down", "pages", "blocks",
# "holes", "again", "timeouts", "served", "size", "escaped"}.
import sys
import json

from hanfw import client, link, zcl, state, banks, bootctl, rtt
from mpykit import HUB_EUI, RamDev, Role, client_config, install_code, virtual_time
import mpykit

BANK_BLOCKS = 24
RATE = 31.25  # bytes per ms: 250 kbit/s
DELAY = 10  # ms a frame takes besides its bytes
LIMIT_MS = 600000

NOW = virtual_time(client)  # virtual ms (a float here: frames take fractions of a ms)


class Rand:
    # a small seeded generator (xorshift32), the same under CPython and MicroPython
    def __init__(self, seed):
        self.x = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1

    def random(self):
        x = self.x
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.x = x
        return x / 4294967296.0


class Air:
    # the link: each way a queue of (due ms, frame); a frame waits for the ones before it,
    # takes len/RATE, then DELAY; a lost frame takes its airtime and arrives nowhere
    def __init__(self, rate, seed):
        self.rate = rate
        self.rng = Rand(seed)
        self.free = {"up": 0.0, "down": 0.0}
        self.q = {"up": [], "down": []}
        self.lost = {"up": 0, "down": 0}

    def put(self, way, frame, lossy=True, after=0):
        start = max(NOW[0] + after, self.free[way])
        self.free[way] = start + len(frame) / RATE
        if lossy and self.rate and self.rng.random() < self.rate:
            self.lost[way] += 1
            return
        self.q[way].append((self.free[way] + DELAY, frame))


class Hub(mpykit.Hub):
    # HELLO_ACK, Image Notify, Query Next Image, Image Block and Page Requests (a page's
    # blocks all queued at once, as the hub does over UDP), Upgrade End ("wait")
    def __init__(self, path, install_code, air):
        mpykit.Hub.__init__(self, path, install_code)
        self.air = air
        self.pages = self.blocks = self.served = 0
        self.lossy = False  # frames are lost only while the body flows
        self.page_delay = 0
        self.after = 0

    def put(self, frame):
        self.air.put("down", frame, self.lossy, self.after)

    def _block(self, tsn, o, n):
        m, t, v = self.ident
        n = min(n, len(self.data) - o)
        self.served += n
        self._zcl(tsn, zcl.CMD_IMAGE_BLOCK_RESPONSE,
                  zcl.pack_block_response(m, t, v, o, self.data[o:o + n]))

    def on_ota(self, tsn, cmd, payload, off):
        if cmd == zcl.CMD_IMAGE_BLOCK:
            r = zcl.parse_block_request(payload, off)
            self.blocks += 1
            self._block(tsn, r.file_offset, r.max_data_size)
        elif cmd == zcl.CMD_IMAGE_PAGE:
            r = zcl.parse_page_request(payload, off)
            self.pages += 1
            self.lossy = True
            end = min(len(self.data), r.file_offset + r.page_size)
            o = r.file_offset
            self.after = self.page_delay
            while o < end:
                n = min(r.max_data_size, end - o)
                self._block(tsn, o, n)
                o += n
            self.after = 0

    def ended(self, end):
        self.lossy = False


class Transport:
    # the device's end of the air: send() puts a frame on the way up; recv() lets the
    # virtual time run to the next frame down (the hub acting on frames up as they land)
    rx_frame = link.MAX_FRAME

    def __init__(self, air, hub):
        self.air, self.hub = air, hub

    def send(self, frame):
        self.air.put("up", frame, self.hub.lossy)

    def recv(self, timeout_ms):
        deadline = NOW[0] + max(1, timeout_ms)
        up, down = self.air.q["up"], self.air.q["down"]
        while True:
            nd = down[0][0] if down else deadline + 1
            if up and up[0][0] <= min(nd, deadline):
                t, f = up.pop(0)
                NOW[0] = max(NOW[0], t)
                self.hub.take(f)
                continue
            if down and nd <= deadline:
                t, f = down.pop(0)
                NOW[0] = max(NOW[0], t)
                return f
            NOW[0] = deadline
            return None


def main():
    if sys.argv[1] == "rtt":
        r = rtt.Rtt(1500)
        out = [r.rto]
        for a in sys.argv[2:]:
            if a == "loss":
                r.backoff()
            else:
                r.sample(int(a))
            out.append(r.rto)
        print(json.dumps(out))
        return
    work, path, pub_hex, rate, seed, reorder = sys.argv[1:7]
    page_delay = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    air = Air(float(rate), int(seed))
    ic = install_code()
    ctl = RamDev(2)
    devs = [(RamDev(BANK_BLOCKS), BANK_BLOCKS), (RamDev(BANK_BLOCKS), BANK_BLOCKS)]
    bootctl.BootControl(ctl).initialise(1, 0, 0, bytes(32))
    st = state.State(work + "/ota.json")
    st.update(hub=HUB_EUI, dl=None, held=None, ctr=1)
    cfg = client_config(pub_hex, ic, max_data=50, page_size=16384, reorder=int(reorder))
    hub = Hub(path, ic, air)
    hub.page_delay = page_delay
    log = []
    c = client.OtaClient(cfg, Transport(air, hub), banks.AppBanks(devs, bootctl.BootControl(ctl), st),
                         st, Role(), lambda: None, log.append)
    timeouts = [0]
    on_block = c._on_block

    def counted():
        timeouts[0] += 1
        on_block()

    c._on_block = counted
    c.start()
    escaped = None
    start = None
    end = NOW[0] + LIMIT_MS
    while NOW[0] < end:
        try:
            c.poll(50)
        except Exception as e:
            escaped = "%s: %s" % (type(e).__name__, e)
            break
        if c.session and start is None:
            start = NOW[0]
            hub.notify()
        if hub.ends:
            break
    print(json.dumps({
        "done_ms": int(hub.ends[0][0] - start) if hub.ends else None,
        "status": hub.ends[0][1] if hub.ends else None, "lost_up": air.lost["up"],
        "lost_down": air.lost["down"], "pages": hub.pages, "blocks": hub.blocks,
        "holes": c.stats.get("holes", 0), "again": c.stats.get("again", 0),
        "timeouts": timeouts[0], "served": hub.served, "size": len(hub.data),
        "escaped": escaped, "log": log[-4:]}))


main()
