"""`python -m bench.fleet`: how many premises one `hanota fleet sim` process holds.

Writes bench/FLEET.md (and --json). For each size N (premises, each with --devices simulated
HAN devices and its own Comms Hub), against one `hanota dcc serve` (SQLite, in a process of
its own) on this machine, with the WAN on its websocket, then (--nats-sizes) on NATS JetStream
(a nats-server of the bench's own, `dcc serve --wan nats://...`):

- start: seconds until the process has started every hub, and until every hub is on the WAN;
- idle: the sim process's CPU (per cent of one core) and resident memory over --idle seconds
  with every hub connected and nothing to do, with its open file descriptors; the DCC's CPU
  over the same window;
- a firmware wave (sizes up to --wave premises): the SR each device's role takes (11.4,
  11.1 for HCALCS) POSTed through DUIS for every device, the time from the first POST to
  the last outcome at the DCC, and the CPU both processes spent; every device must get
  exactly one outcome.

    python -m bench.fleet                          sizes 250,1000,3000 at --poll 2 and 10;
                                                   a wave up to 1000 premises
    python -m bench.fleet --sizes 100 --idle 5     a quick look
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .procs import tree_cpu, tree_fds, tree_rss_mb

HERE = Path(__file__).resolve().parent
HANOTA = [sys.executable, "-c", "from hanota.cli import main; main()"]


def start(args: list[str], log: Path, ready: str, timeout: float,
          count: int = 1) -> subprocess.Popen:
    """Start a hanota command; return once its log shows `ready` `count` times."""
    with open(log, "w") as f:
        p = subprocess.Popen([*HANOTA, *args], stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
    end = time.monotonic() + timeout
    while log.read_text().count(ready) < count:
        if p.poll() is not None or time.monotonic() > end:
            p.kill()
            raise RuntimeError("%s: %s not seen: %s" % (args[:2], ready, log.read_text()[-2000:]))
        time.sleep(0.1)
    return p


def start_nats():
    """nats-server with JetStream on a free loopback port: the tests' support.servers.Nats
    (make scale's too); raises ServerUnavailable saying why it cannot start."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from support.servers import Nats

    return Nats()


class Dcc:
    """A DCC database with a test PKI, the fleets' registration and the images in its CPL."""

    def __init__(self, tmp: Path):
        from cryptography.hazmat.primitives.asymmetric import ec

        from hanota import images
        from hanota.dcc import pki
        from hanota.dcc.store import DccStore

        self.tmp = tmp
        self.pki_dir = tmp / "pki"
        pki.init(self.pki_dir)
        self.key, self.cert = pki.signing_pair(self.pki_dir, "supplier-a.xml")
        self.user = pki.describe(self.cert).entity_id
        self.db = tmp / "dcc.db"
        self.counter = 1000
        sign = ec.generate_private_key(ec.SECP256R1())
        self.images = {}
        with DccStore(self.db) as store:
            store.set_meta("pki", str(self.pki_dir))
            for role in ("ppmid", "hcalcs", "althan"):
                data = images.build_image(random.Random(role).randbytes(2000), key=sign,
                                          version=2, role=role)
                f = tmp / (role + ".ota")
                f.write_bytes(data)
                info = images.parse_file(f)
                store.cpl_add(images.DEFAULT_MANUFACTURER, images.ROLE_IMAGE_TYPES[role], 2,
                              info.descriptor.image_hash)
                self.images[role] = data

    def register(self, plan) -> None:
        from hanota.dcc.store import DccStore
        from hanota.dcc.wan import eui_hex
        from hanota.fleet import plan as fp

        with DccStore(self.db) as store:
            fp.register(store, plan, 0, plan.premises, [eui_hex(self.user)])

    def requests(self, plan) -> list[bytes]:
        from hanota.dcc import duis, xmlsig
        from hanota.fleet import plan as fp

        out = []
        for p in plan.range(0, plan.premises):
            for s in p.devices:
                self.counter += 1
                out.append(xmlsig.sign(duis.build_request(
                    fp.ROLE_SR[s.role], self.user, duis.DCC_EUI, self.counter,
                    firmware_image=self.images[s.role], firmware_version="00000002",
                    device_ids=[bytes.fromhex(s.eui)]), self.key, self.cert))
        return out

    def outcomes(self) -> tuple[int, int]:
        """(requests, requests with an outcome) in the DCC's database."""
        import sqlite3

        c = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=30)
        try:
            return tuple(c.execute("SELECT count(*), count(outcome) FROM requests").fetchone())
        finally:
            c.close()


async def post_all(url: str, xmls: list[bytes], concurrency: int = 8) -> list[str]:
    import aiohttp

    from hanota.dcc import duis

    q = list(enumerate(xmls))
    bad: list[str] = []

    async def worker(s):
        while q:
            _, x = q.pop(0)
            async with s.post(url + "/api/v1/serviceD", data=x,
                              headers={"Content-Type": "application/xml"}) as r:
                body = await r.read()
            ack = duis.parse_response(body)
            if ack["code"] != "I99":
                bad.append(ack["code"])
    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(worker(s) for _ in range(concurrency)))
    return bad


def one_size(dcc: Dcc, dcc_proc: subprocess.Popen, url: str, n: int, k: int, fleet: int,
             idle: float, wave: bool, poll: float, log, wan_url: str | None = None,
             broker: subprocess.Popen | None = None, procs: int = 1,
             quiet: float = 300.0) -> dict:
    from hanota.fleet import plan as fp

    plan = fp.FleetPlan(n, k, fleet=fleet)
    t = time.monotonic()
    dcc.register(plan)
    r: dict = {"premises": n, "devices": n * k, "poll": poll, "procs": procs, "quiet": quiet,
               "wan": "nats" if wan_url else "websocket",
               "register_s": round(time.monotonic() - t, 1)}
    logf = dcc.tmp / ("sim-%d-%s.log" % (n, poll))
    t0 = time.monotonic()
    sim = start(["fleet", "sim", "--premises", str(n), "--devices", str(k), "--fleet",
                 str(fleet), "--dcc", wan_url or url, "--dir", str(dcc.tmp / ("fleet-%d" % fleet)),
                 "--poll", str(poll), "--report", "0", "--start-rate", "0", "--json",
                 "--procs", str(procs), "--quiet", str(quiet)],
                logf, "fleet connected", timeout=60 + n * 0.2, count=procs)
    r["connected_s"] = round(time.monotonic() - t0, 1)
    m = re.search(r"in ([\d.]+) s", logf.read_text())
    r["started_s"] = float(m.group(1)) if m else None
    try:
        time.sleep(3)  # the connection burst settles
        def bcpu():
            return tree_cpu(broker.pid) if broker is not None else 0.0
        c0, d0, b0, w0 = tree_cpu(sim.pid), tree_cpu(dcc_proc.pid), bcpu(), time.monotonic()
        time.sleep(idle)
        c1, d1, b1, w1 = tree_cpu(sim.pid), tree_cpu(dcc_proc.pid), bcpu(), time.monotonic()
        r["idle_cpu_pct"] = round(100 * (c1 - c0) / (w1 - w0), 1)
        r["idle_dcc_cpu_pct"] = round(100 * (d1 - d0) / (w1 - w0), 1)
        if broker is not None:
            r["idle_broker_cpu_pct"] = round(100 * (b1 - b0) / (w1 - w0), 1)
        r["rss_mb"] = round(tree_rss_mb(sim.pid), 1)
        r["rss_kb_per_premises"] = round(1024 * r["rss_mb"] / n, 1)
        r["fds"] = tree_fds(sim.pid)
        log("  %d premises: connected in %.1f s, idle CPU %.1f %% (DCC %.1f %%), RSS %.0f MB, "
            "%d fds" % (n, r["connected_s"], r["idle_cpu_pct"], r["idle_dcc_cpu_pct"],
                        r["rss_mb"], r["fds"]))
        if wave:
            before = dcc.outcomes()
            xmls = dcc.requests(plan)
            c0, d0, b0, w0 = tree_cpu(sim.pid), tree_cpu(dcc_proc.pid), bcpu(), time.monotonic()
            bad = asyncio.run(post_all(url, xmls))
            r["wave_post_s"] = round(time.monotonic() - w0, 1)
            want = before[0] + len(xmls)
            end = w0 + 120 + 0.2 * len(xmls)
            while time.monotonic() < end:
                total, done = dcc.outcomes()
                if done - before[1] >= len(xmls):
                    break
                time.sleep(0.5)
            w1 = time.monotonic()
            c1, d1, b1 = tree_cpu(sim.pid), tree_cpu(dcc_proc.pid), bcpu()
            if broker is not None:
                r["wave_broker_cpu_s"] = round(b1 - b0, 1)
            total, done = dcc.outcomes()
            r.update(wave_requests=len(xmls), wave_refused=len(bad), wave_outcomes=done - before[1],
                     wave_requests_at_dcc=total - before[0],
                     wave_last_outcome_s=round(w1 - w0, 1),
                     wave_sim_cpu_s=round(c1 - c0, 1), wave_dcc_cpu_s=round(d1 - d0, 1),
                     wave_complete=(done - before[1] == len(xmls) and total == want))
            log("  wave: %d requests, last outcome after %.1f s (sim CPU %.1f s, DCC CPU "
                "%.1f s), %d outcomes" % (len(xmls), r["wave_last_outcome_s"],
                                          r["wave_sim_cpu_s"], r["wave_dcc_cpu_s"],
                                          r["wave_outcomes"]))
    finally:
        sim.send_signal(signal.SIGTERM)
        try:
            sim.wait(300)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
    lines = [x for x in logf.read_text().splitlines() if x.startswith("{")]
    if lines:
        s = json.loads(lines[-1])
        r["summary"] = {k: s.get(k) for k in ("hubs", "hubs_connected", "devices",
                                              "devices_joined", "outcomes", "errors",
                                              "devices_with_two_or_more", "cpu_s",
                                              "max_rss_mb", "error_kinds")}
    return r


def write_md(path: Path, res: dict) -> None:
    L = ["# Fleet simulator: one process's capacity", "",
         "Written by `%s` on %s (%s, %d cores, Python %s). One `hanota fleet sim` process "
         "(one event loop; `procs` > 1: `fleet sim --procs`, figures summed over its processes) "
         "against one `hanota dcc serve --wan-heartbeat 120` (SQLite; the WAN on its websocket "
         "or on NATS JetStream, `--wan nats://`, with a nats-server of the bench's own) on the "
         "same machine; each premises is a Comms Hub (its own SQLite database, WAN connection "
         "and in-process HAN) with %d simulated devices (roles ppmid, hcalcs, althan in turn); "
         "`--poll` is a busy hub's scheduler pass (`fleet sim --poll`; an idle hub passes when "
         "woken or every `--quiet` seconds, %g here). Idle: every hub on the WAN, nothing to "
         "do, over %g s." % (res["command"], res["date"], res["machine"],
                                             os.cpu_count(), platform.python_version(),
                                             res["devices"], res.get("quiet", 300.0), res["idle"]), "",
         "| WAN | premises | devices | procs | --poll (s) | all hubs on the WAN (s) | idle CPU, "
         "sim (% of a core) | idle CPU, DCC | idle CPU, nats-server | RSS (MB) | RSS per "
         "premises (KB) | fds |",
         "|:--|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["sizes"]:
        L.append("| %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r.get("wan", "websocket"), r["premises"], r["devices"], r.get("procs", 1),
            r.get("poll"),
            r.get("connected_s"), r.get("idle_cpu_pct"), r.get("idle_dcc_cpu_pct"),
            r.get("idle_broker_cpu_pct", "-"),
            r.get("rss_mb"), r.get("rss_kb_per_premises"),
            r.get("fds")))
    waves = [r for r in res["sizes"] if "wave_requests" in r]
    if waves:
        L += ["", "A firmware wave: the SR each device takes (11.4; 11.1 for HCALCS) POSTed "
              "through DUIS for every device (8 at a time), 2,000-byte images:", "",
              "| WAN | premises | --poll (s) | requests | POSTs took (s) | last outcome after "
              "(s) | outcomes | sim CPU (s) | DCC CPU (s) | nats-server CPU (s) | complete |",
              "|:--|---:|---:|---:|---:|---:|---:|---:|---:|---:|:--|"]
        for r in waves:
            L.append("| %s | %d | %s | %d | %s | %s | %d | %s | %s | %s | %s |" % (
                r.get("wan", "websocket"), r["premises"], r["poll"], r["wave_requests"], r["wave_post_s"], r["wave_last_outcome_s"],
                r["wave_outcomes"], r["wave_sim_cpu_s"], r["wave_dcc_cpu_s"],
                r.get("wave_broker_cpu_s", "-"), "yes" if r["wave_complete"] else "NO"))
    L += ["", "The simulator's own summaries (`--json`) at the end of each run:", ""]
    for r in res["sizes"]:
        L.append("- %s, %d premises, --poll %s: `%s`" % (r.get("wan", "websocket"),
                                                         r["premises"], r.get("poll"),
                                                     json.dumps(r.get("summary") or r.get("error"))))
    if res.get("notes"):
        L += [""] + res["notes"]
    path.write_text("\n".join(L) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="250,1000,3000", help="premises per run")
    ap.add_argument("--devices", type=int, default=3, help="devices per premises")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of the idle window")
    ap.add_argument("--wave", type=int, default=1000,
                    help="firmware wave for sizes up to this many premises (0: none)")
    ap.add_argument("--polls", default="2,10", help="fleet sim --poll values, each size with each")
    ap.add_argument("--nats-sizes", default="250",
                    help="premises per run with the WAN on NATS JetStream ('' for none)")
    ap.add_argument("--nats-polls", default="10", help="fleet sim --poll values with NATS")
    ap.add_argument("--quiet", type=float, default=300.0,
                    help="fleet sim --quiet: an idle hub's own pass, seconds")
    ap.add_argument("--procs", type=int, default=1,
                    help="fleet sim --procs (its CPU, memory and fds are summed over them)")
    ap.add_argument("--notes", help="a file whose text goes at the end of the results")
    ap.add_argument("--out", default=str(HERE / "FLEET.md"))
    ap.add_argument("--json", help="also write the figures as JSON here")
    a = ap.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",") if x.strip()]

    def log(msg):
        print(msg, flush=True)
    res = {"command": "python -m bench.fleet " + " ".join(argv if argv is not None
                                                          else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": platform.machine(), "devices": a.devices, "idle": a.idle, "quiet": a.quiet, "sizes": []}
    if a.notes:
        res["notes"] = Path(a.notes).read_text().rstrip().splitlines()
    polls = [float(x) for x in a.polls.split(",") if x.strip()]
    phases = [("websocket", [(p, n) for p in polls for n in sizes])]
    nats_runs = [(float(p), int(n)) for p in a.nats_polls.split(",") if p.strip()
                 for n in a.nats_sizes.split(",") if n.strip()]
    if nats_runs:
        phases.append(("nats", nats_runs))
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as d:
        tmp = Path(d)
        dcc = Dcc(tmp)
        fleet = 0
        for wan, runs in phases:
            nats = start_nats() if wan == "nats" else None
            broker, wan_url = (nats.proc, nats.url) if nats is not None else (None, None)
            dlog = tmp / ("dcc-%s.log" % wan)
            try:
                dcc_proc = start(["dcc", "serve", "--db", str(dcc.db), "--pki",
                                  str(dcc.pki_dir), "--listen", "127.0.0.1:0",
                                  "--no-campaigns", "--wan-heartbeat", "120"]
                                 + (["--wan", wan_url] if wan_url else []),
                                 dlog, "serving on http://", 30)
            except Exception:
                if nats is not None:
                    nats.cleanup()
                raise
            url = re.search(r"serving on (http://\S+)", dlog.read_text()).group(1)
            try:
                for poll, n in runs:
                    fleet += 1  # each run its own identities
                    log("%s: fleet of %d premises x %d devices, --poll %g" % (
                        wan, n, a.devices, poll))
                    try:
                        res["sizes"].append(one_size(dcc, dcc_proc, url, n, a.devices, fleet,
                                                     a.idle, a.wave and n <= a.wave, poll, log,
                                                     wan_url, broker, a.procs,
                                                     a.quiet))
                    except Exception as e:  # noqa: BLE001 - recorded; the next size runs
                        log("  FAILED: %s" % e)
                        res["sizes"].append({"premises": n, "devices": n * a.devices,
                                             "poll": poll, "wan": wan, "error": str(e)[:400]})
                    write_md(Path(a.out), res)
            finally:
                for p in (dcc_proc, broker):
                    if p is None:
                        continue
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(30)
                    except subprocess.TimeoutExpired:
                        p.kill()
                if nats is not None:
                    nats.cleanup()  # its store directory too
    write_md(Path(a.out), res)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    log("wrote %s" % a.out)
    return 0 if all("error" not in r for r in res["sizes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
