"""What the adapters share: JSON-safe payload values, error text, and the
guard that keeps an adapter from ever raising into its framework."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("plugbus.integrations")

#: Containers deeper than this are carried as their text.
_MAX_DEPTH = 20
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def jsonable(value: Any, depth: int = 0) -> Any:
    """`value` as something plugbus can hand to plugins: JSON types as they
    are, NaN and infinities as None, integers beyond 64 bits and other
    objects as their text, pydantic models (LangChain messages, ...) as
    their `model_dump()`. Never raises."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= _MAX_DEPTH:
        return _text(value)
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return jsonable(dump(), depth + 1)
        except Exception:
            pass
    return _text(value)


def _text(value: object) -> str:
    try:
        return str(value)
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
