"""bench/RESULTS.md from the figures the sections return."""

from __future__ import annotations

import time

from hanfw.link import RX_FRAME

from .common import KiB, MiB
from .link import BLOCK_OVERHEAD, PAGE_SIZE, Z2M_BLOCK, Z2M_DELAY, ceiling, per_bundle


def size_name(n: int) -> str:
    return (
        "%d MiB" % (n // MiB)
        if n % MiB == 0
        else "%d KiB" % (n // KiB)
        if n % KiB == 0
        else "%d B" % n
    )


def stat(s, fmt="%.1f", k=1.0) -> str:
    """median (min–max), or the value alone for a single run."""
    if not s:
        return "–"
    if s["n"] == 1 or fmt % (s["min"] * k) == fmt % (s["max"] * k):
        return fmt % (s["median"] * k)
    return (fmt + " (" + fmt + "–" + fmt + ")") % (s["median"] * k, s["min"] * k, s["max"] * k)


def pct(s) -> str:
    return stat(s, "%.1f", 100) + " %" if s else "–"


def dur(seconds: float) -> str:
    return "%.0f min %02.0f s" % divmod(seconds, 60) if seconds >= 60 else "%.1f s" % seconds


def table(head: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def _row(runs, link, mode, size):
    for r in runs:
        if (r["link"], r["mode"], r["size"]) == (link, mode, size):
            return r
    return None


def write(path, results: dict, started: float, elapsed: float, scale: str) -> None:
    m = results["machine"]
    L = ["# hanota benchmarks: results", ""]
    L += [
        "Written by `make bench` (`python -m bench%s`) on %s; the whole run took %s. Each figure "
        "is the median of the runs made, with (min–max) when there was more than one. Nothing "
        "here is asserted by the test suite."
        % (
            "" if scale == "full" else " --" + scale,
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            dur(elapsed),
        ),
        "",
    ]
    L += ["## Machine", ""]
    L += table(
        ["", ""],
        [
            [
                "CPU",
                "%s, %d cores (shared with other work during the run: load average %.1f at the "
                "start, %.1f at the end)"
                % (m["cpu"], m["cores"], m["load"][0], results.get("load_end", [0])[0]),
            ],
            ["Memory", m["memory"]],
            ["OS", m["os"]],
            ["Python", m["python"]],
            ["MicroPython", "unix port %s" % m["micropython"]],
            ["mpremote", m["mpremote"]],
        ],
    )
    L += _headline(results)
    L += _failures(results.get("failed") or [])

    def failed(name):
        return [f["error"] for f in results.get("failed") or [] if f["section"] == name]

    link = results.get("link")
    L += _section("1. Link efficiency", link, _link, failed("link"))
    L += _section("2. Against mpremote", (link or {}).get("mpremote"),
                  lambda mps: _mpremote(mps, link["runs"]))
    L += _section("3. Device cost (MicroPython unix port)", results.get("device"), _device,
                  failed("device"))
    L += _section("4. Hub scale", results.get("hub"), _hub, failed("hub"))
    L += _section("5. Board start-up", results.get("boards"), _boards, failed("boards"))
    if results.get("heap"):
        L += _section("6. The 64 KiB-heap boards alone (`--only heap`)", results["heap"],
                      _heap_runs)
    L += _section("7. Full, compressed and delta files (`--only encodings`)",
                  results.get("encodings"), _encodings, failed("encodings"))
    L += _section("8. Loss on the Zigbee-like link (`--only loss`)", results.get("loss"),
                  _loss, failed("loss"))
    L += _findings(results)
    with open(path, "w") as f:
        f.write("\n".join(L).rstrip() + "\n")


def _section(title: str, data, body, failed: list[str] | None = None) -> list[str]:
    """A numbered section: its title, what failed in it, then body(data), or "Not run." if
    that part did not run."""
    L = ["## " + title, ""]
    L += ["**Failed:** %s" % e for e in failed or []] + ([""] if failed else [])
    return L + (body(data) if data else ["Not run.", ""] if not failed else [])


def _failures(failed: list[dict]) -> list[str]:
    """The section runs that failed, with their errors (the run exited 1)."""
    if not failed:
        return []
    L = ["## Failed", "", "These section runs failed (`python -m bench` exited 1); the figures of "
         "the others stand:", ""]
    L += ["- %s (run %d): %s" % (f["section"], f["run"], f["error"]) for f in failed]
    return L + [""]


def _heap_runs(runs: list[dict]) -> list[str]:
    """Section 6: each run of the 64 KiB-heap boards, and whether any board hung."""
    rows, hung = [], 0
    for r in runs:
        hung += bool(r["error"])
        for v in r["configs"]:
            rows.append([str(r["run"]), v["config"], size_name(v["size"]),
                         "%d of %d" % (v["ok"], v["of"]), stat(v["seconds"]),
                         "; ".join(v["hangs"]) or "no"])
        if r["error"] and not any(v["hangs"] for v in r["configs"]):
            rows.append([str(r["run"]), "–", "–", "–", "–", r["error"]])
    L = ["%d run(s) in a row of the 64 KiB-heap boards (vboard-esp32, `heap=\"64K\"`, a "
         "board per client configuration, downloads + verifies over an unlimited link); "
         "%d with a hang or an error." % (len(runs), hung), ""]
    return L + table(["Run", "Client configuration", "Image", "Completed", "To verified (s)",
                      "Hung"], rows)


def _headline(r: dict) -> list[str]:
    L = ["## Headline", ""]
    link = r.get("link")
    if link:
        L += _headline_link(link)
    dev = r.get("device")
    if dev:
        L += _headline_device(dev)
    hub = [h for h in (r.get("hub") or []) if not h.get("rcvbuf")]
    if hub:
        top = hub[-1]
        L.append(
            "- **Hub:** one process served %d devices at once at %s blocks/s, %s CPU s per "
            "delivered MiB, %.1f KiB per connected device; requests lost: %d."
            % (
                top["devices"],
                stat(top["blocks_per_s"], "%.0f"),
                stat(top["hub_cpu_s_per_mib"], "%.2f"),
                top["traced_per_device"]["median"] / KiB,
                top["lost"],
            )
        )
    if r.get("loss"):
        from .loss import headline

        L += headline(r["loss"])
    b = r.get("boards")
    if b:
        L.append(
            "- **Board start-up to a REPL:** %s."
            % "; ".join(
                "%s %s s (`hanota vboard start`: %s s)"
                % (k, stat(v["in_process"], "%.2f"), stat(v["cli"], "%.2f"))
                for k, v in b.items()
            )
        )
    return L + [""]


def _headline_link(link: dict) -> list[str]:
    """The headline's link lines: page requests at 115,200 baud, against mpremote, against
    Zigbee2MQTT-like pacing."""
    L = []
    runs = link["runs"]
    best = max(
        (x for x in runs if x["mode"] == "page" and x["link"] == "serial"),
        key=lambda x: x["size"],
        default=None,
    )
    if best:
        L.append(
            "- **Link efficiency, 115,200 baud, %s, page requests: %s of the link's "
            "capacity** (block requests: %s; goal 90 %%: %s). A block alone in its link "
            "frame carries %d bytes of link and ZCL headers (at most %.1f %% payload with "
            "%d-byte blocks); page requests go out in bundles of %d block responses per "
            "link frame, which raises that to %.1f %%."
            % (
                size_name(best["size"]),
                pct(best["fraction"]),
                pct(_row(runs, "serial", "block", best["size"])["fraction"]),
                "met" if best["fraction"]["median"] >= 0.9 else "**not met**, see Findings",
                BLOCK_OVERHEAD,
                100 * ceiling(best["max_data"]),
                best["max_data"],
                per_bundle(best["max_data"]),
                100 * ceiling(best["max_data"], True),
            )
        )
    for mp in link.get("mpremote", []):
        ours = _row(runs, "serial", "page", mp["size"])
        if ours:
            L.append(
                "- **Against `mpremote cp`, %s at 115,200 baud: our OTA takes %.2f× "
                "mpremote's time** (%.1f s against %.1f s), and ours also verifies (SHA-256, "
                "P-256 signature, bank read back), stages into the inactive bank and can roll "
                "back."
                % (
                    size_name(mp["size"]),
                    ours["to_verified"]["median"] / mp["seconds"]["median"],
                    ours["to_verified"]["median"],
                    mp["seconds"]["median"],
                )
            )
    for x in runs:
        if x["link"] == "zigbee" and x["mode"] == "page":
            L.append(
                "- **Against Zigbee2MQTT-like pacing (50-byte blocks, 250 ms apart), %s: "
                "%.3f× its time** (%s against at least %s)."
                % (
                    size_name(x["size"]),
                    x["to_verified"]["median"] / x["z2m_seconds"],
                    dur(x["to_verified"]["median"]),
                    dur(x["z2m_seconds"]),
                )
            )
    return L


def _headline_device(dev: dict) -> list[str]:
    h = dev["heap"]
    return [
        "- **Device (MicroPython unix port):** P-256 verify %s ms; SHA-256 %s MB/s; a %s "
        "download + verify holds at most %.1f KiB of live data; with a 64 KiB heap it "
        "completed %s."
        % (
            stat(dev["p256_ms"], "%.2f"),
            stat(dev["sha256_mb_s"], "%.0f"),
            size_name(h["size"]),
            max(h[c]["peak_data"] for c in ("blocks64", "pages255")) / KiB,
            " and ".join(
                "%d of %d times on vboard-esp32 (%s)" % (v["ok"], v["of"], v["config"])
                for v in dev["vboard_64k"]
            ),
        )
    ]


def _link(link: dict) -> list[str]:
    """Section 1: what is measured, a table per link, and the Zigbee2MQTT-like comparison."""
    runs = link["runs"]
    L = [
        "An image is offered to virtual boards (the real MicroPython device code) by the hub's "
        "OTA server over an emulated link that delivers at a set rate, each direction on its own. "
        "*Goodput* is manufacturer-image bytes over the transfer phase (the hub's first block "
        "request to the last byte the link delivered before the device's Upgrade End) over the "
        "link rate; *utilisation* counts every byte the link carried to the device in that phase "
        "(headers too); *ceiling* is the payload share of full blocks on the wire: one per link "
        "frame (%d bytes of link and ZCL headers per block) for block requests and on the "
        "Zigbee-like link, whose device asks for no bundles; for page requests otherwise, as many "
        "as one bundle holds (the hub packs a page's block responses into link frames of up to "
        "the %d bytes the device's HELLO announced). *Served again*: bytes the hub sent more than once (lost "
        "or refused blocks), as a share of the file, with the kernel's UDP receive-buffer drops "
        "during those runs if any. *To verified* ends when the hub has the device's Upgrade End, "
        "after the device checked the signature and read its bank back. Page requests ask for %d "
        "KiB pages. Runs marked ‖ ran at the same time on separate boards, each over its own "
        "emulated link." % (BLOCK_OVERHEAD, RX_FRAME, PAGE_SIZE // KiB)
    ]
    L.append("")
    by_link = {}
    for x in runs:
        by_link.setdefault(x["link"], []).append(x)
    for xs in by_link.values():
        L += _link_table(xs)
    return L + _z2m(runs)


def _link_table(xs: list[dict]) -> list[str]:
    """The runs over one link, a row per image size and request mode."""
    L = [
        "**%s**, blocks of up to %d bytes%s:"
        % (
            xs[0]["title"],
            xs[0]["max_data"],
            ", %.0f ms per frame" % (1000 * xs[0]["latency"]) if xs[0]["latency"] else "",
        )
    ]
    L.append("")
    L += table(
        [
            "Image",
            "Requests",
            "Goodput (of the link)",
            "Utilisation",
            "Ceiling",
            "To verified (s)",
            "Longest idle gap (s)",
            "Served again",
            "Runs",
        ],
        [
            [
                size_name(x["size"]),
                x["mode"],
                pct(x["fraction"]),
                pct(x["utilisation"]),
                "%.1f %%" % (100 * x["ceiling"]),
                stat(x["to_verified"]),
                stat(x["longest_gap"], "%.2f"),
                pct(x["re_served"])
                + (" (%d kernel UDP drops)" % x["udp_drops"] if x["udp_drops"] else ""),
                "%d%s%s"
                % (
                    x["fraction"]["n"],
                    " ‖" if x["parallel"] else "",
                    "" if x["ok"] else " (failed)",
                ),
            ]
            for x in xs
        ],
    )
    return L


def _z2m(runs: list[dict]) -> list[str]:
    """Our Zigbee-like runs against Zigbee2MQTT's pacing, computed from its settings."""
    L = [
        "**Zigbee2MQTT-like pacing**, computed from its documented settings "
        "(`default_maximum_data_size` %d, `image_block_response_delay` %d ms: zigbee-herdsman "
        "sends at most one Image Block Response per %d ms): ceil(file size / %d) × %.2f s, a "
        "lower bound (link time not added)."
        % (Z2M_BLOCK, Z2M_DELAY * 1000, Z2M_DELAY * 1000, Z2M_BLOCK, Z2M_DELAY)
    ]
    L.append("")
    sizes = sorted({x["size"] for x in runs if x["link"] == "zigbee"})
    rows = []
    for s in sizes:
        page, block = _row(runs, "zigbee", "page", s), _row(runs, "zigbee", "block", s)
        z = (page or block)["z2m_seconds"]
        rows.append(
            [
                size_name(s),
                (page or block)["file_size"],
                dur(z),
                dur(page["to_verified"]["median"]) if page else "–",
                "%.3f×" % (page["to_verified"]["median"] / z) if page else "–",
                dur(block["to_verified"]["median"]) if block else "–",
                "%.3f×" % (block["to_verified"]["median"] / z) if block else "–",
            ]
        )
    if rows:
        L += table(
            [
                "Image",
                "File bytes",
                "Z2M-like (computed)",
                "Ours, pages",
                "Ratio",
                "Ours, blocks",
                "Ratio",
            ],
            rows,
        )
    return L


def _mpremote(mps: list[dict], runs: list[dict]) -> list[str]:
    """Section 2: `mpremote cp` against our OTA of the same payload."""
    L = [
        "`mpremote cp PAYLOAD :bench.bin` onto the same boards (vboard-esp32, LittleFS) through a "
        "pty relay built in `bench/vs_mpremote.py` that passes bytes at 11,520 B/s each way, the "
        "same rate as the OTA link (mpremote unchanged; the copy is checked with `mpremote "
        "sha256sum` afterwards, untimed). Our time is the page-request OTA of the same payload on "
        "the same board kind (section 1, to verified). 1 MiB is not compared: it does not fit the "
        "boards' filesystems (960 KiB on vboard-esp32, 64 KiB on vboard-nrf52840)."
    ]
    L.append("")
    rows = []
    for mp in mps:
        ours = _row(runs, "serial", "page", mp["size"])
        rows.append(
            [
                size_name(mp["size"]),
                stat(mp["seconds"]),
                stat(mp["expansion"], "%.2f"),
                stat(ours["to_verified"]) if ours else "–",
                "%.2f×" % (ours["to_verified"]["median"] / mp["seconds"]["median"])
                if ours
                else "–",
                "%d%s" % (mp["seconds"]["n"], "" if mp["ok"] else " (copy differed)"),
            ]
        )
    L += table(
        [
            "Payload",
            "mpremote cp (s)",
            "Bytes sent per payload byte",
            "Our OTA (s)",
            "Ours / theirs",
            "Runs",
        ],
        rows,
    )
    L.append(
        "What each does: mpremote writes a file (each 256-byte chunk as a `repr()` bytes literal "
        "run through the raw REPL). Our OTA authenticates every frame, checks the header before "
        "the body, streams into the inactive bank while hashing, persists a resume point every 4 "
        "KiB, verifies the P-256 signature, reads the bank back, stages it and keeps the previous "
        "image for rollback."
    )
    return L + [""]


def _device(dev: dict) -> list[str]:
    """Section 3: speeds, the heap a download needs, resume, a 64 KiB board, flash wear."""
    return (_device_speeds(dev) + _heap(dev["heap"]) + _resume(dev.get("resume"))
            + _vboard_heap(dev) + _wear(dev))


def _device_speeds(dev: dict) -> list[str]:
    h = dev["heap"]
    return table(
        ["Measure", "Value"],
        [
            ["SHA-256 (hashlib), 4 KiB updates", stat(dev["sha256_mb_s"], "%.0f") + " MB/s"],
            [
                "SHA-256 (hashlib), 64-byte updates",
                stat(dev["sha256_block_mb_s"], "%.0f") + " MB/s",
            ],
            [
                "Streaming into a bank (OtaStream: parse, SHA-256 of the signed bytes and of the "
                "image, bank writes), 255-byte blocks",
                stat(dev["stream_255_mb_s"], "%.1f") + " MB/s",
            ],
            ["… 64-byte blocks", stat(dev["stream_64_mb_s"], "%.1f") + " MB/s"],
            [
                "SHA-256 read-back of the %s bank" % size_name(h["size"]),
                stat(dev["readback_ms"], "%.1f") + " ms",
            ],
            [
                "P-256 verify (hanfw.p256)",
                stat(dev["p256_ms"], "%.2f") + " ms (%d runs)" % dev["p256_ms"]["n"],
            ],
        ],
    )


def _heap(h: dict) -> list[str]:
    """The heap during a download + verify: at each limit tried, and per configuration."""
    L = [
        "**Heap during a %s download + verify** by the real OTA client (`hanfw.client` with app "
        "banks on a file-backed flash, fed by a stand-in hub in the same interpreter: "
        "`bench/mpy/devcost.py`). *Live data* is sampled after a collection at every frame, above "
        "what the loaded device code holds. For the heap limit, a ballast takes all the heap but "
        "the limit once the code is loaded (a board keeps its code in flash), so the limit is "
        "what the client's data may use; the free heap is then in pieces (the largest free block "
        "is given)." % size_name(h["size"])
    ]
    L.append("")
    cols = ["Free heap"] + ["%s" % n for n in ("blocks64", "pages255") if n in h]
    rows = []
    for i, limit in enumerate(h["limits"]):
        row = [
            "%d KiB (largest block %.1f KiB)"
            % (limit // KiB, (h["blocks64"]["grid"][i]["largest"] or 0) / KiB)
        ]
        for name in ("blocks64", "pages255"):
            g = h[name]["grid"][i]
            row.append("completes" if g["ok"] else "fails: %s" % (g["error"] or "?"))
        rows.append(row)
    L += table(cols, rows)
    L += table(
        [
            "Client configuration",
            "Live data, peak",
            "Device code loaded",
            "Lowest limit tried from which every larger one completed",
            "Lowest limit that completed",
        ],
        [
            [
                "%s (max_data %d, %s)"
                % (
                    n,
                    h[n]["max_data"],
                    "pages of %d KiB" % (h[n]["page_size"] // KiB)
                    if h[n]["page_size"]
                    else "block requests",
                ),
                "%.1f KiB" % (h[n]["peak_data"] / KiB),
                "%.0f KiB" % (h[n]["code"] / KiB),
                "%s KiB" % (h[n]["lowest_monotonic"] // KiB)
                if h[n]["lowest_monotonic"]
                else "none",
                "%s KiB" % (h[n]["lowest_any"] // KiB) if h[n]["lowest_any"] else "none",
            ]
            for n in ("blocks64", "pages255")
        ],
    )
    return L


def _resume(rs: dict | None) -> list[str]:
    """A download cut and resumed by a new client (nothing if that was not run)."""
    if not rs:
        return []
    L = [
        "**Resume**: the same client and flash, the download cut after %d frames (a power "
        "cut), then a new client over the same flash and state, as after a reboot:" % rs["cut"]
    ]
    L.append("")
    L += table(
        ["Client configuration", "Resumed download"],
        [
            [n, "completes" if rs[n]["ok"] else "fails: %s" % rs[n]["error"]]
            for n in ("blocks64", "pages255")
        ],
    )
    return L


def _vboard_heap(dev: dict) -> list[str]:
    h = dev["heap"]
    L = [
        '**On the virtual board with a 64 KiB heap** (`VirtualBoard(heap="64K")`: the '
        "board's own accounting, ROMFS code not counted), %s downloads + verifies over an "
        "unlimited link:" % size_name(h["size"])
    ]
    L.append("")
    L += table(
        ["Client configuration", "Completed", "To verified (s)"],
        [
            [v["config"], "%d of %d" % (v["ok"], v["of"]), stat(v["seconds"])]
            for v in dev["vboard_64k"]
        ],
    )
    return L


def _wear(dev: dict) -> list[str]:
    """Flash erases of one download on the 64 KiB board and of each real upgrade."""
    L = [
        "**Flash wear** (`VirtualBoard.counters()`: erases per 4 KiB sector, by region; a sector "
        "counts in the smallest region that holds it). Each bank sector is erased once per "
        "update; the filesystem takes the resume points (one every 4 KiB of payload) and the "
        "state file."
    ]
    L.append("")
    rows = []
    for v in dev["vboard_64k"]:
        if v.get("regions"):
            rows.append(
                [
                    "%s download + verify, vboard-esp32 (%s)"
                    % (size_name(v["size"]), v["config"]),
                    v["erases"],
                    v["writes"],
                    v["max_per_sector"],
                    _by_region(v["regions"]),
                ]
            )
            break
    for u in dev["upgrades"]:
        rows.append(
            [
                "Real upgrade v1 → v2 (%s payload), %s%s"
                % (
                    size_name(u["payload"]),
                    u["board"],
                    "" if u["confirmed"] else " (NOT confirmed)",
                ),
                u["erases"],
                u["writes"],
                u["max_per_sector"],
                _by_region(u["regions"]),
            ]
        )
    L += table(["Update", "Erases", "Writes", "Max erases of one sector", "By region"], rows)
    return L


def _by_region(regions: list[dict]) -> str:
    return "; ".join(
        "%s: %d of %d sectors, %d erases, max %d"
        % (g["region"], g["erased_sectors"], g["sectors"], g["erases"], g["max_per_sector"])
        for g in regions
    )


def _hub(hub: list[dict]) -> list[str]:
    """Section 4: one hub process serving N simulated devices."""
    L = [
        "One hub process (`OtaServer` over UDP on loopback) serves N devices at once; the devices "
        "are `hanota.simdevice.FakeDevice` (the project's link and ZCL code, CPython "
        "asyncio) in the bench process, each joining, opening a session, querying and downloading "
        "a %s image with Image Block Requests of %d bytes (small images so that 200 devices fit "
        "the time budget). *Lost* counts requests a device had to send again (its answer never "
        "came), frames the hub dropped and frames the devices dropped; every device's image is "
        "compared byte for byte. Memory per device: tracemalloc in the hub across join, session "
        "and first query of all N devices; and the hub's RSS growth over the run / N. CPU shares "
        "are of one core."
        % (size_name(hub[0]["image"] - hub[0]["image"] % KiB), hub[0]["max_data"])
    ]
    L.append("")
    L.append(
        "*Kernel drops* is the rise of the kernel's UDP RcvbufErrors counter over the runs.%s"
        % (
            " The last row is an experiment, not the server as shipped: the bench sets a 2 MiB "
            "receive buffer (SO_RCVBUF) on the hub's UDP socket."
            if any(h.get("rcvbuf") for h in hub)
            else ""
        )
    )
    L.append("")
    L += table(
        [
            "Devices",
            "Blocks served / s",
            "Hub CPU s per MiB",
            "Hub CPU",
            "Devices' CPU",
            "Memory per device (tracemalloc)",
            "RSS growth per device",
            "Lost",
            "Kernel drops",
            "Byte-exact",
            "Runs",
        ],
        [
            [
                "%d%s" % (h["devices"], ", 2 MiB socket buffer" if h.get("rcvbuf") else ""),
                stat(h["blocks_per_s"], "%.0f"),
                stat(h["hub_cpu_s_per_mib"], "%.2f"),
                pct(h["hub_cpu_share"]),
                pct(h["devices_cpu_share"]),
                stat(h["traced_per_device"], "%.1f", 1 / KiB) + " KiB",
                stat(h["rss_per_device"], "%.1f", 1 / KiB) + " KiB",
                h["lost"],
                h.get("udp_overflows", "–"),
                "yes" if h["byte_exact"] else "**no**",
                h["blocks_per_s"]["n"],
            ]
            for h in hub
        ],
    )
    return L


def _boards(b: dict) -> list[str]:
    """Section 5: board start-up to a REPL."""
    L = [
        "From starting a board whose flash holds firmware to its REPL answering `>>> ` on the "
        "console pty (issue 3 asks for under 2 s)."
    ]
    L.append("")
    L += table(
        ["Board", "VirtualBoard.start() → REPL (s)", "`hanota vboard start` → REPL (s)"],
        [[k, stat(v["in_process"], "%.2f"), stat(v["cli"], "%.2f")] for k, v in b.items()],
    )
    return L


def _findings(r: dict) -> list[str]:
    from .findings import findings

    return findings(r)


def _loss(loss: dict) -> list[str]:
    from .loss import report

    return report(loss)


def _encodings(enc: dict) -> list[str]:
    from .encodings import report

    return report(enc)
