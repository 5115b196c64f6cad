# hanota device: Alt HAN point-to-point device. Relays frames between its HAN
# side (the hub link) and its point-to-point side. It joins only through the
# point-to-point join service: the ordinary join service is refused with a
# clear code, so after a TCSO (a new hub without the pairing) it cannot rejoin.

from hanfw import link
from hanfw.roles import row
from hanfw.roles.base import BaseRole

CLUSTER_P2P = 0xFC01  # frames relayed to and from the point-to-point side


class Role(BaseRole):
    name = "althan"
    activation = row(name)[3]  # from the role table
    join_service = link.SERVICE_ALT_HAN_P2P

    def __init__(self, cfg, state_path, log=print):
        BaseRole.__init__(self, cfg, state_path, log)
        self.p2p = None
        self.relayed = {"to_han": 0, "to_p2p": 0}
        spec = cfg.raw.get("p2p")
        if spec:
            from hanfw.transport import open_spec
            try:
                self.p2p = open_spec(spec)
            except (OSError, ValueError) as e:
                self.log("althan: point-to-point side unavailable: %s" % e)

    # refuse the ordinary HAN join service (the specific error code)
    def check_join_service(self, service):
        if service != link.SERVICE_ALT_HAN_P2P:
            return link.JOIN_SERVICE_REFUSED
        return link.JOIN_OK

    def tick(self):
        BaseRole.tick(self)
        if self.p2p is not None and self.client is not None:
            data = self.p2p.recv(0)
            if data:
                self.client.send_app(CLUSTER_P2P, data)
                self.relayed["to_han"] += 1

    def on_frame(self, cluster, payload, client):
        if cluster == CLUSTER_P2P and self.p2p is not None:
            self.p2p.send(bytes(payload))
            self.relayed["to_p2p"] += 1
