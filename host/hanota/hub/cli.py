"""Click commands of the hub: `serve`, `status`, `report`, `request`, `registry`, `hub`.

The main `hanota` group adds each command of `COMMANDS`. Every command takes `--db FILE`
(default $HANOTA_HOME/hub.db). Exit codes: 0 when the command did its work, including a
request recorded and refused by a rule (the outcome is printed); 1 for usage errors (bad
arguments, unknown device or request); 2 for failures (database unreadable, hub cannot
listen, no outcome within --wait).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from datetime import datetime

import click

from .. import images
from ..clitypes import BasedInt, Eui64, domain_errors
from . import registry as reg
from . import report as rep
from . import requests as rq
from .db import ROLES, HubDB, HubUsageError, default_db_path, version_text
from .hub import DEFAULT_UDP, Hub, HubOptions
from .queue import RetryPolicy


def _db_option(fn):
    return click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
                        envvar="HANOTA_HUB_DB",
                        help="Hub database (default $HANOTA_HOME/hub.db).")(fn)


def _open(db_path: str | None, create: bool = True) -> HubDB:
    return HubDB.open(db_path or default_db_path(), create=create)


EUI = Eui64(text=True)  # the hub keeps devices by their canonical EUI-64 text
INT = BasedInt()


def _priorities(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        role, sep, n = part.partition("=")
        role = role.strip()
        if not sep or role not in ROLES:
            raise click.BadParameter("use ROLE=N[,ROLE=N] with roles %s" % ", ".join(ROLES),
                                     param_hint="--priority")
        try:
            out[role] = int(n)
        except ValueError:
            raise click.BadParameter("priority %r is not a number" % n,
                                     param_hint="--priority") from None
    return out


def _hostport(text: str) -> tuple[str, int] | None:
    if text.lower() in ("off", "none", ""):
        return None
    host, sep, port = text.rpartition(":")
    if not sep:
        raise click.BadParameter("use HOST:PORT (or off)", param_hint="--udp")
    try:
        return (host or "127.0.0.1", int(port))
    except ValueError:
        raise click.BadParameter("port %r is not a number" % port, param_hint="--udp") from None


def _when(text: str | None) -> float | None:
    return rq.parse_when(text)


def _print_submission(db: HubDB, sub: rq.Submission, wait: float | None,
                      as_json: bool) -> None:
    row = db.request(sub.id)
    if wait is not None and sub.accepted:
        row = rq.wait_for_outcome(db, sub.id, wait)
    d = rq.request_dict(row)
    d["superseded"] = sub.superseded
    if as_json:
        click.echo(json.dumps(d))
        return
    head = "request #%d (SR %s, %s) for %s" % (sub.id, sub.sr, sub.kind.replace("_", "-"),
                                                sub.eui)
    for old in sub.superseded:
        click.echo("request #%d: superseded by #%d" % (old, sub.id))
    if row["outcome"] is None:
        click.echo("%s: %s" % (head, row["state"]))
        return
    result = ""
    if row["kind"] == "read_version" and row["result"] is not None:
        result = " version %s" % version_text(row["result"])
    click.echo("%s: %s%s%s" % (head, row["outcome"], result,
                               " (%s)" % row["reason"] if row["reason"] else ""))


_wait_option = click.option("--wait", type=float, default=None, metavar="SECONDS",
                            help="Wait up to SECONDS for the outcome (needs hanota serve).")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


# ---------------------------------------------------------------- request

@click.group()
def request():
    """Service requests from a Supplier (SR 11.1/11.4, 11.3, 11.2)."""


@request.command("update-firmware")
@click.option("--device", "eui", type=EUI, required=True, help="Device EUI-64.")
@click.option("--image", "image", type=click.Path(dir_okay=False, exists=True), required=True,
              help="Signed OTA upgrade file.")
@click.option("--as-supplier", "supplier", required=True, help="Requesting Supplier.")
@click.option("--activate-at", default=None, metavar="T",
              help="PPMID / Alt HAN: activation time: now (default), +SECONDS, or an ISO UTC "
                   "time. HCALCS get SR 11.1 (distribution only; activate with SR 11.3).")
@click.option("--pubkey", "pubkeys", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Public key the device pins (public.bin or PEM; repeatable): the image's "
                   "signature must verify with it before the request is accepted.")
@_wait_option
@_json_option
@_db_option
@domain_errors
def request_update(eui, image, supplier, activate_at, pubkeys, wait, as_json, db_path):
    """Update a device's firmware: SR 11.4 (distribute + activate) for PPMIDs and Alt HAN
    devices, SR 11.1 (distribute only) for HCALCS. A malformed or tampered image is refused
    before anything is recorded (a pending request stays)."""
    from ..keys import load_public_key

    with _open(db_path) as db:
        sub = rq.update_firmware(db, eui, image, supplier, _when(activate_at),
                                 pubkeys=[load_public_key(k) for k in pubkeys])
        _print_submission(db, sub, wait, as_json)


@request.command("activate")
@click.option("--device", "eui", type=EUI, required=True, help="HCALCS EUI-64.")
@click.option("--image-hash", required=True, help="Manufacturer Image Hash (64 hex digits).")
@click.option("--at", "at", default=None, metavar="T",
              help="Execution time: now (default), +SECONDS or an ISO UTC time.")
@click.option("--as-supplier", "supplier", required=True, help="Requesting Supplier.")
@_wait_option
@_json_option
@_db_option
@domain_errors
def request_activate(eui, image_hash, at, supplier, wait, as_json, db_path):
    """Activate the firmware an HCALCS holds (SR 11.3): it checks the hash first."""
    with _open(db_path) as db:
        sub = rq.activate(db, eui, image_hash, supplier, _when(at))
        _print_submission(db, sub, wait, as_json)


@request.command("read-version")
@click.option("--device", "eui", type=EUI, required=True, help="Device EUI-64.")
@click.option("--as-supplier", "supplier", required=True, help="Requesting Supplier.")
@_wait_option
@_json_option
@_db_option
@domain_errors
def request_read_version(eui, supplier, wait, as_json, db_path):
    """Read the device's running firmware version (SR 11.2 / CS08)."""
    with _open(db_path) as db:
        sub = rq.read_version(db, eui, supplier)
        _print_submission(db, sub, wait, as_json)


@request.command("show")
@click.argument("request_id", type=int)
@_wait_option
@_json_option
@_db_option
@domain_errors
def request_show(request_id, wait, as_json, db_path):
    """Show one request (and optionally wait for its outcome)."""
    with _open(db_path, create=False) as db:
        row = db.request(request_id)
        if row is None:
            raise HubUsageError("no request #%d" % request_id)
        if wait is not None:
            row = rq.wait_for_outcome(db, request_id, wait)
        d = rq.request_dict(row)
        if as_json:
            click.echo(json.dumps(d))
            return
        for k in ("id", "kind", "sr", "eui", "supplier", "target_version_hex", "state",
                  "attempts", "percent", "created_iso", "finished_iso", "outcome", "reason"):
            click.echo("%-18s %s" % (k, "-" if d[k] is None else d[k]))


# ---------------------------------------------------------------- registry

@click.group()
def registry():
    """Devices, premises (MPxN) and their Responsible Suppliers."""


@registry.command("add-device")
@click.option("--device", "eui", type=EUI, required=True, help="Device EUI-64.")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--install-code", required=True, help="Install code (hex, with its CRC-16).")
@click.option("--premises", required=True, help="MPxN of the premises (created if new).")
@click.option("--hw-version", type=INT, default=None, help="Hardware version.")
@click.option("--manufacturer", type=INT, default=images.DEFAULT_MANUFACTURER,
              show_default=True, help="Manufacturer code.")
@click.option("--image-type", type=INT, default=None, help="Image type (default: the role's).")
@click.option("--no-ota", is_flag=True, help="Installed before OTA support: never updated.")
@_db_option
@domain_errors
def registry_add(eui, role, install_code, premises, hw_version, manufacturer, image_type,
                 no_ota, db_path):
    """Register a device at premises."""
    with _open(db_path) as db:
        r = reg.add_device(db, eui, role, install_code, premises, hw_version=hw_version,
                           manufacturer=manufacturer, image_type=image_type,
                           ota_supported=not no_ota)
        sup = reg.responsible_suppliers(db, eui)
        click.echo("registered %s %s at %s (suppliers: %s)%s" % (
            r["role"], r["eui"], r["mpxn"], ", ".join(sup) or "none yet; use set-suppliers",
            "; no OTA support" if no_ota else ""))


@registry.command("set-suppliers")
@click.option("--premises", required=True, help="MPxN.")
@click.option("--supplier", "suppliers", multiple=True, required=True,
              help="Responsible Supplier (give twice for dual-Supplier premises).")
@_db_option
@domain_errors
def registry_suppliers(premises, suppliers, db_path):
    """Set the Responsible Supplier(s) of premises."""
    with _open(db_path) as db:
        names = reg.set_suppliers(db, premises, list(suppliers))
        click.echo("premises %s: Responsible Supplier%s %s" % (
            premises, "s" if len(names) > 1 else "", " and ".join(names)))


@registry.command("list")
@_json_option
@_db_option
@domain_errors
def registry_list(as_json, db_path):
    """List devices and premises."""
    with _open(db_path) as db:
        devs, prem = reg.list_devices(db), reg.list_premises(db)
        if as_json:
            click.echo(json.dumps({"devices": devs, "premises": prem}))
            return
        click.echo("%-23s %-7s %-12s %-6s %-6s %-4s %-10s %s" % (
            "DEVICE", "ROLE", "PREMISES", "MFR", "HW", "OTA", "VERSION", "JOINED"))
        for d in devs:
            click.echo("%-23s %-7s %-12s 0x%04x %-6s %-4s %-10s %s" % (
                d["eui"], d["role"], d["premises"][:12], d["manufacturer"],
                "0x%04x" % d["hw_version"] if d["hw_version"] is not None else "-",
                "yes" if d["ota_supported"] else "no", version_text(d["running_version"]),
                "yes" if d["joined"] else ("TCSO" if d["tcso_affected"] else "no")))
        click.echo("")
        click.echo("%-16s %-8s %s" % ("PREMISES", "DEVICES", "RESPONSIBLE SUPPLIERS"))
        for p in prem:
            click.echo("%-16s %-8d %s" % (p["mpxn"], p["devices"],
                                          " and ".join(p["suppliers"]) or "-"))


@registry.command("remove")
@click.option("--device", "eui", type=EUI, required=True, help="Device EUI-64.")
@_db_option
@domain_errors
def registry_remove(eui, db_path):
    """Remove a device (refused while it has pending requests)."""
    with _open(db_path) as db:
        reg.remove_device(db, eui)
        click.echo("removed %s" % eui)


# ---------------------------------------------------------------- hub identity

@click.group("hub")
def hub_group():
    """The hub identity and Trust Centre Swap-Out."""


@hub_group.command("show")
@_json_option
@_db_option
@domain_errors
def hub_show(as_json, db_path):
    """Show the hub identity (and the ones it replaced), and its WAN to the DCC if it has
    one (hanota hub serve)."""
    from ..dcc.wan import wan_state
    with _open(db_path) as db:
        info = reg.hub_info(db)
        info["wan"] = wan_state(db)
        if as_json:
            click.echo(json.dumps(info))
            return
        click.echo("hub %s since %s (generation %d)" % (info["eui"], rq.iso(info["since"]),
                                                       info["generation"]))
        for p in info["previous"]:
            click.echo("  replaced %s (retired %s)" % (p["eui"], rq.iso(p["retired"])))
        w = info["wan"]
        if w is not None:
            click.echo("  WAN: DCC messages up to #%d taken, %d not applied yet; %d outcomes "
                       "and alerts sent, %d not acknowledged" % (
                           w["last_dcc_message"], w["not_applied"], w["reported"],
                           w["unacknowledged"]))


@hub_group.command("swap-out")
@click.option("--eui", "new_eui", type=EUI, default=None,
              help="EUI-64 of the new hub (default: random).")
@_json_option
@_db_option
@domain_errors
def hub_swap_out(new_eui, as_json, db_path):
    """Trust Centre Swap-Out: replace the hub by one with a new identity.

    Devices must rejoin: PPMIDs and HCALCS do; Alt HAN devices cannot, and their requests
    end "OTA unavailable after TCSO". A running `hanota serve` restarts its server with the
    new identity by itself.
    """
    with _open(db_path) as db:
        r = reg.swap_out(db, new_eui)
        if as_json:
            click.echo(json.dumps(r))
            return
        click.echo("hub %s replaced by %s" % (r["old"], r["new"]))
        for i in r["unavailable"]:
            click.echo("request #%d: ota_unavailable_after_tcso" % i)
        for i in r["requeued"]:
            click.echo("request #%d: back in the queue until its device rejoins" % i)


# ---------------------------------------------------------------- status / report

@click.command()
@_json_option
@_db_option
@domain_errors
def status(as_json, db_path):
    """Devices, running versions, transfers in progress, queue and outcomes."""
    with _open(db_path, create=False) as db:
        s = rep.status_data(db)
    if as_json:
        click.echo(json.dumps(s))
    else:
        click.echo("\n".join(rep.status_lines(s)))


@click.command()
@_json_option
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None,
              help="Write an HTML page with per-device timelines to this file.")
@click.option("--dcc-db", "dcc_db", default=None, metavar="FILE|postgresql://...",
              help="The DCC's database (hanota dcc serve --db): add the DUIS view, per request "
                   "its RequestID, User (entity ID), SR, response code and meaning, and alerts.")
@_db_option
@domain_errors
def report(as_json, html_file, dcc_db, db_path):
    """The outcome of every request (and, with --dcc-db, every DUIS request at the DCC)."""
    with _open(db_path, create=False) as db:
        r = rep.report_data(db)
    d = None
    if dcc_db is not None:
        from ..dcc.store import DccStore  # the DCC package sits above the hub

        if not dcc_db.startswith(("postgresql://", "postgres://")) \
                and not os.path.isfile(dcc_db):
            raise click.BadParameter("%s is not a file (nor a postgresql:// URI)" % dcc_db,
                                     param_hint="--dcc-db")

        with DccStore(dcc_db) as store:
            d = rep.duis_data(store)
    if html_file:
        with open(html_file, "w", encoding="utf-8") as f:
            f.write(rep.render_html(r, duis=d))
        if not as_json:
            click.echo("wrote %s (%d requests%s)" % (
                html_file, len(r["requests"]),
                "" if d is None else ", %d DUIS requests" % len(d["requests"])))
    if as_json:
        click.echo(json.dumps(r if d is None else dict(r, duis=d)))
    elif not html_file:
        click.echo("\n".join(rep.report_lines(r) + ([""] + rep.duis_lines(d) if d else [])))


# ---------------------------------------------------------------- serve

def _event_line(ev: dict) -> str:
    t = datetime.fromtimestamp(ev["at"]).strftime("%H:%M:%S.%f")[:-3]
    skip = {"at", "eui", "request_id", "kind"}
    detail = " ".join("%s=%s" % (k, v) for k, v in ev.items()
                      if k not in skip and v not in (None, [], ""))
    who = ev.get("eui") or "hub"
    rid = "#%d " % ev["request_id"] if ev.get("request_id") else ""
    return "%s %s %s%s %s" % (t, who, rid, ev["kind"], detail)


def _live_table(hub: Hub):
    from rich.table import Table
    s = rep.status_data(hub.db, hub.live_transfers())
    serve = "hub %s  udp %s  in flight <= %d" % (
        hub.hub_eui, "%s:%d" % hub.udp_address if hub.udp_address else "-",
        hub.options.max_in_flight)
    t = Table(title=serve, expand=False)
    t.add_column("device", no_wrap=True, min_width=23)
    for col in ("role", "state", "version", "target", "%", "rate", "try", "last outcome"):
        t.add_column(col)
    transfers = {x["eui"]: x for x in s["transfers"]}
    for d in s["devices"]:
        p = d["pending"][0] if d["pending"] else None
        x = transfers.get(d["eui"])
        state = p["state"] if p else "idle"
        if not d["joined"]:
            state += " (not joined)" if not d["tcso_affected"] else " (TCSO)"
        last = d["last_outcome"]
        t.add_row(d["eui"], d["role"], state, d["running_version_hex"],
                  p["target_version_hex"] if p else "",
                  "%.0f" % x["percent"] if x and x["percent"] is not None else "",
                  rep._rate(x["rate"]) if x else "", str(p["attempts"]) if p else "",
                  "#%d %s" % (last["id"], last["outcome"]) if last else "")
    t.caption = "outcomes: " + (", ".join("%s %d" % kv for kv in s["outcomes"].items())
                                or "none") + "  pending %d" % s["pending"]
    return t


async def _serve_main(hub: Hub, live: bool, dcc_url: str | None = None,
                      premises: str | None = None, wan_token: str | None = None,
                      wan_heartbeat: float | None = 10.0) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await hub.start()
    wan = None
    if dcc_url is not None:  # the Comms Hub service: the WAN to the DCC as well
        from ..dcc.wan_nats import make_hub_wan
        wan = make_hub_wan(hub, dcc_url, premises=premises, token=wan_token)
        wan.heartbeat = wan_heartbeat or None  # the websocket's pings (not used on NATS)
        await wan.start()
    where = ["udp %s:%d" % hub.udp_address] if hub.udp_address else []
    where += ["serial %s" % n for n in hub.serial_names]
    click.echo("hanota hub %s serving on %s (database %s, at most %d in flight)%s"
               % (hub.hub_eui, ", ".join(where), hub.db.path, hub.options.max_in_flight,
                  "; WAN to %s" % dcc_url if dcc_url else ""))
    try:
        if live:
            from rich.live import Live
            with Live(_live_table(hub), refresh_per_second=4) as lv:
                while not stop.is_set():
                    try:
                        await asyncio.wait_for(stop.wait(), 0.5)
                    except asyncio.TimeoutError:
                        pass
                    lv.update(_live_table(hub))
        else:
            await stop.wait()
    finally:
        if wan is not None:
            await wan.stop()
        await hub.stop()
        click.echo("hanota hub stopped")


def _serve_options(fn):
    """The options of `hanota serve`, shared with `hanota hub serve`."""
    for opt in reversed(_SERVE_OPTIONS):
        fn = opt(fn)
    return fn


_SERVE_OPTIONS = [
    click.option("--images", "images_dir", type=click.Path(file_okay=False), default=None,
                 help="The hub's image store (content-addressed copies; default beside the "
                      "database). Requests submitted later store their images here."),
    click.option("--udp", default="%s:%d" % DEFAULT_UDP, show_default=True,
                 help="UDP address to serve devices on (HOST:PORT, or off)."),
    click.option("--serial", "serial", multiple=True, help="Serial line to serve (repeatable)."),
    click.option("--max-in-flight", type=click.IntRange(1, 64), default=1, show_default=True,
                 help="Transfers at once."),
    click.option("--block-cap", type=click.IntRange(1, 255), default=64, show_default=True,
                 help="Largest image block served (bytes)."),
    click.option("--priority", default=None, metavar="ROLE=N,...",
                 help="Class priority per role, lower first (stored; default hcalcs=1,ppmid=2,"
                      "althan=2)."),
    click.option("--poll", type=float, default=0.25, show_default=True,
                 help="Seconds between database polls for new requests."),
    click.option("--retry-base", type=float, default=5.0, show_default=True,
                 help="First retry backoff (s), doubled each attempt."),
    click.option("--retry-max", type=float, default=300.0, show_default=True,
                 help="Largest backoff (s)."),
    click.option("--max-attempts", type=click.IntRange(1, 100), default=5, show_default=True,
                 help="Attempts before transfer_failed / device_unreachable."),
    click.option("--answer-timeout", type=float, default=60.0, show_default=True,
                 help="Seconds for a notified device to start downloading."),
    click.option("--stall-timeout", type=float, default=30.0, show_default=True,
                 help="Seconds without block requests before a transfer is stalled."),
    click.option("--activation-timeout", type=float, default=600.0, show_default=True,
                 help="Seconds after activation to wait for the Activation Alert."),
    click.option("--request-timeout", type=float, default=5.0, show_default=True,
                 help="Seconds to wait for a device's answer to a hub command."),
    click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
                 default="warning", show_default=True),
]


@click.command()
@_serve_options
@_db_option
@domain_errors
def serve(images_dir, udp, serial, max_in_flight, block_cap, priority, poll, retry_base,
          retry_max, max_attempts, answer_timeout, stall_timeout, activation_timeout,
          request_timeout, log_level, db_path):
    """Run the hub in the foreground: serve OTA to devices and carry out requests.

    On a terminal it shows a live table per device; otherwise it prints one line per event.
    SIGINT / SIGTERM stop it cleanly; a killed hub resumes from its database.
    """
    _serve(images_dir, udp, serial, max_in_flight, block_cap, priority, poll, retry_base,
           retry_max, max_attempts, answer_timeout, stall_timeout, activation_timeout,
           request_timeout, log_level, db_path)


@hub_group.command("serve")
@click.option("--dcc", "dcc_url", default=None, metavar="URL",
              help="The DCC's HTTP server (hanota dcc serve), e.g. http://127.0.0.1:8080; "
                   "the hub dials its WAN websocket /wan/<hub EUI>.")
@click.option("--wan", "wan_url", default=None, envvar="HANOTA_WAN", metavar="nats://HOST:PORT",
              help="The WAN on NATS JetStream instead of the websocket (the URL dcc serve "
                   "--wan was given).")
@click.option("--premises", default=None, metavar="MPXN",
              help="The premises this Comms Hub serves (devices the DCC pre-notifies are "
                   "registered there; default CH-<hub EUI>).")
@click.option("--wan-token", default=None, envvar="HANOTA_WAN_TOKEN", metavar="TOKEN",
              help="This hub's WAN token, when the DCC runs with --wan-auth (hanota dcc "
                   "wan-token --hub EUI prints it).")
@click.option("--wan-heartbeat", type=click.FloatRange(0), default=10.0, show_default=True,
              metavar="SECONDS",
              help="Seconds between this hub's websocket pings to the DCC: a DCC that stops "
                   "answering is dropped (and dialled again) after 1.5 times this (0: no "
                   "pings; the DCC's own still check the connection).")
@_serve_options
@_db_option
@domain_errors
def hub_serve(dcc_url, wan_url, premises, wan_token, wan_heartbeat, images_dir, udp, serial,
              max_in_flight, block_cap,
              priority, poll, retry_base, retry_max, max_attempts, answer_timeout,
              stall_timeout, activation_timeout, request_timeout, log_level, db_path):
    """Run the Comms Hub of one premises: `hanota serve` plus the WAN to the DCC.

    DCC messages (pre-notification, join, unjoin, firmware update, activation, version read)
    are stored, acknowledged and carried out on this hub; its outcomes and activation alerts
    go back to the DCC. The WAN reconnects by itself; nothing is lost while it is down.
    """
    if wan_url is not None:
        if not wan_url.startswith(("nats://", "tls://")):
            raise click.BadParameter("give the NATS server as nats://HOST:PORT",
                                     param_hint="--wan")
        dcc_url = wan_url
    elif dcc_url is None:
        raise click.UsageError("give --dcc http://HOST:PORT (the websocket WAN) or --wan "
                               "nats://HOST:PORT")
    elif not dcc_url.startswith(("http://", "https://")):
        raise click.BadParameter("give the DCC's address as http://HOST:PORT (hanota dcc "
                                 "serve prints it)", param_hint="--dcc")
    _serve(images_dir, udp, serial, max_in_flight, block_cap, priority, poll, retry_base,
           retry_max, max_attempts, answer_timeout, stall_timeout, activation_timeout,
           request_timeout, log_level, db_path, dcc_url=dcc_url, premises=premises,
           wan_token=wan_token, wan_heartbeat=wan_heartbeat)


def _serve(images_dir, udp, serial, max_in_flight, block_cap, priority, poll, retry_base,
           retry_max, max_attempts, answer_timeout, stall_timeout, activation_timeout,
           request_timeout, log_level, db_path, *, dcc_url: str | None = None,
           premises: str | None = None, wan_token: str | None = None,
           wan_heartbeat: float | None = 10.0) -> None:
    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    addr = _hostport(udp)
    if addr is None and not serial:
        raise click.UsageError("nothing to serve on: give --udp HOST:PORT or --serial PORT")
    prio = _priorities(priority)
    with _open(db_path) as db:
        if images_dir is not None:
            from pathlib import Path
            db.set_meta("images_dir", str(Path(images_dir).resolve()))
        path = db.path
    retry = RetryPolicy(base=retry_base, cap=retry_max, max_attempts=max_attempts,
                        answer_timeout=answer_timeout, stall_window=max(2 * stall_timeout, 1.0),
                        activation_timeout=activation_timeout)
    opts = HubOptions(max_in_flight=max_in_flight, block_cap=block_cap, poll_interval=poll,
                      stall_timeout=stall_timeout, request_timeout=request_timeout,
                      retry=retry, priorities=prio)
    live = sys.stdout.isatty()

    def log_line(ev: dict) -> None:
        try:
            click.echo(_event_line(ev))
        except Exception:  # a closed stdout must not stop the hub
            pass

    hub = Hub(path, udp=addr, serial=serial, options=opts, on_event=None if live else log_line)
    asyncio.run(_serve_main(hub, live, dcc_url, premises, wan_token, wan_heartbeat))


COMMANDS = [serve, status, report, request, registry, hub_group]
