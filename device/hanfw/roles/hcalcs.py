# hanota device: HAN Connected Auxiliary Load Control Switch. A switchable load
# whose state is kept across reboots and updates. Activation is GBCS style: the
# image is distributed first and activated later by a command carrying the
# Manufacturer Image Hash.

from hanfw.roles import row
from hanfw.roles.base import BaseRole, CLUSTER_ROLE

CMD_SET_LOAD = 0x01  # payload: on (u8)


class Role(BaseRole):
    name = "hcalcs"
    activation = row(name)[3]  # from the role table

    def __init__(self, cfg, state_path, log=print):
        BaseRole.__init__(self, cfg, state_path, log)
        self.apply()

    def apply(self):
        on = bool(self.data.get("load_on"))
        self.show("load %s" % ("on" if on else "off"))

    def on_frame(self, cluster, payload, client):
        if cluster == CLUSTER_ROLE and len(payload) == 2 and payload[0] == CMD_SET_LOAD:
            self.data["load_on"] = bool(payload[1])
            self.save()
            self.apply()

    def self_test(self):
        if self._load().get("load_on", False) != self.data.get("load_on", False):
            return "load state not persisted"
        return None
