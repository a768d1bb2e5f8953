"""ServeConfig: what `specgen serve` runs (model, default method and its options) and how it listens."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecgenError
from ..validate import check_fields, in_range

MAX_BODY_BYTES = 1 << 20  # a request body larger than this is refused with 413


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """The server's settings.

    method: the default method of a request (a request may name another in its `method` field);
    method_options: per method, config field -> value (as `--method-config` gives them), used for
    that method whether it is the default or a per-request override. api_key: when set, every
    request needs `Authorization: Bearer <key>`; without one the server binds only to loopback.
    """

    model: str | None = None
    method: str = "pld"
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8  # sequences decoded together (one verification forward); the rest wait in the queue
    spec_disable_batch_size: int | None = None  # draft nothing while this many or more sequences run (vLLM's name)
    max_queue: int = 256  # waiting requests beyond this are refused with 429
    api_key: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    max_body_bytes: int = MAX_BODY_BYTES
    # One acceptance calibration per (method, greedy or sampled), shared by the requests that use it,
    # so a request's tree sizing starts from what earlier ones taught instead of the prior (a short
    # request otherwise spends its few steps learning that a method's drafts fail on this model).
    # False: each request calibrates alone, as `specgen generate` does.
    shared_calibration: bool = True
    # With a shared calibration: start each (method, greedy or sampled) from the one `specgen generate`
    # keeps on disk for this model and method config (decoding/stored.py), and write it back at
    # shutdown when its requests changed it. Off by default so a server's start does not depend on history.
    stored_calibration: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        in_range("port", self.port, 0, 65535)
        in_range("max_batch_size", self.max_batch_size, 1, 1024)
        if self.spec_disable_batch_size is not None:
            in_range("spec_disable_batch_size", self.spec_disable_batch_size, 1, 1024)
        in_range("max_queue", self.max_queue, 1, 1_000_000)
        in_range("max_body_bytes", self.max_body_bytes, 1024, 1 << 30)
        if self.stored_calibration and not self.shared_calibration:
            raise SpecgenError("a stored calibration is a shared one: drop --per-request-calibration")
        if self.api_key is not None and not self.api_key.strip():
            raise SpecgenError("--api-key must not be empty")
        if self.api_key is None and not is_loopback(self.host):
            raise SpecgenError(f"--host {self.host} is reachable from other machines: give --api-key, or bind "
                               "to 127.0.0.1")

    @property
    def served_name(self) -> str:
        """The model id clients name in requests and `GET /v1/models` lists."""
        from ..catalog import DEFAULT_MODEL

        return self.model or DEFAULT_MODEL
