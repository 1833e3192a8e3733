"""ComfyUI's KSampler in A1111's names: the sampler and scheduler tables, the mapping of a
request to KSampler's ``sampler_name`` / ``scheduler``, and back from a history entry's graph
(what ran, for the record)."""

from __future__ import annotations

from typing import Any

from imagegate.errors import InvalidRequest
from imagegate.request import Reported
from imagegate.sampling import AUTOMATIC, split_sampler

__all__ = ["SAMPLERS", "SCHEDULES", "alike", "ksampler", "reported_by_history"]

SAMPLERS: dict[str, tuple[str, str | None]] = {
    "Euler a": ("euler_ancestral", "normal"),
    "Euler": ("euler", "normal"),
    "LMS": ("lms", "normal"),
    "Heun": ("heun", "normal"),
    "DPM2": ("dpm_2", "karras"),
    "DPM2 a": ("dpm_2_ancestral", "karras"),
    "DPM++ 2S a": ("dpmpp_2s_ancestral", "karras"),
    "DPM++ 2M": ("dpmpp_2m", "karras"),
    "DPM++ SDE": ("dpmpp_sde", "karras"),
    "DPM++ 2M SDE": ("dpmpp_2m_sde", "exponential"),
    "DPM++ 2M SDE Heun": ("dpmpp_2m_sde_heun", "exponential"),
    "DPM++ 3M SDE": ("dpmpp_3m_sde", "exponential"),
    "DPM fast": ("dpm_fast", "normal"),
    "DPM adaptive": ("dpm_adaptive", "normal"),
    "DDIM": ("ddim", "ddim_uniform"),
    "UniPC": ("uni_pc", "normal"),
    "LCM": ("lcm", None),
}
"""A1111 sampler -> (ComfyUI sampler_name, the scheduler of A1111's "Automatic" schedule).

None: no automatic schedule (LCM's comes from the model card); name one, e.g. "LCM Karras".
PLMS, Restart and DDIM CFG++ have no KSampler equivalent."""

SCHEDULES = {
    "karras": "karras",
    "exponential": "exponential",
    "sgm_uniform": "sgm_uniform",
    "kl_optimal": "kl_optimal",
    "simple": "simple",
    "normal": "normal",
    "ddim": "ddim_uniform",
    "beta": "beta",
    "uniform": "normal",
}
"""A1111 scheduler names -> ComfyUI schedulers ("automatic" is the sampler's own, above)."""


def ksampler(name: str, scheduler: str | None, provider: str) -> tuple[str, str]:
    """KSampler's (sampler_name, scheduler) for an A1111 sampler (or an old combined name)
    and scheduler; InvalidRequest naming those KSampler has otherwise."""
    base, schedule = split_sampler(name)  # the config may hold an old combined name
    schedule = scheduler or schedule
    known = SAMPLERS.get(base)
    if known is None:
        allowed = ", ".join(SAMPLERS)
        raise InvalidRequest(
            f"sampler: ComfyUI's KSampler has no equivalent of {name!r}. Use one of: {allowed}",
            field="sampler",
            limit=f"one of: {allowed}",
            provider=provider,
        )
    if schedule is not None and schedule != AUTOMATIC:
        if schedule not in SCHEDULES:
            allowed = ", ".join([AUTOMATIC, *SCHEDULES])
            raise InvalidRequest(
                f"scheduler: ComfyUI's KSampler has no equivalent of {schedule!r}. Use one "
                f"of: {allowed}",
                field="scheduler",
                limit=f"one of: {allowed}",
                provider=provider,
            )
        return known[0], SCHEDULES[schedule]
    if known[1] is None:
        labels = ", ".join(SCHEDULES)
        raise InvalidRequest(
            f"scheduler: {name!r} has no automatic schedule in ComfyUI; name one from its "
            f"model card ({labels}), e.g. scheduler 'karras'",
            field="scheduler",
            limit=f"one of: {labels}",
            provider=provider,
        )
    return known[0], known[1]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def alike(name: str, names: list[str]) -> str | None:
    """The checkpoint ComfyUI lists under a folder or with an extension that ``name`` lacks
    ("x.safetensors" for "x", "SD1.5/x.safetensors" for "x.safetensors")."""

    def stem(value: str) -> str:
        base = value.replace("\\", "/").rsplit("/", 1)[-1]
        return base.rsplit(".", 1)[0] if base.endswith((".safetensors", ".ckpt")) else base

    return next((n for n in names if stem(n) == stem(name)), None)


_SAMPLER_NODES = frozenset({"KSampler", "KSamplerAdvanced"})


def reported_by_history(prompt: Any) -> Reported | None:
    """What the history's graph says ran (``prompt`` is ``[number, id, graph, extra,
    outputs]``): the checkpoint, and the KSampler's sampler, scheduler, steps and cfg as A1111
    names them (ComfyUI's own name where A1111 has none); None without a KSampler."""
    graph = prompt[2] if isinstance(prompt, list | tuple) and len(prompt) > 2 else None
    if not isinstance(graph, dict):
        return None
    nodes = [n for n in graph.values() if isinstance(n, dict)]
    sampler = next((n for n in nodes if n.get("class_type") in _SAMPLER_NODES), None)
    if sampler is None:
        return None
    inputs = _dict(sampler.get("inputs"))
    checkpoint = next(
        (
            _dict(n.get("inputs")).get("ckpt_name")
            for n in nodes
            if n.get("class_type") == "CheckpointLoaderSimple"
        ),
        None,
    )
    name, schedule = inputs.get("sampler_name"), inputs.get("scheduler")
    a1111 = next((a for a, (comfy, _) in SAMPLERS.items() if comfy == name), name)
    automatic = SAMPLERS.get(a1111, ("", None))[1] if isinstance(a1111, str) else None
    scheduler = None
    if isinstance(schedule, str) and schedule != automatic:
        scheduler = next((a for a, comfy in SCHEDULES.items() if comfy == schedule), schedule)
    steps, cfg = inputs.get("steps"), inputs.get("cfg")
    return Reported(
        model=checkpoint if isinstance(checkpoint, str) else None,
        sampler=a1111 if isinstance(a1111, str) else None,
        scheduler=scheduler,
        steps=steps if isinstance(steps, int) and not isinstance(steps, bool) else None,
        guidance=float(cfg) if isinstance(cfg, int | float) and not isinstance(cfg, bool) else None,
    )
