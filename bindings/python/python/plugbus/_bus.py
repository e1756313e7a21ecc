"""`EventBus`: agent-event-bus's API and semantics, with plugbus's sandboxed
Wasm observers in the same bus.

Python handlers behave exactly as in agent-event-bus: sync handlers run
inline, in registration order, on the emitting thread; async handlers are
awaited together by `emit_async`, and run under `asyncio.run` by `emit` when
no loop is running (scheduled on the running loop otherwise, as a task the
bus holds until done). Handler errors go to
`handler_error_callback(event, handler, exc)`; strict mode re-raises the
first one (except where nothing is left to raise into: see `set_strict`).

With `plugin_dir` (or `log_dir`), a native plugbus bus runs beside: every
emitted event whose data is JSON-serialisable is published to the matching
Wasm plugins first (they run on the bus's own threads, never holding the
GIL), then the Python handlers run. Events the plugins emit (follow-ups such
as `budget_exceeded`) and the host's `plugbus.*` announcements reach the
Python handlers on a dispatcher thread of the bus's own.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import _patterns
from ._native import NativeBus, PlugbusError
from ._native import QueryError as _NativeQueryError

if TYPE_CHECKING:
    from ._native import FollowUp  # the stub's alias: no runtime name

logger = logging.getLogger("plugbus")

Handler = Callable[["Event"], Any]
"""A sync handler, or an async one (returning an awaitable)."""
ErrorCallback = Callable[["Event", Handler, BaseException], None]
H = TypeVar("H", bound=Handler)

#: How long the dispatcher thread waits for a follow-up before it checks
#: whether the bus is shutting down: bounds how long `shutdown` waits for it.
_POLL_MS = 50


@dataclass(frozen=True, slots=True)
class Event:
    """An emitted event (frozen: assigning a field raises).

    The first four fields are agent-event-bus's, in its order: `type`, `data`,
    `timestamp` (`time.monotonic()` at emit), `id` (a unique string; with
    plugins, the event's UUIDv7 on the bus). The rest are plugbus's:
    `correlation_id` ties the events of one agent run together, `source` is
    `"host"` or the plugin that emitted it, `seq` its place in the bus's
    publish order (the event log's number with a log).
    """

    type: str
    data: Any = None
    timestamp: float = field(default_factory=time.monotonic)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    correlation_id: str | None = None
    source: str = "host"
    seq: int | None = None


class QueryError(Exception):
    """A query got no answer. `kind` says why: `unknown_plugin`,
    `no_query_export`, `too_large`, `plugin_error` (the plugin refused;
    `str(e)` has its reason), `limit`, `failed`, `busy` or `shutting_down`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _default_error_callback(event: Event, handler: Handler, exc: BaseException) -> None:
    logger.warning(
        "plugbus: handler %r raised on event %r: %r",
        getattr(handler, "__name__", handler),
        event.type,
        exc,
    )


#: Every limit, and every log size, is an unsigned 64-bit number natively.
_U64_MAX = 2**64 - 1


def _limits_toml(limits: Mapping[str, int]) -> str:
    """The manifest's `[limits]` table for `limits`. Its shape is checked
    here, with or without plugins: a mapping of limit names (ASCII letters,
    digits, `_`) to whole numbers in 0..2**64-1 (every limit is one; a bool
    is not). Which names exist and their ranges are checked natively."""
    if not isinstance(limits, Mapping):
        raise TypeError(f"limits must be a mapping of limit names to whole numbers, not {type(limits).__name__}")
    lines = ["[limits]"]
    for key, value in limits.items():
        if not isinstance(key, str) or not key.isascii() or not key.replace("_", "").isalnum():
            raise ValueError(f"limits: {key!r} is not a limit name")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"limits.{key}: {value!r} is not a whole number")
        if not 0 <= value <= _U64_MAX:
            raise ValueError(f"limits.{key}: {value} is outside 0..2**64-1")
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _check_history_size(history_size: int) -> None:
    if isinstance(history_size, bool) or not isinstance(history_size, int):
        raise TypeError(f"history_size must be an int, not {type(history_size).__name__}")
    if history_size < 1:
        raise ValueError("history_size must be >= 1")


def _check_bytes(name: str, value: int | None) -> None:
    """A log size: None, or a whole number of bytes the native side takes
    (it would raise a bare OverflowError for one outside 0..2**64-1)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (bytes), not {type(value).__name__}")
    if not 0 <= value <= _U64_MAX:
        raise ValueError(f"{name}: {value} is not a number of bytes in 0..2**64-1")


def _check_log_options(
    log_dir: object,
    log_retention_bytes: int | None,
    log_retention_age_s: float | None,
    log_segment_bytes: int | None,
) -> None:
    """The log options' types and whether they have a log to bound (their
    ranges beyond that are checked natively, before anything is built)."""
    _check_bytes("log_retention_bytes", log_retention_bytes)
    _check_bytes("log_segment_bytes", log_segment_bytes)
    if log_retention_age_s is not None and (
        isinstance(log_retention_age_s, bool) or not isinstance(log_retention_age_s, (int, float))
    ):
        raise TypeError(f"log_retention_age_s must be a number of seconds, not {type(log_retention_age_s).__name__}")
    if log_dir is None and (
        log_retention_bytes is not None or log_retention_age_s is not None or log_segment_bytes is not None
    ):
        raise ValueError("log_retention_bytes, log_retention_age_s and log_segment_bytes need a log_dir")


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _request_json(request: Any) -> str:
    """A query request object as JSON text. NaN and infinities are refused
    (ValueError), as `emit` refuses them: `json.dumps` would write `NaN`,
    which is not JSON."""
    try:
        return json.dumps(request, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"query request has no JSON form: {e}") from None


class _Subscription:
    __slots__ = ("pattern", "handler", "once", "priority")

    def __init__(self, pattern: str, handler: Handler, once: bool, priority: int) -> None:
        self.pattern = pattern
        self.handler = handler
        self.once = once
        self.priority = priority


_live_buses: weakref.WeakSet[EventBus] = weakref.WeakSet()


class EventBus:
    """In-process pub/sub for agent loop events, with sandboxed Wasm observers.

    A drop-in for agent-event-bus's `EventBus`: the same constructor
    keywords, methods and semantics. The extra keywords load plugbus plugins:

    - `plugin_dir`: a directory of `*.wasm` plugins (with `<name>.toml`
      manifests), loaded as `plugbus serve` loads them;
    - `watch`: keep watching it (hot reload);
    - `limits`: the manifest's `[limits]` keys (`fuel`, `deadline_ms`,
      `memory_mib`, `queue_capacity`, ...) as the defaults for every plugin;
    - `log_dir`: keep every event in a plugbus event log there;
    - `log_retention_bytes` / `log_retention_age_s` / `log_segment_bytes`:
      bound that log (the oldest whole segments are removed while it is
      larger, or once older; segments of 64 MiB by default, at least 4096
      bytes); default: keep everything (docs/durability.md);
    - `cache_dir` / `no_cache`: where compiled plugins are cached;
    - `trusted_keys` / `require_signed`: minisign public keys (a `.pub` file
      or a directory of them) trusted to sign plugins, and whether unsigned
      plugins are refused (docs/trust.md);
    - `policy`: a capability policy file bounding what manifests may grant.

    Raises `TypeError` for an argument of the wrong type, `ValueError`
    for a bad `history_size`, limit or log size (naming it), and
    `PlugbusError` for a plugin directory or log that cannot be used.
    Every argument is checked before anything is built, and a bus that
    fails half-way is shut down: a failed constructor leaves no threads.
    """

    def __init__(
        self,
        *,
        keep_history: bool = False,
        history_size: int = 100,
        handler_error_callback: ErrorCallback | None = None,
        plugin_dir: str | os.PathLike[str] | None = None,
        limits: Mapping[str, int] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        watch: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        no_cache: bool = False,
        trusted_keys: str | os.PathLike[str] | None = None,
        require_signed: bool = False,
        policy: str | os.PathLike[str] | None = None,
        log_retention_bytes: int | None = None,
        log_retention_age_s: float | None = None,
        log_segment_bytes: int | None = None,
    ) -> None:
        # Everything that can be refused is refused before the native bus
        # and its threads exist (a ValueError after would leak them).
        _check_history_size(history_size)
        if handler_error_callback is not None and not callable(handler_error_callback):
            raise TypeError(f"handler_error_callback must be callable, not {type(handler_error_callback).__name__}")
        limits_toml = None if limits is None else _limits_toml(limits)
        _check_log_options(log_dir, log_retention_bytes, log_retention_age_s, log_segment_bytes)
        self._subs: list[_Subscription] = []
        # Matching subscriptions per event name, rebuilt after any change
        # to `_subs`: an agent emits a handful of names many times.
        self._matched: dict[str, tuple[_Subscription, ...]] = {}
        self._lock = threading.RLock()
        self._strict = False
        self._history: deque[Event] | None = deque(maxlen=history_size) if keep_history else None
        self._error_callback: ErrorCallback = handler_error_callback or _default_error_callback
        self._unserialisable = 0
        self._native: NativeBus | None = None
        self._dispatcher: threading.Thread | None = None
        self._stopping = threading.Event()
        self._dispatched = 0
        self._dispatched_cond = threading.Condition()
        # Async handlers' tasks on a running loop, held until done: the loop
        # keeps only a weak reference to a task.
        self._tasks: set[asyncio.Task[Any]] = set()
        if plugin_dir is not None or log_dir is not None:
            self._native = NativeBus(
                plugin_dir=None if plugin_dir is None else os.fspath(plugin_dir),
                log_dir=None if log_dir is None else os.fspath(log_dir),
                watch=watch,
                limits=limits_toml,
                cache_dir=None if cache_dir is None else os.fspath(cache_dir),
                no_cache=no_cache,
                trusted_keys=None if trusted_keys is None else os.fspath(trusted_keys),
                require_signed=require_signed,
                policy=None if policy is None else os.fspath(policy),
                log_retention_bytes=log_retention_bytes,
                log_retention_age_s=log_retention_age_s,
                log_segment_bytes=log_segment_bytes,
            )
            # A bus dropped without `shutdown()` (agent-event-bus has none
            # to call) is collected: the dispatcher holds it weakly, and
            # this stops its plugins and threads then.
            self._finalizer = weakref.finalize(self, _stop_native, self._native, self._stopping)
            try:
                self._dispatcher = threading.Thread(
                    target=_dispatch_follow_ups,
                    args=(weakref.ref(self), self._native, self._stopping),
                    name="plugbus-follow-ups",
                    daemon=True,
                )
                self._dispatcher.start()
            except BaseException:
                # Nobody will ever get this bus to shut it down.
                self._finalizer()
                raise
        _live_buses.add(self)

    # ---- subscription ----

    @overload
    def on(self, pattern: str, handler: None = None, *, priority: int = 0) -> Callable[[H], H]: ...
    @overload
    def on(self, pattern: str, handler: H, *, priority: int = 0) -> H: ...
    def on(self, pattern: str, handler: Handler | None = None, *, priority: int = 0) -> Any:
        """Register `handler` for `pattern`; as a decorator (`@bus.on("llm.*")`)
        or a call (`bus.on("llm.*", h)`). Returns the handler. Raises
        `ValueError` for an invalid pattern, `TypeError` for a handler that
        is not callable.

        Handlers of one event run from the highest `priority` to the lowest
        (default 0; ties in registration order). Wasm plugins are not part of
        that order: they have the event queued before any Python handler
        runs, and run on their own queues, concurrently."""
        return self._subscribe(pattern, handler, once=False, priority=priority)

    @overload
    def once(self, pattern: str, handler: None = None, *, priority: int = 0) -> Callable[[H], H]: ...
    @overload
    def once(self, pattern: str, handler: H, *, priority: int = 0) -> H: ...
    def once(self, pattern: str, handler: Handler | None = None, *, priority: int = 0) -> Any:
        """Like `on`, but the handler runs for the first matching event only,
        exactly once even when several threads emit at the same time."""
        return self._subscribe(pattern, handler, once=True, priority=priority)

    def _subscribe(self, pattern: str, handler: Handler | None, once: bool, priority: int) -> Any:
        _patterns.validate(pattern)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")

        def register(h: H) -> H:
            # Refused now, not at the first emit that matches.
            if not callable(h):
                raise TypeError(f"handler must be callable, not {type(h).__name__}")
            with self._lock:
                # `_subs` is kept in delivery order: after every handler of a
                # higher or equal priority, before the first of a lower one.
                at = next((i for i, s in enumerate(self._subs) if s.priority < priority), len(self._subs))
                self._subs.insert(at, _Subscription(pattern, h, once, priority))
                self._matched = {}
            return h

        return register if handler is None else register(handler)

    def off(self, pattern: str, handler: Handler) -> bool:
        """Remove the first registration of `handler` (by identity) for
        `pattern`. Returns whether one was removed."""
        with self._lock:
            for i, sub in enumerate(self._subs):
                if sub.pattern == pattern and sub.handler is handler:
                    del self._subs[i]
                    self._matched = {}
                    return True
        return False

    def clear(self) -> None:
        """Remove every Python handler (plugins stay)."""
        with self._lock:
            self._subs.clear()
            self._matched = {}

    def subscribers(self, pattern: str | None = None) -> list[tuple[str, Handler]]:
        """The registered `(pattern, handler)` pairs, in delivery order
        (priority, then registration); with `pattern`, those registered with
        exactly that pattern."""
        with self._lock:
            return [(s.pattern, s.handler) for s in self._subs if pattern is None or s.pattern == pattern]

    # ---- emission ----

    def emit(self, type: str, data: Any = None, *, correlation_id: str | None = None) -> Event:
        """Emit an event: to the matching plugins (without waiting for them),
        then to the matching Python handlers, inline. Returns the event."""
        event = self._publish(type, data, correlation_id)
        self._deliver(event, self._strict)
        return event

    async def emit_async(self, type: str, data: Any = None, *, correlation_id: str | None = None) -> Event:
        """Emit an event; sync handlers run inline, async ones are awaited
        together. Returns the event."""
        event = self._publish(type, data, correlation_id)
        pending: list[Awaitable[Any]] = []
        waiting: list[Handler] = []
        for sub in self._match(type):
            try:
                result = sub.handler(event)
            except BaseException as exc:
                if self._strict:
                    raise
                self._report(event, sub.handler, exc)
                continue
            if inspect.isawaitable(result):
                pending.append(result)
                waiting.append(sub.handler)
        if pending:
            results = await asyncio.gather(*pending, return_exceptions=True)
            for handler, result in zip(waiting, results):
                if isinstance(result, BaseException):
                    if self._strict:
                        raise result
                    self._report(event, handler, result)
        return event

    def emit_and_wait(
        self, type: str, data: Any = None, *, correlation_id: str | None = None
    ) -> dict[str, Any]:
        """Emit an event, wait until every plugin it matched has handled it,
        run the Python handlers, and return the delivery report:
        `{"event": Event, "deliveries": [{"handler", "outcome", ...}]}`
        where `outcome` is `ok`, `error` (`message`), `failed` (`kind`,
        `message`) or `dropped` (`reason`). The GIL is released while waiting."""
        event = None
        deliveries: list[dict[str, Any]] = []
        if self._native is not None:
            try:
                report = json.loads(self._native.emit_and_wait(type, data, correlation_id))
                event = Event(type, data, time.monotonic(), report["id"], correlation_id, "host", report["seq"])
                deliveries = report["deliveries"]
            except ValueError as why:
                self._unserialisable_data(type, why)
        if event is None:
            event = Event(type, data, correlation_id=correlation_id)
        self._record(event)
        self._deliver(event, self._strict)
        return {"event": event, "deliveries": deliveries}

    # ---- options ----

    def set_strict(self, strict: bool = True) -> None:
        """Strict mode: the first handler error is re-raised from `emit` and
        the remaining handlers are not called. Two kinds of error happen
        where nothing can re-raise them, and always go to the error
        callback: follow-ups from plugins (dispatched on the bus's own
        thread), and an async handler that `emit` scheduled on a running
        loop (it fails after `emit` returned; `await emit_async` re-raises
        such errors in strict mode)."""
        self._strict = bool(strict)

    @property
    def strict(self) -> bool:
        """Whether strict mode is on."""
        return self._strict

    # ---- history ----

    def history(self, n: int = 100) -> list[Event]:
        """Up to the last `n` events, oldest first; `[]` when history is off.
        Raises `ValueError` for a negative `n`. "Oldest first" is the order
        they were recorded: each thread's own events in the order it
        emitted them, but events of several threads emitting at once may
        be recorded in another order than their `seq` (sort by `seq` for
        the bus's publish order)."""
        if self._history is None:
            return []
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            events = list(self._history)
        return events[len(events) - n :] if n < len(events) else events

    # ---- plugins ----

    def plugins(self) -> list[dict[str, Any]]:
        """Every loaded plugin: `name`, `path`, `version`, `subscriptions`,
        `state` and `stats` (delivered, ok, errors, failures by kind, ...)."""
        if self._native is None:
            return []
        result: list[dict[str, Any]] = json.loads(self._native.plugins())
        return result

    def load_failures(self) -> list[dict[str, Any]]:
        """The plugins that could not be loaded, with the file and reason."""
        if self._native is None:
            return []
        result: list[dict[str, Any]] = json.loads(self._native.load_failures())
        return result

    def log_status(self) -> dict[str, Any] | None:
        """The event log's progress, or None without `log_dir`:
        `last_seq` (the highest number handed out), `written_seq`,
        `durable_seq`, `queued`, `lost` (events delivered live but never
        logged since the log was opened: its buffer was full, or the log
        failed), `oversize` (of those, events over the log's 64 MiB frame:
        they have a `seq` but the log has a gap there), `failed` (why the
        log stopped, if it did), and the retention fields
        (docs/durability.md)."""
        if self._native is None:
            return None
        text = self._native.log_status()
        if text is None:
            return None
        status: dict[str, Any] = json.loads(text)
        return status

    def query(self, plugin: str, request: Any) -> dict[str, Any]:
        """Ask a plugin's read model (a plugin exporting `query`). `request`
        is JSON text or a JSON-serialisable object. Returns
        `{"as_of_seq": int | None, "answer": <parsed JSON>}`; the answer
        reflects exactly the plugin's events up to `as_of_seq`. Raises
        `QueryError` (with `kind`; `shutting_down` once the bus is shut
        down), and `TypeError` / `ValueError` for a request object with no
        JSON form (NaN and infinities included, as `emit` refuses them).
        The GIL is released while waiting."""
        text = request if isinstance(request, str) else _request_json(request)
        native = self._native
        if native is None:
            raise QueryError("unknown_plugin", f"no plugin named `{plugin}` is loaded")
        if self._stopping.is_set():
            raise QueryError("shutting_down", "the bus is shut down")
        try:
            as_of_seq, answer = native.query(plugin, text)
        except _NativeQueryError as e:
            kind, message = e.args
            raise QueryError(kind, message) from None
        except PlugbusError as e:
            if self._stopping.is_set():  # shut down by another thread meanwhile
                raise QueryError("shutting_down", str(e)) from None
            raise
        return {"as_of_seq": as_of_seq, "answer": json.loads(answer)}

    @property
    def unserialisable(self) -> int:
        """Events whose data could not be serialised to JSON: Python handlers
        got them, plugins did not."""
        return self._unserialisable

    def flush(self) -> None:
        """Wait until every plugin has handled every queued event, and every
        follow-up has been through the Python handlers. The GIL is released
        while waiting for the plugins."""
        native = self._native
        if native is None:
            return
        on_dispatcher = threading.current_thread() is self._dispatcher
        while True:
            native.flush()
            forwarded = native.forwarded()
            if on_dispatcher:
                return
            with self._dispatched_cond:
                while self._dispatched < forwarded and not self._stopping.is_set():
                    dispatcher = self._dispatcher
                    if dispatcher is None or not dispatcher.is_alive():
                        break  # nobody left to dispatch: do not wait forever
                    self._dispatched_cond.wait(timeout=0.1)
            # Python handlers may have emitted more: done once nothing moved.
            native.flush()
            if native.forwarded() == forwarded:
                return

    async def aflush(self) -> None:
        """`flush` for async code: waits on a worker thread."""
        await asyncio.to_thread(self.flush)

    def shutdown(self) -> None:
        """Stop the plugins (their queues drained) and the follow-up
        dispatcher. Idempotent; the bus is unusable for plugins afterwards."""
        self._stopping.set()
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join(timeout=5)
        if self._native is not None:
            self._finalizer()  # stops the native bus, once
        with self._dispatched_cond:
            self._dispatched_cond.notify_all()
        _live_buses.discard(self)

    def __enter__(self) -> EventBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ---- internals ----

    def _unserialisable_data(self, type: str, why: ValueError) -> None:
        """Counts an event whose data has no JSON form; logs the first one."""
        self._unserialisable += 1
        if self._unserialisable == 1:
            logger.warning(
                "plugbus: event %r: %s; Python handlers get it, plugins do not "
                "(counted in EventBus.unserialisable; logged once)",
                type,
                why,
            )

    def _publish(self, type: str, data: Any, correlation_id: str | None) -> Event:
        native = self._native
        event = None
        if native is not None:
            try:
                event_id, _time_ns, seq = native.publish(type, data, correlation_id)
                event = Event(type, data, time.monotonic(), event_id, correlation_id, "host", seq)
            except ValueError as why:
                self._unserialisable_data(type, why)
        if event is None:
            event = Event(type, data, correlation_id=correlation_id)
        self._record(event)
        return event

    def _record(self, event: Event) -> None:
        if self._history is not None:
            with self._lock:
                self._history.append(event)

    def _match(self, name: str) -> tuple[_Subscription, ...]:
        """The subscriptions matching `name`, in delivery order; a `once`
        subscription is claimed (and removed) here, so it fires once."""
        with self._lock:
            matched = self._matched.get(name)
            if matched is None:
                matched = tuple(s for s in self._subs if _patterns.matches(s.pattern, name))
                self._matched[name] = matched
            if any(s.once for s in matched):
                for s in matched:
                    if s.once:
                        self._subs.remove(s)
                self._matched = {}
            return matched

    def _deliver(self, event: Event, strict: bool) -> None:
        """Runs the matching handlers on this thread, in delivery order:
        a sync handler inline, an async one as `emit` runs it. Errors go to
        the callback, or (`strict`) the first is re-raised."""
        for sub in self._match(event.type):
            try:
                result = sub.handler(event)
                if result is not None and inspect.isawaitable(result):
                    self._run_awaitable(result, event, sub.handler)
            except BaseException as exc:
                if strict:
                    raise
                self._report(event, sub.handler, exc)

    def _report(self, event: Event, handler: Handler, exc: BaseException) -> None:
        try:
            self._error_callback(event, handler, exc)
        except BaseException:
            logger.exception("plugbus: handler_error_callback raised")

    def _run_awaitable(self, awaitable: Awaitable[Any], event: Event, handler: Handler) -> None:
        """Runs an async handler's awaitable: to completion under
        `asyncio.run` when no loop runs here (errors raise to `_deliver`),
        else as a task on the running loop, held until done, whose error
        goes to the error callback (`emit` has returned by then)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(_await(awaitable))
            return
        task = loop.create_task(_await(awaitable))
        with self._lock:
            self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, event, handler))

    def _task_done(self, event: Event, handler: Handler, task: asyncio.Task[Any]) -> None:
        with self._lock:
            self._tasks.discard(task)
        if task.cancelled():
            return  # the loop is closing (asyncio.run cancels what is left)
        exc = task.exception()  # retrieved: asyncio does not log it again
        if exc is not None:
            self._report(event, handler, exc)

    def _dispatch(self, received: FollowUp) -> None:
        """One follow-up from the native bus, to the Python handlers."""
        name, payload, event_id, _time_ns, correlation_id, source, seq = received
        event = Event(name, json.loads(payload), time.monotonic(), event_id, correlation_id, source, seq)
        self._record(event)
        self._deliver(event, strict=False)
        with self._dispatched_cond:
            self._dispatched += 1
            self._dispatched_cond.notify_all()


def _dispatch_follow_ups(bus_ref: weakref.ref[EventBus], native: NativeBus, stopping: threading.Event) -> None:
    """The dispatcher thread: plugins' follow-ups to Python handlers. It
    holds its bus only while it hands one over, so a bus nobody else holds
    is collected (and its finaliser stops the native bus and this thread)."""
    while not stopping.is_set():
        try:
            received = native.next_follow_up(_POLL_MS)
        except PlugbusError:
            break
        if received is None:
            continue
        bus = bus_ref()
        if bus is None:
            break
        bus._dispatch(received)
        del bus


def _stop_native(native: NativeBus, stopping: threading.Event) -> None:
    """A bus's finaliser (it holds nothing of the bus itself): collected or
    shut down, its plugins stop and its dispatcher thread ends."""
    stopping.set()
    native.shutdown()


_named: dict[str, EventBus] = {}
#: Guards `_named` and `_building`; never held while a bus is built.
_named_lock = threading.Lock()
#: One lock per name, held while that name's bus is built (loading its
#: plugins can take seconds): callers of that name wait for that bus, and
#: callers of other names do not.
_building: dict[str, threading.Lock] = {}


def _live_named(name: str) -> EventBus | None:
    """The named bus, unless there is none or it was shut down. Under
    `_named_lock`."""
    bus = _named.get(name)
    return None if bus is None or bus._stopping.is_set() else bus


def get_bus(name: str = "default", **options: Any) -> EventBus:
    """The process-wide bus called `name`, created with `options` (the
    `EventBus` keywords) on first use: the same bus anywhere in the process.
    Options given later are ignored. Building one name's bus does not hold
    up `get_bus` for other names."""
    with _named_lock:
        bus = _live_named(name)
        if bus is not None:
            return bus
        building = _building.setdefault(name, threading.Lock())
    with building:
        # Another caller of this name may have built it while we waited.
        with _named_lock:
            bus = _live_named(name)
        if bus is None:
            bus = EventBus(**options)
            with _named_lock:
                _named[name] = bus
        return bus


def _shutdown_all() -> None:
    """At interpreter exit: stop every live bus's plugins and threads."""
    for bus in list(_live_buses):
        try:
            bus.shutdown()
        except Exception:
            logger.exception("plugbus: shutting a bus down at exit failed")


def _after_fork_in_child() -> None:
    """The parent's runtimes do not exist in a forked child: its buses with
    plugins raise `PlugbusError` when used, and named buses start afresh."""
    global _named_lock, _building
    _named_lock = threading.Lock()
    _building = {}  # a lock another thread held at fork() stays held here
    _named.clear()
    for bus in list(_live_buses):
        bus._dispatcher = None


atexit.register(_shutdown_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
