# hanota device: the roles a board can play. Each role module defines `Role`.
#
# The role table, written once (the host's image builder, hub and server read it too):
# name, link role code (JOIN_REQ), default image type, activation style.
# Activation "time": the Upgrade End Response times it (SR 11.4 distribute and activate);
# "command": the image waits for the hub's Activate Image (SR 11.1, then SR 11.3).
# A tuple, not dicts: it costs the device a few hundred bytes less, and ROLES keeps its order.
TABLE = (
    ("ppmid", 1, 0x0084, "time"),
    ("althan", 2, 0x0085, "time"),
    ("hcalcs", 3, 0x0086, "command"),
)
ROLES = tuple(r[0] for r in TABLE)


# The table's row for a role name (or a link role code); ValueError names an unknown one.
def row(role):
    for r in TABLE:
        if r[0] == role or r[1] == role:
            return r
    raise ValueError("unknown role %r" % (role,))


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
