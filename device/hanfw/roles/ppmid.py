# hanota device: Prepayment Meter Interface Device. Keeps the prepayment balance
# and emergency-credit state the hub sends it and shows them on the console
# (or a display, when the board has one).

import struct

from hanfw.roles import row
from hanfw.roles.base import BaseRole, CLUSTER_ROLE

CMD_SET_BALANCE = 0x00  # payload: balance (i32, pence), emergency credit active (u8)


class Role(BaseRole):
    name = "ppmid"
    activation = row(name)[3]  # from the role table

    def on_frame(self, cluster, payload, client):
        if cluster != CLUSTER_ROLE or len(payload) != 6 or payload[0] != CMD_SET_BALANCE:
            return
        balance, ec = struct.unpack("<iB", bytes(payload[1:6]))
        self.data["balance"] = balance
        self.data["emergency_credit"] = bool(ec)
        self.save()
        self.show(self.display_text())

    def display_text(self):
        b = self.data.get("balance")
        if b is None:
            return "balance unknown"
        text = "balance %s%d.%02d" % ("-" if b < 0 else "", abs(b) // 100, abs(b) % 100)
        if self.data.get("emergency_credit"):
            text += " (emergency credit)"
        return text

    def self_test(self):
        try:
            self.display_text()
        except Exception as e:
            return "display: %s" % e
        return None
