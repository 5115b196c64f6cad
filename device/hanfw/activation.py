# hanota device: GBCS CS06 Activate Firmware on an HCALCS (issue 13). A command comes from the
# hub in a ZCL frame (OTA cluster, manufacturer-specific 0xF3 "GBCS Command": the GBCS message
# bytes, MAC header and all) and the device answers with 0xF4 "GBCS Response": reason u8 (0:
# none, else 1 + its index in REFUSALS) || the GBCS message it answers with (a CS06 response,
# an accepted NULL, an 8F66/8F67 alert; empty when the command did not decode).
#
# What is checked, in order (hanfw.gbcs.Verifier does the first six): it decodes; it is a
# command; it is for this device (recipient = own EUI-64, GBCS byte order); it has a MAC and
# the MAC verifies (ECDH between the ACB's KA key and the device's KA key, GBCS KDF, GMAC); the
# message code is one the device knows; a CS06 comes from the commissioned Supplier, its
# payload counter is the header's, the originator counter is above the last one accepted from
# that Supplier, and the Supplier's ECDSA signature verifies. Only then is the counter stored
# (the state file's atomic replace, before anything is acted on: a power cut during the store
# leaves the old counter and nothing done, or the new counter), and then the held image is
# compared with the command's Manufacturer Image Hash (the state's record and the bank read
# back). Immediate: answer Success, then activate. Future-dated: answer accepted (NULL) and
# keep {"at", "t", "c", "o", "h"} as "fdact" in the state; at that time (the hub's clock,
# hanfw.clock) check the image again and alert 8F66 and activate, or alert 8F67. A CS06 whose
# time is 99991231235959Z cancels the pending one.
#
# Module functions and one module global (the Verifier, whose ECDH secret is worth keeping):
# the OTA client's instance dict is full (29 slots), so nothing here is a client attribute.

from hanfw import gbcs, clock

# hanfw.zcl's CMD_GBCS (0xF3, hub -> device: a GBCS command) and CMD_GBCS_RESPONSE (0xF4,
# device -> hub: reason u8 || GBCS response or alert); zcl itself is imported only by the
# client's hooks below, where the client has it loaded already

# Why a command was refused (the 0xF4 reason byte is 1 + the index): gbcs.REASONS, then the
# device's own.
REFUSALS = gbcs.REASONS + ("not-commissioned", "no-image-held", "hash-mismatch",
                           "activation-failure", "no-pending")

_verifier = None  # (key of the configuration it was made from, gbcs.Verifier)


def reason_code(name):
    return 0 if name is None else 1 + REFUSALS.index(name)


def reason_name(code):
    if code == 0:
        return None
    return REFUSALS[code - 1] if code <= len(REFUSALS) else "reason-%d" % code


def verifier(cfg):
    """The device's gbcs.Verifier from its commissioning (cfg.gbcs), or None when the board
    was deployed without a Supplier (then it refuses every GBCS command: not-commissioned)."""
    global _verifier
    g = getattr(cfg, "gbcs", None)
    if not g:
        return None
    key = (g["supplier_ds"], g["supplier_id"], g["acb_ka"], g["ka_priv"], cfg.eui64_gbcs)
    if _verifier is None or _verifier[0] != key:
        _verifier = (key, gbcs.Verifier(g["supplier_ds"], g["acb_ka"], g["ka_priv"],
                                        cfg.eui64_gbcs, g["supplier_id"]))
    return _verifier[1]


def _hex(b):
    return "".join("%02X" % x for x in b)


def last_counter(state, originator):
    """The last originator counter accepted from this originator (GBCS entity id), else 0."""
    return state.get("sctr", {}).get(_hex(originator), 0)


def _days(y, m, d):
    # days since 0000-03-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy


_EPOCH = _days(2000, 1, 1)


def utc_of(t):
    """Seconds since 2000-01-01 UTC (the hub's clock) of a YYYYMMDDhhmmssZ time."""
    return ((_days(int(t[0:4]), int(t[4:6]), int(t[6:8])) - _EPOCH) * 86400
            + int(t[8:10]) * 3600 + int(t[10:12]) * 60 + int(t[12:14]))


def _version(v):
    return (v or 0).to_bytes(4, "big")


def image_code(state, banks, image_hash):
    """CS06 response code for activating the held image against the command's hash:
    CS06_SUCCESS, NO_IMAGE_HELD, HASH_MISMATCH (the held image is another), or
    ACTIVATION_FAILURE (the bank no longer holds what was verified)."""
    held = state.get("held")
    if not held:
        return gbcs.CS06_NO_IMAGE_HELD
    if held["hash"].upper() != _hex(image_hash):
        return gbcs.CS06_HASH_MISMATCH
    if banks.target_sha256(held["length"]) != bytes(image_hash):
        return gbcs.CS06_ACTIVATION_FAILURE
    return gbcs.CS06_SUCCESS


_CODE_REASON = (None, "no-image-held", "hash-mismatch", "activation-failure")


def process(cfg, state, banks, data, running_version):
    """Check one GBCS command and do what it asks of the stored state.
    Returns (reason or None, response gbcs.Message or None, action): action "activate" (the
    caller activates the held image once the response is out), "pending" (a future-dated
    activation is kept: the caller arms its timer), "cancel" or None."""
    v = verifier(cfg)
    if v is None:
        return "not-commissioned", None, None
    try:
        m = gbcs.decode(data)
    except gbcs.GbcsError as e:
        return e.reason, None, None
    try:
        m = v.verify(data, last_counter(state, m.originator))
    except gbcs.GbcsError as e:
        code = gbcs.CS06_ACTIVATION_FAILURE if m.message_code == gbcs.MSG_CS06 \
            and m.cra == gbcs.CRA_COMMAND else None
        r = None
        if code is not None and e.reason != "wrong-recipient":
            r = gbcs.cs06_response(m, code, _version(running_version))
        return e.reason, r, None
    # authentic and new: the counter is stored before anything is acted on
    ctrs = dict(state.get("sctr", {}))
    ctrs[_hex(m.originator)] = m.counter
    if m.message_code == gbcs.MSG_CS08:
        state.update(sctr=ctrs)
        return None, gbcs.cs08_response(m, _version(running_version)), None
    f = m.fields
    at = f["execution_date_time"]
    if at == gbcs.CANCEL_TIME:
        had = state.get("fdact")
        state.update(sctr=ctrs, fdact=None)
        return (None if had else "no-pending"), gbcs.cs06_response(m), "cancel"
    code = image_code(state, banks, f["manufacturer_image_hash"])
    if code != gbcs.CS06_SUCCESS:
        state.update(sctr=ctrs)
        return _CODE_REASON[code], gbcs.cs06_response(m, code, _version(running_version)), None
    if at is None:
        state.update(sctr=ctrs)
        held = state.get("held")
        return None, gbcs.cs06_response(m, gbcs.CS06_SUCCESS, _version(held["version"])), "activate"
    try:
        due = utc_of(at)
    except ValueError:
        return "malformed", gbcs.cs06_response(m, gbcs.CS06_ACTIVATION_FAILURE,
                                               _version(running_version)), None
    state.update(sctr=ctrs, fdact={"at": due, "t": at, "c": m.counter, "o": _hex(m.originator),
                                   "h": _hex(f["manufacturer_image_hash"])})
    return None, gbcs.cs06_response(m), "pending"


def due_alert(cfg, state, banks, running_version):
    """The pending future-dated activation has come: (alert gbcs.Message, activate?). The
    pending record goes in the same state write that decides."""
    p = state.get("fdact")
    code = image_code(state, banks, bytes.fromhex(p["h"]))
    held = state.get("held")
    version = held["version"] if code == gbcs.CS06_SUCCESS else running_version
    own = cfg.eui64_gbcs
    a = gbcs.fd_alert(p["c"], own, bytes.fromhex(p["o"]), p["c"], p["t"], code, _version(version))
    state.update(fdact=None)
    return a, code == gbcs.CS06_SUCCESS


# ---- the OTA client's side: small hooks it calls (see client.py) ------------------------


def _answer(client, reason, msg, tsn, mfr):
    from hanfw import zcl
    body = bytes((reason_code(reason),)) + (msg.encode() if msg is not None else b"")
    client._zsend(0x11 | zcl.FC_MANUFACTURER, zcl.CMD_GBCS_RESPONSE, body, tsn, mfr)


def on_command(client, data, tsn, mfr):
    """A 0xF3 frame: check, answer, act."""
    if client.role.activation != "command":
        reason, msg, action = "unknown-message-code", None, None
    else:
        reason, msg, action = process(client.cfg, client.state, client.banks, data,
                                      client.running_version())
    if reason is not None:
        client.stats["rejected"] += 1
        client.log("gbcs: refused: %s" % reason)
    _answer(client, reason, msg, tsn, mfr)
    if action == "activate":
        from hanfw import zcl
        clock.due = None
        client.status = zcl.UPGRADE_COUNT_DOWN
        client._cancel("end")
        client._at("activate", 200)  # let the response leave first
    elif action == "pending":
        client._at("gbcs", 0)
    elif action == "cancel":
        client._cancel("gbcs")


def on_timer(client):
    """The "gbcs" timer: a future-dated activation waits for the hub's clock, then alerts."""
    p = client.state.get("fdact")
    if not p:
        return
    now = clock.now()
    if now is None or now < p["at"]:
        if now is None:
            client._read_time()
        client._at("gbcs", 1000 if now is None else min((p["at"] - now) * 1000, 60000))
        return
    alert, go = due_alert(client.cfg, client.state, client.banks, client.running_version())
    _answer(client, None if go else "activation-failure", alert, None, client.cfg.manufacturer)
    if go:
        from hanfw import zcl
        clock.due = None
        client.status = zcl.UPGRADE_COUNT_DOWN
        client._cancel("end")
        client._at("activate", 200)
