"""The Findings section of RESULTS.md: what the figures say, why, and what to change. The
causes named here were found by reading the code and confirmed by the experiments cited."""

from __future__ import annotations

from hanfw.link import RX_FRAME

from .common import KiB
from .link import BLOCK_OVERHEAD, ceiling, per_bundle


def _runs(r, link=None, mode=None):
    return [
        x
        for x in (r.get("link") or {}).get("runs", [])
        if (link is None or x["link"] == link) and (mode is None or x["mode"] == mode)
    ]


def findings(r: dict) -> list[str]:
    """The Findings section: one numbered finding per part of the results that ran."""
    L = ["## Findings", ""]
    for _, lines in parts(r):
        L += lines
    _number(L)
    return L + [HOW_TO_RUN]


def parts(r: dict) -> list[tuple[str, list[str]]]:
    """The findings, each with the section of the results it comes from ("run": this run
    of the harness), in their order; numbers are given when the section is put together."""
    out = [("link", _link_finding(r))]
    dev = r.get("device")
    if dev:
        out += [("device", _heap_finding(dev) + _verify_finding(dev) + _wear_finding(dev))]
    out.append(("hub", _hub_finding(r.get("hub") or [])))
    if r.get("encodings"):
        from .encodings import finding

        out.append(("encodings", finding(r["encodings"])))
    if r.get("loss"):
        from .loss import finding as loss_finding

        out.append(("loss", loss_finding(r["loss"])))
    out.append(("run", _retries_finding(r.get("bring_up_retries") or [])))
    return [(name, lines) for name, lines in out if lines]


HOW_TO_RUN = (
    "How to run: `make bench` (everything, about 15 minutes), `python -m bench --quick`, "
    "`python -m bench --only link,hub`, `python -m bench --only heap --repeat 20` (the 64 KiB-heap "
    "boards alone, again and again), `python -m bench --only encodings` (full vs compressed "
    "vs delta files, about 2 minutes), `python -m bench --only loss` (1 % of the Zigbee-like "
    "link's frames lost against none, about 4 minutes); a run replaces the sections it ran and "
    "keeps the others, each saying when it was measured (`--replace`: this run's sections "
    "only); a failed section is recorded and the others kept (exit 1); the smoke test "
    "`tests/unit/test_bench_smoke.py` runs `--smoke` in seconds."
)


def _number(L: list[str]) -> None:
    """Number the findings 1, 2, ... in the order they came (each part writes its own number,
    and a part that did not run leaves a gap)."""
    n = 0
    for i, line in enumerate(L):
        if line[:1].isdigit() and line[1:3] == ". ":
            n += 1
            L[i] = "%d. %s" % (n, line[3:])


def _link_finding(r: dict) -> list[str]:
    """1. Link efficiency of page requests: the framing, any client stall, block requests."""
    L = []
    pages = _runs(r, mode="page")
    if not pages:
        return L
    big = max(_runs(r, "serial", "page") or pages, key=lambda x: x["size"])
    small = min(pages, key=lambda x: (x["link"] != "serial", x["size"]))
    L.append(
        "1. **Page requests %s 90 %% of the link: %s at %s on 115,200 baud.**"
        % ("reach" if big["fraction"]["median"] >= 0.9 else "do not reach",
           _pct(big["fraction"]), _size(big["size"]))
    )
    L.append(_framing(r, big))
    L.append(_stall(small))
    rs = (r.get("device") or {}).get("resume") or {}
    if "page_start" in str((rs.get("pages255") or {}).get("error")):
        L.append(
            "   - *A crash on resume with pages*: `_resume` never sets `page_start`, so with "
            "`page_size` set the first block after a resumed download raises `KeyError: "
            "'page_start'` out of the frame handler (section 3, *Resume*: %s). The fix above "
            "covers it." % _resumed(r)
        )
    blocks = _runs(r, "zigbee", "block")
    zpages = _runs(r, "zigbee", "page")
    if blocks and zpages:
        b, p = blocks[0], min(zpages, key=lambda x: x["size"])
        L.append(
            "   - Block requests pay one round trip per block: with %.0f ms per frame they "
            "reach %s of the Zigbee-like link against %s for pages at %s; at 115,200 baud "
            "with no latency the round trip is only the request's own serialisation, and "
            "blocks stay near %s."
            % (
                1000 * b["latency"],
                _pct(b["fraction"]),
                _pct(p["fraction"]),
                _size(p["size"]),
                _serial_block_pct(r),
            )
        )
    L.append("")
    return L


def _serial_block_pct(r: dict) -> str:
    """Goodput of block requests for the largest image on the serial link ("–" if none)."""
    serial_blocks = _runs(r, "serial", "block")
    if not serial_blocks:
        return "–"
    return _pct(max(serial_blocks, key=lambda x: x["size"])["fraction"])


def _framing(r: dict, big: dict) -> str:
    n = per_bundle(255)
    return (
        "   - *Framing.* A block alone in its link frame carries %d bytes besides its data: "
        "the link frame (31: kind, two EUI-64s, counter, cluster, 8-byte MAC), the ZCL "
        "header (3) and the block response fields (14). ZCL's data-size field is one byte, so "
        "a block holds at most 255 bytes and one block per frame can never pass 255 / %d = "
        "%.1f %% of the link (50-byte blocks: %.0f %%); block requests stay there (%s). For "
        "page requests the hub bundles the page's Image Block Responses: the device's HELLO "
        "says it takes link frames of up to %d bytes, and %d block responses (each with a "
        "2-byte length) share one link header, counter and MAC, so the ceiling rises to "
        "%.1f %%. At %s the link was %s busy and the payload share was %s: the pipe is full "
        "and what is left is ZCL's own 17 bytes per block (the UART's SLIP escaping and "
        "CRC-32 take a little more). A device on an 802.15.4 radio (the Zigbee-like runs) "
        "asks for no bundles: its frame holds one block."
        % (
            BLOCK_OVERHEAD,
            255 + BLOCK_OVERHEAD,
            100 * 255 / (255 + BLOCK_OVERHEAD),
            100 * 50 / (50 + BLOCK_OVERHEAD),
            _serial_block_pct(r),
            RX_FRAME,
            n,
            100 * ceiling(255, True),
            _size(big["size"]),
            _pct(big["utilisation"]),
            _pct(big["fraction"]),
        )
    )


def _stall(small: dict) -> str:
    """The longest idle gap of the smallest page-mode run: a client stall, or none."""
    gap = small["longest_gap"]["median"]
    secs = small["seconds"]["median"]
    if gap > 1.0:  # about block_timeout_ms: the stall below
        return (
            "   - *A client stall* (the rest, worst on small images). After the header blocks "
            "the client waits `block_timeout_ms` (default 1.5 s) before its first page "
            "request: `_check_head` sets `page_start = offset`, and `_block_response` then "
            'reads `offset - page_start < page_size` as "more of this page is coming" '
            "although no page was asked for; the block timer fires and `_on_block` sends the "
            "page request as a retry. Every page-mode run shows it as its longest idle gap "
            "(%.2f s at %s on the %s link, %.0f %% of that transfer). Fix "
            "(`device/hanfw/client.py`): remember where the outstanding page ends when the "
            "page request is sent and wait for more only while `offset` is below it."
            % (gap, _size(small["size"]), small["link"], 100 * gap / secs)
        )
    return (
        "   - No idle gap longer than %.2f s in the page-mode runs: the link was kept "
        "busy from the first request to the last block." % gap
    )


def _heap_finding(dev: dict) -> list[str]:
    """2. Whether a 64 KiB heap is enough for a download + verify."""
    h = dev["heap"]
    peak = max(h[c]["peak_data"] for c in ("blocks64", "pages255"))
    # failures at the 64 KiB budget or above matter; below it the grid finds the floor
    fails = [g for c in ("blocks64", "pages255") for g in h[c]["grid"]
             if not g["ok"] and g["limit"] >= 64 * KiB]
    v64 = "; ".join("%s %d of %d" % (v["config"], v["ok"], v["of"]) for v in dev["vboard_64k"])
    v_fail = any(v["ok"] < v["of"] for v in dev["vboard_64k"])
    lowest = "; ".join(
        "%s %s" % (c, "%d KiB" % (h[c]["lowest_monotonic"] // KiB)
                   if h[c]["lowest_monotonic"] else "none of those tried")
        for c in ("blocks64", "pages255")
    )
    if fails or v_fail:
        return [
            "2. **A 64 KiB heap is not always enough.** Live data peaks at %.1f KiB, but with "
            "64 KiB free the download + verify failed (%s); on vboard-esp32 with "
            '`heap="64K"` the %s downloads + verifies completed %s. Look for a buffer '
            "allocated per frame or per sector that the heap, once in pieces, cannot give."
            % (
                peak / KiB,
                "; ".join(sorted({g["error"] for g in fails if g["error"]}))[:200]
                or "on the virtual board",
                _size(h["size"]),
                v64 or "not run",
            ),
            "",
        ]
    return [
        "2. **A 64 KiB heap is enough.** Live data peaks at %.1f KiB (one 4 KiB sector "
        "buffer, allocated when the client starts, serves every bank write and the "
        "read-back); the lowest heap limit from which every larger one completed: %s "
        "(below it the free heap is in pieces too small for the client's buffers). On "
        "vboard-esp32, whose page blocks arrive in bundles of up to 4.4 KiB, with "
        '`heap="64K"` the %s downloads + verifies completed %s.'
        % (peak / KiB, lowest, _size(h["size"]), v64 or "(not run)"),
        "",
    ]


def _verify_finding(dev: dict) -> list[str]:
    """3. The cost of verification on the device next to the link's."""
    return [
        "3. **Verification is cheap next to the link, on this machine.** P-256 verify takes "
        "%.1f ms and SHA-256 runs at %.0f MB/s on the unix port; streaming one 255-byte block "
        "into the bank (parse, two hashes, write) takes %.0f µs, against %.0f ms for that "
        "block on the wire at 115,200 baud. A microcontroller is much slower than this host; "
        "these are upper bounds of the device's speed, not predictions for a chip."
        % (
            dev["p256_ms"]["median"],
            dev["sha256_mb_s"]["median"],
            255 / dev["stream_255_mb_s"]["median"],
            1000 * (255 + BLOCK_OVERHEAD) / 11520,
        ),
        "",
    ]


def _wear_finding(dev: dict) -> list[str]:
    """4. Flash wear of a download (the filesystem) and of real upgrades (boot control)."""
    ups = dev.get("upgrades") or []
    dl = next((v for v in dev["vboard_64k"] if v.get("regions")), None)
    if not (ups or dl):
        return []
    parts = []
    fs = [g for g in (dl or {}).get("regions", []) if g["region"] in ("vfs", "fs")]
    if fs:
        parts.append(
            "The resume point (written every 4 KiB of payload) goes through LittleFS, "
            "which spreads it: a %s download erased %d of the filesystem's %d sectors, at "
            "most %d times each."
            % (_size(dl["size"]), fs[0]["erased_sectors"], fs[0]["sectors"],
               fs[0]["max_per_sector"])
        )
    for u in ups:
        if u["board"] == "vboard-esp32":
            parts.append(
                "On vboard-esp32 the otadata sector being written is erased %d times per "
                "update (invalidated before the download, `set_boot`, the confirm); the "
                "two copies alternate between updates." % _worst(u["regions"], ("otadata",))
            )
        else:
            parts.append(
                "On vboard-nrf52840 each boot-control copy is erased at most %d times per "
                "update, and the 64 KiB filesystem's busiest sector %d times."
                % (_worst(u["regions"], ("bootctl",)), _worst(u["regions"], ("fs",)))
            )
    return [
        "4. **Wear is low.** Each sector of the target bank is erased once per update. "
        + " ".join(parts)
        + " At NOR flash's usual 10,000 to 100,000 erase cycles per sector that is "
        "thousands of updates.",
        "",
    ]


def _worst(rows: list[dict], names: tuple[str, ...]) -> int:
    """The most erases of one sector in the regions called names."""
    return max(
        (g["max_per_sector"] for g in rows for n in names if g["region"] == n),
        default=0,
    )


def _hub_finding(hubs: list[dict]) -> list[str]:
    """5. Requests the hub lost at the largest fleet (and with a larger socket buffer), and
    its cost per MiB and per device."""
    plain = [h for h in hubs if not h.get("rcvbuf")]
    if not plain:
        return []
    top = plain[-1]
    big = next((h for h in hubs if h.get("rcvbuf") and h["devices"] == top["devices"]), None)
    L = [_lost(top, big) if top["lost"] else (
        "5. **The hub lost nothing**: at %d devices no request went unanswered and every "
        "image arrived byte for byte." % top["devices"]
    )]
    L.append(
        "   The hub process spends %s CPU s per delivered MiB in %d-byte blocks (per block: "
        "MAC check, ZCL parse, file read, MAC, send) and about %.0f KiB per connected device. "
        "A GB hub pacing Zigbee devices at 50-byte blocks every 250 ms needs 4 blocks/s per "
        "device."
        % (
            "%.2f" % top["hub_cpu_s_per_mib"]["median"],
            top["max_data"],
            top["traced_per_device"]["median"] / KiB,
        )
    )
    return L + [""]


def _lost(top: dict, big: dict | None) -> str:
    """Requests lost at the top fleet size, why, and the 2 MiB buffer experiment (big)."""
    return (
        "5. **At %d devices the hub lost requests: %d over %d runs**, each one a datagram "
        "the kernel dropped because the hub's UDP socket buffer was full (the kernel's "
        "RcvbufErrors rose by %d); every one was recovered by the device asking again "
        "after its timeout, so all images still arrived byte for byte, but each cost that "
        "device a 2 s stall. The server leaves the socket at the system default "
        "(rmem_default, 208 KiB here), and a small datagram takes about 1 KiB of it, so a "
        "burst from a couple of hundred devices fills it while the event loop is busy. "
        "Fix (`host/hanota/server/core.py` `listen_udp`, or `linkio.UdpLink.open`): set "
        "SO_RCVBUF to a few MiB (capped by net.core.rmem_max)%s."
        % (
            top["devices"],
            top["lost"],
            top["blocks_per_s"]["n"],
            top.get("udp_overflows", 0),
            "; with 2 MiB the same %d-device runs lost %d and served %s blocks/s instead "
            "of %s"
            % (
                big["devices"],
                big["lost"],
                "%.0f" % big["blocks_per_s"]["median"],
                "%.0f" % top["blocks_per_s"]["median"],
            )
            if big
            else "",
        )
    )


def _retries_finding(retries: list) -> list[str]:
    """6. Board bring-ups the harness had to try again."""
    if not retries:
        return []
    return [
        "6. **Board bring-up had to be retried %d time(s)** in this run (the harness tries "
        "once more under a new name): %s."
        % (len(retries), "; ".join("%s: %s" % x for x in retries)),
        "",
    ]


def _resumed(r) -> str:
    rs = (r.get("device") or {}).get("resume")
    if not rs:
        return "not run"
    return "; ".join(
        "%s %s" % (n, "completes" if rs[n]["ok"] else "fails with %s" % rs[n]["error"])
        for n in ("blocks64", "pages255")
    )


def _size(n: int) -> str:
    from .report import size_name

    return size_name(n)


def _pct(s) -> str:
    from .report import pct

    return pct(s)
