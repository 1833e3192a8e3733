"""Gradio's HTTP protocol as the gradio provider speaks it: the app's API info, the request
values in endpoint order, the SSE answer stream, and the files it returns.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from imagegate.providers.base import Progress
from imagegate.request import ImageRequest
from imagegate.transport import StreamResponse

IMAGE_COMPONENTS = frozenset({"Image", "Gallery", "ImageEditor", "ImageSlider"})
RANDOMIZE_SEED = ("randomize_seed", "random_seed")  # sent as False so the app uses our seed


@dataclass(frozen=True)
class Endpoint:
    """One named endpoint of the app, as /info describes it, and how a request fills it."""

    api_name: str  # without the leading slash
    fn_index: int | None
    parameters: list[dict[str, Any]]
    returns: list[dict[str, Any]]
    fields: dict[str, str]  # request field -> parameter name


def param_name(param: Mapping[str, Any]) -> str:
    name = param.get("parameter_name")
    if isinstance(name, str) and name:
        return name
    return re.sub(r"\W+", "_", str(param.get("label") or "")).strip("_").lower()


def returns_image(endpoint: Any) -> bool:
    returns = endpoint.get("returns") if isinstance(endpoint, dict) else None
    return any(
        isinstance(r, dict) and r.get("component") in IMAGE_COMPONENTS for r in returns or []
    )


def fn_index(dependencies: list[Any], api_name: str) -> int | None:
    """The endpoint's fn_index (its dependency ``id``, or its position in Gradio 4)."""
    for position, dep in enumerate(dependencies):
        if isinstance(dep, dict) and str(dep.get("api_name") or "").strip("/") == api_name:
            found = dep.get("id", position)
            return found if isinstance(found, int) else position
    return None


def request_values(
    request: ImageRequest, seed: int | None, files: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The request's fields by name; None (or an empty negative prompt) = not given.

    ``files``: the uploaded input images' FileData by field ("image", "mask"); for a check
    before the upload, any non-None value per input the request has."""
    files = files or {}
    return {
        "prompt": request.prompt, "negative_prompt": request.negative_prompt or None,
        "seed": seed, "width": request.width, "height": request.height, "steps": request.steps,
        "guidance": request.guidance, "sampler": request.sampler,
        "strength": request.strength, "image": files.get("image"), "mask": files.get("mask"),
    }  # fmt: skip


def call_data(
    endpoint: Endpoint, request: ImageRequest, seed: int, files: Mapping[str, Any] | None = None
) -> list[Any]:
    """The call's positional data: the request's fields where mapped, the app's defaults else."""
    values = request_values(request, seed, files)
    given = {name: values[f] for f, name in endpoint.fields.items() if values[f] is not None}
    data: list[Any] = []
    for param in endpoint.parameters:
        name = param_name(param)
        if name in given:
            data.append(given[name])
        elif name in RANDOMIZE_SEED:
            data.append(False)
        else:
            data.append(
                param.get("parameter_default") if param.get("parameter_has_default") else None
            )
    return data


async def sse(stream: StreamResponse) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) pairs of a server-sent event stream; data parsed as JSON when it is."""
    event: str | None = None
    lines: list[str] = []
    async for line in stream.aiter_lines():
        if line:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                lines.append(value)
            continue
        if event is not None or lines:
            yield event or "message", json_or_text("\n".join(lines))
        event, lines = None, []
    if event is not None or lines:
        yield event or "message", json_or_text("\n".join(lines))


def json_or_text(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def progress_of(data: Any) -> Progress | None:
    """Progress from a ``progress`` event: ``progress_data`` of ``{index, length}``."""
    units = data.get("progress_data") if isinstance(data, dict) else data
    if isinstance(units, list) and units and isinstance(units[-1], dict):
        index, length = units[-1].get("index"), units[-1].get("length")
        if isinstance(index, int) and isinstance(length, int) and 0 <= index <= length:
            return Progress(index, length)
    return None


def files(outputs: Any) -> Iterator[dict[str, Any]]:
    """File data in the outputs, depth first: an Image's dict or a Gallery's ``image`` items."""
    if isinstance(outputs, dict):
        if isinstance(outputs.get("path"), str) or isinstance(outputs.get("url"), str):
            yield outputs
            return
        for value in outputs.values():
            yield from files(value)
    elif isinstance(outputs, list):
        for value in outputs:
            yield from files(value)


def seed_of(endpoint: Endpoint, outputs: Any, sent: int) -> int:
    """The seed a numeric output labelled "seed" reports, else the one sent."""
    if isinstance(outputs, list):
        for spec, value in zip(endpoint.returns, outputs, strict=False):
            label = str(spec.get("label") or "") if isinstance(spec, dict) else ""
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if "seed" in label.lower() and number and value >= 0:
                return int(value)
    return sent
