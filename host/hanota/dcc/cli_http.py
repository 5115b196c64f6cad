"""`hanota dcc serve`: the DCC's DUIS endpoint and WAN over HTTP (see `http.py`); and the
User's side of it, `hanota duis send`."""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from ..clitypes import domain_errors
from .cli import dcc, duis
from .http import DuisClient, open_dcc, wan_secret
from .wan import HEARTBEAT


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        raise click.BadParameter("use HOST:PORT", param_hint="--listen")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise click.BadParameter("port %r is not a number" % port, param_hint="--listen") \
            from None


async def _serve(service: Any, host: str, port: int, max_body: int | None,
                 wan_auth: bool, wan_url: str | None = None, worker: str | None = None,
                 campaigns: bool = True, response_timeout: float | None = None,
                 wan_heartbeat: float = HEARTBEAT, signers: tuple = ()) -> None:
    from .campaign import CampaignThread
    from .http import DccHttp

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = DccHttp(service, max_body=max_body,
                     wan_secret=wan_secret(service.store) if wan_auth else None,
                     wan_url=wan_url, worker=worker, wan_heartbeat=wan_heartbeat or None)
    h, p = await server.start(host, port)
    # the campaign driver: a thread with its own database connection (campaign.py)
    # (and the response deadline of every request, --response-timeout)
    driver = CampaignThread(service, signers=signers, worker=worker,
                            response_timeout=response_timeout, campaigns=campaigns).start() \
        if campaigns or response_timeout else None
    click.echo("hanota dcc serving on http://%s:%d (DUIS: POST /api/v1/serviceD; WAN: "
               "/wan/<hub EUI>%s%s; database %s%s)" % (
                   h, p, ", hub tokens required" if wan_auth else "",
                   ", NATS %s" % wan_url if wan_url else "", service.store.path,
                   "; signing campaigns for Supplier %s" % ", ".join(
                       sorted({x.supplier for x in signers})) if signers and campaigns
                   else ""))
    try:
        await stop.wait()
    finally:
        if driver is not None:
            await asyncio.get_running_loop().run_in_executor(None, driver.stop)
        await server.stop()
        sent = driver.driver.sent if driver is not None else 0
        click.echo("hanota dcc stopped%s" % (
            " (campaigns: %d requests sent; overtaken by another worker's counter: %d "
            "prepared again outside the write lock, %d redone under it)"
            % (sent, driver.driver.retried, driver.driver.redone)
            if driver is not None and sent else ""))


@dcc.command("serve")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
              envvar="HANOTA_DCC_DB", help="DCC database: a SQLite file (default "
              "$HANOTA_HOME/dcc.db) or postgresql://USER@HOST:PORT/DB, which several "
              "dcc serve workers share.")
@click.option("--pki", "pki_dir", type=click.Path(file_okay=False), required=True,
              help="PKI directory (hanota pki init): Users' certificates and the DCC's "
                   "signing key.")
@click.option("--wan", "wan_url", default=None, envvar="HANOTA_WAN", metavar="nats://HOST:PORT",
              help="Carry the WAN on NATS JetStream too (hub serve --wan the same URL); the "
                   "websocket /wan/<hub EUI> stays served.")
@click.option("--worker", default=None, metavar="NAME",
              help="This worker's name in the WAN leases (default host:pid).")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT",
              help="Address to serve HTTP on (port 0: any free one, printed).")
@click.option("--max-body", type=click.IntRange(1024), default=None, metavar="BYTES",
              help="Largest DUIS request accepted (default: the DUIS parser's limit, 16 MiB).")
@click.option("--wan-auth", is_flag=True,
              help="Comms Hubs must present their token (hanota dcc wan-token --hub EUI).")
@click.option("--wan-heartbeat", type=click.FloatRange(0), default=HEARTBEAT,
              show_default=True, metavar="SECONDS",
              help="Seconds between the websocket pings that find a dead Comms Hub "
                   "connection (a hub that stops answering is dropped after 1.5 times "
                   "this; 0: no pings, the hubs' own pings still check it). Each ping costs "
                   "a little CPU per connected hub: a fleet of thousands wants 60 or more.")
@click.option("--campaigns/--no-campaigns", default=True, show_default=True,
              help="Drive the firmware campaigns in the database (hanota campaign create): "
                   "outcomes, waves, thresholds; any number of workers share them.")
@click.option("--supplier-key", "supplier_keys", multiple=True, metavar="KEY.pem:CERT.pem",
              help="A Supplier's DUIS XML-signing key and its certificate (repeatable): this "
                   "worker signs and sends the requests of that Supplier's campaigns (the "
                   "certificate the campaign's), holding the key in memory only; the "
                   "embedded single-machine setup. Without one, the Supplier runs hanota "
                   "campaign drive.")
@click.option("--response-timeout", type=click.FloatRange(0, min_open=True), default=None,
              metavar="SECONDS",
              help="A request sent to a Comms Hub that has no outcome this long after gets "
                   "the DCC's outcome no_response (DUIS E21) and its final response; a "
                   "later answer from the hub is kept but makes no second outcome. A "
                   "campaign retries it as device_unreachable. Default: no deadline.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", show_default=True)
@domain_errors
def dcc_serve(db_path, pki_dir, wan_url, worker, listen, max_body, wan_auth, wan_heartbeat,
              campaigns, supplier_keys, response_timeout, log_level):
    """Run the DCC: the DUIS endpoint Users POST signed requests to, their asynchronous
    responses (GET /api/v1/responses, or pushed to a URL registered with POST
    /api/v1/subscribe), the WAN the Comms Hubs (hanota hub serve) dial, and the firmware
    campaigns (each device its own DUIS request, signed with the Supplier's key given by
    --supplier-key, else by the Supplier's hanota campaign drive)."""
    from .campaign import CampaignError, Signer, ensure_schema

    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = _listen(listen)
    if wan_url is not None:
        from .wan_nats import is_nats
        if not is_nats(wan_url):
            raise click.BadParameter("give the NATS server as nats://HOST:PORT",
                                     param_hint="--wan")
    signers = []
    for pair in supplier_keys:
        key, sep, cert = pair.rpartition(":")
        if not sep or not key or not cert:
            raise click.BadParameter("give KEY.pem:CERT.pem, not %r" % pair,
                                     param_hint="--supplier-key")
        try:
            signers.append(Signer.from_files(key, cert))
        except CampaignError as e:
            raise click.BadParameter(str(e), param_hint="--supplier-key") from None
    service = open_dcc(db_path, pki_dir)
    try:
        # the campaign tables made or brought up to date now (a database from when
        # campaigns kept the Supplier's key has it wiped here, logged)
        ensure_schema(service.store)
        asyncio.run(_serve(service, host, port, max_body, wan_auth, wan_url, worker,
                           campaigns, response_timeout, wan_heartbeat, tuple(signers)))
    finally:
        service.store.close()


@dcc.command("wan-token")
@click.option("--hub", "hub", required=True, metavar="EUI",
              help="The Comms Hub's EUI-64 (hanota hub show).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
              envvar="HANOTA_DCC_DB", help="DCC database (default $HANOTA_HOME/dcc.db).")
@domain_errors
def dcc_wan_token(hub: str, db_path: str | None) -> None:
    """Print the token a Comms Hub presents on the WAN (hanota hub serve --wan-token) when
    the DCC runs with --wan-auth. It opens that hub's WAN path only."""
    from .store import DccStore
    from .wan import eui_hex, wan_token

    with DccStore(db_path) as store:
        click.echo(wan_token(wan_secret(store), eui_hex(hub)))


def _describe(p: dict) -> str:
    body = p.get("body") or {}
    inner = next(iter(body.values()), None) if len(body) == 1 else None
    what = ""
    if isinstance(inner, dict) and inner.get("Outcome"):
        what = " %s" % inner["Outcome"]
        if inner.get("FirmwareVersion"):
            what += " (firmware %s)" % inner["FirmwareVersion"]
    return "%s %s%s%s" % (p["code"], p.get("request_id") or "-", what,
                          ": %s" % p["reason"] if p.get("reason") else "")


@duis.command("send")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--dcc", "dcc_url", required=True, metavar="URL",
              help="The DCC's HTTP server (hanota dcc serve), e.g. http://127.0.0.1:8080.")
@click.option("--wait", type=float, default=None, metavar="SECONDS",
              help="Then wait up to SECONDS for the request's final DUIS response.")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the last signed DUIS document received (the response with --wait, "
                   "else the acknowledgement) to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the parsed documents as JSON.")
@domain_errors
def duis_send(file: str, dcc_url: str, wait: float | None, out: str | None,
              as_json: bool) -> None:
    """POST a signed DUIS request (FILE, or - for stdin) to the DCC, as DCC Boxed's
    /api/v1/serviceD takes it. Prints the synchronous answer (I99 accepted, I0 answered, or
    the refusal with its code and reason) and, with --wait, the final response. Exit 0 when
    accepted (and, with --wait, the final response has an I code: the device's outcome is
    printed), 1 when refused (an E code), 2 when the DCC cannot be reached or does not answer
    in time."""
    if not dcc_url.startswith(("http://", "https://")):
        raise click.BadParameter("give the DCC's address as http://HOST:PORT (hanota dcc "
                                 "serve prints it)", param_hint="--dcc")
    xml = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    client = DuisClient(dcc_url)
    ack, raw = client.send(xml)
    docs = [ack]
    final = None
    if wait is not None and ack["code"] == "I99" and ack.get("request_id"):
        final, raw = client.wait_response(ack["request_id"], wait)
        docs.append(final)
    if out:
        Path(out).write_bytes(raw)
    if as_json:
        click.echo(json.dumps([{k: (v.hex() if isinstance(v, bytes) else v)
                                for k, v in d.items()} for d in docs], indent=2))
    else:
        for d in docs:
            click.echo(_describe(d))
    last = final or ack
    if not last["code"].startswith("I"):
        sys.exit(1)
