"""What a remote provider may spend on each stage of one attempt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from imagegate.config import RemoteConfig

__all__ = ["Phase", "RemoteConfig", "StageBudgets"]

# What the attempt is doing right now. "pool" waits for a free connection, "gate" waits for
# the router to pick this attempt in a handshake race (imagegate.hedging), and "idle" is the
# caller's own time between streamed chunks: none has a budget of its own, only the cap.
Phase = Literal["pool", "dns", "connect", "tls", "gate", "first_byte", "read", "idle"]


@dataclass(frozen=True)
class StageBudgets:
    """Seconds each stage of one attempt may take; ``attempt_s`` None = only the deadline."""

    dns_s: float
    connect_s: float
    tls_s: float
    first_byte_s: float
    read_s: float
    attempt_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("dns_s", "connect_s", "tls_s", "first_byte_s", "read_s", "attempt_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(
                    f"StageBudgets.{name} = {value!r}: a budget must be more than 0 seconds; "
                    "a timeout of 0 would never let the stage finish"
                )

    @classmethod
    def from_config(cls, cfg: RemoteConfig) -> StageBudgets:
        """The budgets of a remote provider's config; DNS shares ``connect_timeout_s``."""
        return cls(
            dns_s=cfg.connect_timeout_s,
            connect_s=cfg.connect_timeout_s,
            tls_s=cfg.tls_timeout_s,
            first_byte_s=cfg.first_byte_timeout_s,
            read_s=cfg.read_timeout_s,
            attempt_s=cfg.timeout_s,
        )

    def of(self, phase: Phase) -> float | None:
        """The budget of one phase; None where only the attempt's cap applies."""
        return {
            "dns": self.dns_s,
            "connect": self.connect_s,
            "tls": self.tls_s,
            "first_byte": self.first_byte_s,
            "read": self.read_s,
        }.get(phase)
