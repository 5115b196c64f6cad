"""`hanota fleet`: a simulated fleet of Comms Hubs and HAN devices against one DCC.

    hanota fleet plan     --premises N --devices K [--slice i/n] [--json]
    hanota fleet register --premises N --devices K --supplier EUI [--slice i/n] [--db DB]
    hanota fleet sim      --premises N --devices K --dcc URL [--slice i/n] [--procs P]
                          [--dir DIR] [--for S] [--json] [--register --supplier EUI --db DB]

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
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _plan(n_premises, n_devices, roles, fleet_id, version) -> fp.FleetPlan:
    return fp.FleetPlan(n_premises, n_devices, fleet_id,
                        tuple(r.strip().lower() for r in roles.split(",") if r.strip()), version)


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
def plan_cmd(n_premises, n_devices, roles, fleet_id, slice_text, version, suppliers, as_json):
    """Print the premises, Comms Hubs and devices of the fleet (or of a slice): what the DCC's
    registration data must hold (`hanota fleet register` writes it)."""
    plan = _plan(n_premises, n_devices, roles, fleet_id, version)
    lo, hi = fp.slice_range(plan, slice_text)
    sup = _suppliers(suppliers) if suppliers else None
    for p in plan.range(lo, hi):
        if as_json:
            click.echo(json.dumps(fp.as_json(p, sup)))
        else:
            click.echo("%s hub %s: %s" % (p.mpxn, p.hub_eui, ", ".join(
                "%s %s" % (s.role, s.eui) for s in p.devices)))


@fleet.command("register")
@_fleet_options
@click.option("--supplier", "suppliers", multiple=True, required=True,
              help="The premises' Responsible Supplier (entity ID, EUI-64); twice for "
                   "dual-Supplier premises.")
@click.option("--db", "db_path", default=None, envvar="HANOTA_DCC_DB",
              help="The DCC's database: a SQLite file (default $HANOTA_HOME/dcc.db) or "
                   "postgresql://...")
@_errors
def register_cmd(n_premises, n_devices, roles, fleet_id, slice_text, version, suppliers,
                 db_path):
    """Register the fleet's premises (with their Comms Hub) and devices in the DCC's
    registration data, as `hanota dcc registry add-premises/add-device` would. Run once for
    the whole fleet where the DCC's database is, or per slice; what is there is kept."""
    plan = _plan(n_premises, n_devices, roles, fleet_id, version)
    lo, hi = fp.slice_range(plan, slice_text)
    r = _register(db_path, plan, lo, hi, _suppliers(suppliers))
    click.echo("registered premises %d..%d: %d premises and %d devices added, %d devices "
               "already there" % (lo, hi - 1, r["premises"], r["devices"], r["present"]))


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
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_errors
def sim_cmd(n_premises, n_devices, roles, fleet_id, slice_text, version, dcc_url, procs,
            workdir, duration, poll, quiet, wan_heartbeat, max_in_flight, start_rate,
            report_every, do_register, suppliers, db_path, as_json):
    """Run the fleet's (or this slice's) Comms Hubs with their simulated HAN devices,
    connected to the DCC, answering OTA (download, verify, Upgrade End, activate, alert)
    until --for seconds have passed or it is stopped; then print a summary.

    The DCC must know the premises (their Comms Hub) and devices: `hanota fleet register`,
    or --register here. Progress lines go to standard output ("fleet started", "fleet
    connected", then every --report seconds)."""
    from . import sim

    plan = _plan(n_premises, n_devices, roles, fleet_id, version)
    lo, hi = fp.slice_range(plan, slice_text)
    url = sim.check_dcc_url(dcc_url)
    sup = _suppliers(suppliers) if suppliers else []
    if do_register:
        if not sup:
            raise fp.FleetUsageError("--register needs --supplier (the premises' Responsible "
                                     "Supplier)")
        r = _register(db_path, plan, lo, hi, sup)
        click.echo("registered: %d premises and %d devices added, %d devices already there"
                   % (r["premises"], r["devices"], r["present"]))
    cfg = sim.SimConfig(plan=plan, lo=lo, hi=hi, dcc_url=url, dir=workdir, suppliers=sup,
                        poll=poll, duration=duration, report=report_every,
                        start_rate=start_rate, max_in_flight=max_in_flight, quiet=quiet,
                        wan_heartbeat=wan_heartbeat or None)

    def say(text: str) -> None:
        click.echo(text)
        sys.stdout.flush()
    summary = sim.run(cfg, procs, say)
    summary["slice"] = {"premises": [lo, hi - 1], "of": plan.premises}
    summary["dcc"] = url
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        click.echo("summary: " + sim.progress_line(summary))
        for k, v in (summary.get("error_kinds") or {}).items():
            click.echo("  error x%d: %s" % (v, k))
