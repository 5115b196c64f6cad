# hanota device: the application. Loads the configuration, starts the role and
# the OTA client, and after an activation runs the trial: the role's health
# check must pass within a bounded time before the new image is confirmed;
# otherwise it is rejected and the board resets into the previous image. After
# every activation the device sends the Activation Alert (version now running,
# previous version, rolled back or not, why).

import time

from hanfw import config, zcl
from hanfw.client import OtaClient, _ticks, _diff
from hanfw.state import State

_ALERT_REASON = {"health": zcl.ALERT_HEALTH_CHECK_FAILED, "import": zcl.ALERT_IMPORT_ERROR,
                 "unconfirmed": zcl.ALERT_UNCONFIRMED_REBOOT, "invalid": zcl.ALERT_INVALID_IMAGE}


class App:
    def __init__(self, hal, log=print):
        self.hal = hal
        self.log = log
        root = hal.FS_ROOT
        self.cfg = config.load(root + config.FILE_NAME)
        self.state = State(root + "ota.json")
        self.banks = hal.banks(self.state)
        self._settle()
        from hanfw import roles
        self.role = roles.load(self.cfg.role)(self.cfg, root + "role.json", log)
        self.client = OtaClient(self.cfg, hal.link(self.cfg), self.banks, self.state, self.role,
                                hal.reset, log)
        self.role.client = self.client
        # test seam: deliberately broken images carry hanfw/fault.py, which either
        # raises at import or names a health problem (never present in real images)
        try:
            from hanfw import fault
            self.role.fault = getattr(fault, "HEALTH", None)
        except ImportError:
            pass
        self.trial_deadline = None
        self.alert = None  # (running, previous, rolled_back, reason code) to report
        self.alert_sent = 0
        self._after_boot()

    # An activation cut by a reset (banks.activate writes the state, switches, then
    # clears "held"): settled before the client reads the held image.
    def _settle(self):
        act = self.state.get("activated")
        held = self.state.get("held")
        running = self.banks.running_bank()
        if held and held["bank"] == running:
            # cut after the switch: the held image is the one running now
            self.state.update(held=None)
        elif held and act and act["bank"] != running and held["version"] == act["version"]:
            # cut before the switch: it never took effect; the image is still held and
            # the client asks the hub again when to activate it
            self.state.update(activated=None)

    # What happened at this boot: a trial of a newly activated image, a
    # rollback to the previous one, or nothing.
    def _after_boot(self):
        act = self.state.get("activated")
        if not act:
            return
        running = self.banks.running_bank()
        if running == act["bank"]:
            if self.banks.is_trial():
                self.trial_deadline = _ticks() + self.cfg.health_timeout * 1000
                self.log("ota: running version 0x%08x on trial; health check within %d s"
                         % (act["version"], self.cfg.health_timeout))
            else:
                self.alert = (act["version"], act["previous"], False, zcl.ALERT_NONE)
            return
        why = self.state.get("failure") or "unconfirmed"
        self.log("ota: rolled back to version 0x%08x (new image %s)" % (self.banks.running_version(), why))
        self.alert = (self.banks.running_version(), act["version"], True,
                      _ALERT_REASON.get(why, zcl.ALERT_UNCONFIRMED_REBOOT))
        self.state.update(activated=None, failure=None)

    def _trial(self):
        problem = self.role.health()
        if problem is None:
            act = self.state.get("activated")
            self.banks.confirm()
            self.log("ota: version 0x%08x confirmed" % act["version"])
            self.alert = (act["version"], act["previous"], False, zcl.ALERT_NONE)
            self.trial_deadline = None
            return
        if _diff(_ticks(), self.trial_deadline) >= 0:
            self.log("ota: health check failed (%s); rolling back" % problem)
            self.state.update(failure="health")
            self.banks.reject_running(3)
            self.hal.reset()

    def _report(self):
        if self.alert is None or not self.client.session:
            return
        running, previous, rolled_back, reason = self.alert
        self.client.send_alert(running, previous, rolled_back, reason)
        self.alert_sent += 1
        if not rolled_back:
            self.state.update(activated=None)
        self.alert = None

    def run(self, forever=True):
        if self.state.get("failed_starts"):
            self.state.update(failed_starts=None)
        self.client.start()
        self.log("hanota %s %s running version 0x%08x" % (self.cfg.role, self.cfg.eui64_text,
                                                          self.banks.running_version()))
        while True:
            self.client.poll(50)
            self.role.tick()
            if self.trial_deadline is not None:
                self._trial()
            self._report()
            if not forever:
                return


def main(hal=None):
    if hal is None:
        import hal as board_hal
        hal = board_hal
    try:
        app = App(hal)
    except config.ConfigError as e:
        print("hanota: not starting the OTA client: %s" % e)
        return None
    app.run()
