"""What the doctor found: one result per stage, one report per provider, and the whole report.

The JSON shape is the contract in design.md (``imagegate doctor --json``)::

    {"ok": bool, "environment": {...},
     "providers": [{"name", "type", "ok", "stages": [{"name", "ok", "elapsed_s", "detail"}],
                    "cause", "fix"}]}

``format_text`` renders the same report for a person, in ASCII markers only ("ok", "FAIL"), so
it reads the same on a cp1252 or ascii console.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from imagegate.transport import redact

StageName = Literal[
    "config", "dns", "connect", "tls", "http", "auth", "api", "runtime", "model", "generate"
]
STAGES: tuple[StageName, ...] = (
    "config", "dns", "connect", "tls", "http", "auth", "api", "runtime", "model", "generate",
)  # fmt: skip


@dataclass(frozen=True)
class StageResult:
    """One stage of one provider: whether it passed, how long it took, and what was seen."""

    name: StageName
    ok: bool
    elapsed_s: float | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        elapsed = None if self.elapsed_s is None else round(self.elapsed_s, 4)
        return {"name": self.name, "ok": self.ok, "elapsed_s": elapsed, "detail": self.detail}


class StageFailed(Exception):
    """A stage failed: the result to record, and the one-sentence cause and fix."""

    def __init__(
        self,
        result: StageResult,
        cause: str,
        fix: str,
        *,
        passed: Iterable[StageResult] = (),
    ) -> None:
        super().__init__(cause)
        self.result = result
        self.cause = cause
        self.fix = fix
        self.passed = list(passed)
        """Stages that passed on the way to this one (their times may be unknown)."""


@dataclass(frozen=True)
class ProviderReport:
    """Every stage one provider went through, stopping at the first failure."""

    name: str
    type: str
    stages: list[StageResult] = field(default_factory=list)
    cause: str | None = None
    fix: str | None = None
    notes: list[str] = field(default_factory=list)
    """Where what the router learned differs from the config (a learned first-byte limit)."""

    @property
    def ok(self) -> bool:
        return self.cause is None and all(stage.ok for stage in self.stages)

    @property
    def failed_stage(self) -> StageName | None:
        """The name of the stage that failed, or None when every stage passed."""
        return next((stage.name for stage in self.stages if not stage.ok), None)

    def scrubbed(self, secrets: Iterable[str]) -> ProviderReport:
        """This report with ``secrets`` (and anything shaped like a key) taken out of its text."""
        keep = tuple(secrets)

        def clean(text: str | None) -> str | None:
            return None if text is None else redact(text, keep)

        return replace(
            self,
            stages=[replace(s, detail=redact(s.detail, keep)) for s in self.stages],
            cause=clean(self.cause),
            fix=clean(self.fix),
            notes=[redact(note, keep) for note in self.notes],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "ok": self.ok,
            "stages": [stage.to_json() for stage in self.stages],
            "cause": self.cause,
            "fix": self.fix,
            **({"notes": list(self.notes)} if self.notes else {}),
        }


@dataclass(frozen=True)
class DoctorReport:
    """The environment and every provider checked."""

    environment: dict[str, Any]
    providers: list[ProviderReport]

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.providers)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "environment": self.environment,
            "providers": [p.to_json() for p in self.providers],
        }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _flatten(prefix: str, value: Any) -> Iterable[tuple[str, str]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(f"{prefix}.{key}" if prefix else str(key), inner)
    else:
        yield prefix, "-" if value is None else str(value)


def format_text(report: DoctorReport) -> list[str]:
    """The report as lines for a person; ASCII markers only."""
    lines = ["environment"]
    pairs = list(_flatten("", report.environment))
    width = max((len(key) for key, _ in pairs), default=0)
    lines += [f"  {key.ljust(width)}  {value}" for key, value in pairs]
    for provider in report.providers:
        lines.append("")
        verdict = "ok" if provider.ok else f"FAIL at {provider.failed_stage}"
        lines.append(f"{provider.name} ({provider.type}): {verdict}")
        for stage in provider.stages:
            mark = "ok  " if stage.ok else "FAIL"
            lines.append(f"  {mark} {stage.name:<8} {_ms(stage.elapsed_s):>8}  {stage.detail}")
        if provider.cause:
            lines.append(f"  cause: {provider.cause}")
        if provider.fix:
            lines.append(f"  fix:   {provider.fix}")
        lines += [f"  note:  {note}" for note in provider.notes]
    healthy = sum(p.ok for p in report.providers)
    lines.append("")
    lines.append(f"{healthy} of {len(report.providers)} providers healthy")
    return lines
