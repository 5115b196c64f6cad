"""`hanota dcc serve`: the DCC's DUIS endpoint and WAN over HTTP (see `http.py`)."""
from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import click

from ..clitypes import domain_errors
from .cli import dcc
from .http import open_dcc


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        raise click.BadParameter("use HOST:PORT", param_hint="--listen")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise click.BadParameter("port %r is not a number" % port, param_hint="--listen") \
            from None


async def _serve(service: Any, host: str, port: int, max_body: int | None) -> None:
    from .http import DccHttp

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = DccHttp(service, max_body=max_body)
    h, p = await server.start(host, port)
    click.echo("hanota dcc serving on http://%s:%d (DUIS: POST /api/v1/serviceD; WAN: "
               "/wan/<hub EUI>; database %s)" % (h, p, service.store.path))
    try:
        await stop.wait()
    finally:
        await server.stop()
        click.echo("hanota dcc stopped")


@dcc.command("serve")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
              envvar="HANOTA_DCC_DB", help="DCC database (default $HANOTA_HOME/dcc.db).")
@click.option("--pki", "pki_dir", type=click.Path(file_okay=False), required=True,
              help="PKI directory (hanota pki init): Users' certificates and the DCC's "
                   "signing key.")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT",
              help="Address to serve HTTP on (port 0: any free one, printed).")
@click.option("--max-body", type=click.IntRange(1024), default=None, metavar="BYTES",
              help="Largest DUIS request accepted (default: the DUIS parser's limit, 16 MiB).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", show_default=True)
@domain_errors
def dcc_serve(db_path, pki_dir, listen, max_body, log_level):
    """Run the DCC: the DUIS endpoint Users POST signed requests to, their asynchronous
    responses (GET /api/v1/responses, or pushed to a URL registered with POST
    /api/v1/subscribe), and the WAN the Comms Hubs (hanota hub serve) dial."""
    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = _listen(listen)
    service = open_dcc(db_path, pki_dir)
    try:
        asyncio.run(_serve(service, host, port, max_body))
    finally:
        service.store.close()
