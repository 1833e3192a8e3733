"""What a remote provider may spend on each stage of one attempt, and the settings that say so."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, PositiveFloat

from imagegate.config import ProviderConfig

__all__ = ["Phase", "RemoteConfig", "StageBudgets"]

# What the attempt is doing right now. "pool" waits for a free connection, "gate" waits for
# the router to pick this attempt in a handshake race (imagegate.hedging), and "idle" is the
# caller's own time between streamed chunks: none has a budget of its own, only the cap.
Phase = Literal["pool", "dns", "connect", "tls", "gate", "first_byte", "read", "idle"]


class RemoteConfig(ProviderConfig):
    """Settings every provider reached over the network takes; a timeout of 0 is refused."""

    url: str | None = Field(default=None, description="The server's base URL.")
    ca_file: str | None = Field(
        default=None,
        description="A PEM bundle of CAs to trust instead of the system's (a private or test CA).",
    )
    connect_timeout_s: PositiveFloat = Field(
        default=2.0, description="Seconds for DNS and for the TCP connect, each (> 0)."
    )
    tls_timeout_s: PositiveFloat = Field(
        default=2.0, description="Seconds for the TLS handshake (> 0)."
    )
    first_byte_timeout_s: PositiveFloat = Field(
        default=120.0,
        description="Seconds from sending a request to the first byte of the answer (> 0).",
    )
    read_timeout_s: PositiveFloat = Field(
        default=30.0, description="Seconds the answer may pause between two reads (> 0)."
    )


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
