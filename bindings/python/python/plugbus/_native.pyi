"""Type stubs for the native half of plugbus (PyO3). Use `plugbus.EventBus`."""

from os import PathLike

class PlugbusError(Exception):
    """A bus that cannot be built or used (bad plugin directory or log,
    used after fork() or shutdown)."""

class QueryError(Exception):
    """args: (kind, message)."""

FollowUp = tuple[str, str, str, int, str | None, str, int | None]

class NativeBus:
    def __init__(
        self,
        plugin_dir: str | PathLike[str] | None = None,
        log_dir: str | PathLike[str] | None = None,
        watch: bool = False,
        limits: str | None = None,
        cache_dir: str | PathLike[str] | None = None,
        no_cache: bool = False,
        trusted_keys: str | PathLike[str] | None = None,
        require_signed: bool = False,
        policy: str | PathLike[str] | None = None,
        log_retention_bytes: int | None = None,
        log_retention_age_s: float | None = None,
        log_segment_bytes: int | None = None,
    ) -> None: ...
    def publish(self, name: str, data: object, correlation_id: str | None = None) -> tuple[str, int, int | None]:
        """Raises ValueError (nothing published) when data has no JSON form."""
    def emit_and_wait(self, name: str, data: object, correlation_id: str | None = None) -> str: ...
    def export_otlp(self, body: bytes, content_type: str = "application/x-protobuf", all_spans: bool = False) -> str:
        """`all_spans` is read at every call (one receiver per setting, shared
        by the exporters of that setting). Raises PlugbusError naming what is
        wrong with a body that cannot be read."""
    def flush(self) -> None: ...
    def plugins(self) -> str: ...
    def load_failures(self) -> str: ...
    def log_status(self) -> str | None: ...
    def query(self, plugin: str, request: str) -> tuple[int | None, str]: ...
    def next_follow_up(self, timeout_ms: int) -> FollowUp | None: ...
    def forwarded(self) -> int: ...
    def shutdown(self) -> None: ...
    @property
    def closed(self) -> bool: ...
