"""`python -m bench` (`make bench`): run the benchmarks and write bench/RESULTS.md.

python -m bench                       everything (about 15 minutes)
python -m bench --quick               one run of each, smaller images (a minute or two)
python -m bench --only link,hub       some sections: boards, device, heap, link (with mpremote),
                                      hub, encodings (full vs compressed vs delta files),
                                      loss (1 % of the Zigbee-like link's frames lost)
python -m bench --only heap --repeat 20   the 64 KiB-heap boards alone, 20 times in a row
python -m bench --out FILE            write the results elsewhere
python -m bench --only hub --replace  write only this run's sections (drop the file's others)

A run replaces the sections it ran in the results file and keeps the others as they were,
each saying when and by which command it was measured (the headline and findings too: each
line belongs to a section). The file is rewritten as each section finishes, so a section
that fails (its error recorded in the file) leaves the others' figures, and one that failed
without figures keeps the file's earlier ones under a line saying so; the run then exits 1.
A board that hangs has its console log kept (--logs, by default bench-logs/ next to the
results file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from . import boards, common, device, encodings, hub, link, loss, report, vs_mpremote

SECTIONS = ("boards", "device", "heap", "link", "hub", "encodings", "loss")
# "device" runs the 64 KiB-heap boards too
DEFAULT = ("boards", "device", "link", "hub", "encodings", "loss")
HERE = Path(__file__).resolve().parent


def _args(argv):
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
        default=",".join(DEFAULT),
        help="comma-separated sections (%s; default %s)" % (", ".join(SECTIONS), ",".join(DEFAULT)),
    )
    ap.add_argument("--repeat", type=int, default=1, help="run each chosen section N times in a row")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"), help="where to write the results")
    ap.add_argument("--replace", action="store_true",
                    help="write only this run's sections, not keeping the file's others")
    ap.add_argument("--json", help="also write every figure as JSON here")
    ap.add_argument("--logs", help="where a hung board's console log is kept (default: "
                    "bench-logs/ next to --out)")
    args = ap.parse_args(argv)
    scale = args.scale or "full"
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error("unknown section %s (choose from %s)" % (", ".join(bad), ", ".join(SECTIONS)))
    if args.repeat < 1:
        ap.error("--repeat must be at least 1, not %d" % args.repeat)
    if not args.replace:
        try:
            report.check_mergeable(args.out)
        except report.ResultsFileError as e:
            ap.error(str(e))
    common.LOG_DIR = Path(args.logs or Path(args.out).resolve().parent / "bench-logs")
    args.command = "python -m bench" + ("" if scale == "full" else " --" + scale) + (
        "" if only == list(DEFAULT) else " --only " + ",".join(only)) + (
        " --repeat %d" % args.repeat if args.repeat > 1 else "")
    return args, scale, only


def main(argv=None) -> int:
    args, scale, only = _args(argv)

    def log(msg):
        print(msg, flush=True)

    started, t0 = time.time(), time.monotonic()
    results = {"machine": common.machine(), "scale": scale, "failed": [],
               "command": args.command, "measured": {}}

    def write():
        # after every section: what finished is on disk whatever happens next
        results["load_end"] = os.getloadavg()
        results["bring_up_retries"] = common.BRING_UP_RETRIES
        report.write(args.out, results, started, time.monotonic() - t0, scale, args.replace)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))

    ws = common.Workspace()
    try:
        for name in SECTIONS:
            if name not in only:
                continue
            since, load0 = time.time(), os.getloadavg()[0]
            for i in range(args.repeat):
                run = " run %d of %d" % (i + 1, args.repeat) if args.repeat > 1 else ""
                log("%s%s (%.0f s in)" % (name, run, time.monotonic() - t0))
                out, error = None, None
                try:
                    out = _section(name, ws, scale, log, "-r%d" % (i + 1) if run else "")
                except common.SectionFailed as e:
                    out, error = e.results, str(e)
                except Exception as e:
                    error = common.short(e)
                    traceback.print_exc()
                if error:
                    log("  FAILED: %s" % error)
                    results["failed"].append({"section": name, "run": i + 1, "error": error})
                if name == "heap":
                    results.setdefault("heap", []).append({"run": i + 1, "configs": out or [],
                                                           "error": error})
                elif out is not None:
                    results[name] = out
                # when and how this section was measured (its runs so far)
                results["measured"][name] = {"at": since, "seconds": time.time() - since,
                                             "load": [load0, os.getloadavg()[0]],
                                             "command": args.command}
                write()
    finally:
        ws.close()
    write()
    elapsed = time.monotonic() - t0
    if results["failed"]:
        log("wrote %s (%.0f s); %d section run(s) FAILED: %s" % (
            args.out, elapsed, len(results["failed"]),
            "; ".join("%s: %s" % (f["section"], f["error"]) for f in results["failed"])))
        return 1
    log("wrote %s (%.0f s)" % (args.out, elapsed))
    return 0


def _section(name: str, ws, scale: str, log, tag: str):
    if name == "boards":
        return boards.run(ws, scale, log)
    if name == "device":
        return device.run(ws, scale, log)
    if name == "heap":
        return device.heap_section(ws, scale, log, tag)
    if name == "hub":
        return hub.run(ws, scale, log)
    if name == "encodings":
        return encodings.run(ws, scale, log)
    if name == "loss":
        return loss.run(ws, scale, log)
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
    return out


if __name__ == "__main__":
    sys.exit(main())
