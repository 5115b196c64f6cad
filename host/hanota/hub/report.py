"""Status and outcome reports, read from the hub database only (they work while serve runs).

- `status_data`: the hub, devices with their running version as last reported, transfers in
  progress (percent, rate), the queue in service order, outcome counts.
- `report_data`: every request with its outcome, reason, timestamps and its events.
- `render_html`: a self-contained page with the outcome table and a timeline per device.
- `status_lines` / `report_lines`: the same as plain text for a terminal or a log.
- `duis_data` / `duis_lines`: the DUIS view, read from the DCC's database (`hanota report
  --dcc-db`): per DUIS request its RequestID, the User (the entity ID that signed it), the SR,
  the response code and its meaning, the outcome, and the responses and alerts it gave; then
  the DCC's alerts about no request (a Trust Centre Swap-Out). `render_html(..., duis=...)`
  shows it above the hub's own requests.
"""
from __future__ import annotations

import html
import json
from collections import Counter
from typing import Any

from . import queue, registry
from .db import IN_SLOT, OUTCOMES, SUCCESS_OUTCOMES, HubDB, version_text
from .requests import iso, request_dict

PENDING_STATES = ("queued",) + IN_SLOT + ("activating", "running")


def _serve_info(db: HubDB, now: float) -> dict[str, Any] | None:
    raw = db.get_meta("serve")
    if raw is None:
        return None
    s = json.loads(raw)
    age = now - s.get("at", 0)
    s["heartbeat_age"] = round(age, 1)
    # a hub writes its heartbeat every `every` seconds (1 s; a simulated fleet's idle hubs
    # far less often): three missed in a row say it is not running
    every = s.get("every") if isinstance(s.get("every"), (int, float)) else 1.0
    s["running"] = not s.get("stopped") and age < max(10.0, 3 * every)
    return s


def status_data(db: HubDB, live: dict[str, dict] | None = None,
                now: float | None = None) -> dict[str, Any]:
    """Everything `hanota status` shows, as a JSON-ready dict. live: the running server's
    own transfer figures by EUI (fresher than the database), when in the same process."""
    now = db.now() if now is None else now
    live = live or {}
    devices = registry.list_devices(db)
    pending: dict[str, list[dict]] = {}
    for row in db.all("SELECT * FROM requests WHERE outcome IS NULL ORDER BY id"):
        pending.setdefault(row["eui"], []).append(request_dict(row))
    last: dict[str, dict] = {}
    for row in db.all("SELECT * FROM requests WHERE outcome IS NOT NULL ORDER BY finished, id"):
        last[row["eui"]] = request_dict(row)
    transfers = []
    for row in db.all("SELECT * FROM requests WHERE kind = 'update' AND state IN (%s) "
                      "ORDER BY started, id" % ",".join("'%s'" % s for s in IN_SLOT)):
        d = request_dict(row)
        lv = live.get(row["eui"])
        offset, size, rate = d["offset"], d["size"], d["rate"]
        if lv is not None and size in (None, lv["size"]) and lv["state"] == "downloading":
            offset, size, rate = lv["offset"], lv["size"], lv["rate"]
        transfers.append({"request": row["id"], "eui": row["eui"], "state": row["state"],
                          "attempt": row["attempts"], "offset": offset, "size": size,
                          "percent": round(100.0 * offset / size, 1) if size else None,
                          "rate": round(rate, 1) if rate else None,
                          "target_version": version_text(row["target_version"])})
    qrows = queue.queued_updates(db)
    queued = [{"position": i + 1, "request": r["id"], "eui": r["eui"], "role": r["role"],
               "attempts": r["attempts"], "next_attempt": r["next_attempt"],
               "waiting_s": round(max(0.0, (r["next_attempt"] or now) - now), 1)}
              for i, r in enumerate(qrows)]
    counts = Counter(r[0] for r in db.all("SELECT outcome FROM requests "
                                          "WHERE outcome IS NOT NULL"))
    for d in devices:
        d["running_version_hex"] = version_text(d["running_version"])
        d["pending"] = pending.get(d["eui"], [])
        d["last_outcome"] = ({k: last[d["eui"]][k] for k in ("id", "kind", "outcome", "reason",
                                                             "result", "finished")}
                             if d["eui"] in last else None)
    return {
        "generated": now, "generated_iso": iso(now),
        "hub": registry.hub_info(db),
        "serve": _serve_info(db, now),
        "priorities": db.priorities(),
        "devices": devices,
        "transfers": transfers,
        "queue": queued,
        "pending": sum(len(v) for v in pending.values()),
        "outcomes": dict(sorted(counts.items())),
    }


def report_data(db: HubDB) -> dict[str, Any]:
    """Every request with its outcome and events (oldest first), and a summary."""
    events: dict[int, list[dict]] = {}
    device_events: dict[str, list[dict]] = {}
    for e in db.all("SELECT * FROM events WHERE eui IS NOT NULL ORDER BY at, id"):
        d = {"at": e["at"], "at_iso": iso(e["at"]), "kind": e["kind"],
             "request": e["request_id"], **json.loads(e["detail"])}
        device_events.setdefault(e["eui"], []).append(d)
        if e["request_id"] is not None:
            events.setdefault(e["request_id"], []).append(d)
    reqs = []
    for row in db.all("SELECT * FROM requests ORDER BY id"):
        d = request_dict(row)
        d["events"] = events.get(row["id"], [])
        reqs.append(d)
    summary = Counter(r["outcome"] or "pending" for r in reqs)
    now = db.now()
    return {
        "generated": now, "generated_iso": iso(now),
        "hub": registry.hub_info(db),
        "summary": dict(sorted(summary.items())),
        "requests": reqs,
        "devices": {d["eui"]: {"role": d["role"], "premises": d["premises"],
                               "running_version": d["running_version"],
                               "running_version_hex": version_text(d["running_version"])}
                    for d in registry.list_devices(db)},
        "device_events": device_events,
        "outcomes": OUTCOMES,
    }


# The GBCS response codes a Comms Hub outcome carries in its DUIS response (GBCSUseCase,
# GBCSResponseCode; hanota.dcc.service.OUTCOME_RESPONSES), as issue 12 names them: CCS08 for
# distribution, CS06 for activation, CS08 for a version read, CS09 for a PPMID's activation
# of an SR 11.4 image.
GBCS_MEANINGS = {
    ("CCS08", "0"): "success", ("CCS08", "1"): "image discarded",
    ("CCS08", "2"): "hardware version mismatch", ("CCS08", "3"): "file transfer failure",
    ("CS06", "0"): "success", ("CS06", "1"): "no image held", ("CS06", "2"): "hash mismatch",
    ("CS06", "3"): "activation failure", ("CS08", "0"): "success", ("CS08", "1"): "failure",
    ("CS09", "0"): "success", ("CS09", "1"): "failure",
}


def _gbcs(outcome: dict) -> str | None:
    case, code = outcome.get("GBCSUseCase"), outcome.get("GBCSResponseCode")
    if not case or code is None:
        return None
    meaning = GBCS_MEANINGS.get((str(case), str(code)))
    return "%s %s%s" % (case, code, " " + meaning if meaning else "")


def duis_data(store: Any, names: dict[str, str] | None = None) -> dict[str, Any]:
    """The DCC's side of every DUIS request it recorded, from its database (a
    `hanota.dcc.store.DccStore`), oldest first, as a JSON-ready dict.

    names: optional entity ID (16 hex digits) -> a label for the reader (the DCC knows Users
    by entity ID only). Requests the DCC refused before it trusted the signer or the header
    (bad signature, malformed, originator, replayed counter) are answered but not recorded,
    so they are not here; every other refusal is, with its code."""
    from ..dcc import duis  # the DCC package sits above the hub

    names = names or {}
    by_text = {r[1]: r[0] for r in store.all("SELECT id, request_id FROM requests")}
    responses: dict[int | None, list[dict]] = {}
    for row in store.all("SELECT seq, user, request, kind, code, final, xml, created "
                         "FROM responses ORDER BY seq"):
        try:
            p = duis.parse_response(bytes(row["xml"]))
        except duis.DuisError as e:
            p = {"kind": "unreadable", "alert_code": None, "body": {}, "request_id": None,
                 "reason": e.reason}
        body = p.get("body") or {}
        # a response's outcome, or a DCC alert's (the other Supplier's request's outcome,
        # or what the Comms Hub alerted about)
        ch = body.get("CommsHubOutcome") or body.get("DCCAlert") or {}
        if not isinstance(ch, dict):
            ch = {}
        what = ch.get("Alert") or ch.get("Outcome") or body.get("Alert")
        # an alert names the request it is about in its header, when there is one
        request = row["request"] if row["request"] is not None else by_text.get(p["request_id"])
        responses.setdefault(request, []).append({
            "seq": row["seq"], "user": row["user"], "user_name": names.get(row["user"]),
            "kind": p["kind"], "code": row["code"], "final": bool(row["final"]),
            "alert_code": p.get("alert_code"), "about": what,
            "gbcs": _gbcs(ch), "at": row["created"], "at_iso": iso(row["created"])})
    reqs = []
    for row in store.all("SELECT * FROM requests ORDER BY id"):
        detail = json.loads(row["detail"] or "{}")
        code = row["code"] or (None if row["outcome"] else "I99")
        reqs.append({
            "id": row["id"], "request_id": row["request_id"], "user": row["user"],
            "user_name": names.get(row["user"]), "srv": row["srv"], "device": row["device"],
            "hub": row["hub_eui"], "state": row["state"], "code": code,
            "meaning": duis.RESPONSE_CODES.get(code or "", "unknown code"),
            "outcome": row["outcome"], "reason": row["reason"],
            "refusal": detail.get("refusal"),
            "created": row["created"], "created_iso": iso(row["created"]),
            "finished": row["finished"], "finished_iso": iso(row["finished"]),
            "responses": responses.get(row["id"], [])})
    codes = Counter(q["code"] or "pending" for q in reqs)
    from ..dcc import campaign

    camps = campaign.report_data(store)
    for c in camps:
        c["created_iso"] = iso(c["created"])
        for d in c.get("devices", []):
            d["finished_iso"] = iso(d["finished"])
    return {"requests": reqs, "alerts": responses.get(None, []), "campaigns": camps,
            "codes": dict(sorted(codes.items())),
            "meanings": {c: duis.RESPONSE_CODES.get(c, "unknown code") for c in codes}}


def _who(eui: str | None, name: str | None) -> str:
    return "%s (%s)" % (eui, name) if name else (eui or "-")


def _sent(r: dict[str, Any]) -> str:
    """One response or alert, in a few words: '#7 response I0 to <User>'."""
    s = "#%d %s %s" % (r["seq"], r["kind"], r["code"])
    if r["alert_code"]:
        s += " %s" % r["alert_code"]
    if r["about"]:
        s += " (%s%s)" % (r["about"], "; " + r["gbcs"] if r.get("gbcs") else "")
    return s + " to " + (r["user_name"] or r["user"])


def duis_lines(d: dict[str, Any]) -> list[str]:
    """The DUIS view as text: a line per request, its responses and alerts under it."""
    out = ["DUIS requests at the DCC:",
           "%-4s %-6s %-16s %-16s %-5s %-26s %s" % ("REQ", "SR", "USER", "DEVICE", "CODE",
                                                    "OUTCOME", "MEANING / REASON")]
    for q in d["requests"]:
        out.append("#%-3d %-6s %-16s %-16s %-5s %-26s %s" % (
            q["id"], q["srv"], q["user_name"] or q["user"], q["device"] or "-",
            q["code"] or "-", q["outcome"] or "(%s)" % q["state"],
            q["reason"] or q["meaning"]))
        out.append("     %s" % q["request_id"])
        for r in q["responses"]:
            out.append("     -> %s" % _sent(r))
    if d["alerts"]:
        out.append("DCC alerts about no request:")
        for r in d["alerts"]:
            out.append("     -> %s" % _sent(r))
    out.append("codes: " + ", ".join("%s %d" % kv for kv in d["codes"].items()))
    for c in d.get("campaigns", []):
        t = c["totals"]
        out.append("campaign %s (%s, SR %s, Supplier %s): %s%s" % (
            c["name"], c["version"], c["srv"], c["supplier"], c["state"],
            " - %s" % c["reason"] if c.get("reason") else ""))
        for w in c["waves_detail"]:
            out.append("     wave %d%s: %d devices, %d successful, %d failed, %d in flight, "
                       "%d waiting" % (w["wave"], "" if w["open"] else " (not open)",
                                       w["size"], w["ok"], w["failed"], w["sent"],
                                       w["waiting"]))
        out.append("     %d devices: %d successful, %d failed" % (t["size"], t["ok"],
                                                                  t["failed"]))
    return out


# ---------------------------------------------------------------- text

def _rate(r: float | None) -> str:
    if not r:
        return "-"
    return "%.1f kB/s" % (r / 1000) if r >= 1000 else "%.0f B/s" % r


def _state_of(d: dict[str, Any]) -> str:
    if d["pending"]:
        p = d["pending"][0]
        s = "#%d %s %s" % (p["id"], p["kind"], p["state"])
        if p["state"] == "downloading" and p["percent"] is not None:
            s += " %.0f%%" % p["percent"]
        return s
    if d["last_outcome"]:
        return "#%d %s" % (d["last_outcome"]["id"], d["last_outcome"]["outcome"])
    return "idle"


def status_lines(s: dict[str, Any]) -> list[str]:
    serve = s["serve"]
    if serve is None:
        srv = "serve: never started on this database"
    elif serve["running"]:
        srv = "serve: running (pid %s, %s, at most %s in flight)" % (
            serve.get("pid"), serve.get("udp") or ",".join(serve.get("serial") or []),
            serve.get("max_in_flight"))
    elif serve.get("stopped"):
        srv = "serve: stopped %.0f s ago" % serve["heartbeat_age"]
    else:
        srv = "serve: not running (no heartbeat for %.0f s: killed?)" % serve["heartbeat_age"]
    hub = s["hub"]
    out = ["hub %s (generation %d)   %s" % (hub["eui"], hub["generation"], srv),
           "",
           "%-23s %-7s %-12s %-10s %-6s %s" % ("DEVICE", "ROLE", "PREMISES", "VERSION",
                                               "JOINED", "STATE")]
    for d in s["devices"]:
        joined = "yes" if d["joined"] else ("TCSO" if d["tcso_affected"] else "no")
        if not d["ota_supported"]:
            joined += " noOTA"
        out.append("%-23s %-7s %-12s %-10s %-6s %s" % (
            d["eui"], d["role"], d["premises"][:12], d["running_version_hex"], joined,
            _state_of(d)))
    if s["transfers"]:
        out += ["", "transfers in progress:"]
        for t in s["transfers"]:
            pct = "%5.1f%%" % t["percent"] if t["percent"] is not None else "    -"
            out.append("  #%-4d %s %-11s attempt %d  %s  %s" % (
                t["request"], t["eui"], t["state"], t["attempt"], pct, _rate(t["rate"])))
    if s["queue"]:
        out += ["", "queue (service order):"]
        for q in s["queue"]:
            wait = " (retry in %.0f s)" % q["waiting_s"] if q["waiting_s"] > 0 else ""
            out.append("  %2d. #%-4d %s %s attempts %d%s" % (
                q["position"], q["request"], q["eui"], q["role"], q["attempts"], wait))
    out += ["", "outcomes: " + (", ".join("%s %d" % kv for kv in s["outcomes"].items())
                                or "none yet") + "; pending %d" % s["pending"]]
    return out


def report_lines(r: dict[str, Any]) -> list[str]:
    out = ["%-5s %-12s %-4s %-23s %-10s %-10s %-26s %s" % (
        "REQ", "KIND", "SR", "DEVICE", "SUPPLIER", "TARGET", "OUTCOME", "REASON")]
    for q in r["requests"]:
        tgt = q["target_version_hex"] if q["kind"] != "read_version" else \
            version_text(q.get("result"))
        out.append("#%-4d %-12s %-4s %-23s %-10s %-10s %-26s %s" % (
            q["id"], q["kind"], q["sr"], q["eui"], q["supplier"][:10], tgt,
            q["outcome"] or "(%s)" % q["state"], q["reason"] or ""))
    out.append("")
    out.append("summary: " + ", ".join("%s %d" % kv for kv in r["summary"].items()))
    return out


# ---------------------------------------------------------------- HTML

_COLOURS = {"activated": "#2e7d32", "distributed": "#66bb6a", "version_read": "#26a69a",
            "superseded": "#9e9e9e", "pending": "#1e88e5"}
_FAIL = "#c62828"
_REFUSED = ("not_authorized", "ota_unsupported", "ota_unavailable_after_tcso",
            "image_mismatch", "hw_version_mismatch")

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;
font-size:.9em;text-align:left;vertical-align:top}th{background:#f4f4f4}
.o{font-weight:600;color:#fff;padding:0 .4em;border-radius:3px}
svg text{font-size:11px;font-family:system-ui,sans-serif}
.small{color:#666;font-size:.85em}
"""


def _colour(outcome: str | None) -> str:
    if outcome is None:
        return _COLOURS["pending"]
    if outcome in _COLOURS:
        return _COLOURS[outcome]
    if outcome in _REFUSED:
        return "#ef6c00"
    return _FAIL


def _badge(outcome: str | None) -> str:
    return '<span class="o" style="background:%s">%s</span>' % (
        _colour(outcome), html.escape(outcome or "pending"))


def _detail(e: dict) -> str:
    skip = {"at", "at_iso", "kind", "request"}
    return ", ".join("%s=%s" % (k, v) for k, v in e.items() if k not in skip and v not in
                     (None, [], ""))


def _timeline(eui: str, reqs: list[dict], evs: list[dict], now: float) -> str:
    times = [e["at"] for e in evs] + [q["created"] for q in reqs] + \
        [q["finished"] or now for q in reqs]
    t0, t1 = min(times), max(times)
    span = max(t1 - t0, 1e-3)
    width, left, row_h = 900, 60, 22
    x = lambda t: left + (width - left - 10) * (t - t0) / span  # noqa: E731
    h = 30 + row_h * (len(reqs) + 1)
    parts = ['<svg width="%d" height="%d" role="img" aria-label="timeline of %s">'
             % (width, h, html.escape(eui))]
    parts.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#999"/>'
                 % (left, h - 18, width - 10, h - 18))
    parts.append('<text x="%d" y="%d">%s</text>' % (left, h - 4, html.escape(iso(t0) or "")))
    parts.append('<text x="%d" y="%d" text-anchor="end">+%.1f s</text>'
                 % (width - 10, h - 4, span))
    for i, q in enumerate(reqs):
        y = 10 + i * row_h
        x0, x1 = x(q["created"]), x(q["finished"] or now)
        parts.append('<text x="0" y="%d">#%d</text>' % (y + 12, q["id"]))
        parts.append('<rect x="%.1f" y="%d" width="%.1f" height="14" fill="%s" opacity="0.8">'
                     '<title>#%d %s: %s %s</title></rect>'
                     % (x0, y, max(2.0, x1 - x0), _colour(q["outcome"]), q["id"], q["kind"],
                        html.escape(q["outcome"] or q["state"]), html.escape(q["reason"] or "")))
        for e in q["events"]:
            parts.append('<circle cx="%.1f" cy="%d" r="3" fill="#000"><title>%s %s: %s'
                         '</title></circle>' % (x(e["at"]), y + 7, html.escape(e["at_iso"]),
                                                html.escape(e["kind"]),
                                                html.escape(_detail(e))))
    y = 10 + len(reqs) * row_h
    parts.append('<text x="0" y="%d">device</text>' % (y + 12))
    for e in evs:
        if e["request"] is None:
            parts.append('<circle cx="%.1f" cy="%d" r="3" fill="#555"><title>%s %s: %s'
                         '</title></circle>' % (x(e["at"]), y + 7, html.escape(e["at_iso"]),
                                                html.escape(e["kind"]),
                                                html.escape(_detail(e))))
    parts.append("</svg>")
    return "".join(parts)


def _duis_html(d: dict[str, Any]) -> list[str]:
    esc = html.escape
    out = ["<h2>DUIS requests (the DCC)</h2>",
           "<p class=small>Every request the DCC recorded: the User is the entity ID that "
           "signed it. Requests refused for their signature, header, originator or a replayed "
           "counter are answered but not recorded.</p>",
           "<table><tr><th>#</th><th>RequestID</th><th>User</th><th>SR</th><th>device</th>"
           "<th>received</th><th>code</th><th>meaning</th><th>outcome</th><th>reason</th>"
           "<th>responses and alerts</th></tr>"]
    for q in d["requests"]:
        out.append("<tr><td>%d</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td>"
                   "<td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>" % (
                       q["id"], esc(q["request_id"]), esc(_who(q["user"], q["user_name"])),
                       esc(q["srv"]), esc(q["device"] or ""), esc(q["created_iso"] or ""),
                       esc(q["code"] or ""), esc(q["meaning"]),
                       _badge(q["outcome"]) if q["outcome"] else _badge(None),
                       esc(q["reason"] or ""),
                       "<br>".join(esc(_sent(r)) for r in q["responses"])))
    out.append("</table>")
    if d["alerts"]:
        out.append("<h3>DCC alerts about no request</h3><ul>")
        out += ["<li>%s</li>" % esc(_sent(r)) for r in d["alerts"]]
        out.append("</ul>")
    out.append("<p class=small>codes: %s</p>" % esc("; ".join(
        "%s x%d: %s" % (c, n, d["meanings"].get(c, "")) for c, n in d["codes"].items())))
    for c in d.get("campaigns", []):
        out += _campaign_html(c)
    return out


def _campaign_html(c: dict[str, Any]) -> list[str]:
    """A campaign: its state, each wave's counts, and per device its wave, attempts,
    outcome (a badge) and DUIS RequestIDs."""
    esc = html.escape
    cfg = c["config"]
    out = ["<h2>Campaign %s</h2>" % esc(c["name"]),
           "<p>Supplier %s, SR %s, image version %s (hash %s&hellip;), created %s: <b>%s</b>%s"
           "</p>" % (esc(c["supplier"]), esc(c["srv"]), esc(c["version"]),
                     esc(c["image_hash"][:16]), esc(c.get("created_iso") or ""),
                     esc(c["state"]), " &ndash; %s" % esc(c["reason"]) if c.get("reason")
                     else ""),
           "<p class=small>success threshold %g %%, error threshold %g %%, rate %s, retries %d"
           "%s</p>" % (cfg["success_threshold"] * 100, cfg["error_threshold"] * 100,
                       "%d/min" % cfg["rate"] if cfg.get("rate") else "unlimited",
                       cfg["retries"], ", window '%s' for %g s (%s)" % (
                           cfg["window"]["cron"], cfg["window"]["duration"],
                           cfg["window"]["tz"]) if cfg.get("window") else ""),
           "<table><tr><th>wave</th><th>devices</th><th>successful</th><th>failed</th>"
           "<th>in flight</th><th>waiting</th><th>opened</th></tr>"]
    for w in c["waves_detail"]:
        out.append("<tr><td>Wave %d</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td>"
                   "<td>%d</td><td>%s</td></tr>" % (w["wave"], w["size"], w["ok"],
                                                    w["failed"], w["sent"], w["waiting"],
                                                    "yes" if w["open"] else "no"))
    out.append("</table><details><summary>%d devices</summary><table><tr><th>device</th>"
               "<th>wave</th><th>state</th><th>attempts</th><th>outcome</th><th>code</th>"
               "<th>reason</th><th>DUIS requests</th></tr>" % len(c.get("devices", [])))
    for d in c.get("devices", []):
        out.append("<tr><td>%s</td><td>%d</td><td>%s</td><td>%d</td><td>%s</td><td>%s</td>"
                   "<td>%s</td><td>%s</td></tr>" % (
                       esc(d["device"]), d["wave"], esc(d["state"]), d["attempts"],
                       _badge(d["outcome"]) if d["outcome"] else _badge(None),
                       esc(d["code"] or ""), esc(d["reason"] or ""),
                       "<br>".join(esc(r) for r in d["requests"])))
    out.append("</table></details>")
    return out


def render_html(r: dict[str, Any], duis: dict[str, Any] | None = None,
                links: list[tuple[str, str]] | tuple = ()) -> str:
    """The outcome report as one self-contained HTML page with per-device timelines; with
    the DCC's DUIS view (`duis_data`) first when given, and links to other Comms Hubs'
    pages ((label, href) pairs)."""
    esc = html.escape
    now = r["generated"]
    out = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
           "<title>hanota hub report</title><style>%s</style></head><body>" % _CSS,
           "<h1>hanota hub report</h1>",
           '<p class=small>hub %s (generation %d) - generated %s</p>'
           % (esc(r["hub"]["eui"]), r["hub"]["generation"], esc(r["generated_iso"]))]
    if links:
        out.append("<p>Other Comms Hubs: %s</p>" % ", ".join(
            "<a href='%s'>%s</a>" % (esc(href, quote=True), esc(label)) for label, href in links))
    if duis is not None:
        out += _duis_html(duis)
    ok = sum(n for o, n in r["summary"].items() if o in SUCCESS_OUTCOMES)
    out.append("<p>%d requests: %s (%d successful)</p>" % (
        len(r["requests"]), ", ".join("%s %s" % (_badge(o if o != "pending" else None), n)
                                      for o, n in r["summary"].items()), ok))
    out.append("<h2>%s</h2>" % ("Requests" if duis is None else "Requests at Comms Hub %s"
                                 % esc(r["hub"]["eui"])))
    out.append("<table><tr><th>#</th><th>kind</th><th>SR</th><th>device</th>"
               "<th>supplier</th><th>target</th><th>submitted</th><th>ended</th>"
               "<th>attempts</th><th>outcome</th><th>reason</th></tr>")
    for q in r["requests"]:
        tgt = q["target_version_hex"] if q["kind"] != "read_version" else \
            version_text(q.get("result"))
        out.append("<tr><td>%d</td><td>%s</td><td>%s</td><td><a href='#d-%s'>%s</a></td>"
                   "<td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%d</td><td>%s</td>"
                   "<td>%s</td></tr>" % (
                       q["id"], esc(q["kind"]), esc(q["sr"]), esc(q["eui"]), esc(q["eui"]),
                       esc(q["supplier"]), esc(tgt), esc(q["created_iso"] or ""),
                       esc(q["finished_iso"] or ""), q["attempts"], _badge(q["outcome"]),
                       esc(q["reason"] or "")))
    out.append("</table>")
    out.append("<h2>Devices</h2>")
    euis = sorted(set(r["devices"]) | {q["eui"] for q in r["requests"]})
    for eui in euis:
        reqs = [q for q in r["requests"] if q["eui"] == eui]
        evs = r["device_events"].get(eui, [])
        dev = r["devices"].get(eui)
        out.append("<h3 id='d-%s'>%s</h3>" % (esc(eui), esc(eui)))
        if dev is not None:
            out.append("<p class=small>%s at premises %s, running %s</p>"
                       % (esc(dev["role"]), esc(dev["premises"]),
                          esc(dev["running_version_hex"])))
        else:
            out.append("<p class=small>not in the registry</p>")
        if reqs or evs:
            out.append(_timeline(eui, reqs, evs, now))
        out.append("<details><summary>%d events</summary><table><tr><th>time (UTC)</th>"
                   "<th>request</th><th>event</th><th>detail</th></tr>" % len(evs))
        for e in evs:
            out.append("<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>" % (
                esc(e["at_iso"]), "#%d" % e["request"] if e["request"] else "",
                esc(e["kind"]), esc(_detail(e))))
        out.append("</table></details>")
    out.append("<h2>Outcomes</h2><table>")
    for o, text in r["outcomes"].items():
        out.append("<tr><td>%s</td><td>%s</td></tr>" % (_badge(o), esc(text)))
    out.append("</table></body></html>")
    return "\n".join(out)
