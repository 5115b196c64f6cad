"""What the DCC does with a DUIS request: check it, then answer it itself or send it over the
WAN to the Comms Hub of the device's premises; and what it makes of the Comms Hub's outcomes.

`Dcc.submit(xml)` applies the checks in this order, and the first that fails is the answer
(a signed DUIS acknowledgement carrying the error's response code and reason):

1. the XML signature (`xmlsig.verify` against the DCC's key store): the templates'
   placeholder signature, a signer the key store does not know, and a document changed after
   signing are refused;
2. the document and its header (`duis.parse_request`): RequestID format, CommandVariant and
   ServiceReferenceVariant valid for the SR, the DCC as the target of DCC-only services;
3. the RequestID's originator is the signer's entity ID (a User can only speak for itself);
4. the counter is strictly greater than the last one this User used. **Counter rule:** the
   counter is recorded once steps 1-3 pass, whatever the SR rules below decide, so a request
   refused by an SR rule cannot be replayed either; a document refused at steps 1-3 records
   nothing (its signer is unproven or it names someone else, so it must not burn the real
   User's counters);
5. the SR rules: the target device is registered; the signer is a Responsible Supplier of its
   premises, by entity ID (read-only SR 8.2 excepted); SR 11.1 / 11.4: the device's type takes
   that SR (11.4: PPMIDs and, by MP170, Alt HAN devices; 11.1: HCALCS), the image is a well-formed OTA
   file whose payload matches its descriptor, its Manufacturer Image Hash is on the CPL for the
   device's manufacturer and model, its header fits the device (manufacturer, image type,
   destination, hardware version range) and, when the CPL entry carries the manufacturer's
   key, its signature verifies; SR 11.3 only for devices activated by command (HCALCS);
   SR 8.7.x: an Alt HAN device cannot be joined by the Join Service (MP170's error code).

A refusal is recorded (request row with its outcome) from step 5 on; it changes nothing else:
a refused 11.1/11.4 never supersedes or touches a pending request, and nothing reaches the WAN.

What holds the store's write lock is kept short: for SR 11.1 / 11.4 (what campaigns send)
`check` does steps 1-3 and 5 with reads only (the counter's step 4 is read too), then
`record`, inside one short write transaction, takes the counter (an atomic upsert: step 4
for real) and re-checks the device's registration and the CPL entry in one query (seen
changed: the rules and the image are checked again there) before writing the request and
its WAN message; the acknowledgement is signed after the commit. An image's parse, hashes
and manufacturer's signature depend on its bytes alone and are memoised per file
(`check_image`). For an outcome (`wan_received`) the final response and alerts are signed
before the transaction and used only if the request and Suppliers are seen unchanged in it.

Accepted device requests become WAN messages to the premises' Comms Hub (the protocol in
`dcc-interfaces`: one JSON object per message, ids per hub); the synchronous answer is the
acknowledgement I99. DCC-only services (8.2, 8.4, 12.2) are answered at once with I0 and
their body. `wan_received` turns the Comms Hub's outcome for a request into exactly one final
signed DUIS response for the requesting User (and an alert to the premises' other Responsible
Supplier for firmware outcomes); every document the DCC emits is signed with its own key.
A Comms Hub replacing another (Trust Centre Swap-Out, `wan_hub_replaced`) takes over its
premises and pending requests; the premises' Alt HAN devices are refused SR 11.4 from then on.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from hanfw import otafile
from hanfw.otafile import OtaError

from . import duis, precommand, xmlsig
from .store import DEVICE_TYPES, DccStore, DccUsageError, eui_hex

log = logging.getLogger(__name__)

NO_RESPONSE = "no_response"  # the outcome of a request whose deadline passed unanswered
ACCEPTED = "I99"  # acknowledgement: the request was accepted and will be processed
SUCCESS = "I0"  # success (a DCC-only service's answer; a device's response)

# The DUIS response code for each reason the DCC refuses a request (meanings in
# duis.RESPONSE_CODES: DUIS's own codes where a source gives one, hanota's "EH" codes otherwise).
REFUSAL_CODES = {
    "bad-signature": duis.E_SIGNATURE,  # missing, placeholder, not verifying, unknown signer
    "malformed": duis.E_MALFORMED,  # the document or its header is not a valid DUIS request
    "not-originator": duis.E_ORIGINATOR,  # the RequestID's originator is not the signer
    "replay": duis.E_REPLAY,  # the counter is not above the User's last
    "unknown-device": "E19",  # Device does not exist (not in the registration data)
    "device-status": "E5",  # Device status incompatible (withdrawn)
    "not-authorised": "E4",  # User Role not authorised for the Device (not its Supplier)
    "wrong-device-type": "E11",  # Service Reference not compatible with the Device's type
    "not-on-cpl": duis.E_IMAGE,  # the image's hash is not on the CPL for the device's model
    "bad-image": duis.E_IMAGE,  # malformed, tampered, badly signed, or not fitting the device
    "alt-han-join": duis.E_ALTHAN_JOIN,  # MP170: an Alt HAN device is not joined by SR 8.7.x
    "ota-unavailable": duis.E_OTA_UNAVAILABLE,  # Alt HAN device after a Trust Centre Swap-Out
    "bad-request": duis.E_MALFORMED,  # the body names something the DCC cannot act on
    "no-ka-key": duis.E_NO_KA_KEY,  # SR 11.3 CV 5: no KA key for the device to MAC the CS06 to
}

# hanota.hub.db.OUTCOMES -> (DUIS response code, GBCS use case, its response code), for the
# final response to the requesting User. A device's answer is I0 (the DCC received it) with the
# GBCS outcome code in the body: CCS08 for distribution (0 success, 1 image discarded,
# 2 hardware version mismatch, 3 file transfer failure), CS06 for activation (0 success, 1 no
# image held, 2 hash mismatch, 3 activation failure), CS08 for a version read (0, 1 failure),
# CS03/CS04 for join/unjoin. Outcomes the CH decides without the device carry an E code.
OUTCOME_RESPONSES: dict[str, tuple[str, str | None, int | None]] = {
    "distributed": (SUCCESS, "CCS08", 0),
    "activated": (SUCCESS, "CS06", 0),
    "rolled_back": (SUCCESS, "CS06", 3),
    "rejected_by_device": (SUCCESS, "CCS08", 1),
    "image_mismatch": (SUCCESS, "CCS08", 1),
    "hw_version_mismatch": (SUCCESS, "CCS08", 2),
    "transfer_failed": (SUCCESS, "CCS08", 3),
    "hash_mismatch": (SUCCESS, "CS06", 2),
    "no_image_held": (SUCCESS, "CS06", 1),
    "activation_failed": (SUCCESS, "CS06", 3),
    "version_read": (SUCCESS, "CS08", 0),
    "read_failed": (SUCCESS, "CS08", 1),
    "joined": (SUCCESS, "CS03", 0),
    "join_failed": (SUCCESS, "CS03", 2),
    "unjoined": (SUCCESS, "CS04", 0),
    "unjoin_failed": (SUCCESS, "CS04", 2),
    "prenotified": (SUCCESS, None, None),
    "cancelled": (SUCCESS, "CS06", None),
    "not_cancelled": (SUCCESS, "CS06", None),
    # the Comms Hub could not act on the message (malformed, or its own rule refused it):
    # for the User the command did not reach the device
    "refused": ("E20", None, None),
    "device_unreachable": ("E21", None, None),
    # the Comms Hub received it after its response deadline and did not carry it out
    "expired": ("E21", None, None),
    "superseded": ("EH12", None, None),
    # the DCC's own outcome: no answer from the Comms Hub within the response deadline
    NO_RESPONSE: ("E21", None, None),
    "not_authorized": (REFUSAL_CODES["not-authorised"], None, None),
    "ota_unsupported": (REFUSAL_CODES["wrong-device-type"], None, None),
    "ota_unavailable_after_tcso": (duis.E_OTA_UNAVAILABLE, None, None),
}
# Where the SR decides the use case: a PPMID or Alt HAN device activates an SR 11.4 image by
# itself, and GBCS reports that with the CS09 PPMID Firmware Activation Alert (0 success,
# 1 failure), not with a CS06 response (CS06 answers an SR 11.3 command). The Comms Hub's
# GBCS payload for these outcomes is CS09 too (`gbcs.for_outcome`).
SR_OUTCOME_RESPONSES: dict[tuple[str, str], tuple[str, str | None, int | None]] = {
    ("11.4", "activated"): (SUCCESS, "CS09", 0),
    ("11.4", "rolled_back"): (SUCCESS, "CS09", 1),
}
OUTCOME_TEXT = {
    "joined": "the device joined the Comms Hub",
    "join_failed": "the Comms Hub could not join the device",
    "unjoined": "the device was removed from the Comms Hub's device log",
    "unjoin_failed": "the Comms Hub could not remove the device",
    "prenotified": "the Comms Hub holds the device's install code",
    "not_cancelled": "there was no future-dated activation to cancel",
    "refused": "the Comms Hub could not act on the request",
    "cancelled": "the future-dated activation was cancelled",
    NO_RESPONSE: "no answer from the Comms Hub within the DCC's response deadline",
}
FIRMWARE_SRS = ("11.1", "11.3", "11.4")
DEVICE_SRS = ("11.1", "11.2", "11.3", "11.4", "8.7.1", "8.7.2", "8.8.1", "8.8.2")
DCC_ONLY_SRS = ("8.2", "8.4", "12.2")
CANCEL_YEAR = 3000  # an ExecutionDateTime at or after this year cancels (DUIS: 3000-12-31)


@dataclass
class Checked:
    """What `Dcc.check` decided of a request, for `Dcc.record` (see `Dcc.submit`)."""

    req: Any
    user: str | None
    counter: int | None
    request_id: Any
    srv: str | None
    refusal: "Refusal | None" = None  # refused at steps 1-4: nothing is recorded
    rule: "Refusal | None" = None  # refused by an SR rule: recorded with the counter
    plan: tuple | None = None  # SR 11.1 / 11.4 accepted: Dcc._firmware_plan's


class Refusal(Exception):
    """A request the DCC refuses: `code` is the DUIS response code, `reason` says why."""

    def __init__(self, name: str, reason: str, code: str | None = None):
        super().__init__(reason)
        self.name = name
        self.reason = reason
        self.code = code or REFUSAL_CODES[name]


@dataclass
class ImageCheck:
    """What the DCC learnt of an image it accepted (for the WAN message and the record)."""

    manufacturer: int
    image_type: int
    file_version: int
    image_hash: bytes
    min_hw: int | None
    max_hw: int | None
    cpl_pubkey: str | None = None  # the CPL entry's key when it was checked


def outcome_text(outcome: str) -> str:
    from ..hub.db import OUTCOMES

    return OUTCOMES.get(outcome) or OUTCOME_TEXT.get(outcome) or outcome


class Dcc:
    """The DCC's service logic over its store, its key store of Users' certificates, and its
    own signing key and certificate (every document it emits carries its signature)."""

    def __init__(self, store: DccStore, keystore: Any, signer: tuple[Any, Any]):
        self.store = store
        self.keystore = keystore
        self.key, self.cert = signer

    def register_device_ka(self, eui: bytes | str, ka_public: bytes | str | None) -> dict:
        """Record a GBCS-commissioned device's KA public key (65-byte point, from its
        commissioning: `board deploy --supplier-cert/--acb-cert` prints it) in its
        registration data, where it outlives a DCC restart: SR 11.3 to such a device goes by
        the Pre-Command flow, and the DCC MACs the CS06 to this key. None removes it.
        DccUsageError names an unregistered device or a key that is not a P-256 point."""
        return self.store.update_device(eui, ka_public=ka_public)

    # ------------------------------------------------------------ submission

    def submit(self, xml: bytes) -> bytes:
        """Check a signed DUIS request and act on it; the signed synchronous answer (the
        acknowledgement I99, a DCC-only service's I0 response, or the refusal).

        SR 11.1 / 11.4 go in two steps: `check` (the signature, the document, the rules,
        the image: CPU work, no writes, no lock) then `record` in one short write
        transaction that re-checks what can have changed meanwhile (the counter, the
        device's registration and Responsible Suppliers, the CPL entry); the
        acknowledgement is signed after it commits."""
        chk = self.check(xml)
        if chk.refusal is not None:  # steps 1-4: nothing recorded
            return self._refused(chk.request_id, chk.srv, chk.refusal)
        if chk.plan is not None or chk.rule is not None:
            try:
                with self.store.tx():
                    code, reason = self.record(chk)
            except Refusal as r:  # the counter was taken meanwhile (a replay)
                return self._refused(chk.request_id, chk.srv, r)
            return self._sign(duis.acknowledgement(chk.request_id, code, reason, srv=chk.srv))
        req, user, counter = chk.req, chk.user, chk.counter
        assert user is not None and counter is not None  # steps 1-3 passed
        if req.command_variant != 5 and not self.store.take_counter(user, counter):
            # a Signed Pre-Command (CV 5): its CV 4 request took the counter
            return self._refused(req.request_id, chk.srv, self._replay(user, counter))
        try:
            return self._dispatch(req, user, counter)
        except Refusal as r:
            log.info("refused %s: %s", req.request_id, r.reason)
            if req.command_variant == 5:  # the CV 4 request's row is the record
                return self._sign(duis.acknowledgement(req.request_id, r.code, r.reason,
                                                       srv=req.service_reference_variant))
            self.store.add_request(str(req.request_id), user, counter,
                                   req.service_reference_variant, device=_device_of(req),
                                   outcome="refused", code=r.code, reason=r.reason,
                                   detail={"refusal": r.name})
            return self._sign(duis.acknowledgement(req.request_id, r.code, r.reason,
                                                   srv=req.service_reference_variant))

    def _refused(self, request_id: Any, srv: str | None, r: "Refusal") -> bytes:
        log.info("refused %s: %s", request_id, r.reason)
        return self._sign(duis.acknowledgement(request_id, r.code, r.reason, srv=srv))

    def _replay(self, user: str, counter: int) -> "Refusal":
        return Refusal("replay", "RequestID counter %d is not above %d, the last this User "
                       "used (a replayed or reordered request)"
                       % (counter, self.store.last_counter(user) or 0))

    def check(self, xml: bytes) -> "Checked":
        """Everything `submit` decides before writing, with no write and no lock: steps 1-3
        (signature, document, originator), the counter against the User's last (read only),
        and for SR 11.1 / 11.4 the SR rules and the image (`Checked.plan`, or `.rule`: the
        refusal `record` writes). Other SRs are checked and acted on by `submit` as one."""
        request_id: Any = None
        srv: str | None = None
        try:
            try:
                signer = xmlsig.verify(xml, self.keystore)
            except xmlsig.SignatureError as e:
                request_id, srv = _echo(xml)
                raise Refusal("bad-signature", "the request's signature is refused: %s" % e) \
                    from None
            try:
                req = duis.parse_request(xml)
            except duis.DuisError as e:
                request_id, srv = e.request_id, e.srv
                raise Refusal("malformed", e.reason, e.code) from None
            request_id, srv = req.request_id, req.service_reference_variant
            user = eui_hex(req.request_id.originator)
            if bytes(signer.entity_id) != bytes(req.request_id.originator):
                raise Refusal("not-originator", "the RequestID's originator %s is not the "
                              "signer's entity ID %s" % (user, eui_hex(signer.entity_id)))
            counter = int(req.request_id.counter)
            if req.command_variant != 5 and counter <= (self.store.last_counter(user) or 0):
                raise self._replay(user, counter)
        except Refusal as r:
            return Checked(None, None, None, request_id, srv, refusal=r)
        chk = Checked(req, user, counter, req.request_id, srv)
        if srv in ("11.1", "11.4") and req.command_variant != 5:
            try:
                chk.plan = self._firmware_plan(req, user)
            except Refusal as r:
                chk.rule = r
        return chk

    def record(self, chk: "Checked", expires: float | None = None) -> tuple[str, str | None]:
        """Write what `check` decided for an SR 11.1 / 11.4, inside the caller's write
        transaction: take the counter (Refusal "replay", nothing written, when it is no
        longer above the User's last: another request of the User's came in since), then
        the refusal's record, or, once the device's registration and the CPL entry are
        seen unchanged (else the rules and the image are checked again, here), the request
        and its WAN message. The acknowledgement's (code, reason).

        `expires`: the request's response deadline (the store's clock, seconds since the
        epoch), carried in its WAN message: a Comms Hub that receives it later does not carry
        it out (the DCC has given it `no_response` by then, and a retry goes as a new
        request: the device must not act on both)."""
        req, user, counter = chk.req, chk.user, chk.counter
        assert req is not None and user is not None and counter is not None
        if not self.store.take_counter(user, counter):
            raise self._replay(user, counter)
        plan, rule = chk.plan, chk.rule
        if plan is not None and not self._still_holds(plan):
            try:
                plan, rule = self._firmware_plan(req, user), None
            except Refusal as r:
                plan, rule = None, r
        if rule is not None or plan is None:
            assert rule is not None
            log.info("refused %s: %s", req.request_id, rule.reason)
            self.store.add_request(str(req.request_id), user, counter, chk.srv or "",
                                   device=_device_of(req), outcome="refused", code=rule.code,
                                   reason=rule.reason, detail={"refusal": rule.name})
            return rule.code, rule.reason
        dev, msg, detail, _ = plan
        if expires is not None:
            msg = dict(msg, expires=round(float(expires), 3))
        self._queue(req, user, counter, dev, msg, detail)
        return ACCEPTED, None

    def _still_holds(self, plan: tuple) -> bool:
        """The device's registration (and its premises' Suppliers and Comms Hub) and the
        CPL entry as `check` saw them: one query."""
        dev, msg, detail, cpl = plan
        row = self.store.one(
            "SELECT d.device_type, d.status, d.lost_with_hub, d.manufacturer, d.model, "
            "d.hw_version, p.supplier1, p.supplier2, p.hub_eui, (SELECT coalesce(c.pubkey, '') "
            "FROM cpl c WHERE c.manufacturer = ? AND c.model = ? AND c.image_hash = ?) "
            "FROM devices d JOIN premises p ON p.mpxn = d.mpxn WHERE d.eui = ?",
            (cpl[0], cpl[1], detail["image_hash"], dev["eui"]))
        if row is None:
            return False
        now = tuple(row[:6]) + ([s for s in (row[6], row[7]) if s], row[8], row[9])
        was = (dev["device_type"], dev["status"], dev["lost_with_hub"], dev["manufacturer"],
               dev["model"], dev["hw_version"], list(dev["suppliers"]), dev["hub_eui"],
               cpl[2] or "")
        return now == was

    def _dispatch(self, req: Any, user: str, counter: int) -> bytes:
        srv = req.service_reference_variant
        if srv in ("11.1", "11.4"):
            return self._update_firmware(req, user, counter)
        if srv == "11.3" and req.command_variant == 5:
            return self._signed_precommand(req, user)
        if srv == "11.3":
            return self._activate(req, user, counter)
        if srv == "11.2":
            dev = self._device_for(req, user, _target(req))
            return self._to_hub(req, user, counter, dev, {"type": "read_version"})
        if srv in ("8.7.1", "8.7.2", "8.8.1", "8.8.2"):
            return self._join(req, user, counter, srv.startswith("8.7"))
        if srv == "8.2":
            return self._read_inventory(req, user, counter)
        if srv == "8.4":
            return self._update_inventory(req, user, counter)
        if srv == "12.2":
            return self._prenotify(req, user, counter)
        raise Refusal("malformed", "SR %s is not a service this DCC offers (%s)"
                      % (srv, ", ".join(DEVICE_SRS + DCC_ONLY_SRS)))

    # -- shared rules

    def _device_for(self, req: Any, user: str, eui: bytes | str | None, *,
                    responsible: bool = True, read_only: bool = False) -> dict[str, Any]:
        if eui is None:
            raise Refusal("malformed", "SR %s names no device" % req.service_reference_variant)
        dev = self.store.device(eui)
        if dev is None:
            raise Refusal("unknown-device", "device %s is not in the DCC's registration data"
                          % eui_hex(eui))
        if responsible and user not in dev["suppliers"]:
            raise Refusal("not-authorised", "%s is not a Responsible Supplier of device %s "
                          "(premises %s: %s)" % (user, dev["eui"], dev["premises"],
                                                 " and ".join(dev["suppliers"])))
        if dev["status"] == "withdrawn" and not read_only:
            raise Refusal("device-status", "device %s is withdrawn from the inventory"
                          % dev["eui"])
        return dev

    def _to_hub(self, req: Any, user: str, counter: int, dev: dict[str, Any], msg: dict,
                *, detail: dict | None = None) -> bytes:
        """Record an accepted device request, queue its WAN message, acknowledge it."""
        with self.store.tx():
            self._queue(req, user, counter, dev, msg, detail)
        return self._sign(duis.acknowledgement(req.request_id, ACCEPTED, None,
                                               srv=req.service_reference_variant))

    def _queue(self, req: Any, user: str, counter: int, dev: dict[str, Any], msg: dict,
               detail: dict | None = None) -> None:
        """The request's row (state sent) and its WAN message to the device's Comms Hub."""
        body = {"request": str(req.request_id), "device": dev["eui"]}
        body.update(msg)
        with self.store.tx():
            rid = self.store.add_request(str(req.request_id), user, counter,
                                         req.service_reference_variant, device=dev["eui"],
                                         hub_eui=dev["hub_eui"], state="sent",
                                         detail=dict(detail or {}, wan_type=msg["type"]))
            self.store.wan_queue(dev["hub_eui"], body, request=rid)

    # -- firmware

    def _update_firmware(self, req: Any, user: str, counter: int) -> bytes:
        dev, msg, detail, _ = self._firmware_plan(req, user)
        return self._to_hub(req, user, counter, dev, msg, detail=detail)

    def _firmware_plan(self, req: Any, user: str) -> tuple[dict, dict, dict, tuple]:
        """SR 11.1 / 11.4's rules and image checks (reads only): the device, the WAN
        message, the request's detail and the CPL entry seen (manufacturer, model, key),
        or Refusal."""
        srv = req.service_reference_variant
        f = req.fields
        ids = list(f.get("device_ids") or [])
        if len(ids) != 1:
            raise Refusal("bad-request", "SR %s names %d devices; this DCC takes one device per "
                          "request" % (srv, len(ids)))
        dev = self._device_for(req, user, ids[0])
        takes = DEVICE_TYPES[dev["device_type"]][2]
        if takes != srv:
            raise Refusal("wrong-device-type", "SR %s does not apply to device %s, a %s (%s)"
                          % (srv, dev["eui"], dev["device_type"],
                             "its firmware is updated by SR %s" % takes if takes
                             else "hanota does not update its firmware"))
        if dev["lost_with_hub"]:
            raise Refusal("ota-unavailable", "device %s is an Alt HAN device that was joined to "
                          "Comms Hub %s, replaced by %s in a Trust Centre Swap-Out: it cannot "
                          "rejoin, so OTA firmware cannot reach it (MP170)"
                          % (dev["eui"], dev["lost_with_hub"], dev["hub_eui"]))
        image = f.get("firmware_image")
        if not image:
            raise Refusal("bad-image", "the request carries no FirmwareImage")
        chk = check_image(self.store, bytes(image), dev)
        want = f.get("firmware_version")
        if want and int(str(want), 16) not in (0, chk.file_version):
            raise Refusal("bad-image", "FirmwareVersion %s is not the image's file version "
                          "%08X" % (want, chk.file_version))
        msg = {"type": "update_firmware", "kind": srv, "role": dev["role"],
               "image_b64": base64.b64encode(bytes(image)).decode("ascii"),
               "hash": chk.image_hash.hex(), "version": "%08X" % chk.file_version}
        model = dev["model"] or "%04X" % chk.image_type
        detail = {"image_hash": chk.image_hash.hex(), "version": "%08X" % chk.file_version}
        return dev, msg, detail, ("%04X" % chk.manufacturer, _model8(model), chk.cpl_pubkey)

    def _activate(self, req: Any, user: str, counter: int) -> bytes:
        f = req.fields
        dev = self._device_for(req, user, _target(req))
        if dev["role"] != "hcalcs":
            raise Refusal("wrong-device-type", "SR 11.3 activates firmware held by an HCALCS; "
                          "device %s is a %s" % (dev["eui"], dev["device_type"]))
        h = f.get("firmware_hash")
        if not h or len(bytes(h)) != 32:
            raise Refusal("malformed", "SR 11.3 needs a FirmwareHash of 32 bytes")
        at = f.get("execution_datetime")
        cancel = bool(f.get("cancel")) or (at is not None and at.year >= CANCEL_YEAR)
        if dev["ka_public"]:
            # GBCS-commissioned: the User signs a CS06 (CV 4 -> Pre-Command, then CV 5)
            pre = precommand.precommand(req.request_id, bytes(h), at, cancel)
            self.store.add_request(str(req.request_id), user, counter, "11.3", device=dev["eui"],
                                   hub_eui=dev["hub_eui"],
                                   detail={"precommand": pre.hex(), "cancel": cancel,
                                           "wan_type": "gbcs"})
            return self._sign(precommand.precommand_response(req.request_id, pre))
        msg = {"type": "cancel_activation" if cancel else "activate",
               "hash": bytes(h).hex(), "at": None if cancel else _iso(at)}
        return self._to_hub(req, user, counter, dev, msg,
                            detail={"cancel": cancel, "hash": bytes(h).hex()})

    def _signed_precommand(self, req: Any, user: str) -> bytes:
        """CV 5: the Signed Pre-Command of a CV 4 request this DCC answered with a
        Pre-Command; checked (exactly that pre-command, the User's DS signature), MAC'd with
        the ACB's KA key to the device's KA key and sent to the Comms Hub as GBCS bytes."""
        row = self.store.request_by_text(str(req.request_id))
        detail = (row or {}).get("detail") or {}
        dev = self.store.device(row["device"]) if row is not None and row["device"] else None
        if row is not None and row["user"] == user and row["srv"] == "11.3" \
                and (dev is None or not dev["ka_public"]):
            raise Refusal("no-ka-key", "device %s has no key-agreement public key in the DCC's "
                          "registration data, so the DCC cannot MAC a CS06 to it%s: record the "
                          "one its GBCS commissioning printed (hanota dcc registry set-ka %s "
                          "--ka-pub HEX), then submit a new SR 11.3 with CommandVariant 4"
                          % (row["device"], "" if "precommand" in detail else
                             " (RequestID %s went to the Comms Hub as hanota's own activation "
                             "command)" % req.request_id, row["device"]))
        if row is None or row["user"] != user or "precommand" not in detail:
            raise Refusal("malformed", "no Pre-Command was issued for RequestID %s: submit SR "
                          "11.3 with CommandVariant 4 first" % req.request_id)
        if row["outcome"] is not None or row.get("state") != "accepted":
            raise Refusal("replay", "the Signed Pre-Command of RequestID %s was already taken"
                          % req.request_id)
        # the rules of the CV 4 request hold at CV 5 too: a Change of Supplier (or the
        # device's withdrawal) since the Pre-Command was issued ends the User's right to it
        dev = self._device_for(req, user, row["device"])
        try:
            msg = precommand.check_and_mac(req.fields["signed_precommand"],
                                           bytes.fromhex(detail["precommand"]),
                                           req.request_id.originator, self.keystore,
                                           bytes.fromhex(dev["ka_public"]))
        except (precommand.PrecommandError, KeyError) as e:
            raise Refusal("bad-signature", "Signed Pre-Command refused: %s" % e) from None
        body = {"request": str(req.request_id), "device": row["device"], "type": "gbcs",
                "gbcs_b64": base64.b64encode(msg).decode("ascii"),
                "cancel": bool(detail.get("cancel"))}
        with self.store.tx():
            self.store.wan_queue(row["hub_eui"], body, request=row["id"])
            self.store.set_request_state(row["id"], "sent")
        return self._sign(duis.acknowledgement(req.request_id, ACCEPTED, None, srv="11.3"))

    # -- join / unjoin

    def _join(self, req: Any, user: str, counter: int, join: bool) -> bytes:
        srv = req.service_reference_variant
        target = self._device_for(req, user, _target(req))
        other_id = req.fields.get("other_device_id")
        other = self.store.device(other_id) if other_id is not None else None
        if other_id is not None and other is None:
            raise Refusal("unknown-device", "OtherDeviceID %s is not in the DCC's registration "
                          "data" % eui_hex(other_id))
        for d in (target, other):
            if join and d is not None and d["device_type"] == "ALTHAN":
                raise Refusal("alt-han-join", "device %s is an Alt HAN device: it joins through "
                              "the Alt HAN equipment, not the Join Service (SR %s, MP170)"
                              % (d["eui"], srv))
        if other is not None and other["premises"] != target["premises"]:
            raise Refusal("bad-request", "devices %s and %s are at different premises"
                          % (target["eui"], other["eui"]))
        # The HAN device the Comms Hub (hanota's) joins is the one with a hanota role.
        han = next((d for d in (other, target) if d is not None and d["role"]), None)
        if han is None:
            raise Refusal("wrong-device-type", "neither device is a HAN device hanota's Comms "
                          "Hub joins (PPMID, HCALCS)")
        msg: dict[str, Any] = {"type": "join" if join else "unjoin", "role": han["role"]}
        msg.update(han_device_fields(han))
        if join:
            if not han["install_code"]:
                raise Refusal("bad-request", "device %s has no install code (pre-notify it "
                              "with SR 12.2)" % han["eui"])
            msg["install_code"] = han["install_code"]
        return self._to_hub(req, user, counter, han, msg)

    # -- DCC-only services

    def _read_inventory(self, req: Any, user: str, counter: int) -> bytes:
        eui = req.fields.get("device_id") or _target(req)
        dev = self._device_for(req, user, eui, responsible=False, read_only=True)
        body = inventory_entry(dev)
        return self._answer(req, user, counter, dev["eui"], body)

    def _update_inventory(self, req: Any, user: str, counter: int) -> bytes:
        f = req.fields
        dev = self._device_for(req, user, f.get("device_id") or _target(req))
        changes: dict[str, Any] = {}
        if f.get("delete"):
            changes["status"] = "withdrawn"
        for k in ("device_type", "manufacturer", "model", "firmware_version"):
            if f.get(k) is not None:
                changes[k] = f[k]
        if not changes:
            raise Refusal("bad-request", "SR 8.4 names no change to device %s" % dev["eui"])
        try:
            new = self.store.update_device(dev["eui"], **changes)
        except DccUsageError as e:
            raise Refusal("bad-request", str(e)) from None
        return self._answer(req, user, counter, dev["eui"], inventory_entry(new))

    def _prenotify(self, req: Any, user: str, counter: int) -> bytes:
        f = req.fields
        eui = f.get("device_id")
        if eui is None:
            raise Refusal("malformed", "SR 12.2 names no DeviceID")
        mpxn = f.get("mpxn")
        if mpxn is None:
            mine = [p for p in self.store.list_premises() if user in p["suppliers"]]
            if len(mine) != 1:
                raise Refusal("bad-request", "SR 12.2 names no premises, and %s is Responsible "
                              "Supplier of %d premises, not one" % (user, len(mine)))
            mpxn = mine[0]["mpxn"]
        prem = self.store.premises(mpxn)
        if prem is None:
            raise Refusal("bad-request", "premises %s are not registered" % mpxn)
        if user not in prem["suppliers"]:
            raise Refusal("not-authorised", "%s is not a Responsible Supplier of premises %s "
                          "(%s)" % (user, mpxn, " and ".join(prem["suppliers"])))
        if self.store.device(eui) is not None:
            raise Refusal("bad-request", "device %s is already registered" % eui_hex(eui))
        try:
            dev = self.store.add_device(
                eui, f.get("device_type") or "", mpxn, model=f.get("model"),
                manufacturer=f.get("manufacturer"), firmware_version=f.get("firmware_version"),
                install_code=_hex_or_none(f.get("install_code")), hw_version=f.get("hw_version"),
                status="prenotified")
        except DccUsageError as e:
            raise Refusal("bad-request", str(e)) from None
        srv = req.service_reference_variant
        with self.store.tx():
            rid = self.store.add_request(str(req.request_id), user, counter, srv,
                                         device=dev["eui"], hub_eui=dev["hub_eui"],
                                         outcome="prenotified", code=SUCCESS)
            if dev["role"] and dev["install_code"]:
                msg = {"type": "prenotify", "request": str(req.request_id),
                       "device": dev["eui"], "install_code": dev["install_code"],
                       "role": dev["role"]}
                msg.update(han_device_fields(dev))
                self.store.wan_queue(dev["hub_eui"], msg, request=rid)
        return self._sign(duis.response(req.request_id, SUCCESS, srv,
                                        body=inventory_entry(dev)))

    def _answer(self, req: Any, user: str, counter: int, device: str, body: dict) -> bytes:
        srv = req.service_reference_variant
        self.store.add_request(str(req.request_id), user, counter, srv, device=device,
                               outcome="answered", code=SUCCESS)
        return self._sign(duis.response(req.request_id, SUCCESS, srv, body=body))

    # ------------------------------------------------------------ responses

    def responses(self, user_eui: bytes | str, *, after: int = 0) -> list[tuple[int, bytes]]:
        """The signed DUIS responses and alerts queued for a User, after sequence `after`."""
        return self.store.responses(user_eui, after=after)

    # ------------------------------------------------------------ WAN

    def wan_outbox(self, hub_eui: bytes | str, *, after: int = 0) -> list[dict]:
        return self.store.wan_outbox(hub_eui, after=after)

    def wan_acked(self, hub_eui: bytes | str, msg_id: int) -> None:
        self.store.wan_acked(hub_eui, msg_id)

    def wan_hub_replaced(self, old: bytes | str, new: bytes | str) -> dict[str, Any]:
        """A Comms Hub says it replaces `old` (its hello after a Trust Centre Swap-Out): the
        registration data follows it (`DccStore.replace_hub`)."""
        moved = self.store.replace_hub(old, new)
        log.warning("Comms Hub %s replaces %s (Trust Centre Swap-Out): premises %s, %d pending "
                    "request(s) and %d unsent message(s) moved; %d Alt HAN device(s) lost",
                    eui_hex(new), eui_hex(old), ", ".join(moved["premises"]) or "none",
                    moved["requests"], moved["messages"], moved["alt_han_lost"])
        return moved

    def wan_received(self, hub_eui: bytes | str, msg: dict) -> None:
        """A message from a Comms Hub: an outcome for one of the DCC's requests (-> the one
        final DUIS response to its User), or an alert (-> the premises' Responsible
        Suppliers). A redelivered message id is ignored (the caller acknowledges it again)."""
        mid = msg.get("id")
        if not isinstance(mid, int):
            raise DccUsageError("a Comms Hub message needs an integer id: %r" % (msg,),
                                reason="bad-wan-message")
        kind = msg.get("type")
        # the signing (the User's final response, alerts) before the write transaction
        pre = self._prepare_outcome(eui_hex(hub_eui), msg) if kind == "outcome" else None
        # the message's record and its effect commit together: a database lost between
        # them (PostgreSQL restarting) must not leave the id recorded and the outcome not
        # written, or the hub's resend would be taken for a duplicate and the outcome lost
        with self.store.tx():
            if not self.store.wan_seen(hub_eui, mid, msg):
                return
            if kind == "outcome":
                self._outcome(eui_hex(hub_eui), msg, pre)
            elif kind == "alert":
                self._alert(eui_hex(hub_eui), msg)
            else:
                log.warning("Comms Hub %s sent message %d of unknown type %r",
                            eui_hex(hub_eui), mid, kind)

    # ------------------------------------------------------------ response deadlines

    def expire_requests(self, timeout: float, *, now: float | None = None,
                        limit: int = 500) -> int:
        """Give every request sent to a Comms Hub more than `timeout` seconds ago and still
        without an outcome its final outcome `no_response` (DUIS E21, no response received
        from the device), with its one final DUIS response, as if the Comms Hub had said so.
        A Comms Hub's answer that comes later is kept (the WAN's inbox) and logged, and makes
        no second outcome. Any number of workers may sweep at once: the outcome is written
        only where there is none (`finish_request`), so each request still has exactly one.
        The number of requests given their outcome."""
        if timeout <= 0:
            raise DccUsageError("a response deadline is a number of seconds above zero, not "
                                "%r" % timeout, reason="usage")
        t = self.store.clock() if now is None else now
        rows = self.store.all("SELECT request_id FROM requests WHERE state = 'sent' AND "
                              "outcome IS NULL AND hub_eui IS NOT NULL AND updated <= ? "
                              "ORDER BY updated LIMIT ?", (t - timeout, int(limit)))
        n = 0
        for r in rows:
            n += self.expire_request(r[0], "no answer from the Comms Hub within %gs"
                                     % timeout)
        return n

    def expire_request(self, request_id: str, reason: str) -> bool:
        """Give one request the outcome `no_response` now (a campaign's own deadline);
        False when it has an outcome already (it came in first, or another worker wrote it)."""
        req = self.store.request_by_text(str(request_id))
        if req is None or req["outcome"] is not None or not req["hub_eui"]:
            return False
        msg = {"request": req["request_id"], "device": req["device"], "outcome": NO_RESPONSE,
               "detail": {"reason": reason}}
        done = self._outcome(req["hub_eui"], msg, self._prepare_outcome(req["hub_eui"], msg))
        if done:
            log.info("request %s: no answer from Comms Hub %s: %s", req["request_id"],
                     req["hub_eui"], reason)
        return done

    def _outcome(self, hub: str, msg: dict, pre: tuple | None = None) -> bool:
        """Give a request its one final outcome; False when it has one already. `pre`:
        `_prepare_outcome`'s, made before the caller's transaction."""
        if msg.get("request") is None:  # the DCC's own messages (set_suppliers)
            log.log(logging.INFO if msg.get("outcome") == "applied" else logging.WARNING,
                    "Comms Hub %s: %s %s", hub, msg.get("outcome"), msg.get("detail"))
            return False
        req, suppliers = self._request_and_alerted(str(msg.get("request")))
        if req is None:
            log.warning("Comms Hub %s reported an outcome for unknown request %r", hub,
                        msg.get("request"))
            return False
        if req["hub_eui"] != hub:
            log.warning("Comms Hub %s reported on request %s, which went to %s", hub,
                        req["request_id"], req["hub_eui"])
            return False
        outcome = str(msg.get("outcome"))
        if req["outcome"] is not None and req["outcome"] == NO_RESPONSE \
                and msg.get("id") is not None:
            # a late answer: kept (wan_in holds the message) but the request's one outcome
            # stays the DCC's no_response
            log.info("Comms Hub %s answered request %s (%s) after its deadline; its outcome "
                     "stays %s", hub, req["request_id"], outcome, NO_RESPONSE)
            return False
        if req["outcome"] is not None:
            if req["srv"] == "12.2" and outcome != "prenotified":
                # 12.2 was answered at submission; the CH's failure to take the device
                # reaches the User as an alert naming the request
                d = msg.get("detail")
                detail: dict = d if isinstance(d, dict) else {}
                xml = self._alert_xml(duis.RequestID.parse(req["request_id"]), "E20",
                                      req["srv"], {"DeviceID": duis.eui_text(bytes.fromhex(
                                          req["device"])), "Outcome": outcome,
                                          "Reason": str(detail.get("reason") or "")})
                self.store.queue_response(req["user"], xml, "E20", request=req["id"],
                                          kind="alert")
            return False
        if pre is not None and pre[0] == (req, suppliers):
            code, result, xml, alerts = pre[1]  # signed before the transaction
        else:
            code, result, xml, alerts = self._final_docs(req, msg, outcome, suppliers)
        with self.store.tx():
            if not self.store.finish_request(req["id"], outcome, code,
                                             result["OutcomeText"]):
                return False
            self.store.queue_response(req["user"], xml, code, request=req["id"], final=True)
            self._device_after(req, outcome, msg.get("detail"))
            for other, alert in alerts:
                self.store.queue_response(other, alert, code, request=req["id"], kind="alert")
        return True

    def _request_and_alerted(self, request_id: str) -> tuple[dict | None, list[str]]:
        """A request (by RequestID), and the other Responsible Suppliers its firmware
        outcome is copied to (an alert): one query."""
        row = self.store.one(
            "SELECT r.*, p.supplier1 AS alert_s1, p.supplier2 AS alert_s2 FROM requests r "
            "LEFT JOIN devices d ON d.eui = r.device LEFT JOIN premises p ON p.mpxn = d.mpxn "
            "WHERE r.request_id = ?", (request_id,))
        if row is None:
            return None, []
        d = dict(row)
        others = (d.pop("alert_s1"), d.pop("alert_s2"))
        d["detail"] = json.loads(d["detail"] or "{}")
        if not d["device"] or d["srv"] not in FIRMWARE_SRS:
            return d, []
        return d, [u for u in others if u and u != d["user"]]

    def _prepare_outcome(self, hub: str, msg: dict) -> tuple | None:
        """The signed final response (and alerts) a Comms Hub's outcome will make, built
        before the write transaction (reads only), with the request and Suppliers they were
        made from: `_outcome` uses them only if it sees those unchanged, else signs again."""
        if msg.get("request") is None:
            return None
        req, suppliers = self._request_and_alerted(str(msg.get("request")))
        if req is None or req["hub_eui"] != hub or req["outcome"] is not None:
            return None
        return (req, suppliers), self._final_docs(req, msg, str(msg.get("outcome")), suppliers)

    def _final_docs(self, req: dict, msg: dict, outcome: str, alerted: list[str]
                    ) -> tuple[str, dict, bytes, list[tuple[str, bytes]]]:
        """(code, result, the signed final DUIS response, [(User, signed alert)])."""
        # an outcome this DCC does not know is reported as a failure to reach the device
        code, case, gbcs_code = SR_OUTCOME_RESPONSES.get(
            (req["srv"], outcome), OUTCOME_RESPONSES.get(outcome, ("E20", None, None)))
        result: dict[str, Any] = {"DeviceID": duis.eui_text(bytes.fromhex(req["device"]))
                                  if req["device"] else None,
                                  "Outcome": outcome, "OutcomeText": outcome_text(outcome)}
        if case is not None:
            result["GBCSUseCase"] = case
        if gbcs_code is not None:
            result["GBCSResponseCode"] = gbcs_code
        detail = msg.get("detail") or {}
        if isinstance(detail, dict):
            for k, name in (("version", "FirmwareVersion"), ("running", "FirmwareVersion"),
                            ("reason", "Reason")):
                if detail.get(k) is not None:
                    result[name] = detail[k]
        body = {"CommsHubOutcome": result}
        rid_obj = duis.RequestID.parse(req["request_id"])
        if (req.get("detail") or {}).get("wan_type") == "gbcs" and msg.get("gbcs_b64"):
            # a relayed CS06: the device's own GBCS response is the answer, GBCSPayload
            try:
                payload = base64.b64decode(str(msg["gbcs_b64"]), validate=True)
            except ValueError:
                payload = b""
            xml = self._sign(duis.response(
                rid_obj, code, req["srv"], gbcs_payload=payload,
                reason="%s%s" % (outcome, ": %s" % result["Reason"] if result.get("Reason")
                                 else "")))
        else:
            xml = self._sign(duis.response(rid_obj, code, req["srv"], body=body))
        alerts = [(u, self._alert_xml(rid_obj, code, req["srv"], result)) for u in alerted]
        return code, result, xml, alerts

    def _device_after(self, req: dict, outcome: str, detail: Any = None) -> None:
        """Registration data that a Comms Hub outcome changes: a join's status, and the
        firmware version a device runs once it activated a new image (what the device
        reported, else the version of the image the request carried; for an SR 11.3, the
        image it distributed with that hash), so a campaign by model and version does not
        target it again."""
        if not req["device"]:
            return
        if outcome == "joined":
            self.store.update_device(req["device"], status="joined")
        elif outcome == "unjoined":
            self.store.update_device(req["device"], status="commissioned")
        elif outcome == "activated" and req["srv"] in FIRMWARE_SRS:
            version = detail.get("version") if isinstance(detail, dict) else None
            rd = req.get("detail") or {}
            if not version:
                version = rd.get("version")
            if not version and req["srv"] == "11.3":
                version = self._held_version(req)
            if version:
                try:
                    self.store.set_firmware_version(req["device"], str(version))
                except DccUsageError as e:  # a malformed version in a hub's detail
                    log.warning("device %s activated, but its version %r is not kept: %s",
                                req["device"], version, e)

    def _held_version(self, req: dict) -> str | None:
        """The version of the image an SR 11.3 activates: its hash's SR 11.1 distribution."""
        rows = self.store.all("SELECT detail FROM requests WHERE device = ? AND srv = '11.1' "
                              "AND outcome = 'distributed' ORDER BY id DESC", (req["device"],))
        want = (req.get("detail") or {}).get("hash")
        for r in rows:
            d = json.loads(r[0] or "{}")
            if d.get("version") and (want is None or d.get("image_hash") == want):
                return str(d["version"])
        return None

    def _alert(self, hub: str, msg: dict) -> None:
        """An alert from a Comms Hub: about one of its devices (-> that premises' Responsible
        Suppliers), or about the hub itself, e.g. a Trust Centre Swap-Out (-> the Suppliers
        of every premises it serves)."""
        eui = msg.get("device")
        body: dict[str, Any] = {}
        if eui:
            dev = self.store.device(eui)
            if dev is None or dev["hub_eui"] != hub:
                log.warning("Comms Hub %s sent an alert for device %r it does not serve", hub,
                            eui)
                return
            if msg.get("alert") == "gbcs" and self._future_dated_alert(hub, dev, msg):
                return
            users = list(dev["suppliers"])
            body["DeviceID"] = duis.eui_text(bytes.fromhex(dev["eui"]))
        else:
            users = sorted({s for p in self.store.list_premises() if p["hub_eui"] == hub
                            for s in p["suppliers"]})
            body["CommsHubID"] = duis.eui_text(bytes.fromhex(hub))
        if msg.get("alert") is not None:
            body["Alert"] = str(msg["alert"])
        request_id = None
        if msg.get("request"):
            try:
                request_id = duis.RequestID.parse(str(msg["request"]))
            except duis.DuisError:
                request_id = None
        detail = {k: v for k, v in msg.items()
                  if k not in ("id", "type", "device", "alert", "request") and v is not None}
        xml = self._sign(duis.alert(code=SUCCESS, body=body, request_id=request_id,
                                    alert_code="NH3", detail=_flat(detail)))
        with self.store.tx():
            for user in users:
                self.store.queue_response(user, xml, SUCCESS, kind="alert")

    def _future_dated_alert(self, hub: str, dev: dict[str, Any], msg: dict) -> bool:
        """A device's 8F66/8F67 (its future-dated CS06 actioned or not), relayed by the
        Comms Hub with the SR 11.3 request it answers: to that request's User as DUIS's
        FutureDatedDeviceAlertMessage (FutureDatedAlertCode, the device's GBCS alert as the
        GBCSPayload). False when it is not one (the caller sends the general alert)."""
        from hanfw import gbcs as hgbcs

        req = self.store.request_by_text(str(msg.get("request") or ""))
        try:
            payload = base64.b64decode(str(msg.get("gbcs_b64") or ""), validate=True)
            m = hgbcs.decode(payload)
        except (ValueError, hgbcs.GbcsError):
            return False
        if m.kind != "fd-alert" or req is None or req["device"] != dev["eui"] \
                or req["hub_eui"] != hub:
            return False
        xml = self._sign(duis.future_dated_alert(duis.RequestID.parse(req["request_id"]),
                                                 req["srv"], m.fields["alert_code"], payload))
        self.store.queue_response(req["user"], xml, SUCCESS, request=req["id"], kind="alert")
        return True

    def _alert_xml(self, request_id: Any, code: str, srv: str | None, body: dict) -> bytes:
        """A DCC alert telling a User of another User's request outcome."""
        return self._sign(duis.alert(request_id=request_id, code=code, srv=srv, body=body))

    def _sign(self, xml: bytes) -> bytes:
        if self.key is None:  # `campaign drive`: the Supplier's process holds no DCC key
            raise RuntimeError("this process holds no DCC signing key: the DCC's documents "
                               "are signed by hanota dcc serve")
        return xmlsig.sign(xml, self.key, self.cert)


# ---------------------------------------------------------------- image rules

_PARSED: "OrderedDict[bytes, Any]" = OrderedDict()  # sha256(file) -> stream or Refusal
_SIGNED: "OrderedDict[tuple[bytes, str], str | None]" = OrderedDict()  # -> refusal or None
_MEMO_LOCK = threading.Lock()
_MEMO_SIZE = 8


def _memo(table: "OrderedDict", key: Any, make: Callable[[], Any]) -> Any:
    """A small LRU of image verdicts: a campaign sends one image to many devices, so each
    worker parses, hashes and signature-checks it once, not once per device. Keyed by the
    SHA-256 of the whole file (and the key), so only identical bytes share a verdict."""
    with _MEMO_LOCK:
        if key in table:
            table.move_to_end(key)
            return table[key]
    value = make()
    with _MEMO_LOCK:
        table[key] = value
        while len(table) > _MEMO_SIZE:
            table.popitem(last=False)
    return value


def _parse_image(data: bytes) -> Any:
    try:
        # GBCS's own OTA files carry the Upgrade Image right after the header, without a
        # sub-element header (gbcs_duis.md section 11): accepted, as the public templates'.
        s = otafile.parse_stream(data, block=4096, integrity=True, allow_raw=True)
        s.check_integrity()
    except OtaError as e:
        return Refusal("bad-image", "the firmware image is not a well-formed OTA file: %s"
                       % e.message)
    if s.descriptor is not None and s.descriptor.image_hash != s.image_sha256:
        return Refusal("bad-image", "the firmware image is tampered: its manufacturer image "
                       "does not have the hash its descriptor gives")
    return s


def _signature_refusal(s: Any, pubkey: str) -> str | None:
    try:
        otafile.check_signed(s, [bytes.fromhex(pubkey)])
    except OtaError as e:
        return "the image's signature is refused: %s" % e.message
    return None


def check_image(store: DccStore, data: bytes, dev: dict[str, Any]) -> ImageCheck:
    """The DCC's checks of an SR 11.1 / 11.4 image for a device, before anything is queued.
    Refusal (bad-image or not-on-cpl) names the first that fails. What depends on the file
    alone (well-formed, hashes, the manufacturer's signature with a given key) is memoised
    per file (`_memo`); what depends on the device and the CPL is checked every time."""
    digest = hashlib.sha256(data).digest()
    s = _memo(_PARSED, digest, lambda: _parse_image(data))
    if isinstance(s, Refusal):
        raise Refusal(s.name, s.reason, s.code)
    h = s.header
    image_hash = s.image_sha256
    if dev["manufacturer"] is not None and int(dev["manufacturer"], 16) != h.manufacturer:
        raise Refusal("bad-image", "the image is for manufacturer %04X; device %s is %s"
                      % (h.manufacturer, dev["eui"], dev["manufacturer"]))
    model = dev["model"] or "%04X" % h.image_type
    if int(model, 16) <= 0xFFFF and int(model, 16) != h.image_type:
        raise Refusal("bad-image", "the image is image type %04X; device %s is model %s"
                      % (h.image_type, dev["eui"], model))
    if h.destination is not None:
        dest = bytes(reversed(bytes(h.destination))).hex().upper()
        if dest != dev["eui"]:
            raise Refusal("bad-image", "the image is addressed to device %s, not %s"
                          % (dest, dev["eui"]))
    if h.min_hw is not None and dev["hw_version"] is not None \
            and not h.min_hw <= dev["hw_version"] <= h.max_hw:
        raise Refusal("bad-image", "device %s has hardware version %04X, outside the image's "
                      "range %04X..%04X" % (dev["eui"], dev["hw_version"], h.min_hw, h.max_hw))
    entry = store.cpl_find(h.manufacturer, model, image_hash)
    if entry is None:
        raise Refusal("not-on-cpl", "Manufacturer Image Hash %s is not on the Central Products "
                      "List for manufacturer %04X model %s" % (image_hash.hex(), h.manufacturer,
                                                             model))
    if entry["pubkey"]:
        bad = _memo(_SIGNED, (digest, entry["pubkey"]),
                    lambda: _signature_refusal(s, entry["pubkey"]))
        if bad is not None:
            raise Refusal("bad-image", bad)
    return ImageCheck(h.manufacturer, h.image_type, h.file_version, image_hash, h.min_hw,
                      h.max_hw, entry["pubkey"])


# ---------------------------------------------------------------- helpers

def inventory_entry(dev: dict[str, Any]) -> dict[str, Any]:
    """A device as SR 8.2 / 8.4 / 12.2 answer it, with its entry in the device-type table."""
    def eui(h: str) -> str:
        return duis.eui_text(bytes.fromhex(h))

    return {"DSPInventory": {
        "DeviceID": eui(dev["eui"]), "DeviceType": dev["device_type"],
        "DeviceTypeDescription": dev["type_description"], "DeviceStatus": dev["status"],
        "DeviceManufacturer": dev["manufacturer"], "DeviceModel": dev["model"],
        "FirmwareVersion": dev["firmware_version"], "MPxN": dev["premises"],
        "CommsHubID": eui(dev["hub_eui"]),
        "ResponsibleSupplierID": [eui(s) for s in dev["suppliers"]],
    }}


def han_device_fields(dev: dict[str, Any]) -> dict[str, Any]:
    """What the Comms Hub needs to add a device to its device log and serve it OTA (WAN
    prenotify / join): manufacturer code and image type (hex, the model's low 16 bits for
    hanota's devices), hardware version, premises and Responsible Suppliers."""
    out: dict[str, Any] = {"premises": dev["premises"], "suppliers": list(dev["suppliers"])}
    if dev["manufacturer"]:
        out["manufacturer"] = dev["manufacturer"]
    if dev["model"] and int(dev["model"], 16) <= 0xFFFF:
        out["image_type"] = "%04X" % int(dev["model"], 16)
    if dev["hw_version"] is not None:
        out["hw_version"] = dev["hw_version"]
    return out


def _target(req: Any) -> bytes:
    return req.request_id.target


def _device_of(req: Any) -> str | None:
    f = getattr(req, "fields", {}) or {}
    ids = f.get("device_ids")
    eui = ids[0] if ids else f.get("device_id")
    if eui is None and req.service_reference_variant in DEVICE_SRS:
        eui = req.request_id.target
    try:
        return eui_hex(eui) if eui is not None else None
    except DccUsageError:
        return None


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _echo(xml: bytes) -> tuple[Any, str | None]:
    """The RequestID and SRV of a document refused for its signature, to echo in the
    acknowledgement as DCC Boxed does (unverified: they only help the User match it up)."""
    try:
        req = duis.parse_request(xmlsig.strip(xml))
    except Exception:  # anything unparseable is simply not echoed
        return None, None
    return req.request_id, req.service_reference_variant


def _flat(d: dict) -> dict:
    """A WAN message's extra fields as element-safe names and text (for h:Detail)."""
    import json
    import re

    out = {}
    for k, v in d.items():
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(k)) or "_"
        if not re.match(r"[A-Za-z_]", name):
            name = "_" + name
        out[name] = v if isinstance(v, (str, int, float)) else json.dumps(v, sort_keys=True)
    return out


def _model8(model: str) -> str:
    """A model as the CPL keeps it (8 hex digits, store._model)."""
    return model.upper().rjust(8, "0")


def _hex_or_none(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return bytes(value).hex() if isinstance(value, (bytes, bytearray)) else str(value)
