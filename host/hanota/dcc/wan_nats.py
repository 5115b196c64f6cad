"""The WAN on NATS JetStream (`--wan nats://HOST:PORT` on `hanota dcc serve` and `hanota hub
serve`): the same messages as the websocket WAN (wan.py), carried by a broker, so that the DCC
can run as several workers on several machines and a Comms Hub that was offline gets what it
missed from the broker's store.

Subjects, all in one file-stored stream `HANOTA_WAN` (limits retention, a duplicate window of
`DEDUP_WINDOW` seconds):

- `hanota.wan.<hub EUI>.down`: DCC -> CH: the DCC's messages (`{"id": n, "type": ...}`,
  published with `Nats-Msg-Id: dcc-<hub>-<n>`) and the DCC's acknowledgements of the CH's
  messages (`{"ack": m}`, `Nats-Msg-Id: dcc-ack-<hub>-<m>`). Each Comms Hub reads them
  through its own durable push consumer `ch-<hub EUI>`, so what arrives while it is offline
  waits for it; the consumer delivers to `hanota.deliver.<hub EUI>`, which the hub
  subscribes to on a connection its process's hubs share (`NatsPool`).
- `hanota.wan.<hub EUI>.up`: CH -> DCC: its hello (`{"hello": ..., "replaces": [...]}`, at
  start and after a Trust Centre Swap-Out), its outcomes and alerts (`Nats-Msg-Id:
  ch-<hub>-<m>`) and its acknowledgements of the DCC's messages (`{"ack": n}`). Every DCC
  worker reads them through the one shared durable pull consumer `hanota-dcc`, so each
  message goes to one worker, and to another after `ack_wait` if that one died first.

Delivery is at least once and every step is idempotent on ids, as over the websocket: each
end stores a message (DCC: `wan_in`, CH: `ch_wan_in`, keyed by id) before it acknowledges it
to the broker, and takes an id it has seen as a duplicate. A CH's outcome counts as delivered
when the DCC's `{"ack": m}` comes back (the CH publishes again what stays unacknowledged for
`resend` seconds); a DCC message when the CH's ack comes back (`wan_out.acked`, as before).

Several DCC workers: each worker claims Comms Hubs with a lease (`DccStore.wan_claim_hubs`:
FOR UPDATE SKIP LOCKED on PostgreSQL) and publishes their unpublished messages in id order,
marking each `published` once JetStream has stored it. A killed worker's leases run out and
another worker takes its hubs over; a message it had published but not marked yet goes
again with the same Nats-Msg-Id, and JetStream drops the copy (within the duplicate window;
after it, the CH's id check does).

A message larger than the server's max_payload (1 MiB by default: an update_firmware carries
its whole image), or whose image is 64 KiB or more, goes with its image in the JetStream object
store bucket `hanota_images`, named by the image's SHA-256 (put once), and `"image_obj": name`
in place of `image_b64`; the Comms Hub fetches the image and stores the message exactly as the
DCC queued it. (The DCC's own database keeps each image once too: `DccStore.wan_queue`.)

NATS has its own authentication (user credentials, nkeys, TLS); `--wan-auth` tokens are the
websocket's and are not used here.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import socket
import time
from typing import Any

from ..errors import HanotaError
from .wan import CommsHubWan, WanEndpoint, WanError, decode, encode, eui_hex

log = logging.getLogger(__name__)

STREAM = "HANOTA_WAN"
SUBJECTS = "hanota.wan.>"
DOWN = "hanota.wan.%s.down"
UP = "hanota.wan.%s.up"
DCC_CONSUMER = "hanota-dcc"
DEDUP_WINDOW = 600.0  # seconds JetStream drops a re-published Nats-Msg-Id
MAX_AGE = 30 * 86400.0  # a hub offline longer than this loses its messages (the stream's limit)
IMAGES = "hanota_images"  # object store bucket of images too large for one message
HEADROOM = 4096  # bytes of max_payload left for headers
BAD_FRAME_TRIES = 5  # deliveries of an undecodable message before it is dropped
OFFLOAD_AT = 64 << 10  # an image this large goes by the object store even if the message fits
REPUT_S = 3600.0  # ... put again after this long (the bucket's objects age out too)
_stored: dict[tuple[str, str], float] = {}  # (server, image) this process put, and when
# consumers the stream allows: one per Comms Hub (and the DCC's). nats-server 2.15 puts a
# default of 1,000 on a stream that sets none (and takes -1 as "the default"), so the
# stream says its own.
MAX_CONSUMERS = 1_000_000


def is_nats(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("nats://", "tls://"))


def check_url(url: str, option: str = "--wan") -> str:
    if not is_nats(url):
        raise WanError("%s %r: give the NATS server as nats://HOST:PORT" % (option, url),
                       reason="usage")
    return url


def _nats_errors() -> tuple[type[BaseException], ...]:
    import nats.errors

    return (nats.errors.Error, OSError, asyncio.TimeoutError)


async def connect(url: str, name: str, connect_timeout: float = 2.0,
                  **callbacks: Any) -> tuple[Any, Any]:
    """A NATS connection that reconnects by itself, and its JetStream context with the WAN
    stream made if missing. Raises what nats-py raises when the server is unreachable.
    `callbacks`: nats-py's disconnected_cb, reconnected_cb..."""
    import nats
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url, name=name, allow_reconnect=True, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.5, connect_timeout=connect_timeout,
                            **callbacks)
    js = nc.jetstream()
    try:
        info = await js.stream_info(STREAM)
    except NotFoundError:
        try:
            await js.add_stream(StreamConfig(
                name=STREAM, subjects=[SUBJECTS], storage=StorageType.FILE,
                retention=RetentionPolicy.LIMITS, duplicate_window=DEDUP_WINDOW,
                max_age=MAX_AGE, max_consumers=MAX_CONSUMERS))
            return nc, js
        except Exception:  # noqa: BLE001 - another process made it first
            info = await js.stream_info(STREAM)
    if (info.config.max_consumers or 0) <= 0 or info.config.max_consumers < MAX_CONSUMERS:
        # made by an earlier hanota with the server's default limit
        await js.update_stream(info.config.evolve(max_consumers=MAX_CONSUMERS))
    return nc, js


async def image_store(js: Any) -> Any:
    """The object store bucket for large images, made if missing."""
    from nats.js.api import ObjectStoreConfig, StorageType
    from nats.js.errors import BucketNotFoundError

    try:
        return await js.object_store(IMAGES)
    except BucketNotFoundError:
        try:
            return await js.create_object_store(IMAGES, config=ObjectStoreConfig(
                bucket=IMAGES, storage=StorageType.FILE, ttl=MAX_AGE))
        except Exception:  # noqa: BLE001 - another worker made it first
            return await js.object_store(IMAGES)


async def undecodable(m: Any, where: str, e: Exception) -> None:
    """A message that does not decode: delivered again (JetStream stored it whole; a frame
    cut short on a connection dropped mid-read reads whole the next time), and dropped,
    saying so, only after BAD_FRAME_TRIES deliveries that all failed."""
    try:
        n = int(m.metadata.num_delivered)
    except Exception:  # noqa: BLE001 - not a JetStream message: nothing to redeliver
        n = BAD_FRAME_TRIES
    if n < BAD_FRAME_TRIES:
        log.warning("%s: a message that does not decode (delivery %d of %d, again in 2 s): %s",
                    where, n, BAD_FRAME_TRIES, e)
        await m.nak(delay=2.0)
        return
    log.error("%s: dropped a message that did not decode in %d deliveries: %s", where, n, e)
    await m.term()


async def outgoing(nc: Any, js: Any, msg: dict) -> bytes:
    """A DCC message as published: itself, or, over max_payload or with an image of
    OFFLOAD_AT bytes or more, with its image in the object store (put once per process: the
    stream then holds each image once, not once per device). WanError when even that does
    not fit."""
    data = encode(msg).encode()
    limit = nc.max_payload - HEADROOM
    b64 = msg.get("image_b64")
    if len(data) <= limit and not (isinstance(b64, str) and len(b64) * 3 // 4 >= OFFLOAD_AT):
        return data
    if isinstance(b64, str):
        image = base64.b64decode(b64)
        name = "sha256-" + hashlib.sha256(image).hexdigest()
        key = (str(getattr(nc, "connected_url", "")), name)
        if time.monotonic() - _stored.get(key, -REPUT_S) >= REPUT_S:
            obs = await image_store(js)  # a campaign's messages share one object
            await obs.put(name, image)
            _stored[key] = time.monotonic()
        small = {k: v for k, v in msg.items() if k != "image_b64"}
        small["image_obj"] = name
        data = encode(small).encode()
        if len(data) <= limit:
            return data
    raise WanError("WAN message %s is %d bytes, over the NATS server's max_payload (%d)"
                   % (msg.get("id"), len(data), nc.max_payload), reason="wan-too-large")


async def incoming(js: Any, msg: dict) -> dict:
    """A DCC message as the DCC queued it (its image fetched back from the object store)."""
    name = msg.get("image_obj")
    if not isinstance(name, str):
        return msg
    obs = await image_store(js)
    got = await obs.get(name)
    out = {k: v for k, v in msg.items() if k != "image_obj"}
    out["image_b64"] = base64.b64encode(got.data).decode()
    return out


def _consumer_config(durable: str, subject: str, ack_wait: float) -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    return ConsumerConfig(durable_name=durable, filter_subject=subject, ack_wait=ack_wait,
                          ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                          max_ack_pending=10000)


# ==================================================================== the DCC's end

class NatsWanDcc:
    """One DCC worker's end of the WAN on NATS, over the DCC service (`Dcc`) and its store.

    `start()`/`stop()` on the serving event loop; `notify()` after a submission makes the
    publisher look at once (it also looks every `poll` seconds: another worker's or
    process's submissions). `worker` names this worker in the leases (default host:pid)."""

    def __init__(self, dcc: Any, url: str, *, worker: str | None = None, lease: float = 15.0,
                 poll: float = 0.5, ack_wait: float = 10.0, batch: int = 100):
        self.dcc = dcc
        self.url = check_url(url)
        self.worker = worker or "%s:%d" % (socket.gethostname(), os.getpid())
        self.lease = lease
        self.poll = poll
        self.ack_wait = ack_wait
        self.batch = batch
        self.on_received: Any = None  # called after a CH message is taken (push responses)
        self._hello = WanEndpoint(dcc)  # its swap-out handling, as over the websocket
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._nc: Any = None
        self._js: Any = None
        self._up = asyncio.Event()
        self.published = 0
        self.received = 0
        self.connected: set[str] = set()  # for /api/v1/health: hubs heard from

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            self.dcc.store.wan_release(self.worker)
        except HanotaError as e:
            log.warning("NATS WAN: could not release this worker's hubs: %s", e)
        if self._nc is not None:
            try:
                await self._nc.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._nc = None

    def notify(self, hub: str | None = None) -> None:
        self._wake.set()

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._up.wait(), timeout)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                self._nc, self._js = await connect(self.url, "hanota-dcc " + self.worker)
                break
            except _nats_errors() as e:
                log.info("NATS WAN %s: %s; retrying", self.url, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        log.info("NATS WAN up: %s (worker %s)", self.url, self.worker)
        self._up.set()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._publisher()), loop.create_task(self._consumer())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- DCC -> CH

    async def _publisher(self) -> None:
        errors = _nats_errors() + (HanotaError,)
        while True:
            self._wake.clear()
            # (a WanError for a message too large even without its image is logged each
            # pass: that hub's later messages wait behind it, in order, until it is fixed)
            try:
                await self.publish_once()
            except errors as e:  # the broker or the database: the next pass tries again
                log.warning("NATS WAN publishing: %s", e)
            except Exception:  # a bug must not end the WAN for good; it is logged
                log.exception("NATS WAN publishing")
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll)
            except asyncio.TimeoutError:
                pass

    async def publish_once(self) -> int:
        """Claim hubs and publish their unpublished messages in order; how many."""
        store = self.dcc.store
        hubs = store.wan_claim_hubs(self.worker, self.lease, self.batch)
        if not hubs:
            return 0
        todo = [(hub, store.wan_unpublished(hub)) for hub in hubs]
        done: list[int] = []

        async def one_hub(hub: str, msgs: list[dict]) -> None:
            for msg in msgs:  # in order: each stored by the broker before the next goes
                data = await outgoing(self._nc, self._js, msg)
                await self._js.publish(DOWN % hub, data, headers={
                    "Nats-Msg-Id": "dcc-%s-%d" % (hub, msg["id"])})
                done.append(msg["id"])

        # the claimed hubs side by side (each waits for the broker's PubAck per message;
        # one after another that is a round trip per message for the whole batch)
        results = await asyncio.gather(*(one_hub(h, m) for h, m in todo),
                                       return_exceptions=True)
        if done:  # what the broker has stored is marked even if the rest failed
            store.wan_published(done)
            self.published += len(done)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return len(done)

    # -- CH -> DCC

    async def _consumer(self) -> None:
        import nats.errors

        errors = _nats_errors() + (HanotaError,)
        sub = None
        while True:
            try:
                if sub is None:
                    sub = await self._js.pull_subscribe(
                        UP % "*", durable=DCC_CONSUMER, stream=STREAM,
                        config=_consumer_config(DCC_CONSUMER, UP % "*", self.ack_wait))
                try:
                    msgs = await sub.fetch(self.batch, timeout=1.0)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    continue
                # each message's effect in order; the acks to the hubs (a broker round
                # trip each) side by side, each message acked to the broker after its own
                acks = [a for a in [await self._take(m) for m in msgs] if a is not None]
                for r in await asyncio.gather(*acks, return_exceptions=True):
                    if isinstance(r, BaseException):
                        raise r  # the rest are redelivered after ack_wait
            except errors as e:
                log.warning("NATS WAN receiving: %s", e)
                sub = None
                await asyncio.sleep(0.5)
            except Exception:  # noqa: BLE001 - logged, the loop goes on
                log.exception("NATS WAN receiving")
                sub = None
                await asyncio.sleep(0.5)

    async def _take(self, m: Any) -> Any:
        """One CH message: act on it (idempotently); what then acknowledges it (to the hub
        and the broker) as an awaitable, or None if done. A message that could not be
        stored is left unacknowledged (the broker redelivers)."""
        parts = m.subject.split(".")
        try:
            hub = eui_hex(parts[2])
            msg = decode(m.data)
        except (WanError, IndexError) as e:
            await undecodable(m, "NATS WAN %s" % m.subject, e)
            return None
        key = bytes.fromhex(hub)
        self.connected.add(hub)
        if "hello" in msg:
            self._hello._hello(hub, msg)
        elif "ack" in msg:
            self.dcc.wan_acked(key, msg["ack"])
        elif "id" in msg:
            try:
                self.dcc.wan_received(key, msg)
            except HanotaError as e:
                if getattr(e, "reason", "") != "bad-wan-message":
                    log.error("Comms Hub %s message %s not taken: %s", hub, msg["id"], e)
                    await m.nak(delay=1.0)
                    return None
                log.error("Comms Hub %s message %s dropped: %s", hub, msg["id"], e)
            self.received += 1
            if self.on_received is not None:
                self.on_received()
            return self._answer(m, hub, msg["id"])
        return m.ack()

    async def _answer(self, m: Any, hub: str, mid: int) -> None:
        """The DCC's ack of a CH message to the hub, then the broker's ack of it (a failed
        publish leaves it unacknowledged: redelivered, taken as a duplicate, answered)."""
        await self._js.publish(DOWN % hub, encode({"ack": mid}).encode(),
                               headers={"Nats-Msg-Id": "dcc-ack-%s-%d" % (hub, mid)})
        await m.ack()


# ==================================================================== the Comms Hub's end

DELIVER = "hanota.deliver.%s"  # a Comms Hub's push consumer delivers here (outside the stream)
CH_MAX_ACK_PENDING = 64  # a hub's messages in flight, unacknowledged (the broker's memory)
# a hub's consumer redelivers what its hub has not acknowledged after this: long enough that a
# process holding thousands of hubs, busy in a wave, is not sent its backlog a second time
CH_ACK_WAIT = 30.0
API_IN_FLIGHT = 32  # JetStream API requests (consumer creation) a pool has in flight
# messages a pool's hubs handle at once: the rest wait, so the connection's reader still gets
# the loop when thousands of hubs are sent a wave at once (if it does not read for the
# broker's write deadline, 10 s, the broker drops the connection as a slow consumer)
HANDLING = 16
ANSWERED_KEPT = 256  # DCC message ids a hub remembers as stored and answered (redeliveries)


def _hub_consumer_config(hub: str, ack_wait: float) -> Any:
    """A Comms Hub's durable push consumer `ch-<hub>`: the hub's down subject delivered to
    DELIVER % hub, explicit acks, at most CH_MAX_ACK_PENDING unacknowledged. No heartbeats
    and no flow control (thousands of them would be idle traffic); a consumer nobody has
    listened to for MAX_AGE (the stream's own limit: its messages are gone by then) is
    removed by the broker (a hub replaced by a Trust Centre Swap-Out leaves its old one)."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    return ConsumerConfig(durable_name="ch-" + hub, filter_subject=DOWN % hub,
                          deliver_subject=DELIVER % hub, ack_wait=ack_wait,
                          ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                          max_ack_pending=CH_MAX_ACK_PENDING, inactive_threshold=MAX_AGE)


LIMIT_REACHED = 10026  # JetStream's "maximum consumers limit reached"


class NatsPool:
    """One NATS connection and JetStream context shared by the Comms Hubs of one process
    (`hanota fleet sim` holds thousands; `hub serve` one): a connect storm is one connect,
    and the broker keeps one client connection, not one per hub.

    Each hub keeps its own subject and its own durable consumer; the consumer pushes to
    the hub's deliver subject, which the hub subscribes to on this connection (no polling
    per hub). nats-py reconnects by itself and subscribes again; the durable consumers are
    in the broker's store, so after a broker restart every hub's delivery resumes without a
    request per hub. `connection()` connects once (callers waiting meanwhile share the
    attempt); JetStream API requests (consumer creation) go at most API_IN_FLIGHT at a time."""

    def __init__(self, url: str, name: str = "hanota-ch", connect_timeout: float = 5.0):
        self.url = check_url(url)
        self.name = name
        self.connect_timeout = connect_timeout
        self.nc: Any = None
        self.js: Any = None
        self.reconnects = 0
        self.members: set[Any] = set()  # NatsCommsHubWan with a session up
        self._lock = asyncio.Lock()
        self._api = asyncio.Semaphore(API_IN_FLIGHT)
        self.handling = asyncio.Semaphore(HANDLING)
        self._closed = False

    async def connection(self) -> tuple[Any, Any]:
        """The shared (nc, js), connecting if not yet; raises what nats-py raises."""
        async with self._lock:
            if self._closed:
                raise WanError("the NATS connection pool is closed", reason="usage")
            if self.nc is None or self.nc.is_closed:
                self.nc, self.js = await connect(
                    self.url, self.name, connect_timeout=self.connect_timeout,
                    disconnected_cb=self._down, reconnected_cb=self._back,
                    error_cb=self._error)
            return self.nc, self.js

    async def _error(self, e: Exception) -> None:
        # nats-py's own logs each with a traceback; a broker away is one line per attempt
        log.warning("NATS WAN %s: %s", self.url, str(e) or type(e).__name__)

    @property
    def up(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def _down(self) -> None:
        if self._closed:
            return
        log.warning("NATS WAN %s: connection lost; reconnecting (%d hubs)", self.url,
                    len(self.members))
        for w in self.members:
            w.connected.clear()

    async def _back(self) -> None:
        self.reconnects += 1
        log.warning("NATS WAN %s: reconnected (%d hubs)", self.url, len(self.members))
        for w in self.members:
            w.connected.set()
            w._outbox_ready.set()  # what failed to go while the broker was away goes now

    async def ensure_consumer(self, hub: str, ack_wait: float) -> None:
        """The hub's durable push consumer, made if missing. A consumer of hub's name that
        delivers elsewhere (a pull consumer from before) is replaced by one starting after
        its acknowledged floor, so that nothing it held is lost."""
        from nats.js.api import DeliverPolicy
        from nats.js.errors import APIError

        nc, js = await self.connection()
        cfg = _hub_consumer_config(hub, ack_wait)
        async with self._api:
            try:
                await js.add_consumer(STREAM, cfg)
                return
            except APIError as e:  # exists with another config, or no room
                if e.err_code == LIMIT_REACHED:
                    raise WanError("NATS stream %s: no room for hub %s's consumer: %s (the "
                                   "stream's or account's max_consumers)"
                                   % (STREAM, hub, e.description), reason="wan-limit") \
                        from None
                info = await js.consumer_info(STREAM, cfg.durable_name)
                if info.config.deliver_subject == cfg.deliver_subject:
                    return
                log.info("NATS WAN: consumer %s (%s) replaced by a push consumer",
                         cfg.durable_name, e)
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            await js.delete_consumer(STREAM, cfg.durable_name)
            await js.add_consumer(STREAM, cfg.evolve(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=floor + 1))

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            nc, self.nc = self.nc, None
        if nc is not None:
            try:
                await nc.drain()
            except Exception:  # noqa: BLE001 - closing a broken connection
                try:
                    await nc.close()
                except Exception:  # noqa: BLE001
                    pass


class NatsCommsHubWan(CommsHubWan):
    """The Comms Hub's end on NATS: the same store, `work()`, `apply()` and `collect()` as
    over the websocket (wan.py); only the carriage differs (`run`). Its durable consumer
    `ch-<hub EUI>` keeps what the DCC sent while it was offline and pushes it to the hub's
    subscription on the connection of `pool` (a `NatsPool` shared with other hubs of the
    process; without one, the hub has a pool of its own at `url`).

    The hub's outbox (outcomes, alerts) goes after each `step()` of its work, and what
    stays unacknowledged goes again every `resend` seconds; a broker unreachable for a
    while only delays that (the session stays: its subscription and consumer outlive a
    reconnect)."""

    def __init__(self, hub: Any, url: str | None = None, *, pool: NatsPool | None = None,
                 premises: str | None = None, poll: float = 0.2,
                 backoff: tuple[float, float] = (0.2, 5.0), token: str | None = None,
                 resend: float = 30.0, ack_wait: float = CH_ACK_WAIT):
        super().__init__(hub, "http://nats.invalid", premises=premises, poll=poll,
                         backoff=backoff, token=None)
        if pool is None and url is None:
            raise WanError("a NATS WAN needs the server's nats:// URL", reason="usage")
        self.url = pool.url if pool is not None else check_url(url)
        self.pool = pool
        self.resend = resend
        self.ack_wait = ack_wait
        self._outbox_ready = asyncio.Event()
        self._sent: dict[int, float] = {}  # CH message id -> when published
        # DCC message ids stored and answered (the stream holds the answer), oldest first
        self._answered: dict[int, None] = {}
        if token:
            log.info("a WAN token is for the websocket WAN; on NATS it is not used")

    def step(self) -> None:
        super().step()
        self._outbox_ready.set()  # what collect() queued goes out now

    async def run(self) -> None:
        own = self.pool is None
        pool = NatsPool(self.url) if own else self.pool
        delay = self.backoff[0]
        try:
            while not self._stopping:
                try:
                    _, js = await pool.connection()
                    await self._nats_session(pool, js)  # returns when the identity changes
                    delay = self.backoff[0]
                except _nats_errors() + (HanotaError,) as e:
                    (log.warning if self.connected.is_set()
                     or getattr(e, "reason", "") == "wan-limit" else log.info)(
                        "NATS WAN %s: %s; again in %.1f s", self.url, e, delay)
                except Exception:  # a bug must not end the WAN for good; it is logged
                    log.exception("NATS WAN %s", self.url)
                finally:
                    pool.members.discard(self)
                    self.connected.clear()
                if not self._stopping:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff[1])
        finally:
            if own:
                await pool.close()

    async def _nats_session(self, pool: NatsPool, js: Any) -> None:
        assert self.store is not None  # start() made it
        hub, previous = self._identity()

        async def on_msg(m: Any) -> None:
            await self._deliver(pool, js, hub, m)

        # subscribed before the consumer is made or bound: it delivers from then on
        sub = await pool.nc.subscribe(DELIVER % hub, cb=on_msg)
        try:
            await pool.ensure_consumer(hub, self.ack_wait)
            await js.publish(UP % hub, encode(self._hello(hub, previous)).encode())
            self.connections += 1
            pool.members.add(self)
            if pool.up:
                self.connected.set()
            log.info("NATS WAN up: %s as hub %s", self.url, hub)
            await self._sender(js, hub)
        finally:
            pool.members.discard(self)
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection is gone or closing
                pass

    async def _sender(self, js: Any, hub: str) -> None:
        """Publish the outbox when a work step has run (and what stays unacknowledged every
        `resend` s) until the hub's identity changes."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._outbox_ready.clear()
            switching = self._identity()[0] != hub
            if switching:
                self.collect()  # what the old identity has to say goes under it
            now = loop.time()
            pending = self.store.outbox()
            try:
                for msg in pending:
                    if now - self._sent.get(msg["id"], -1e9) >= self.resend:
                        await js.publish(UP % hub, encode(msg).encode(), headers={
                            "Nats-Msg-Id": "ch-%s-%d" % (hub, msg["id"])})
                        self._sent[msg["id"]] = now
            except _nats_errors() as e:  # the broker away: again at the next pass
                log.info("NATS WAN: hub %s publishing: %s", hub, e)
            if switching:
                return
            try:
                await asyncio.wait_for(self._outbox_ready.wait(), self.resend)
            except asyncio.TimeoutError:
                pass

    async def _deliver(self, pool: NatsPool, js: Any, hub: str, m: Any) -> None:
        """One message pushed by the hub's consumer. A redelivery of a DCC message this hub
        has stored and answered already (its first acknowledgement to the broker was lost,
        or it waited here longer than ack_wait) is acknowledged at once: no handling slot,
        no JetStream round trip. Otherwise it waits for one of the pool's handling slots.
        Without that, after a broker restart a process whose hubs are sent their unacked
        messages all at once takes them slower than ack_wait redelivers them; every copy
        then costs a full round trip and the queue grows with copies (a 10,000-premises run
        saw hubs get nothing for 25 minutes while their consumers redelivered every 30 s)."""
        try:
            try:
                msg = decode(m.data)
            except WanError as e:
                await undecodable(m, "NATS WAN: hub %s" % hub, e)
                return
            if msg.get("id") in self._answered:
                await m.ack()
                return
            async with pool.handling:
                await self._take(js, hub, m, msg)
        except _nats_errors() as e:  # unacknowledged: the broker delivers it again
            log.info("NATS WAN: hub %s: %s", hub, e)
        except Exception:  # noqa: BLE001 - logged; unacknowledged, delivered again
            log.exception("NATS WAN: hub %s", hub)

    def _remember_answered(self, mid: int) -> None:
        self._answered[mid] = None
        if len(self._answered) > ANSWERED_KEPT:
            del self._answered[next(iter(self._answered))]  # the oldest

    async def _take(self, js: Any, hub: str, m: Any, msg: dict) -> None:
        """One message pushed by the hub's consumer (`msg`, decoded): stored, answered, then
        acknowledged to the broker; one that cannot be stored yet is left for a redelivery."""
        if "ack" in msg:
            self.store.acked(msg["ack"])
            self._sent.pop(msg["ack"], None)
        elif "id" in msg:
            try:
                msg = await incoming(js, msg)
            except _nats_errors() as e:  # the image not there yet: again later
                log.warning("DCC message %s: image %s: %s", msg["id"],
                            msg.get("image_obj"), e)
                await m.nak(delay=1.0)
                return
            try:
                self.store.store_in(msg)
            except HanotaError as e:
                log.error("DCC message %s not stored: %s", msg["id"], e)
                await m.nak(delay=1.0)
                return
            await js.publish(UP % hub, encode({"ack": msg["id"]}).encode())
            self._remember_answered(msg["id"])
            self.wake()
        await m.ack()


def make_hub_wan(hub: Any, url: str, **kw: Any) -> CommsHubWan:
    """The Comms Hub's WAN for a DCC URL: http(s):// the websocket, nats:// JetStream."""
    if is_nats(url):
        return NatsCommsHubWan(hub, url, **kw)
    return CommsHubWan(hub, url, **kw)
