"""The hub's OTA server: the Communications Hub side of the Zigbee OTA cluster (0x0019).

`OtaServer` speaks hanota's authenticated link (`hanfw.link`) over UDP and serial lines
(`hanota.linkio`) to many devices at once, and the OTA cluster (`hanfw.zcl`) on top:

- link (`sessions`): per-device keys from install codes, strictly increasing device
  counters, JOIN_REQ -> JOIN_RSP, HELLO -> HELLO_ACK (a device's per-boot session), DATA ->
  ZCL. Frames that fail authentication, replay a counter, come from unknown devices or are
  malformed are dropped and counted in `stats` by reason; they never disturb other devices.
- OTA server commands (`transfers`, `blocks`): Query Next Image, Image Block / Page Request
  served statelessly from the file at any offset (no image is held in memory per device; a
  page goes out in BUNDLE frames, several block responses per link frame, to a device whose
  HELLO said it takes frames that long), Upgrade End, the manufacturer-specific Activation
  Alert, and the ZCL error replies.
- hub -> device commands (`commands`) as coroutines with timeouts and retries: `notify`,
  `activate`, `read_attributes`, `upgrade_end_response`.
- `transfers` for a status display, and a watchdog that reports a stalled transfer and a
  device that stays silent after activation as two distinct policy events.

`core.OtaServer` owns one object of each part and dispatches frames to them. What to serve,
to whom, and what happens with the outcomes is decided by a `Policy` (`policy`; the hub
layer subclasses it; the default keeps everything in memory and records events in a list).
Policy hooks are plain (synchronous) methods called from the event loop; one that raises is
logged and counted ("policy-error"), never fatal to the server.
"""
from .common import (COUNTER_RESERVE, UPGRADE_NOW, UPGRADE_WAIT, ZIGBEE_EPOCH, DeviceStatusError,
                     DeviceTimeout, ServerError, zigbee_time)
from .core import OtaServer
from .policy import Policy, ServedImage
from .sessions import DeviceState
from .transfers import Transfer

__all__ = ["COUNTER_RESERVE", "UPGRADE_NOW", "UPGRADE_WAIT", "ZIGBEE_EPOCH", "DeviceState",
           "DeviceStatusError", "DeviceTimeout", "OtaServer", "Policy", "ServedImage",
           "ServerError", "Transfer", "zigbee_time"]
