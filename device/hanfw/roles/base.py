# hanota device: what every role shares. A role is the device's application:
# its own state (kept in role.json, outside the banks, so it survives updates),
# the OTA identity it uses (image type, join service, activation style) and
# the health check a new image must pass before it is confirmed.

from hanfw.state import load_json, save_json

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

CLUSTER_ROLE = const(0xFC00)  # manufacturer-specific cluster for role data (hub -> device)


class BaseRole:
    name = "base"
    activation = "time"  # "time": Upgrade End Response times it; "command": Activate Image
    join_service = 0  # hanfw.link.SERVICE_ORDINARY

    def __init__(self, cfg, state_path, log=print):
        self.cfg = cfg
        self.path = state_path
        self.log = log
        self.data = self._load()
        self.ticks = 0
        self.link_up = False
        self.client = None  # the OTA client, set by the application
        self.fault = None  # a health problem planted by a deliberately broken test image

    def _load(self):
        return load_json(self.path)

    def save(self):
        # atomic, with the fallback for filesystems that refuse rename-over
        save_json(self.path, self.data)

    # the application loop runs: called every turn of the main loop
    def tick(self):
        self.ticks += 1

    def on_link_up(self):
        self.link_up = True

    # frames of the role cluster (and any non-OTA cluster) from the hub
    def on_frame(self, cluster, payload, client):
        pass

    # the role's own self-test; returns None when healthy, else a reason
    def self_test(self):
        return None

    # healthy = the loop has run, the link to the hub answered, the self-test passed
    def health(self):
        if self.ticks < 3:
            return "application loop not running"
        if not self.link_up:
            return "no answer from the hub"
        if self.fault:
            return self.fault
        return self.self_test()

    def show(self, text):
        print("[%s] %s" % (self.name, text))
