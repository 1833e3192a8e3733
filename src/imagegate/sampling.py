"""AUTOMATIC1111's sampler and scheduler names (v1.10), the vocabulary every provider maps.

A request names a ``sampler`` ("Euler a", "DPM++ 2M") and a ``scheduler`` ("karras"; A1111's
label "Karras" and its aliases are read too). The combined names of A1111 before 1.9
("DPM++ 2M Karras") are split into the two. Each provider says which names it runs
(``Provider.samplers`` / ``schedulers``); the gateway refuses the others for a route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AUTOMATIC",
    "SAMPLERS",
    "SCHEDULERS",
    "SamplerInfo",
    "SchedulerInfo",
    "canonical_sampler",
    "canonical_scheduler",
    "scheduler_label",
    "split_sampler",
]

AUTOMATIC = "automatic"
"""The scheduler that lets the sampler pick its own schedule (A1111's default)."""


@dataclass(frozen=True)
class SamplerInfo:
    """One A1111 sampler as ``GET /sdapi/v1/samplers`` lists it."""

    name: str
    aliases: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SchedulerInfo:
    """One A1111 scheduler as ``GET /sdapi/v1/schedulers`` lists it."""

    name: str
    label: str
    aliases: tuple[str, ...] | None = None
    default_rho: float = -1.0
    need_inner_model: bool = False

    def answer(self) -> dict[str, Any]:
        """The JSON object A1111 answers for it."""
        return {
            "name": self.name,
            "label": self.label,
            "aliases": list(self.aliases) if self.aliases is not None else None,
            "default_rho": self.default_rho,
            "need_inner_model": self.need_inner_model,
        }


_KARRAS, _EXPONENTIAL, _TRUE = "karras", "exponential", "True"
SAMPLERS: tuple[SamplerInfo, ...] = (
    SamplerInfo("DPM++ 2M", ("k_dpmpp_2m",), {"scheduler": _KARRAS}),
    SamplerInfo(
        "DPM++ SDE",
        ("k_dpmpp_sde",),
        {"scheduler": _KARRAS, "second_order": _TRUE, "brownian_noise": _TRUE},
    ),
    SamplerInfo(
        "DPM++ 2M SDE", ("k_dpmpp_2m_sde",), {"scheduler": _EXPONENTIAL, "brownian_noise": _TRUE}
    ),
    SamplerInfo(
        "DPM++ 2M SDE Heun",
        ("k_dpmpp_2m_sde_heun",),
        {"scheduler": _EXPONENTIAL, "brownian_noise": _TRUE, "solver_type": "heun"},
    ),
    SamplerInfo(
        "DPM++ 2S a",
        ("k_dpmpp_2s_a",),
        {"scheduler": _KARRAS, "uses_ensd": _TRUE, "second_order": _TRUE},
    ),
    SamplerInfo(
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        {"scheduler": _EXPONENTIAL, "discard_next_to_last_sigma": _TRUE, "brownian_noise": _TRUE},
    ),
    SamplerInfo("Euler a", ("k_euler_a", "k_euler_ancestral"), {"uses_ensd": _TRUE}),
    SamplerInfo("Euler", ("k_euler",)),
    SamplerInfo("LMS", ("k_lms",)),
    SamplerInfo("Heun", ("k_heun",), {"second_order": _TRUE}),
    SamplerInfo(
        "DPM2",
        ("k_dpm_2",),
        {"scheduler": _KARRAS, "discard_next_to_last_sigma": _TRUE, "second_order": _TRUE},
    ),
    SamplerInfo(
        "DPM2 a",
        ("k_dpm_2_a",),
        {
            "scheduler": _KARRAS,
            "discard_next_to_last_sigma": _TRUE,
            "uses_ensd": _TRUE,
            "second_order": _TRUE,
        },
    ),
    SamplerInfo("DPM fast", ("k_dpm_fast",), {"uses_ensd": _TRUE}),
    SamplerInfo("DPM adaptive", ("k_dpm_ad",), {"uses_ensd": _TRUE}),
    SamplerInfo("Restart", ("restart",), {"scheduler": _KARRAS, "second_order": _TRUE}),
    SamplerInfo("DDIM", ("ddim",)),
    SamplerInfo("DDIM CFG++", ("ddim_cfgpp",)),
    SamplerInfo("PLMS", ("plms",)),
    SamplerInfo("UniPC", ("unipc",)),
    SamplerInfo("LCM", ("k_lcm",)),
)
"""A1111 1.10's samplers, in its order, with its aliases and options."""

SCHEDULERS: tuple[SchedulerInfo, ...] = (
    SchedulerInfo(AUTOMATIC, "Automatic"),
    SchedulerInfo("uniform", "Uniform", need_inner_model=True),
    SchedulerInfo("karras", "Karras", default_rho=7.0),
    SchedulerInfo("exponential", "Exponential"),
    SchedulerInfo("polyexponential", "Polyexponential", default_rho=1.0),
    SchedulerInfo("sgm_uniform", "SGM Uniform", ("SGMUniform",), need_inner_model=True),
    SchedulerInfo("kl_optimal", "KL Optimal"),
    SchedulerInfo("align_your_steps", "Align Your Steps"),
    SchedulerInfo("simple", "Simple", need_inner_model=True),
    SchedulerInfo("normal", "Normal", need_inner_model=True),
    SchedulerInfo("ddim", "DDIM", need_inner_model=True),
    SchedulerInfo("beta", "Beta", need_inner_model=True),
)
"""A1111 1.10's schedulers ("Schedule type"), in its order."""

_SAMPLER_NAMES = {
    spelling: info.name for info in SAMPLERS for spelling in (info.name, *info.aliases)
}
_SCHEDULER_NAMES = {
    spelling.lower(): info.name
    for info in SCHEDULERS
    for spelling in (info.name, info.label, *(info.aliases or ()))
}
_LABELS = {info.name: info.label for info in SCHEDULERS}


def canonical_sampler(name: str) -> str:
    """A1111's name for a sampler name or alias ("k_euler_a" -> "Euler a"); others as is."""
    return _SAMPLER_NAMES.get(name, name)


def canonical_scheduler(name: str) -> str | None:
    """A1111's scheduler name for a name, label or alias, any case; None when unknown."""
    return _SCHEDULER_NAMES.get(name.strip().lower())


def scheduler_label(name: str | None) -> str | None:
    """The label A1111 writes as ``Schedule type`` ("karras" -> "Karras")."""
    return None if name is None else _LABELS.get(name, name)


def split_sampler(name: str) -> tuple[str, str | None]:
    """A combined name of A1111 before 1.9 as (sampler, scheduler): "DPM++ 2M Karras" ->
    ("DPM++ 2M", "karras"), as A1111 1.9+ reads it; any other name as (name, None)."""
    for info in SCHEDULERS:
        for option in (info.label, info.name, *(info.aliases or ())):
            suffix = f" {option}"
            base = name[: -len(suffix)]
            if name.endswith(suffix) and canonical_sampler(base) in _SAMPLER_NAMES.values():
                return canonical_sampler(base), info.name
    return canonical_sampler(name), None
