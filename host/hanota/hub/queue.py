"""Scheduling of update transfers: priority order, slots in flight, retries with backoff.

Pending update requests are served in order of (class priority of the device's role, lower
first; then request time). At most `max_in_flight` of them hold a transfer slot at once
(default one per hub, as field experience advises). A request in a slot is first
`notifying` (the hub sends Image Notify; the device may also poll Query Next Image on its
own), then `downloading`; it leaves the slot when the device sends Upgrade End.

A device that does not answer, or a transfer that stalls, ends the attempt: the request goes
back to the queue with an exponential backoff (`RetryPolicy`), keeping its place in the
priority order, and is failed ("transfer_failed") only after `max_attempts` attempts.
All functions here work on the database only, with an explicit `now`, so they are tested
without a network or a clock.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .db import IN_SLOT, HubDB


@dataclass(frozen=True)
class RetryPolicy:
    """Retry and timeout rules of the hub (seconds).

    base, cap: backoff before attempt n+1 is min(cap, base * 2**(n-1));
    max_attempts: delivery attempts (and read-backs) before a request fails;
    answer_timeout: time for a device in a slot to start downloading (Image Notify is
    repeated meanwhile);
    stall_window: time without progress before a download attempt is given up (the server's
    stall watchdog usually reports sooner);
    activation_timeout: time after the planned activation for the Activation Alert, after
    which the hub reads the version back.
    """

    base: float = 5.0
    cap: float = 300.0
    max_attempts: int = 5
    answer_timeout: float = 60.0
    stall_window: float = 120.0
    activation_timeout: float = 600.0

    def backoff(self, attempts: int) -> float:
        """Wait after the attempts-th failed attempt."""
        return min(self.cap, self.base * 2 ** max(0, attempts - 1))


def order_key(row: sqlite3.Row, priorities: dict[str, int]) -> tuple:
    return (priorities.get(row["role"], 99), row["created"], row["id"])


def in_slot(db: HubDB) -> list[sqlite3.Row]:
    return db.all("SELECT * FROM requests WHERE kind = 'update' AND state IN (%s) ORDER BY id"
                  % ",".join("'%s'" % s for s in IN_SLOT))


def queued_updates(db: HubDB) -> list[sqlite3.Row]:
    """Every queued update request, in service order (eligible now or not)."""
    prio = db.priorities()
    rows = db.all("SELECT * FROM requests WHERE kind = 'update' AND state = 'queued'")
    return sorted(rows, key=lambda r: order_key(r, prio))


def candidates(db: HubDB, now: float) -> list[sqlite3.Row]:
    """Queued update requests whose backoff has passed, in service order."""
    return [r for r in queued_updates(db) if (r["next_attempt"] or 0) <= now]


def promote(db: HubDB, row: sqlite3.Row, retry: RetryPolicy, now: float,
            awake: bool = False) -> bool:
    """Give a queued request a slot: attempt n+1 starts (state notifying)."""
    n = row["attempts"] + 1
    return db.set_state(row["id"], "notifying", "in_flight",
                        {"attempt": n, "device_awake": awake},
                        attempts=n, started=row["started"] or now, next_attempt=None,
                        deadline=now + retry.answer_timeout)


def fill_slots(db: HubDB, max_in_flight: int, retry: RetryPolicy, now: float
               ) -> list[sqlite3.Row]:
    """Promote the first eligible queued requests into the free slots; returns them."""
    promoted = []
    with db.tx():
        free = max_in_flight - len(in_slot(db))
        busy = {r["eui"] for r in in_slot(db)}
        for row in candidates(db, now):
            if free <= 0:
                break
            if row["eui"] in busy:
                continue
            if promote(db, row, retry, now):
                promoted.append(db.request(row["id"]))
                free -= 1
    return promoted


def try_promote_awake(db: HubDB, request_id: int, max_in_flight: int, retry: RetryPolicy,
                      now: float) -> bool:
    """A device with a queued request is querying now: give it a slot if one is free and no
    eligible request ranks before it (its own backoff is waived: it is awake)."""
    with db.tx():
        row = db.request(request_id)
        if row is None or row["state"] != "queued":
            return False
        if len(in_slot(db)) >= max_in_flight:
            return False
        prio = db.priorities()
        first = [r for r in candidates(db, now) if order_key(r, prio) < order_key(row, prio)]
        if first:
            return False
        return promote(db, row, retry, now, awake=True)


def attempt_failed(db: HubDB, request_id: int, reason: str, retry: RetryPolicy, now: float,
                   outcome: str = "transfer_failed") -> str:
    """End the current attempt: back to the queue after a backoff ("retry"), or, after the
    last attempt, the final outcome ("failed"). "done" if the request had already ended."""
    with db.tx():
        row = db.request(request_id)
        if row is None or row["outcome"] is not None:
            return "done"
        n = row["attempts"]
        if n >= retry.max_attempts:
            db.finish(request_id, outcome, "%s (after %d attempts)" % (reason, n))
            return "failed"
        delay = retry.backoff(n)
        db.set_state(request_id, "queued", "retry",
                     {"reason": reason, "attempt": n, "delay": delay},
                     next_attempt=now + delay, deadline=None)
        return "retry"


def commands_due(db: HubDB, now: float, activation_lead: float = 0.0) -> list[sqlite3.Row]:
    """Queued activate / read-version requests whose (re)try time has come, oldest first.

    A future-dated activation (SR 11.3) comes due `activation_lead` seconds before its time:
    until then it waits here, where the DCC's cancellation (`dcc.wan`, cancel_activation)
    can still end it. Once sent, the device keeps the time itself (hanota's Activate Image
    has no way to take it back), so a request sent as soon as it arrived could never be
    cancelled."""
    return db.all("SELECT * FROM requests WHERE kind IN ('activate', 'read_version') "
                  "AND state = 'queued' AND coalesce(next_attempt, 0) <= ? "
                  "AND (activate_at IS NULL OR activate_at - ? <= ?) ORDER BY id",
                  (now, activation_lead, now))


def expired(db: HubDB, now: float) -> list[sqlite3.Row]:
    """Requests whose deadline has passed (no answer, no progress, no Activation Alert)."""
    return db.all("SELECT * FROM requests WHERE outcome IS NULL AND deadline IS NOT NULL "
                  "AND deadline <= ? ORDER BY id", (now,))
