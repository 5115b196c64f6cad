"""Run a slice of a simulated fleet: a Comms Hub per premises with its simulated HAN devices,
every hub on its WAN to one DCC (`hanota fleet sim`).

One process holds many premises on one event loop: per premises a `hanota.hub.Hub` over its
own SQLite database (under `--dir`, kept between runs), its WAN client to the DCC
(`hanota.dcc.wan_nats.make_hub_wan`: the websocket for http(s)://, JetStream for nats://,
where the process's hubs share one NATS connection, `wan_nats.NatsPool`)
and its devices (`fleet.device.SimDevice`) on an in-process HAN (`fleet.device.HanBus`):
no thread and no socket per device, and the hubs poll their databases at `poll` seconds
rather than the interactive hub's quarter second. `--procs P` cuts the slice into P
ranges, each in its own process (multiprocessing, spawned); the parent adds up their
summaries. A summary: hubs, hubs connected to the DCC, devices joined, the hubs' request
outcomes, what the devices did, errors, time to start, CPU seconds and peak memory.

With `--vboards N` the first N premises of the slice also hold a virtual board each
(`fleet.vboards`: started, flashed, deployed and joined before "fleet started" is said; a
board that cannot be brought up stops the fleet with an error naming it); the summary then
counts them, their outcomes and the firmware versions they run.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from ..errors import HanotaError
from .plan import FleetPlan, FleetUsageError, Premises, split

log = logging.getLogger("hanota.fleet")


class FleetError(HanotaError):
    """The fleet cannot run (the DCC unreachable, a database that cannot be opened)."""

    reason = "fleet"


@dataclass
class SimConfig:
    plan: FleetPlan
    lo: int
    hi: int
    dcc_url: str
    dir: str
    suppliers: list[str] = field(default_factory=list)  # the premises' Responsible Suppliers
    poll: float = 2.0  # hub scheduler and WAN poll, seconds
    duration: float | None = None  # --for
    report: float = 10.0  # seconds between progress lines (0: none)
    start_rate: float = 200.0  # premises started per second (a reconnect storm is not a test)
    max_in_flight: int = 2
    wan_token: str | None = None
    quiet: float = 300.0  # an idle hub's fallback pass (scheduler, WAN), seconds
    wan_heartbeat: float | None = 120.0  # the hubs' websocket pings, seconds (None: none)
    vboard_ws: Any = None  # fleet.vboards.Workspace when the slice holds virtual boards
    vboard_lo: int = 0  # premises [vboard_lo, vboard_hi) hold one each (plan.vboard_range)
    vboard_hi: int = 0

    def has_vboard(self, g: int) -> bool:
        return self.vboard_ws is not None and self.vboard_lo <= g < self.vboard_hi


# ---------------------------------------------------------------- checking the DCC


def check_dcc_url(url: str) -> str:
    """The --dcc URL, or FleetUsageError naming what is wrong with it."""
    from ..dcc.wan_nats import is_nats

    u = url.strip()
    if is_nats(u):
        parts = urlsplit(u)
    elif u.startswith(("http://", "https://")):
        parts = urlsplit(u)
    else:
        raise FleetUsageError("--dcc %r: give the DCC's WAN as http://HOST:PORT (hanota dcc "
                              "serve's address) or nats://HOST:PORT (its NATS server)" % url)
    try:
        port = parts.port
    except ValueError:
        raise FleetUsageError("--dcc %r: the port is not a number from 1 to 65535" % url) \
            from None
    if not parts.hostname:
        raise FleetUsageError("--dcc %r: no host" % url)
    if port is None and parts.scheme in ("nats", "tls"):
        raise FleetUsageError("--dcc %r: give the NATS server's port" % url)
    return u.rstrip("/")


async def probe_dcc(url: str, timeout: float = 5.0) -> None:
    """FleetError unless the DCC's WAN answers at url (its HTTP server, or the NATS server)."""
    from ..dcc.wan_nats import is_nats

    if is_nats(url):
        import nats

        try:
            nc = await asyncio.wait_for(nats.connect(url, connect_timeout=timeout,
                                                     allow_reconnect=False,
                                                     max_reconnect_attempts=0), timeout + 1)
        except Exception as e:  # noqa: BLE001 - nats-py raises many kinds
            raise FleetError("cannot reach the NATS server at %s: %s" % (
                url, str(e) or type(e).__name__)) from None
        await nc.close()
        return
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(url + "/wan/0000000000000000") as r:
                # the DCC's WAN path answers a plain GET with "upgrade to a websocket" (or a
                # refusal without a token); anything but 404 says something serves the WAN
                if r.status == 404:
                    raise FleetError("%s is an HTTP server without the DCC's WAN (/wan/...): "
                                     "give hanota dcc serve's address" % url)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        raise FleetError("cannot reach the DCC at %s: %s" % (url, str(e) or
                                                             type(e).__name__)) from None


# ---------------------------------------------------------------- one process


def _raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _sim_hub_class():
    """`hanota.hub.Hub` whose scheduler pass, while the hub has no open request and no task,
    only checks that (and saves its heartbeat and device counters): a hub's full pass is a
    dozen queries, and a process holds thousands of idle hubs. Such an idle hub passes again
    only when woken (a DCC message applied: `CommsHubWan.apply` wakes it) or after `quiet`
    seconds; a busy one every poll."""
    from ..hub.hub import Hub

    class SimHub(Hub):
        quiet = 300.0
        _busy = True

        def pause_s(self) -> float:
            return self.options.poll_interval if self._busy \
                else max(self.quiet, self.options.poll_interval)

        async def tick(self) -> None:
            self._busy = True
            if self._tasks or self.server is None \
                    or self.db.one("SELECT 1 FROM requests WHERE outcome IS NULL LIMIT 1") \
                    or self.db.current_hub()["eui"] != self.hub_eui:
                await super().tick()
                return
            if self.server.all_transfers():
                self._drop_stale_transfers()
            self._persist_devices()
            self._heartbeat()
            self._busy = bool(self.server.all_transfers())
    return SimHub


class _Premises:
    """One premises in the process: its hub, WAN and devices."""

    def __init__(self, spec: Premises):
        self.spec = spec
        self.hub: Any = None
        self.wan: Any = None
        self.bus: Any = None
        self.devices: list[Any] = []
        self.vboard: Any = None  # its virtual board (fleet.vboards.FleetBoard), if any


class FleetProcess:
    """Premises [cfg.lo, cfg.hi) on the running event loop."""

    def __init__(self, cfg: SimConfig, say: Callable[[str], None] = print):
        self.cfg = cfg
        self.say = say
        self.stats: Counter = Counter()  # what the devices did (shared by all of them)
        self.premises: list[_Premises] = []
        self.errors: Counter = Counter()
        self.started_in: float | None = None
        self.all_connected_in: float | None = None
        self._t0 = 0.0
        self._tasks: list[asyncio.Task] = []
        self._hub_cls = _sim_hub_class()
        self.nats_pool: Any = None  # one NATS connection for all hubs of the process
        self.boards: list[Any] = []  # the virtual boards (fleet.vboards.FleetBoard)
        self._board_tasks: list[asyncio.Task] = []
        self._board_gate: asyncio.Semaphore | None = None
        from ..server.blocks import Files
        self.files = Files(limit=IMAGE_FILES)

    def _hub_options(self):
        from ..hub import HubOptions

        return HubOptions(max_in_flight=self.cfg.max_in_flight, poll_interval=self.cfg.poll,
                          heartbeat_interval=max(30.0, self.cfg.poll, self.cfg.quiet),
                          progress_interval=5.0)

    def _prepare_db(self, p: Premises) -> Path:
        """The premises' hub database: its identity and devices as the plan says."""
        from ..dcc.wan import eui_hex
        from ..hub import HubDB
        from ..hub import registry as reg

        d = Path(self.cfg.dir) / ("f%d-p%08d" % (self.cfg.plan.fleet, p.index))
        d.mkdir(parents=True, exist_ok=True)
        path = d / "hub.db"
        with HubDB.open(path) as db:
            cur = eui_hex(db.current_hub()["eui"])
            if cur != p.hub_eui:  # a new database: it takes the plan's identity
                if db.one("SELECT count(*) FROM hubs")[0] > 1 \
                        or db.one("SELECT count(*) FROM devices")[0]:
                    raise FleetError("%s: this hub database is not premises %s's (hub %s, not "
                                     "%s): give another --dir" % (path, p.mpxn, cur, p.hub_eui))
                with db.tx() as c:
                    c.execute("UPDATE hubs SET eui = ? WHERE retired IS NULL",
                              (reg.eui_text(p.hub_eui),))
            vb = (self.cfg.plan.vboard_at(p.index),) if self.cfg.has_vboard(p.index) else ()
            for s in p.devices + vb:
                if reg.device(db, s.eui) is None:
                    reg.add_device(db, s.eui_wire, s.role, s.install_code, p.mpxn)
            if self.cfg.suppliers and p.devices \
                    and not reg.responsible_suppliers(db, p.devices[0].eui):
                reg.set_suppliers(db, p.mpxn, list(self.cfg.suppliers))
        return path

    async def _start_one(self, p: Premises) -> _Premises:
        from ..dcc.wan_nats import is_nats, make_hub_wan
        from ..hub.db import eui_text
        from .device import HanBus, SimDevice

        one = _Premises(p)
        path = self._prepare_db(p)
        one.hub = self._hub_cls(path, udp=None, options=self._hub_options())
        one.hub.quiet = self.cfg.quiet
        await one.hub.start()
        try:
            # the simulated devices and the virtual board are fresh chips every run, their
            # frame counters from 1: the hub (whose database a run keeps) forgets the last
            # ones it took from the previous run's
            fresh = list(p.devices)
            if self.cfg.has_vboard(p.index):
                fresh.append(self.cfg.plan.vboard_at(p.index))
            if fresh:
                with one.hub.db.tx() as c:
                    c.executemany("UPDATE devices SET last_counter = NULL WHERE eui = ?",
                                  [(eui_text(s.eui),) for s in fresh])
            # the server's stall watchdog at half the stall timeout, not every second
            srv = one.hub.server
            srv.watch_interval = max(srv.watch_interval, self.cfg.poll,
                                     one.hub.options.stall_timeout / 2)
            # the process's hubs read their images through one LRU of open files: a hub's
            # own would keep each image it served open, thousands of hubs past the fd limit
            srv.serving.blocks.files.close()
            srv.serving.blocks.files = self.files
            one.bus = srv.attach_link(HanBus)
            kw: dict[str, Any] = {}
            if is_nats(self.cfg.dcc_url):
                await self._connect_nats()  # (start() made it already)
                kw["pool"] = self.nats_pool  # all hubs of the process on one connection
            one.wan = make_hub_wan(one.hub, self.cfg.dcc_url, premises=p.mpxn,
                                   poll=self.cfg.poll, backoff=(0.5, 10.0),
                                   token=self.cfg.wan_token, **kw)
            # woken by what it has to do (a DCC message, an outcome or alert the hub
            # records, a queued message); otherwise a pass every `quiet` seconds
            one.wan.quiet = self.cfg.quiet
            one.wan.heartbeat = self.cfg.wan_heartbeat
            await one.wan.start()
        except BaseException:
            await one.hub.stop()
            raise
        for s in p.devices:
            dev = SimDevice(s.eui_wire, s.install_code, s.role, self.stats,
                            version=self.cfg.plan.version)
            dev.attach(one.bus)
            one.devices.append(dev)
            self._spawn(dev.start())
        if self.cfg.has_vboard(p.index):
            self._start_vboard(one, path.parent)
        return one

    def _start_vboard(self, one: _Premises, pdir: Path) -> None:
        """Bring premises `one`'s virtual board up in the background (a few at a time);
        `start` waits for them all."""
        from . import vboards

        fb = vboards.FleetBoard(self.cfg.vboard_ws, one.spec,
                                self.cfg.plan.vboard_at(one.spec.index), pdir / "vboard")
        one.vboard = fb
        self.boards.append(fb)
        if self._board_gate is None:
            self._board_gate = asyncio.Semaphore(vboards.BRING_UP_AT_ONCE)
        self._board_tasks.append(asyncio.get_running_loop().create_task(
            vboards.bring_up(fb, one.hub, self._board_gate)))

    async def _connect_nats(self) -> None:
        """On NATS, the process's one connection, made before the hubs start (their start
        keeps the event loop too busy for a connect's timeout); a failure here is only
        logged: each hub's WAN tries again."""
        from ..dcc.wan_nats import NatsPool, _nats_errors, is_nats

        if not is_nats(self.cfg.dcc_url) or self.nats_pool is not None:
            return
        self.nats_pool = NatsPool(self.cfg.dcc_url, name="hanota-fleet-%d-%d" % (
            self.cfg.lo, self.cfg.hi))
        try:
            await self.nats_pool.connection()
        except _nats_errors() as e:
            log.warning("NATS %s: %s; the hubs try again", self.cfg.dcc_url,
                        str(e) or type(e).__name__)

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(t)
        t.add_done_callback(self._done)

    def _done(self, t: asyncio.Task) -> None:
        if not t.cancelled() and t.exception() is not None:
            e = t.exception()
            self.errors["%s: %s" % (type(e).__name__, str(e)[:120])] += 1

    async def start(self) -> None:
        _raise_fd_limit()
        self._t0 = time.monotonic()
        await self._connect_nats()
        gap = 1.0 / self.cfg.start_rate if self.cfg.start_rate > 0 else 0.0
        for p in self.cfg.plan.range(self.cfg.lo, self.cfg.hi):
            try:
                self.premises.append(await self._start_one(p))
            except HanotaError as e:
                self.errors["premises %s: %s" % (p.mpxn, e)] += 1
            except OSError as e:
                if e.errno != errno.EMFILE:
                    raise
                self.errors["the open-file limit (%d) was reached after %d premises (each "
                            "takes about 6 descriptors): give more --procs"
                            % (_raise_fd_limit(), len(self.premises))] += 1
                self.say("fleet: out of file descriptors after %d premises; not starting "
                         "more (give more --procs)" % len(self.premises))
                break
            if gap:
                await asyncio.sleep(gap)
        if self._board_tasks:
            await self._boards_up()
        self.started_in = time.monotonic() - self._t0
        self.say("fleet started: %d premises, %d devices%s in %.1f s (premises %d..%d)" % (
            len(self.premises), sum(len(p.devices) for p in self.premises),
            " and %d virtual boards" % len(self.boards) if self.boards else "",
            self.started_in, self.cfg.lo, self.cfg.hi - 1))

    async def _boards_up(self) -> None:
        """Every virtual board brought up and joined; else the first failure (any others
        logged), once the others' bring-ups have ended."""
        done = await asyncio.gather(*self._board_tasks, return_exceptions=True)
        bad = [e for e in done if isinstance(e, BaseException)]
        for e in bad[1:]:
            log.error("%s", e)
        if bad:
            if len(bad) > 1:
                raise type(bad[0])("%s (and %d more virtual boards failed)" % (bad[0],
                                                                              len(bad) - 1))
            raise bad[0]
        self.say("fleet vboards: %d virtual boards deployed and joined (%s)" % (
            len(self.boards), ", ".join(fb.name for fb in self.boards)))

    async def run(self, stop: asyncio.Event) -> dict:
        """Start, keep going until `stop` is set or cfg.duration has passed, stop; the
        summary."""
        end = None if self.cfg.duration is None else time.monotonic() + self.cfg.duration
        starter = asyncio.get_running_loop().create_task(self.start())
        last_report = time.monotonic()
        try:
            while not stop.is_set() and (end is None or time.monotonic() < end):
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
                failed = starter.exception() if starter.done() else None
                if failed is not None:
                    raise failed
                if self.all_connected_in is None and starter.done() and self.premises \
                        and all(p.wan.connected.is_set() for p in self.premises):
                    self.all_connected_in = time.monotonic() - self._t0
                    self.say("fleet connected: all %d hubs on the WAN to %s" % (
                        len(self.premises), self.cfg.dcc_url))
                if self.cfg.report and time.monotonic() - last_report >= self.cfg.report:
                    last_report = time.monotonic()
                    self.say(progress_line(self.summary(outcomes=False)))
        finally:
            if not starter.done():
                starter.cancel()
                await asyncio.gather(starter, return_exceptions=True)
            summary = self.summary()
            await self.stop()
        summary["stopped_in_s"] = round(time.monotonic() - self._t0, 2)
        return summary

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.boards:  # each board stops (its MicroPython process, threads, ptys)
            for t in self._board_tasks:
                t.cancel()
            await asyncio.gather(*self._board_tasks, return_exceptions=True)
            stopped = await asyncio.gather(*(asyncio.to_thread(fb.stop) for fb in self.boards),
                                           return_exceptions=True)
            for fb, r in zip(self.boards, stopped):
                if isinstance(r, Exception):
                    self.errors["stopping %s: %s" % (fb.name, r)] += 1
        for p in self.premises:
            for d in p.devices:
                d.close()
        # every WAN at once (closing thousands of connections one after another takes
        # minutes), then each hub (its database, no network)
        done = await asyncio.gather(*(p.wan.stop() for p in self.premises),
                                    return_exceptions=True)
        for p, r in zip(self.premises, done):
            if isinstance(r, Exception):
                self.errors["stopping %s's WAN: %s" % (p.spec.mpxn, r)] += 1
            try:
                await p.hub.stop()
            except Exception as e:  # noqa: BLE001 - counted; the others still stop
                self.errors["stopping %s: %s" % (p.spec.mpxn, e)] += 1
        if self.nats_pool is not None:
            await self.nats_pool.close()
        self.files.close()

    def summary(self, outcomes: bool = True) -> dict:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        s: dict[str, Any] = {
            "premises": self.cfg.hi - self.cfg.lo,
            "hubs": len(self.premises),
            "hubs_connected": sum(1 for p in self.premises if p.wan.connected.is_set()),
            "wan_connections": sum(p.wan.connections for p in self.premises),
            "devices": sum(len(p.devices) for p in self.premises),
            "devices_joined": sum(1 for p in self.premises for d in p.devices if d.joined),
            "device": {k: v for k, v in sorted(self.stats.items())
                       if not k.startswith("error: ")},
            "errors": sum(self.errors.values()) + self.stats["errors"],
            "error_kinds": dict(self.errors.most_common(10)) | {
                k[7:]: v for k, v in self.stats.items() if k.startswith("error: ")},
            "started_in_s": None if self.started_in is None else round(self.started_in, 2),
            "all_connected_in_s": None if self.all_connected_in is None
            else round(self.all_connected_in, 2),
            "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "max_rss_mb": round(ru.ru_maxrss / 1024, 1),
            "processes": 1,
        }
        if outcomes:
            oc: Counter = Counter()
            per_device: Counter = Counter()
            pending = 0
            for p in self.premises:
                for eui, outcome in p.hub.db.all(
                        "SELECT eui, outcome FROM requests WHERE kind = 'update' "
                        "OR kind = 'activate'"):
                    if outcome is None:
                        pending += 1
                    else:
                        oc[outcome] += 1
                        per_device[eui] += 1
            s["outcomes"] = dict(sorted(oc.items()))
            s["requests_pending"] = pending
            s["devices_with_outcome"] = len(per_device)
            s["devices_with_two_or_more"] = sum(1 for n in per_device.values() if n > 1)
        if self.boards:
            s.update(self._vboard_summary(outcomes))
        return s

    def _vboard_summary(self, outcomes: bool) -> dict:
        """The virtual boards: how many, joined, their requests' outcomes and the firmware
        versions they run (by the hub's registry: their HELLO / Activation Alert)."""
        from . import vboards

        s: dict[str, Any] = {"vboards": len(self.boards), "vboards_joined": 0}
        oc: Counter = Counter()
        running: Counter = Counter()
        for p in self.premises:
            fb = p.vboard
            if fb is None:
                continue
            if p.hub.server is not None and vboards.joined(p.hub.server, fb.spec.eui_wire):
                s["vboards_joined"] += 1
            if not outcomes:
                continue
            from ..hub import registry as reg
            dev = reg.device(p.hub.db, fb.spec.eui)
            if dev is not None and dev["running_version"] is not None:
                running[str(dev["running_version"])] += 1
            for (outcome,) in p.hub.db.all(
                    "SELECT outcome FROM requests WHERE eui = ? AND outcome IS NOT NULL "
                    "AND (kind = 'update' OR kind = 'activate')", (reg.eui_text(fb.spec.eui),)):
                oc[outcome] += 1
        if outcomes:
            s["vboard_outcomes"] = dict(sorted(oc.items()))
            s["vboard_running"] = dict(sorted(running.items()))
        return s


def progress_line(s: dict) -> str:
    line = "fleet: %d/%d hubs connected, %d/%d devices joined, %s; %d errors, cpu %.1f s, " \
           "rss %.0f MB" % (s["hubs_connected"], s["premises"], s["devices_joined"],
                            s["devices"], ", ".join("%s %d" % kv for kv in s["device"].items()
                                                    if kv[0] != "joined") or "no OTA yet",
                            s["errors"], s["cpu_s"], s["max_rss_mb"])
    if "outcomes" in s:
        line += "; outcomes: %s" % (", ".join("%s %d" % kv for kv in s["outcomes"].items())
                                    or "none")
    if s.get("vboards"):
        line += "; vboards: %d/%d joined" % (s["vboards_joined"], s["vboards"])
        if "vboard_outcomes" in s:
            line += ", outcomes: %s, running: %s" % (
                ", ".join("%s %d" % kv for kv in s["vboard_outcomes"].items()) or "none",
                ", ".join("version %s x%d" % kv for kv in s["vboard_running"].items())
                or "unknown")
    return line


def run_process(cfg: SimConfig, say: Callable[[str], None] = print) -> dict:
    """Premises [cfg.lo, cfg.hi) in this process until SIGINT/SIGTERM or cfg.duration."""
    async def main() -> dict:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await FleetProcess(cfg, say).run(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    return asyncio.run(main())


def _child(cfg: SimConfig, k: int, conn) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    def say(text: str) -> None:
        print("[proc %d] %s" % (k, text), flush=True)
    from .vboards import VBoardError
    try:
        conn.send(("ok", run_process(cfg, say)))
    except VBoardError as e:  # the fleet stops: the parent stops the other processes
        conn.send(("fatal", str(e)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", "%s: %s" % (type(e).__name__, e)))
    finally:
        conn.close()


def merge(parts: list[dict]) -> dict:
    """The summaries of several processes as one."""
    out: dict[str, Any] = {}
    for s in parts:
        for k, v in s.items():
            if isinstance(v, dict):
                d = out.setdefault(k, {})
                for kk, vv in v.items():
                    d[kk] = d.get(kk, 0) + vv
            elif k in ("started_in_s", "all_connected_in_s", "stopped_in_s", "max_rss_mb"):
                out[k] = None if v is None or (k in out and out[k] is None) \
                    else max(out.get(k) or 0, v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = round(out.get(k, 0) + v, 2)
            else:
                out[k] = v
    if parts:
        out["processes"] = len(parts)
    return out


FDS_PER_PREMISES = 6  # a hub's database (3), its counter journal and lock, its WAN connection
IMAGE_FILES = 32  # open upgrade files the process's hubs share (one LRU; a miss is an open)
FDS_SPARE = 64 + IMAGE_FILES


def check_fds(premises: int, procs: int, vboards: int = 0) -> None:
    """FleetUsageError when a process would hold more premises than its open-file limit (the
    hard limit, which the process raises its own to) allows (virtual boards: counted as if
    all were in one process)."""
    from .vboards import FDS_PER_VBOARD

    per = -(-premises // procs)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    spare = FDS_SPARE + vboards * FDS_PER_VBOARD
    if hard != resource.RLIM_INFINITY and per * FDS_PER_PREMISES + spare > hard:
        most = max(1, (hard - spare) // FDS_PER_PREMISES)
        raise FleetUsageError(
            "%d premises in a process need about %d file descriptors; this machine's limit is "
            "%d (ulimit -Hn): give --procs %d or more (a process holds at most %d premises)"
            % (per, per * FDS_PER_PREMISES + spare, hard, -(-premises // most), most))


def run(cfg: SimConfig, procs: int = 1, say: Callable[[str], None] = print) -> dict:
    """The slice [cfg.lo, cfg.hi) in `procs` processes (1: this one); the summary."""
    check_fds(cfg.hi - cfg.lo, procs, cfg.vboard_hi - cfg.vboard_lo if cfg.vboard_ws else 0)
    asyncio.run(probe_dcc(cfg.dcc_url))
    Path(cfg.dir).mkdir(parents=True, exist_ok=True)
    if procs <= 1:
        return run_process(cfg, say)
    ctx = multiprocessing.get_context("spawn")
    children = []
    for k, (lo, hi) in enumerate(split(cfg.lo, cfg.hi, procs)):
        a, b = ctx.Pipe(duplex=False)
        c = SimConfig(**{**asdict(cfg), "plan": cfg.plan, "lo": lo, "hi": hi,
                         "vboard_ws": cfg.vboard_ws})
        p = ctx.Process(target=_child, args=(c, k, b), name="fleet-%d" % k)
        p.start()
        b.close()
        children.append((p, a))
    stopping = []

    def forward(signum, frame):  # the children stop and report; the parent waits for them
        stopping.append(signum)
        for p, _ in children:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    parts, failures, fatal = [], [], []
    try:
        waiting = list(children)
        while waiting:
            for p, a in list(waiting):
                if a.poll(0):
                    try:
                        kind, value = a.recv()
                    except EOFError:
                        kind, value = "error", "exited without a summary"
                elif not p.is_alive():
                    kind, value = "error", "exited (code %s) without a summary" % p.exitcode
                else:
                    continue
                waiting.remove((p, a))
                if kind == "fatal" and not fatal:  # a virtual board failed: all stop
                    for q, _ in waiting:
                        if q.is_alive():
                            os.kill(q.pid, signal.SIGTERM)
                (parts if kind == "ok" else fatal if kind == "fatal" else failures) \
                    .append(value)
                p.join(10)
            if waiting:
                multiprocessing.connection.wait([a for _, a in waiting], 0.5)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for p, _ in children:
            if p.is_alive():
                p.kill()
    if fatal:
        from .vboards import VBoardError
        raise VBoardError("; ".join(fatal))
    out = merge(parts)
    if failures:
        out["errors"] = out.get("errors", 0) + len(failures)
        out.setdefault("error_kinds", {}).update({"process: " + f: 1 for f in failures})
    return out
