"""Hub scale: one hub process (`OtaServer` on UDP) serving N devices at once. The devices are
hanota.simdevice.FakeDevice (the device side of the link and ZCL under CPython asyncio),
all in this process, so that hundreds fit on two cores.

The hub runs in its own process (`python -m bench.hub SERVE ...`) so that its CPU time and
memory are its own: it answers `snap` on stdin with its CPU seconds, RSS, and server counters.
Memory per connected device is measured two ways: tracemalloc in the hub across the join,
session and first query of every device (then stopped, so it costs nothing later), and the
hub's RSS growth over the whole run divided by N.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from .common import KiB, cpu_seconds, summary, udp_rcvbuf_errors

HUB = bytes.fromhex("0100a0b0c0d0e0f0")
RCVBUF = 2 * 1024 * 1024  # the experiment: the hub's UDP socket with a 2 MiB receive buffer


def eui(n: int) -> bytes:
    return bytes([n & 0xFF, n >> 8, 0x00, 0x00, 0x00, 0x5E, 0xA1, 0x70])


# ---------------------------------------------------------------- the hub process


def _rss() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


async def _serve(image: str, n: int, block_cap: int, rcvbuf: int = 0) -> None:
    import tracemalloc

    from hanota.server import OtaServer, Policy, ServedImage
    from hanota.simdevice import install_code

    policy = Policy({eui(i): install_code(i) for i in range(n)}, [ServedImage.from_file(image)])
    server = OtaServer(HUB, policy, block_cap=block_cap, stall_timeout=120, progress_interval=5.0)
    addr = await server.listen_udp("127.0.0.1", 0)
    if rcvbuf:  # an experiment: a larger receive buffer on the hub's socket
        import socket

        sock = server._links[0]._transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue = asyncio.Queue()
    loop.add_reader(sys.stdin.fileno(), lambda: lines.put_nowait(sys.stdin.readline()))
    print(json.dumps({"addr": addr}), flush=True)
    while True:
        cmd = (await lines.get()).strip()
        if cmd == "trace":
            tracemalloc.start()
            reply = {}
        elif cmd == "snap":
            t = time.process_time()
            reply = dict(
                _rss(),
                cpu=t,
                stats=dict(server.stats),
                served=sum(x.bytes_served for x in server.transfers.values()),
                complete=sum(x.state == "complete" for x in server.transfers.values()),
            )
            if tracemalloc.is_tracing():
                reply["traced"] = tracemalloc.get_traced_memory()[0]
                tracemalloc.stop()
        else:
            await server.close()
            return
        print(json.dumps(reply), flush=True)


class HubProcess:
    def __init__(self, image, n: int, block_cap: int, rcvbuf: int = 0):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.hub",
                "serve",
                str(image),
                str(n),
                str(block_cap),
                str(rcvbuf),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addr = tuple(json.loads(self.proc.stdout.readline())["addr"])

    def ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


# ---------------------------------------------------------------- the devices


async def _fleet(hubp: HubProcess, n: int, image: bytes, max_data: int, pages: bool) -> dict:
    from hanota.simdevice import FakeDevice, install_code

    devs = [FakeDevice(eui(i), install_code(i), timeout=2.0, retries=8) for i in range(n)]
    resent = [0]
    for d in devs:
        d.last_tsn = None
        send = d.send_zcl

        def counted(fc, tsn, cmd, payload, mfr=None, d=d, send=send):
            if tsn == d.last_tsn:
                resent[0] += 1  # the same request again: its answer never came
            d.last_tsn = tsn
            send(fc, tsn, cmd, payload, mfr)

        d.send_zcl = counted
    try:
        idle = hubp.ask("snap")
        overflows = udp_rcvbuf_errors()
        hubp.ask("trace")
        for d in devs:
            await d.open_udp(hubp.addr)
        await asyncio.gather(*(d.join() for d in devs))
        await asyncio.gather(*(d.hello() for d in devs))
        avails = await asyncio.gather(*(d.query() for d in devs))
        joined = hubp.ask("snap")
        t0, c0 = time.perf_counter(), cpu_seconds()
        await asyncio.gather(
            *(
                d.download(a, pages=pages, max_data=max_data, page_size=4 * KiB)
                for d, a in zip(devs, avails)
            )
        )
        wall, dev_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        done = hubp.ask("snap")
        overflows = udp_rcvbuf_errors() - overflows
        exact = sum(bytes(d.image) == image for d in devs)
        dropped = sum(sum(d.dropped.values()) for d in devs)
    finally:
        for d in devs:
            d.close()
    cpu = done["cpu"] - joined["cpu"]
    served = done["served"]
    return {
        "devices": n,
        "seconds": wall,
        "blocks": done["stats"].get("blocks", 0),
        "blocks_per_s": done["stats"].get("blocks", 0) / wall,
        "served": served,
        "hub_cpu_s_per_mib": cpu / (served / (1 << 20)),
        "hub_cpu_share": cpu / wall,
        "devices_cpu_share": dev_cpu / wall,
        "traced_per_device": joined["traced"] / n,
        "rss_per_device": (done["VmRSS"] - idle["VmRSS"]) / n,
        "resent": resent[0],
        "udp_overflows": overflows,
        "hub_dropped": done["stats"].get("dropped", 0),
        "device_dropped": dropped,
        "byte_exact": exact,
    }


def run(ws, scale: str, log=print) -> list[dict]:
    # (devices, SO_RCVBUF of the hub's socket: 0 = as the server leaves it)
    if scale == "smoke":
        counts, reps, size = ((3, 0),), 1, 4 * KiB
    elif scale == "quick":
        counts, reps, size = ((10, 0), (50, 0)), 1, 16 * KiB
    else:
        counts, reps, size = ((10, 0), (50, 0), (200, 0), (200, RCVBUF)), 5, 16 * KiB
    max_data = 64
    path, _ = ws.image(size, "vboard-nrf52840")
    image = path.read_bytes()
    rows = []
    for n, rcvbuf in counts:
        runs = []
        for _ in range(reps):
            hubp = HubProcess(path, n, block_cap=max_data, rcvbuf=rcvbuf)
            try:
                runs.append(asyncio.run(_fleet(hubp, n, image, max_data, pages=False)))
            finally:
                hubp.close()
        row = {
            "devices": n,
            "rcvbuf": rcvbuf,
            "image": len(image),
            "max_data": max_data,
            "lost": sum(r["resent"] + r["hub_dropped"] + r["device_dropped"] for r in runs),
            "udp_overflows": sum(r["udp_overflows"] for r in runs),
            "byte_exact": all(r["byte_exact"] == n for r in runs),
        }
        for key in (
            "seconds",
            "blocks_per_s",
            "hub_cpu_s_per_mib",
            "hub_cpu_share",
            "devices_cpu_share",
            "traced_per_device",
            "rss_per_device",
        ):
            row[key] = summary(r[key] for r in runs)
        rows.append(row)
        log(
            "  %3d devices%s: %5.0f blocks/s, hub %.2f CPU s per MiB (hub CPU %.0f%%, devices' "
            "%.0f%%), %.1f KiB per connected device, %d requests lost"
            % (
                n,
                " (hub socket buffer %d KiB)" % (rcvbuf // KiB) if rcvbuf else "",
                row["blocks_per_s"]["median"],
                row["hub_cpu_s_per_mib"]["median"],
                100 * row["hub_cpu_share"]["median"],
                100 * row["devices_cpu_share"]["median"],
                row["traced_per_device"]["median"] / KiB,
                row["lost"],
            )
        )
    return rows


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    asyncio.run(_serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
