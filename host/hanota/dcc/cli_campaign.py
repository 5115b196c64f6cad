"""`hanota campaign create|status|pause|resume|cancel|drive`: firmware campaigns at the DCC
(`campaign.py`). The DCC's workers (`hanota dcc serve`) move them on; each device's request
is signed by a process holding the Supplier's key in memory (`campaign drive`, or `dcc serve
--supplier-key`). The other commands only read and change the campaign records in the DCC's
database."""
from __future__ import annotations

import json
import logging
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path

import click

from . import campaign as camp
from .cli import campaign
from .cli_dcc import _usage_errors as domain_errors  # bad input exits 1
from .store import DccStore


def _db_option(fn):
    return click.option("--db", "db_path", default=None, envvar="HANOTA_DCC_DB",
                        metavar="FILE|postgresql://...",
                        help="DCC database (hanota dcc serve --db; default "
                             "$HANOTA_HOME/dcc.db).")(fn)


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _lines(s: dict, devices: bool = True) -> list[str]:
    cfg = s["config"]
    t = s["totals"]
    out = ["campaign %s: %s%s" % (s["name"], s["state"], " (%s)" % s["reason"]
                                  if s.get("reason") else ""),
           "  Supplier %s, SR %s, image %s version %s" % (s["supplier"], s["srv"],
                                                         s["image_hash"][:16], s["version"]),
           "  %d devices: %d successful, %d failed, %d in flight, %d waiting" % (
               t["size"], t["ok"], t["failed"], t["sent"], t["waiting"]),
           "  success threshold %s, error threshold %s, rate %s, retries %d (backoff %g s)" % (
               camp._pct(cfg["success_threshold"]), camp._pct(cfg["error_threshold"]),
               "%d/min" % cfg["rate"] if cfg.get("rate") else "unlimited", cfg["retries"],
               cfg["backoff"])
           + (", response deadline %g s" % cfg["response_timeout"]
              if cfg.get("response_timeout") else "")]
    sig = s.get("signer") or {}
    if sig.get("live"):
        out.append("  signed by %s (Supplier %s's key)" % (
            ", ".join("%s (seen %s)" % (x["worker"], _when(x["seen"])) for x in sig["live"]),
            s["supplier"]))
    elif s["state"] in ("running", "paused"):
        out.append("  %sno signer for Supplier %s %s%s" % (
            "waiting: " if s.get("waiting_for_signer") else "",
            s["supplier"], "since %s" % _when(sig["last_seen"]) if sig.get("last_seen")
            else "has run", " (hanota campaign drive --key --cert, or dcc serve "
            "--supplier-key, with the campaign's certificate)"))
    if sig.get("other_cert"):
        out.append("  %s sign%s for Supplier %s with another certificate than the "
                   "campaign's" % (", ".join(sig["other_cert"]),
                                   "s" if len(sig["other_cert"]) == 1 else "", s["supplier"]))
    if cfg.get("window"):
        w = cfg["window"]
        out.append("  window '%s' for %g s in %s: %s" % (
            w["cron"], w["duration"], w["tz"], "open" if s["window_open"]
            else "next opens %s" % _when(s["next_window"])))
    for w in s["waves_detail"]:
        out.append("  wave %d%s: %d devices, %d successful, %d failed, %d in flight, "
                   "%d waiting" % (w["wave"], "" if w["open"] else " (not open)", w["size"],
                                   w["ok"], w["failed"], w["sent"], w["waiting"]))
    if devices and s.get("devices"):
        out.append("  %-16s %-4s %-7s %-3s %-20s %-5s %s" % ("DEVICE", "WAVE", "STATE", "TRY",
                                                             "OUTCOME", "CODE", "REQUEST"))
        for d in s["devices"]:
            what = d["outcome"] or (("retry after %s (%s)" % (_when(d["next_at"]),
                                                              d["last_outcome"]))
                                    if d["state"] == "waiting" and d["attempts"] else "-")
            out.append("  %-16s %-4d %-7s %-3d %-20s %-5s %s" % (
                d["device"], d["wave"], d["state"], d["attempts"], what, d["code"] or "-",
                d["request_id"] or "-"))
    return out


@campaign.command("create")
@click.argument("name")
@_db_option
@click.option("--key", "key", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The Supplier's DUIS XML-signing key (PEM), as hanota duis sign takes it: "
                   "checked against --cert (the Supplier makes the campaign), then dropped; "
                   "the DCC keeps no User's key.")
@click.option("--cert", "cert", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Its certificate (PEM): its entity ID is the Supplier; kept with the "
                   "campaign (only a signer holding this certificate's key sends for it).")
@click.option("--image", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The OTA file every device gets.")
@click.option("--srv", type=click.Choice(["11.4", "11.1"]), default=None,
              help="The SR (default: the one the devices' type takes: 11.4 for PPMIDs and "
                   "Alt HAN devices, 11.1 for HCALCS, whose activation, SR 11.3, is not part "
                   "of a campaign).")
@click.option("--device", "devices", multiple=True, metavar="EUI",
              help="A target device (repeatable).")
@click.option("--devices-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Target devices, one EUI-64 a line ('#' comments).")
@click.option("--model", default=None, metavar="MANUFACTURER/MODEL",
              help="Target every device of this manufacturer (4 hex) and model (hex) at "
                   "premises of the Supplier, running --from-version.")
@click.option("--from-version", default=None, metavar="HEX8",
              help="With --model: the firmware version the devices run (registration data).")
@click.option("--wave", "waves", multiple=True, metavar="N|P%",
              help="A wave's size: a count or a percentage of the devices (repeatable, in "
                   "order; the last repeats). Default one wave of 100%.")
@click.option("--success-threshold", default="90%", show_default=True,
              help="Successes in a wave (of its size) that open the next wave.")
@click.option("--error-threshold", default="10%", show_default=True,
              help="Failures in a wave (of its size) that stop the campaign.")
@click.option("--rate", type=click.IntRange(1), default=None, metavar="PER_MINUTE",
              help="At most this many requests a minute (all workers together).")
@click.option("--window", "window_cron", default=None, metavar="'MIN HOUR DOM MON DOW'",
              help="Maintenance windows start at these times (cron fields: *, N, A-B, */S, "
                   "lists); requests go out only while one is open.")
@click.option("--window-start", default=None, metavar="HH:MM",
              help="Or: a daily window starting at this time of day.")
@click.option("--window-duration", default=None, metavar="DURATION",
              help="How long each window is open (4h, 90m, 1h30m, seconds).")
@click.option("--tz", default="UTC", show_default=True,
              help="The windows' IANA time zone (e.g. Europe/London).")
@click.option("--retries", type=click.IntRange(0), default=2, show_default=True,
              help="New requests for a device whose outcome is transfer_failed, "
                   "device_unreachable, no_response or expired.")
@click.option("--backoff", default="60s", show_default=True,
              help="Wait before the first retry; doubles per retry.")
@click.option("--backoff-max", default="1h", show_default=True,
              help="The longest wait between retries.")
@click.option("--response-timeout", default=None, metavar="DURATION",
              help="A request without an outcome this long after it was sent gets the "
                   "DCC's outcome no_response: a failure for the thresholds, retried as "
                   "device_unreachable. This deadline goes with each request: a Comms Hub "
                   "that gets it later does not act on it (outcome expired, retried too). "
                   "E.g. 30m; default: the DCC's dcc serve --response-timeout, if any.")
@click.option("--json", "as_json", is_flag=True, help="Print the campaign as JSON.")
@domain_errors
def campaign_create(name, db_path, key, cert, image, srv, devices, devices_file, model,
                    from_version, waves, success_threshold, error_threshold, rate,
                    window_cron, window_start, window_duration, tz, retries, backoff,
                    backoff_max, response_timeout, as_json):
    """Create campaign NAME: the Supplier's image to many devices, in waves. Each device
    gets its own DUIS request, signed by a process holding the Supplier's key (hanota
    campaign drive, or dcc serve --supplier-key, on the same database), as the waves, window
    and rate allow; until one runs the campaign waits."""
    targets = list(devices)
    if devices_file:
        for line in Path(devices_file).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                targets.append(line)
    if model is not None and targets:
        raise click.UsageError("give --model or devices (--device, --devices-file), not both")
    if model is None and not targets:
        raise click.UsageError("give the devices: --device / --devices-file, or --model with "
                               "--from-version")
    mm = None
    if model is not None:
        man, sep, mod = model.partition("/")
        if not sep or not man or not mod:
            raise click.BadParameter("give MANUFACTURER/MODEL, e.g. 1234/0084",
                                     param_hint="--model")
        mm = (man, mod)
    if window_cron and window_start:
        raise click.UsageError("give --window or --window-start, not both")
    win = None
    if window_cron or window_start:
        if not window_duration:
            raise click.UsageError("a maintenance window needs --window-duration")
        d = camp.duration(window_duration)
        win = (camp.Window(window_cron, d, tz) if window_cron
               else camp.Window.daily(window_start, d, tz))
    elif window_duration:
        raise click.UsageError("--window-duration needs --window or --window-start")
    with DccStore(db_path) as store:
        s = camp.create(store, name=name, key_pem=Path(key).read_bytes(),
                        cert_pem=Path(cert).read_bytes(), image=Path(image).read_bytes(),
                        devices=targets if mm is None else None, model=mm,
                        from_version=from_version, srv=srv, waves=waves or ("100%",),
                        success_threshold=success_threshold, error_threshold=error_threshold,
                        rate=rate, window=win, retries=retries,
                        backoff=camp.duration(backoff), backoff_max=camp.duration(backoff_max),
                        response_timeout=camp.duration(response_timeout)
                        if response_timeout else None)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo("campaign %s created: %d devices in %d waves (SR %s)"
               % (name, s["totals"]["size"], len(s["waves_detail"]), s["srv"]))
    click.echo("\n".join(_lines(s, devices=False)))


@campaign.command("status")
@click.argument("name", required=False)
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@domain_errors
def campaign_status(name, db_path, as_json):
    """A campaign's state, its waves (successes, failures, in flight, waiting) and each
    device's state, attempts, outcome and DUIS RequestID; without NAME, every campaign
    without its devices."""
    with DccStore(db_path) as store:
        one = camp.status(store, name) if name else None
        every = camp.list_campaigns(store) if not name else []
    if as_json:
        click.echo(json.dumps(one if name else every, indent=2))
        return
    if one is not None:
        click.echo("\n".join(_lines(one)))
    elif not every:
        click.echo("no campaigns")
    else:
        for s in every:
            click.echo("\n".join(_lines(s, devices=False)))


def _change(verb: str, fn, help_text: str):
    @campaign.command(verb, help=help_text)
    @click.argument("name")
    @_db_option
    @domain_errors
    def cmd(name, db_path):
        with DccStore(db_path) as store:
            s = fn(store, name)
        click.echo("campaign %s: %s" % (name, s["state"]))
    return cmd


_change("pause", camp.pause, "Stop sending requests (retries too) until resumed; outcomes of "
        "requests already sent are still taken.")
_change("resume", camp.resume, "Send again after a pause.")
_change("cancel", camp.cancel, "End the campaign: devices not sent get the outcome "
        "'cancelled'; requests already sent keep theirs.")


@campaign.command("drive")
@_db_option
@click.option("--pki", "pki_dir", type=click.Path(exists=True, file_okay=False),
              required=True,
              help="The DCC's key store of Users' certificates (hanota pki init; dcc serve "
                   "--pki): the DCC's checks of each request run here before it is "
                   "recorded. The DCC's own signing key is not read.")
@click.option("--key", "key", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The Supplier's DUIS XML-signing key (PEM or DER): held in memory only.")
@click.option("--cert", "cert", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Its certificate: the campaigns created with it are the ones signed here.")
@click.option("--worker", default=None, metavar="NAME",
              help="This signer's name in the claims and leases (default host:pid).")
@click.option("--poll", type=click.FloatRange(0.01), default=1.0, show_default=True,
              metavar="SECONDS", help="Seconds between passes when nothing was sent.")
@click.option("--once", is_flag=True,
              help="One pass over the campaigns, then exit (prints what was sent).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", show_default=True)
@domain_errors
def campaign_drive(db_path, pki_dir, key, cert, worker, poll, once, log_level):
    """Sign and send the requests of the Supplier's campaigns: the driver loop alone (no
    HTTP, no WAN), in the Supplier's own process, until SIGINT/SIGTERM. The key stays in
    this process's memory; the DCC's database gets only the requests, checked by the DCC's
    rules as dcc serve's workers check them. The DCC's workers (dcc serve) take the
    outcomes and open the waves; this process only sends, and holds no DCC key. Any number
    of signers (and dcc serve --supplier-key workers) for one Supplier share the work
    without sending a device twice.
    When every running or paused campaign of the Supplier was created with another
    certificate than --cert, it exits 1 naming them (a single one is logged and skipped)."""
    from .pki import KeyStore
    from .service import Dcc

    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signer = camp.Signer.from_files(key, cert)
    # the DCC's checks need the Users' certificates only: no DCC signing key in this process
    service = Dcc(DccStore(db_path), KeyStore(pki_dir), (None, None))
    try:
        store = service.store
        camp.ensure_schema(store)
        mine = store.all("SELECT name, signer_cert FROM campaigns WHERE supplier = ? AND "
                         "state IN ('running', 'paused')", (signer.supplier,))
        wrong = [r[0] for r in mine if camp.cert_sha256(bytes(r[1])) != signer.cert_sha256]
        if wrong and len(wrong) == len(mine):
            raise camp.CampaignError(
                "certificate %s (%s) is not the one campaign%s %s of Supplier %s %s created "
                "with: give that certificate and its key" % (
                    cert, signer.label, "s" if len(wrong) > 1 else "", ", ".join(wrong),
                    signer.supplier, "were" if len(wrong) > 1 else "was"))
        driver = camp.CampaignDriver(service, signers=[signer], worker=worker, advance=False)
        if once:
            n = driver.step()
            driver.leave()
            click.echo("campaign drive: %d requests sent for Supplier %s" % (n, signer.supplier))
            return
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        click.echo("hanota campaign drive: signing for Supplier %s (%s) as %s; database %s%s"
                   % (signer.supplier, signer.label, driver.worker, store.path,
                      "" if mine else "; no campaign of this Supplier yet"))
        try:
            while not stop.is_set():
                sent = 0
                try:
                    sent = driver.step()
                except Exception:  # noqa: BLE001 - as dcc serve's driver: logged, again
                    logging.getLogger(__name__).exception("campaign step")
                if not sent:
                    stop.wait(poll)
        finally:
            try:
                driver.leave()
            except Exception:  # noqa: BLE001 - the database is gone: the leases run out
                pass
        click.echo("hanota campaign drive stopped (%d requests sent; overtaken by another "
                   "worker's counter: %d prepared again outside the write lock, %d redone "
                   "under it)" % (driver.sent, driver.retried, driver.redone))
    finally:
        service.store.close()
