"""`python -m bench.lockhold`: how long a campaign send and a Comms Hub outcome hold the DCC
store's write lock (SQLite's BEGIN IMMEDIATE, PostgreSQL's write advisory lock).

One campaign driver in this process sends an SR 11.4 to --devices PPMIDs (three a premises,
a 1000-byte image), then every request gets an `activated` outcome through
`Dcc.wan_received`. Every outermost write transaction that takes the lock is timed (from
asking for it to its commit); per send and per outcome: the wall time and the time the lock
was held. The lock's hold time is what bounds several workers together (their sends and
outcomes commit one at a time); the rest runs in each worker in parallel. No other process
contends, so the figures vary less with the machine's load than `bench.scale`'s; they still
vary with it. Nothing is written to bench/: the figures are printed.

    python -m bench.lockhold                    SQLite, then PostgreSQL (the pgserver wheel)
    python -m bench.lockhold --db sqlite --devices 600
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(db: str, n: int) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from hanota import images
    from hanota.dcc import campaign, pki
    from hanota.dcc.campaign import CampaignDriver
    from hanota.dcc.service import Dcc
    from hanota.dcc.store import DccStore
    from support import otabuild

    held = {"t": 0.0, "n": 0}
    orig = DccStore.tx

    @contextmanager
    def timed(self, exclusive=True):
        outer = self._depth == 0 and exclusive
        t = time.perf_counter()
        with orig(self, exclusive) as c:
            yield c
        if outer:
            held["t"] += time.perf_counter() - t
            held["n"] += 1

    DccStore.tx = timed  # type: ignore[method-assign]
    srv = None
    try:
        d = Path(tempfile.mkdtemp(prefix="lockhold-"))
        pki.init(d / "pki")
        img = images.build_image(random.Random(7).randbytes(1000), key=otabuild.new_key(),
                                 version=2, role="ppmid")
        if db == "pg":
            from support.servers import Postgres

            srv = Postgres()
            target = srv.new_database()
        else:
            target = str(d / "dcc.db")
        st = DccStore(target)
        sup, mfr = pki.ORGS["supplier-a"][1], images.DEFAULT_MANUFACTURER
        hubs = ["00DB1234567%05X" % i for i in range((n + 2) // 3)]
        for i, h in enumerate(hubs):
            st.add_premises("M%d" % i, [sup], h)
        for i in range(n):
            st.add_device("00DB12345678%04X" % i, "PPMID", "M%d" % (i % len(hubs)),
                          manufacturer=mfr, model=0x0084, firmware_version=1)
        h = images.otafile.parse_stream(img, block=4096)
        st.cpl_add(mfr, 0x0084, h.header.file_version, h.image_sha256)
        dcc = Dcc(st, pki.KeyStore(d / "pki"), pki.signing_pair(d / "pki", "dcc.xml"))
        campaign.create(st, name="c", image=img, model=(mfr, 0x0084), from_version=1,
                        key_pem=(d / "pki/supplier-a.xml.key.pem").read_bytes(),
                        cert_pem=(d / "pki/supplier-a.xml.cert.pem").read_bytes())
        campaign.ensure_schema(st)
        signer = campaign.Signer.from_files(str(d / "pki/supplier-a.xml.key.pem"),
                                            str(d / "pki/supplier-a.xml.cert.pem"))
        drv = CampaignDriver(dcc, signers=[signer], batch=n)
        held.update(t=0.0, n=0)
        t = time.perf_counter()
        sent = drv.step()
        send_wall, send_held = time.perf_counter() - t, held["t"]
        held.update(t=0.0, n=0)
        t, k = time.perf_counter(), 0
        for hub in hubs:
            for m in dcc.wan_outbox(hub):
                k += 1
                dcc.wan_received(hub, {"id": k, "type": "outcome", "request": m["request"],
                                       "device": m["device"], "outcome": "activated",
                                       "detail": {}})
        out_wall, out_held = time.perf_counter() - t, held["t"]
        st.close()
        return ("%-6s %d sends: %.2f ms each, the lock held %.2f ms of it; %d outcomes: "
                "%.2f ms each, the lock held %.2f ms" % (
                    db, sent, send_wall / sent * 1e3, send_held / sent * 1e3, k,
                    out_wall / k * 1e3, out_held / k * 1e3))
    finally:
        DccStore.tx = orig  # type: ignore[method-assign]
        if srv is not None:
            srv.cleanup()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.lockhold", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=("sqlite", "pg", "both"), default="both")
    ap.add_argument("--devices", type=int, default=300, help="campaign devices (at least 1)")
    a = ap.parse_args(argv)
    if a.devices < 1:
        ap.error("--devices must be at least 1, not %d" % a.devices)
    for db in (("sqlite", "pg") if a.db == "both" else (a.db,)):
        print(measure(db, a.devices), flush=True)


if __name__ == "__main__":
    main()
