# hanota device: the rules an upgrade file must pass before any of its body is
# written. The OTA client applies them as soon as the header, the descriptor and
# the image element's header have arrived (nothing is erased for a file that
# fails); `hanota image verify --for-device` applies the same rules on the host.
# Each failure is a reason name of hanfw.reasons; the order is the client's.

from hanfw import otafile

BANK_PAYLOAD = {"firmware": otafile.PAYLOAD_ESP_APP, "app": otafile.PAYLOAD_ROMFS}


# h: the header; desc: the descriptor; image_tag / image_len: the element after it;
# cfg: the device configuration (hanfw.config); floor: the anti-rollback floor;
# bank_size / bank_kind: the inactive bank (None: not checked); version: the file
# version the server announced (None: not checked). Returns None or a reason.
def reason(h, desc, image_tag, image_len, cfg, floor=0, bank_size=None, bank_kind=None,
           version=None):
    if h.manufacturer != cfg.manufacturer:
        return "wrong-manufacturer"
    if h.image_type != cfg.image_type:
        return "wrong-image-type"
    if version is not None and h.file_version != version:
        return "malformed"
    if h.min_hw is not None and not h.min_hw <= cfg.hw_version <= h.max_hw:
        return "hardware-version"
    if h.destination is not None and h.destination != cfg.eui64:
        return "wrong-destination"
    if desc.security_version < floor:
        return "security-version"
    if image_tag != otafile.TAG_UPGRADE_IMAGE:
        return "malformed"
    if desc.encoded:
        # a compressed or delta body: what lands in the bank is the target
        from hanfw import delta
        why = delta.check_desc(desc)
        if why:
            return why
        image_len = desc.target_size
    if bank_size is not None and image_len > bank_size:
        return "too-big"
    if bank_kind is not None and desc.payload_kind != BANK_PAYLOAD[bank_kind]:
        return "wrong-payload-kind"
    family = getattr(cfg, "family", None)
    if desc.board_family and family is not None \
            and desc.board_family != otafile.BOARD_FAMILIES[family]:
        return "wrong-board"
    return None
