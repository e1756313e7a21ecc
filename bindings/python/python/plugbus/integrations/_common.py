"""What the adapters share: JSON-safe payload values, token counts, error
text, the emit that counts what the plugins could not get, and the guard
that keeps an adapter from ever raising into its framework."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._bus import EventBus

logger = logging.getLogger("plugbus.integrations")

#: Containers deeper than this are carried as their text.
_MAX_DEPTH = 20
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def jsonable(value: Any, depth: int = 0) -> Any:
    """`value` as something plugbus can hand to plugins. The rule: JSON
    types as they are, except what JSON (or a plugin) cannot read:

    - NaN and infinities become None;
    - integers beyond 64 bits (outside -2**63..2**64-1) become their text;
    - text with lone surrogates (`json.loads` makes them from `"\\ud800"`,
      no UTF-8 has them) has each replaced by U+FFFD; a surrogate pair
      becomes the character it encodes;
    - mapping keys become text; tuples become lists;
    - pydantic models (LangChain messages, ...) become their `model_dump()`;
    - other objects, and containers deeper than 20 levels, become their text.

    Never raises."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, int):
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= _MAX_DEPTH:
        return _text(value)
    if isinstance(value, Mapping):
        return {clean_text(k if isinstance(k, str) else _text(k)): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return jsonable(dump(), depth + 1)
        except Exception:
            pass
    return _text(value)


def clean_text(text: str) -> str:
    """`text` with its lone surrogates replaced by U+FFFD (and surrogate
    pairs joined): the bus refuses text that has no UTF-8 form."""
    if text.isascii():
        return text  # the usual case, checked at C speed
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # UTF-16 keeps surrogates as code units: pairs decode to their
        # character, each lone one to U+FFFD.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def payload(data: Mapping[str, Any]) -> dict[str, Any]:
    """An event's payload with every field through `jsonable` (each from
    depth 0), so the bus can always hand it to the plugins."""
    return {clean_text(key): jsonable(value) for key, value in data.items()}


def count(value: Any) -> int | None:
    """A token count as an int, or None when there is none a plugin could
    use: missing, not a number (`"n/a"`, a dict, a bool), NaN or infinite,
    or beyond 64 bits. Providers send all of these; the caller skips (or
    counts as 0) such a field rather than losing the event."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(value)  # ints, floats (truncated), numeric text
    except Exception:
        return None
    return number if _INT_MIN <= number <= _INT_MAX else None


def emit(bus: EventBus, guard: Guard, name: str, data: Mapping[str, Any], correlation_id: str | None) -> None:
    """Emits `data` as a JSON-safe `payload`. Should the bus still not hand
    the event to its plugins (its name or correlation id have no UTF-8
    form, ...), that is counted in `guard` like any other failure: the
    adapter promises `.failures` counts every event the plugins missed.
    A bus that raises (shut down) raises here, for the caller's guard."""
    event = bus.emit(name, payload(data), correlation_id=correlation_id)
    # With a native half every published event gets a seq; None: refused.
    if event.seq is None and bus._native is not None:
        guard.failed(f"emit({name})", ValueError(f"event {name!r} could not be published to the plugins"))


def _text(value: object) -> str:
    try:
        return clean_text(str(value))
    except Exception:
        return f"<{type(value).__name__}>"


def error_text(error: BaseException) -> str:
    """`"TypeName: message"` (or the type name alone when the message is
    empty or cannot be rendered)."""
    name = type(error).__name__
    try:
        message = str(error)
    except Exception:
        message = ""
    return f"{name}: {message}" if message else name


class Guard:
    """Counts an adapter's own failures (a callback that raised inside the
    adapter, a bus that refused an event) and logs the first one; the
    framework never sees them."""

    __slots__ = ("_what", "_lock", "failures")

    def __init__(self, what: str) -> None:
        self._what = what
        self._lock = threading.Lock()
        self.failures = 0

    def failed(self, where: str, error: BaseException) -> None:
        try:
            with self._lock:
                self.failures += 1
                first = self.failures == 1
            if first:
                logger.warning(
                    "plugbus: %s.%s failed (%s); the agent goes on, events may be missing "
                    "(counted in .failures; logged once)",
                    self._what,
                    where,
                    error_text(error),
                    exc_info=error,
                )
        except Exception:
            pass
