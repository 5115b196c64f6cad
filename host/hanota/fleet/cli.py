"""`hanota fleet`: a simulated fleet of Comms Hubs and HAN devices against one DCC.

    hanota fleet plan     --premises N --devices K [--slice i/n] [--json]
    hanota fleet register --premises N --devices K --supplier EUI [--slice i/n] [--db DB]
    hanota fleet sim      --premises N --devices K --dcc URL [--slice i/n] [--procs P]
                          [--dir DIR] [--for S] [--json] [--register --supplier EUI --db DB]
                          [--vboards V [--vboard-kind KIND] [--vboard-role R]
                           [--vboard-keys DIR]]

Exit codes: 0 done; 1 bad arguments; 2 the fleet could not run (the DCC unreachable, a
database that cannot be opened).
"""
from __future__ import annotations

import json
import sys

import click

from ..errors import HanotaError
from . import plan as fp


class _Exit(click.ClickException):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.exit_code = code


def _errors(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except fp.FleetUsageError as e:
            raise _Exit(str(e), 1) from None
        except HanotaError as e:
            raise _Exit(str(e), 1 if getattr(e, "reason", "") in ("usage", "bad-eui",
                                                                     "bad-mpxn") else 2) from None
    return wrapper


def _fleet_options(fn):
    opts = [
        click.option("--premises", "n_premises", type=click.IntRange(1), required=True,
                     help="Premises in the whole fleet (every slice and machine together); "
                          "one Comms Hub each."),
        click.option("--devices", "n_devices", type=click.IntRange(1, fp.MAX_DEVICES - 1),
                     default=3, show_default=True, help="Simulated HAN devices per premises."),
        click.option("--roles", default=",".join(fp.DEFAULT_ROLES), show_default=True,
                     help="Device roles, repeated in this order at each premises "
                          "(ppmid, hcalcs, althan)."),
        click.option("--fleet", "fleet_id", type=click.IntRange(0, fp.MAX_FLEET), default=0,
                     show_default=True, help="Fleet number: keeps the identities of fleets "
                                             "that share one DCC apart."),
        click.option("--slice", "slice_text", default=None,
                     help="i/n: this machine runs the i-th of n equal ranges of the premises "
                          "(default: all)."),
        click.option("--version", "version", type=click.IntRange(0, 0xFFFFFFFF), default=1,
                     show_default=True, help="Firmware version the devices run at the start."),
        click.option("--vboards", "n_vboards", type=click.IntRange(0), default=0,
                     show_default=True,
                     help="Virtual boards (the real MicroPython device code over emulated "
                          "flash): one in each of the first V premises of the slice, besides "
                          "its simulated devices; its EUI-64 is device slot 15 of the "
                          "premises (F1EF<fleet><premises * 16 + 15>)."),
        click.option("--vboard-role", type=click.Choice(sorted(fp.DUIS_TYPES)),
                     default="ppmid", show_default=True, help="The virtual boards' role."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _plan(n_premises, n_devices, roles, fleet_id, version, n_vboards=0,
          vboard_role="ppmid") -> fp.FleetPlan:
    return fp.FleetPlan(n_premises, n_devices, fleet_id,
                        tuple(r.strip().lower() for r in roles.split(",") if r.strip()), version,
                        n_vboards, vboard_role)


def _suppliers(values: tuple[str, ...]) -> list[str]:
    from ..dcc.wan import eui_hex

    if not 1 <= len(values) <= 2:
        raise fp.FleetUsageError("--supplier: one Responsible Supplier (entity ID, EUI-64), or "
                                 "two for dual-Supplier premises")
    return [eui_hex(v) for v in values]


def _register(db_path, plan, lo, hi, suppliers) -> dict:
    from ..dcc.store import DccStore

    with DccStore(db_path) as store:
        return fp.register(store, plan, lo, hi, suppliers)


@click.group("fleet")
def fleet() -> None:
    """A simulated fleet: many Comms Hubs with simulated HAN devices against one DCC."""


@fleet.command("plan")
@_fleet_options
@click.option("--supplier", "suppliers", multiple=True,
              help="Responsible Supplier entity ID to write with each premises (optional).")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one premises a line.")
@_errors
def plan_cmd(n_premises, n_devices, roles, fleet_id, slice_text, version, n_vboards,
             vboard_role, suppliers, as_json):
    """Print the premises, Comms Hubs and devices of the fleet (or of a slice): what the DCC's
    registration data must hold (`hanota fleet register` writes it)."""
    plan = _plan(n_premises, n_devices, roles, fleet_id, version, n_vboards, vboard_role)
    lo, hi = fp.slice_range(plan, slice_text)
    va, vb = plan.vboard_range(lo, hi)
    sup = _suppliers(suppliers) if suppliers else None
    for p in plan.range(lo, hi):
        board = plan.vboard_at(p.index) if va <= p.index < vb else None
        if as_json:
            click.echo(json.dumps(fp.as_json(p, sup, board)))
        else:
            click.echo("%s hub %s: %s%s" % (p.mpxn, p.hub_eui, ", ".join(
                "%s %s" % (s.role, s.eui) for s in p.devices),
                "; virtual board %s %s" % (board.role, board.eui) if board else ""))


@fleet.command("register")
@_fleet_options
@click.option("--supplier", "suppliers", multiple=True, required=True,
              help="The premises' Responsible Supplier (entity ID, EUI-64); twice for "
                   "dual-Supplier premises.")
@click.option("--db", "db_path", default=None, envvar="HANOTA_DCC_DB",
              help="The DCC's database: a SQLite file (default $HANOTA_HOME/dcc.db) or "
                   "postgresql://...")
@_errors
def register_cmd(n_premises, n_devices, roles, fleet_id, slice_text, version, n_vboards,
                 vboard_role, suppliers, db_path):
    """Register the fleet's premises (with their Comms Hub) and devices in the DCC's
    registration data, as `hanota dcc registry add-premises/add-device` would. Run once for
    the whole fleet where the DCC's database is, or per slice; what is there is kept. With
    --vboards, the virtual boards `fleet sim --vboards` puts in the slice's first premises
    are registered too (their upgrade image goes on the CPL with `fleet sim --register`, or
    `hanota dcc cpl add --image`)."""
    plan = _plan(n_premises, n_devices, roles, fleet_id, version, n_vboards, vboard_role)
    lo, hi = fp.slice_range(plan, slice_text)
    r = _register(db_path, plan, lo, hi, _suppliers(suppliers))
    click.echo("registered premises %d..%d: %d premises and %d devices added%s, %d devices "
               "already there" % (lo, hi - 1, r["premises"], r["devices"],
                                  " (%d virtual boards)" % r["vboards"] if "vboards" in r
                                  else "", r["present"]))


@fleet.command("sim")
@_fleet_options
@click.option("--dcc", "dcc_url", required=True,
              help="The DCC's WAN: http://HOST:PORT (hanota dcc serve) or nats://HOST:PORT "
                   "(its NATS server, dcc serve --wan nats://...).")
@click.option("--procs", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Processes to spread this machine's premises over.")
@click.option("--dir", "workdir", type=click.Path(file_okay=False), default=".fleet",
              show_default=True, help="Where the hubs' databases live (one directory per "
                                      "premises; kept, so a run resumes where one stopped).")
@click.option("--for", "duration", type=click.FloatRange(0, min_open=True), default=None,
              help="Stop after this many seconds (default: at Ctrl-C or SIGTERM).")
@click.option("--poll", type=click.FloatRange(0.05), default=2.0, show_default=True,
              help="Seconds between a busy hub's scheduler passes (while it has an open "
                   "request or a transfer): an outcome reaches the DCC within about this.")
@click.option("--quiet", type=click.FloatRange(1), default=300.0, show_default=True,
              help="Seconds between an idle hub's own passes (scheduler, WAN outbox and "
                   "work) when nothing woke it: a DCC message, an outcome or alert and a "
                   "queued WAN message wake a hub at once; this pass only notices what "
                   "another process changed in a hub's database. Longer costs less CPU per "
                   "idle hub.")
@click.option("--wan-heartbeat", type=click.FloatRange(0), default=120.0, show_default=True,
              help="Seconds between each hub's websocket pings to the DCC (0: none; the "
                   "DCC's own pings, dcc serve --wan-heartbeat, still check the "
                   "connections). Not used on NATS.")
@click.option("--max-in-flight", type=click.IntRange(1), default=2, show_default=True,
              help="Transfers at once per hub.")
@click.option("--start-rate", type=click.FloatRange(0), default=200.0, show_default=True,
              help="Premises started per second in each process (0: as fast as it can).")
@click.option("--report", "report_every", type=click.FloatRange(0), default=10.0,
              show_default=True, help="Seconds between progress lines (0: none).")
@click.option("--register", "do_register", is_flag=True,
              help="First register this slice's premises and devices in the DCC's database "
                   "(--db, --supplier), as `hanota fleet register` does.")
@click.option("--supplier", "suppliers", multiple=True,
              help="The premises' Responsible Supplier (entity ID): written to the DCC with "
                   "--register and into the hubs' registries.")
@click.option("--db", "db_path", default=None, envvar="HANOTA_DCC_DB",
              help="With --register: the DCC's database (SQLite file or postgresql://...).")
@click.option("--vboard-kind", default="vboard-esp32", show_default=True,
              help="The virtual boards' kind: vboard-esp32 (firmware banks, flashed through "
                   "its ROM loader, UDP to its Comms Hub) or vboard-nrf52840 (app banks, a "
                   "UART to its Comms Hub).")
@click.option("--vboard-keys", "vboard_keys", type=click.Path(file_okay=False), default=None,
              help="With --vboards: the image signing key directory (hanota keys generate's "
                   "layout) whose public.bin the boards pin; default DIR/vboards/keys, made "
                   "when missing. With its private.pem the upgrade image is built and signed "
                   "here (see below).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_errors
def sim_cmd(n_premises, n_devices, roles, fleet_id, slice_text, version, n_vboards,
            vboard_role, dcc_url, procs, workdir, duration, poll, quiet, wan_heartbeat,
            max_in_flight, start_rate, report_every, do_register, suppliers, db_path,
            vboard_kind, vboard_keys, as_json):
    """Run the fleet's (or this slice's) Comms Hubs with their simulated HAN devices,
    connected to the DCC, answering OTA (download, verify, Upgrade End, activate, alert)
    until --for seconds have passed or it is stopped; then print a summary.

    The DCC must know the premises (their Comms Hub) and devices: `hanota fleet register`,
    or --register here. Progress lines go to standard output ("fleet started", "fleet
    connected", then every --report seconds).

    With --vboards V, each of the slice's first V premises also runs a virtual board, brought
    up as a user does (started, flashed, deployed with --vboard-role, the key and --version,
    joined to its premises' Comms Hub with its install code; "fleet vboards" says when all
    are) before "fleet started". The fleet's workspace DIR/vboards/ holds:

    \b
      keys/                          the key pair they pin (or --vboard-keys)
      fw/KIND/vVERSION/              the firmware they start on
      images/KIND-ROLE-vNEXT.ota     an upgrade image, version --version + 1, signed
                                     with that key: give it to the DCC (SR 11.4, or
                                     11.1 for an HCALCS; a campaign) like any image;
                                     --register also puts it on the DCC's CPL

    (the paths are printed at the start). The summary adds vboards, vboards_joined,
    vboard_outcomes and vboard_running (firmware version -> boards). A board that cannot be
    brought up stops the fleet (exit 2) with an error naming it; stopping the fleet stops
    the boards. Each run starts them on fresh flash."""
    from . import sim

    plan = _plan(n_premises, n_devices, roles, fleet_id, version, n_vboards, vboard_role)
    lo, hi = fp.slice_range(plan, slice_text)
    va, vb = plan.vboard_range(lo, hi)
    url = sim.check_dcc_url(dcc_url)
    if n_vboards:
        from . import vboards
        vboards.check_kind(vboard_kind)
        if vboard_keys is not None:
            vboards.check_keys(vboard_keys)
    sup = _suppliers(suppliers) if suppliers else []
    if do_register:
        if not sup:
            raise fp.FleetUsageError("--register needs --supplier (the premises' Responsible "
                                     "Supplier)")
        r = _register(db_path, plan, lo, hi, sup)
        click.echo("registered: %d premises and %d devices added%s, %d devices already there"
                   % (r["premises"], r["devices"], " (%d virtual boards)" % r["vboards"]
                      if "vboards" in r else "", r["present"]))

    def say(text: str) -> None:
        click.echo(text)
        sys.stdout.flush()
    ws = None
    if n_vboards:
        import asyncio
        asyncio.run(sim.probe_dcc(url))  # before building anything
        ws = vboards.prepare(workdir, plan, vboard_kind, vboard_keys)
        for line in vboards.describe(ws):
            say(line)
        if do_register and ws.image:
            from ..dcc.store import DccStore
            with DccStore(db_path) as store:
                vboards.add_to_cpl(store, ws)
            say("vboards: the upgrade image is on the DCC's CPL")
    cfg = sim.SimConfig(plan=plan, lo=lo, hi=hi, dcc_url=url, dir=workdir, suppliers=sup,
                        poll=poll, duration=duration, report=report_every,
                        start_rate=start_rate, max_in_flight=max_in_flight, quiet=quiet,
                        wan_heartbeat=wan_heartbeat or None, vboard_ws=ws, vboard_lo=va,
                        vboard_hi=vb)

    summary = sim.run(cfg, procs, say)
    summary["slice"] = {"premises": [lo, hi - 1], "of": plan.premises}
    summary["dcc"] = url
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        click.echo("summary: " + sim.progress_line(summary))
        for k, v in (summary.get("error_kinds") or {}).items():
            click.echo("  error x%d: %s" % (v, k))
