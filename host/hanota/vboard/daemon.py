"""`python -m hanota.vboard.daemon`: run one virtual board until SIGTERM (used by `hanota vboard start`)."""
from __future__ import annotations

import argparse
import signal
import threading

from .board import VirtualBoard


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="hanota.vboard.daemon")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--board", default="vboard-esp32")
    ap.add_argument("--name")
    ap.add_argument("--role")
    ap.add_argument("--power-cut-at", type=int)
    ap.add_argument("--torn", action="store_true")
    ap.add_argument("--link-rate", type=float)
    ap.add_argument("--hub")
    ap.add_argument("--clock-offset", type=float, default=0.0)
    args = ap.parse_args(argv)
    hub = None
    if args.hub:
        host, _, port = args.hub.rpartition(":")
        hub = (host or "127.0.0.1", int(port))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: done.set())
    kw = {"hub": hub} if hub else {}
    board = VirtualBoard(args.dir, board=args.board, name=args.name, role=args.role,
                         power_cut_at=args.power_cut_at, torn=args.torn, link_rate=args.link_rate,
                         clock_offset=args.clock_offset, **kw)
    board.start()
    try:
        while not done.wait(0.5):
            pass
    finally:
        board.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
