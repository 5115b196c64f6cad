# hanota device: the roles a board can play. Each role module defines `Role`.
#
# The role table, written once (the host's image builder, hub and server read it too):
# name, link role code (JOIN_REQ), default image type, activation style.
# Activation "time": the Upgrade End Response times it (SR 11.4 distribute and activate);
# "command": the image waits for the hub's Activate Image (SR 11.1, then SR 11.3).
# A tuple, not a dict: MicroPython's dicts keep no order and ROLES' order is shown to users.
TABLE = (
    ("ppmid", 1, 0x0084, "time"),
    ("althan", 2, 0x0085, "time"),
    ("hcalcs", 3, 0x0086, "command"),
)
ROLES = tuple(r[0] for r in TABLE)
CODES = {r[0]: r[1] for r in TABLE}  # role -> link role code
NAMES = {r[1]: r[0] for r in TABLE}  # link role code -> role
IMAGE_TYPES = {r[0]: r[2] for r in TABLE}  # role -> default image type
ACTIVATION = {r[0]: r[3] for r in TABLE}  # role -> "time" | "command"


def load(name):
    if name == "ppmid":
        from hanfw.roles import ppmid as m
    elif name == "althan":
        from hanfw.roles import althan as m
    elif name == "hcalcs":
        from hanfw.roles import hcalcs as m
    else:
        raise ValueError("unknown role %r" % name)
    return m.Role
