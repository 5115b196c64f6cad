"""`python -m bench` (`make bench`): run the benchmarks and write bench/RESULTS.md.

python -m bench                       everything (about 10 minutes)
python -m bench --quick               one run of each, smaller images (a minute or two)
python -m bench --only link,hub       some sections: boards, device, link (with mpremote), hub
python -m bench --out FILE            write the results elsewhere
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import boards, common, device, hub, link, report, vs_mpremote

SECTIONS = ("boards", "device", "link", "hub")
HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument(
        "--quick",
        action="store_const",
        const="quick",
        dest="scale",
        help="one run of each, smaller images",
    )
    g.add_argument(
        "--smoke",
        action="store_const",
        const="smoke",
        dest="scale",
        help="tiny sizes and fast links: proves the harness works (seconds)",
    )
    ap.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help="comma-separated sections (%s)" % ", ".join(SECTIONS),
    )
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"), help="where to write the results")
    ap.add_argument("--json", help="also write every figure as JSON here")
    args = ap.parse_args(argv)
    scale = args.scale or "full"
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error("unknown section %s (choose from %s)" % (", ".join(bad), ", ".join(SECTIONS)))

    def log(msg):
        print(msg, flush=True)

    started, t0 = time.time(), time.monotonic()
    results = {"machine": common.machine(), "scale": scale}
    ws = common.Workspace()
    try:
        for name in SECTIONS:
            if name not in only:
                continue
            log("%s (%.0f s in)" % (name, time.monotonic() - t0))
            if name == "boards":
                results["boards"] = boards.run(ws, scale, log)
            elif name == "device":
                results["device"] = device.run(ws, scale, log)
            elif name == "hub":
                results["hub"] = hub.run(ws, scale, log)
            else:
                out = link.run(ws, scale, log)
                keep = out.pop("keep")
                try:
                    sizes = {"smoke": {16 * common.KiB: 1}, "quick": {64 * common.KiB: 1}}.get(
                        scale, {64 * common.KiB: 3, 256 * common.KiB: 3}
                    )
                    sizes = {s: min(n, len(keep["boards"])) for s, n in sizes.items()}
                    rate = 200_000 if scale == "smoke" else link.SERIAL_RATE
                    out["mpremote"] = vs_mpremote.run(ws, keep["boards"], sizes, rate, log)
                finally:
                    for b in keep.get("boards", []):
                        b.stop()
                    if keep:
                        keep["hub"].stop()
                results["link"] = out
    finally:
        ws.close()
    elapsed = time.monotonic() - t0
    results["load_end"] = os.getloadavg()
    results["bring_up_retries"] = common.BRING_UP_RETRIES
    report.write(args.out, results, started, elapsed, scale)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    log("wrote %s (%.0f s)" % (args.out, elapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
