"""Link efficiency: images delivered to virtual boards over rate-limited links, with Image Block
Requests and with Image Page Requests; the Zigbee2MQTT-like pacing computed for comparison.

Payload goodput = manufacturer-image bytes / transfer phase / link rate, where the transfer
phase runs from the hub's first Image Block (or Page) Request to the last byte the emulated
link delivered to the device before its Upgrade End. "Utilisation" counts every byte the link
carried towards the device in that phase (link and ZCL headers too); the difference between
the two is the framing. Repetitions of a low-rate link run at once on separate boards, each
with its own emulated link (the host has CPU to spare at these rates); high-rate page runs go
one at a time.
"""

from __future__ import annotations

import math

from hanfw import link as hlink
from hanfw import zcl

from .common import KiB, MiB, Board, board, download, hub, summary

# 115,200 baud, 8N1: ten bits a byte.
SERIAL_RATE = 115200 / 10
# A Zigbee-like radio link: 250 kbit/s, 10 ms per frame (CSMA/CA, MAC ack, one hop).
ZIGBEE_RATE = 250000 / 8
ZIGBEE_LATENCY = 0.010
# Zigbee2MQTT (zigbee-herdsman) documented settings: default_maximum_data_size 50,
# image_block_response_delay 250 ms (at most one Image Block Response per 250 ms).
Z2M_BLOCK = 50
Z2M_DELAY = 0.250
# Per block on the wire: link frame header + MAC, ZCL header, Image Block Response fields.
BLOCK_OVERHEAD = hlink.OVERHEAD + zcl.header_size() + zcl.BLOCK_RESPONSE_OVERHEAD
# Per block in a bundle (the blocks of a page in link frames of up to RX_FRAME bytes): its
# length prefix, ZCL header and Image Block Response fields; the link frame's 31 bytes are
# shared by the bundle.
BUNDLED_OVERHEAD = hlink.BUNDLE_ITEM + zcl.header_size() + zcl.BLOCK_RESPONSE_OVERHEAD
PAGE_SIZE = 16 * KiB

LINKS = {
    "serial": dict(
        title="{baud:,.0f} baud ({rate:,.0f} B/s), vboard-esp32 (link datagrams paced)",
        kind="vboard-esp32",
        rate=SERIAL_RATE,
        latency=0.0,
        max_data=255,
    ),
    "uart": dict(
        title="{baud:,.0f} baud UART ({rate:,.0f} B/s, SLIP + CRC-32 framing), vboard-nrf52840",
        kind="vboard-nrf52840",
        rate=SERIAL_RATE,
        latency=0.0,
        max_data=255,
    ),
    "zigbee": dict(
        title="Zigbee-like: {kbit:,.0f} kbit/s ({rate:,.0f} B/s), vboard-esp32",
        kind="vboard-esp32",
        rate=ZIGBEE_RATE,
        latency=ZIGBEE_LATENCY,
        max_data=50,
        # an 802.15.4 frame carries one block: the device asks for no bundles
        link_frame=hlink.MAX_FRAME,
    ),
}


def plans(scale: str) -> list[dict]:
    """What to run: link, request modes, {image size: repetitions}, and whether the repetitions
    run at once (on as many boards per mode) or one after another (on one board per mode)."""
    if scale == "smoke":
        return [
            dict(
                link="serial",
                modes=("block", "page"),
                sizes={8 * KiB: 1},
                parallel=True,
                rate=200_000,
            )
        ]
    if scale == "quick":
        return [
            dict(link="serial", modes=("block", "page"), sizes={64 * KiB: 1}, parallel=True),
            dict(link="zigbee", modes=("block", "page"), sizes={64 * KiB: 1}, parallel=True),
        ]
    return [
        dict(
            link="serial",
            modes=("block", "page"),
            sizes={64 * KiB: 3, 256 * KiB: 3, MiB: 3},
            parallel=True,
        ),
        dict(link="uart", modes=("block", "page"), sizes={64 * KiB: 3}, parallel=True),
        dict(link="zigbee", modes=("block",), sizes={64 * KiB: 3}, parallel=True),
        dict(
            link="zigbee",
            modes=("page",),
            sizes={64 * KiB: 3, 256 * KiB: 3, MiB: 1},
            parallel=False,
        ),
    ]


def settings(max_data: int, mode: str, link_frame: int | None = None) -> dict:
    # query_interval: the hub's Image Notify starts each download; everything else: defaults
    s = {
        "query_interval": 3600,
        "max_data": max_data,
        "page_size": PAGE_SIZE if mode == "page" else 0,
    }
    if link_frame is not None:
        s["link_frame"] = link_frame
    return s


def bundled(mode: str, link_frame: int | None) -> bool:
    """Whether the hub sends this run's blocks in bundles (pages, to a device that takes
    long frames: the default)."""
    return mode == "page" and (link_frame or hlink.RX_FRAME) > hlink.MAX_FRAME


def per_bundle(max_data: int) -> int:
    return (hlink.RX_FRAME - hlink.OVERHEAD) // (max_data + BUNDLED_OVERHEAD)


def ceiling(max_data: int, bundles: bool = False) -> float:
    """The payload fraction of full-size blocks on the wire, one per link frame or as many
    as a bundle holds (UDP; serial adds SLIP + CRC)."""
    if not bundles:
        return max_data / (max_data + BLOCK_OVERHEAD)
    n = per_bundle(max_data)
    return n * max_data / (hlink.OVERHEAD + n * (max_data + BUNDLED_OVERHEAD))


def z2m_seconds(file_size: int) -> float:
    """Zigbee2MQTT-like pacing: one 50-byte block per 250 ms at best (a lower bound)."""
    return math.ceil(file_size / Z2M_BLOCK) * Z2M_DELAY


def run(ws, scale: str, log=print) -> dict:
    """Every plan of `scale`; returns {"runs": [rows], "keep": {"hub", "boards"}}: the serial
    page boards and their hub, kept for the mpremote comparison (the caller stops them)."""
    rows, keep = [], {}
    for plan in plans(scale):
        spec = dict(LINKS[plan["link"]])
        rate = plan.get("rate", spec["rate"])
        hubt = hub(block_cap=spec["max_data"])
        group: dict[str, list[Board]] = {}
        try:
            n = max(plan["sizes"].values()) if plan["parallel"] else 1
            for mode in plan["modes"]:
                group[mode] = [
                    board(
                        ws,
                        hubt,
                        spec["kind"],
                        "%s-%s-%d" % (plan["link"], mode, i),
                        settings(spec["max_data"], mode, spec.get("link_frame")),
                        rate=rate,
                        latency=spec["latency"],
                    )
                    for i in range(n)
                ]
            for size, reps in plan["sizes"].items():
                rows += _size_rows(ws, hubt, plan, group, n, size, reps, log)
        finally:
            if plan["link"] == "serial" and "page" in group and not keep:
                keep = {"hub": hubt, "boards": group.pop("page")}
            for bs in group.values():
                for b in bs:
                    b.stop()
            if keep.get("hub") is not hubt:
                hubt.stop()
    for row in rows:
        row["z2m_seconds"] = z2m_seconds(row["file_size"])
    return {"runs": rows, "keep": keep}


def _size_rows(ws, hubt, plan: dict, group: dict[str, list[Board]], n: int, size: int,
               reps: int, log) -> list[dict]:
    """reps downloads of a size-byte image in each mode of plan, at once on as many of the
    n boards per mode, or one after another when n is 1; a row of figures per mode."""
    spec = LINKS[plan["link"]]
    rate = plan.get("rate", spec["rate"])
    results = {mode: [] for mode in plan["modes"]}
    drops = 0  # the kernel's UDP drops during this size's downloads (all modes)
    pairs = [(mode, b) for mode in plan["modes"] for b in group[mode][:reps]]
    for _ in range(reps if n == 1 else 1):
        path, version = ws.image(size, spec["kind"])
        got = download(
            hubt,
            [b for _, b in pairs],
            path,
            version,
            size,
            timeout=120 + 20 * size / (rate * ceiling(spec["max_data"])),
        )
        drops += got[0]["udp_drops"]
        for (mode, _), r in zip(pairs, got):
            results[mode].append(r)
    rows = []
    for mode in plan["modes"]:
        row = _row(plan, mode, size, reps, path.stat().st_size, results[mode])
        row["udp_drops"] = drops
        rows.append(row)
        log(
            "  %-6s %-5s %7d B: goodput %5.1f%% of the link (utilisation %5.1f%%), "
            "%.1f s to verified"
            % (
                plan["link"],
                mode,
                size,
                100 * row["fraction"]["median"],
                100 * row["utilisation"]["median"],
                row["to_verified"]["median"],
            )
        )
    return rows


def _row(plan: dict, mode: str, size: int, reps: int, file_size: int, results: list[dict]) -> dict:
    """The figures of one mode's downloads of one image size: medians and ranges."""
    spec = LINKS[plan["link"]]
    rate = plan.get("rate", spec["rate"])
    row = dict(
        link=plan["link"],
        title=spec["title"].format(rate=rate, baud=rate * 10, kbit=rate * 8 / 1000),
        mode=mode,
        size=size,
        rate=rate,
        max_data=spec["max_data"],
        page_size=PAGE_SIZE if mode == "page" else None,
        latency=spec["latency"],
        parallel=plan["parallel"] and reps > 1,
        ceiling=ceiling(spec["max_data"], bundled(mode, spec.get("link_frame"))),
        bundled=bundled(mode, spec.get("link_frame")),
        file_size=file_size,
        ok=all(r["status"] == 0 for r in results),
    )
    for key in ("seconds", "to_verified", "fraction", "utilisation", "longest_gap", "re_served"):
        row[key] = summary(r[key] for r in results)
    return row
