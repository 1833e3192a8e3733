"""The request and result models: validated once, at the edge."""

from __future__ import annotations

import hashlib
import random
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from imagegate.attempts import Attempt, AttemptError, Outcome
from imagegate.errors import InvalidRequest
from imagegate.inputs import MAX_INPUT_IMAGES, InputImage, normalize_mask
from imagegate.sampling import AUTOMATIC, SCHEDULERS, canonical_scheduler, split_sampler

MAX_PROMPT_CHARS = 4000
MIN_SIDE = 64
MAX_SIDE = 2048
MAX_STEPS = 150
MAX_N = 8
MAX_GUIDANCE = 30.0
MAX_SEED = 2**32 - 1

Task = Literal["txt2img", "img2img", "inpaint", "variations"]
"""What a request asks of a provider; each provider declares the ones it can do."""

__all__ = [
    "MAX_GUIDANCE",
    "MAX_N",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "MAX_SIDE",
    "MAX_STEPS",
    "MIN_SIDE",
    "Attempt",
    "AttemptError",
    "GeneratedImage",
    "ImageRequest",
    "ImageResult",
    "InputImage",
    "Outcome",
    "Reported",
    "Task",
    "invalid_request_from",
    "parse_size",
    "seed_series",
]


_ENCODED_IMAGE = {
    "type": "string",
    "description": "a PNG, JPEG or WebP image as base64 or a data: URI",
}
"""How the JSON surfaces send an input image (the schema of ``images`` and ``mask``)."""


class ImageRequest(BaseModel):
    """One generation request (text to image, or an edit of ``images``); every limit is
    checked here and named when broken."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    negative_prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] = ""
    width: Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)] | None = None
    height: Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)] | None = None
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    guidance: Annotated[float, Field(ge=0.0, le=MAX_GUIDANCE)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    sampler: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    scheduler: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    provider: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    route: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    safety: bool = True
    output_format: Literal["png"] = "png"
    images: Annotated[
        tuple[InputImage, ...],
        Field(max_length=MAX_INPUT_IMAGES),
        WithJsonSchema(
            {"type": "array", "items": _ENCODED_IMAGE, "maxItems": MAX_INPUT_IMAGES},
            mode="validation",
        ),
    ] = ()
    """Input images (image to image, inpainting, variations); none = text to image."""
    mask: Annotated[
        InputImage | None,
        WithJsonSchema({"anyOf": [_ENCODED_IMAGE, {"type": "null"}]}, mode="validation"),
    ] = None
    """The area to repaint of the first image, in the internal form (inputs.normalize_mask)."""
    strength: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    """The share of the input re-noised (0-1); none = the provider's default."""
    inpaint_fill: Literal["fill", "original", "latent noise", "latent nothing"] = "original"
    mask_blur: Annotated[int, Field(ge=0, le=64)] = 4
    variation: bool = False
    """Variations of the first image, without following the prompt."""

    @property
    def task(self) -> Task:
        """What the request asks of a provider: txt2img, img2img, inpaint or variations."""
        if not self.images:
            return "txt2img"
        if self.variation:
            return "variations"
        return "inpaint" if self.mask is not None else "img2img"

    @model_validator(mode="before")
    @classmethod
    def _encoded_inputs(cls, data: Any) -> Any:
        """Input images sent as base64 or ``data:`` URIs (the JSON surfaces) or raw bytes are
        decoded and checked; a mask sent so is read as white = repaint, the first image's size
        (imagegate's native convention)."""
        if not isinstance(data, dict):
            return data
        images, mask = data.get("images"), data.get("mask")
        if isinstance(images, list | tuple) and any(isinstance(i, str | bytes) for i in images):
            if len(images) > MAX_INPUT_IMAGES:
                raise InvalidRequest(
                    f"images: at most {MAX_INPUT_IMAGES} images; got {len(images)}",
                    field="images",
                    limit=f"at most {MAX_INPUT_IMAGES}",
                    fix="Send fewer images and try again.",
                )
            images = tuple(_input(image, "images") for image in images)
            data = {**data, "images": images}
        if isinstance(mask, str | bytes):
            given = _input(mask, "mask")
            first = images[0] if isinstance(images, list | tuple) and images else None
            if isinstance(first, InputImage):
                given = normalize_mask(given, first, convention="white")
            data = {**data, "mask": given}
        return data

    @model_validator(mode="after")
    def _inputs_fit(self) -> ImageRequest:
        """A mask needs an image; a variation needs one and takes no mask."""
        if self.mask is not None and not self.images:
            raise _misfit("mask", "sent with an image to repaint", "send the image too")
        if self.variation and not self.images:
            raise _misfit("variation", "sent with an image", "send the image to vary")
        if self.variation and self.mask is not None:
            raise _misfit("mask", "left out of a variation", "send the mask without variation")
        return self

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    def seeds(self, *, low: int = 0, high: int = MAX_SEED) -> list[int]:
        """The seed of each of the ``n`` images: the request's seed (else one drawn at random
        in ``[low, high]``, the range the provider takes) and the next ones (see
        :func:`seed_series`). A seed the request names is never changed: outside the range,
        its series runs over every seed imagegate takes and the provider has the last word."""
        if self.seed is None:
            return seed_series(random.randint(low, high), self.n, low=low, high=high)
        if not low <= self.seed <= high:
            low, high = 0, MAX_SEED
        return seed_series(self.seed, self.n, low=low, high=high)

    @model_validator(mode="before")
    @classmethod
    def _sampling(cls, data: Any) -> Any:
        """Split a combined sampler name ("DPM++ 2M Karras") as A1111 1.9+ does, and spell
        the scheduler as A1111 names it ("Karras" -> "karras"); "automatic" is no scheduler."""
        if not isinstance(data, dict):
            return data
        sampler, scheduler = data.get("sampler"), data.get("scheduler")
        if isinstance(scheduler, str) and scheduler:
            known = canonical_scheduler(scheduler)
            if known is None:
                allowed = ", ".join(info.name for info in SCHEDULERS)
                raise InvalidRequest(
                    f"scheduler: {_short(scheduler)} is not a scheduler; use one of: {allowed}",
                    field="scheduler",
                    limit=f"one of: {allowed}",
                    fix="Change scheduler and try again.",
                )
            scheduler = known
        if isinstance(sampler, str) and sampler:
            sampler, suffix = split_sampler(sampler)
            scheduler = suffix or scheduler
        data = {**data, "sampler": sampler, "scheduler": scheduler}
        if data["scheduler"] in (AUTOMATIC, None):
            data.pop("scheduler")
        if data["sampler"] is None:
            data.pop("sampler")
        return data

    @classmethod
    def parse(cls, data: dict[str, Any]) -> ImageRequest:
        """Validate ``data``, raising InvalidRequest that names the field and the limit."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise invalid_request_from(exc) from None


def seed_series(seed: int, n: int, *, low: int = 0, high: int = MAX_SEED) -> list[int]:
    """The seeds of ``n`` images made from ``seed``: ``seed``, ``seed + 1``, ..., wrapping
    around within ``[low, high]`` (as A1111 numbers a batch)."""
    span = high - low + 1
    return [low + (seed - low + i) % span for i in range(n)]


_SIZE = re.compile(r"\s*(\d{1,5})\s*[xX*]\s*(\d{1,5})\s*")


def parse_size(size: str, *, field: str = "size") -> dict[str, int]:
    """``"512x512"`` (or ``512X512``, ``512*512``) as ``{"width": 512, "height": 512}``;
    InvalidRequest naming ``field`` otherwise. The limits are ImageRequest's to check."""
    match = _SIZE.fullmatch(size)
    if match is None or match[1].startswith("0") or match[2].startswith("0"):
        raise InvalidRequest(
            f"{field}: must look like WIDTHxHEIGHT, e.g. 512x512; got {_short(size)}",
            field="size",
            limit="WIDTHxHEIGHT",
            fix=f"Change {field} and try again.",
        )
    return {"width": int(match[1]), "height": int(match[2])}


def _input(value: Any, field: str) -> Any:
    """One input image as sent: base64 text, raw bytes, or already an InputImage (or its
    stored form, left to validation)."""
    if isinstance(value, str):
        return InputImage.from_text(value, field=field)
    if isinstance(value, bytes):
        return InputImage.from_bytes(value, field=field)
    return value


def _misfit(field: str, limit: str, fix: str) -> InvalidRequest:
    return InvalidRequest(
        f"{field}: must be {limit}", field=field, limit=limit, fix=f"{fix.capitalize()}."
    )


def invalid_request_from(exc: ValidationError) -> InvalidRequest:
    """Turn pydantic's first complaint into one InvalidRequest naming the field and limit."""
    err = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in err["loc"]) or "request"
    limit = _describe_limit(err)
    return InvalidRequest(
        f"{field}: {limit}; got {_short(err.get('input'))}. Change {field} and try again.",
        field=field,
        limit=limit,
        fix=f"Change {field} and try again.",
    )


def _describe_limit(err: Any) -> str:
    ctx = err.get("ctx") or {}
    kind = err["type"]
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else str(err["msg"]).lower()
    if kind == "multiple_of":
        return f"must be a multiple of {ctx['multiple_of']}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bounds = {
            "width": (MIN_SIDE, MAX_SIDE),
            "height": (MIN_SIDE, MAX_SIDE),
            "steps": (1, MAX_STEPS),
            "n": (1, MAX_N),
            "guidance": (0.0, MAX_GUIDANCE),
            "seed": (0, MAX_SEED),
        }.get(str(err["loc"][0]))
        if bounds:
            return f"must be between {bounds[0]} and {bounds[1]}"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return str(err["msg"]).lower()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Reported(BaseModel):
    """What the backend itself reports it ran for one image (A1111's ``info``, ComfyUI's
    history); None where it says nothing. ``infotext`` is the backend's own ``parameters``
    text, kept as it wrote it."""

    model: str | None = None
    model_hash: str | None = None
    sampler: str | None = None
    scheduler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    infotext: str | None = None


class GeneratedImage(BaseModel):
    """One image: PNG bytes and what made it; ``id`` and ``path`` once stored."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    png: bytes = Field(repr=False, exclude=True)
    width: int
    height: int
    seed: int
    sha256: str = ""
    id: str | None = None
    path: str | None = None
    reported: Reported | None = Field(default=None, exclude=True)

    def model_post_init(self, context: Any, /) -> None:
        if not self.sha256:
            self.sha256 = hashlib.sha256(self.png).hexdigest()


class ImageResult(BaseModel):
    """What a generation returns: the images and how they were made."""

    images: list[GeneratedImage]
    provider: str
    model: str
    attempts: list[Attempt]
    elapsed_s: float
    request: ImageRequest
    job_id: str | None = None

    def summary(self) -> dict[str, Any]:
        """The design's JSON shape of a result (CLI ``--json``)."""
        return {
            "provider": self.provider,
            "model": self.model,
            "elapsed_s": round(self.elapsed_s, 3),
            "images": [
                img.model_dump(include={"id", "path", "width", "height", "seed", "sha256"})
                for img in self.images
            ],
            "attempts": [a.model_dump() for a in self.attempts],
        }
