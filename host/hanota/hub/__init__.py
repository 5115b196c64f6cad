"""The Communications Hub layer: registry, service requests, queue, outcomes (SQLite).

Library entry points (the CLI in `hanota.hub.cli` is a thin layer over them):

- `HubDB.open(path)`: the database every process shares (registry, requests, events);
- `registry`: `add_device`, `set_suppliers`, `remove_device`, `list_devices`, `swap_out`;
- `requests`: `update_firmware` (SR 11.4 / 11.1), `activate` (SR 11.3), `read_version`
  (SR 11.2), each returning a `Submission` (queued, or refused with its outcome);
- `Hub`: the running hub (OTA server + scheduler) over a database, `HubOptions`,
  `RetryPolicy`; `await hub.wait_outcome(request_id)`;
- `report`: `status_data`, `report_data`, `render_html`.
"""
from .db import OUTCOMES, HubDB, HubError, HubUsageError
from .hub import Hub, HubOptions
from .queue import RetryPolicy
from .requests import Submission

__all__ = ["OUTCOMES", "Hub", "HubDB", "HubError", "HubOptions", "HubUsageError",
           "RetryPolicy", "Submission"]
