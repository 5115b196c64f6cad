# hanota device: the roles a board can play. Each role module defines `Role`.


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
