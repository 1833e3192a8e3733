"""ComfyUI (``type = "comfyui"``): a workflow graph queued on a ComfyUI server.

Each image is one prompt (ComfyUI's word for a queued graph): the workflow, in ComfyUI's API
format, with its ``{{placeholders}}`` filled in, is posted to ``/prompt`` with our
``client_id`` and a ``prompt_id`` we choose; all n prompts are queued at once, then each is
awaited in turn. Its images are read from ``/history/{prompt_id}`` and ``/view``.

Progress and completion: a WebSocket on ``/ws?clientId=`` (the only channel with sampler
steps; opened first, as ComfyUI sends a prompt's events only to a socket already there, and
waited for 0.3 s at most) reports ``progress`` messages and wakes the wait as soon as a
prompt ends; the history endpoint is polled all the same, with a growing interval, and is
what decides the outcome. So a socket that cannot connect (a proxy without WebSocket
upgrades) only costs the progress reports. ``websocket = false`` turns it off.

Seeds: ComfyUI has no "random" seed, so one is always chosen here. ``n > 1`` queues n prompts
seeded seed, seed+1, ... with a batch size of 1: a batch of n would draw every image's noise
from one generator, and no image but the first could be regenerated from its own seed.

The built-in workflow (``comfyui_workflow.json``) is the minimal text-to-image graph:
CheckpointLoaderSimple, two CLIPTextEncode, EmptyLatentImage, KSampler, VAEDecode and
SaveImage. ``workflow = "file.json"`` brings your own (exported with "Export (API)"); a string
value that is exactly ``"{{name}}"`` is replaced by the typed value, and ``{{name}}`` inside a
longer string by its text. The placeholders (``PLACEHOLDERS``): prompt, negative_prompt,
seed, width, height, steps, cfg, sampler_name, scheduler, checkpoint, filename_prefix;
``{{prompt}}`` and ``{{seed}}`` are required, so the prompt is used and the seed is known.
Edits (img2img, inpaint) run their own workflows, with the input image uploaded first: see
``comfyui_edit``.

Samplers are AUTOMATIC1111 names, mapped to ComfyUI's ``sampler_name`` and ``scheduler``
as providers.md section 10 tabulates (A1111 >= 1.9 "Automatic" schedules: Karras for the
DPM2/DPM++ 2M/2S a/SDE family, Exponential for the 2M SDE/3M SDE family); the request's
``scheduler`` (an A1111 scheduler name) picks another ("karras" -> karras, "ddim" ->
ddim_uniform, "uniform" -> normal); PLMS, Restart, DDIM CFG++, polyexponential and
align_your_steps have no KSampler equivalent and are refused at the edge (the tables and
the mapping both ways are in ``comfyui_sampling``).

Cancel: pending prompts are deleted from the queue and the running one is interrupted (also
when the attempt fails or times out). ComfyUI has no auth; ``api_key_env`` sends a Bearer
token for a reverse proxy in front of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, PositiveFloat, model_validator

from imagegate.errors import (
    ConfigError,
    ConnectError,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    Timeout,
    UpstreamError,
)
from imagegate.providers.base import (
    Deadline,
    Progress,
    ProgressCallback,
    ProviderConfig,
    RemoteConfig,
)
from imagegate.providers.comfyui_edit import TEMPLATES, ComfyUIEditSettings, edit_values
from imagegate.providers.comfyui_sampling import (
    SAMPLERS,
    SCHEDULES,
    alike,
    ksampler,
    reported_by_history,
)
from imagegate.providers.edits import require
from imagegate.providers.remote import RemoteProvider
from imagegate.request import GeneratedImage, ImageRequest
from imagegate.sampling import AUTOMATIC, split_sampler
from imagegate.transport import Response, protocol_error, raise_for_status, redact
from imagegate.transport.trust import trust_context

__all__ = ["PLACEHOLDERS", "SAMPLERS", "SCHEDULES", "ComfyUIConfig", "ComfyUIProvider"]

log = logging.getLogger(__name__)
# The websockets library logs every handshake header (a proxy's Bearer token too) at DEBUG;
# its logger stays at INFO so that never happens.
_WS_LOG = logging.getLogger(f"{__name__}.websocket")
_WS_LOG.setLevel(logging.INFO)

PLACEHOLDERS = (
    "prompt", "negative_prompt", "seed", "width", "height", "steps", "cfg", "sampler_name",
    "scheduler", "checkpoint", "filename_prefix",
)  # fmt: skip
_REQUIRED = ("prompt", "seed")
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
# The placeholder a node input holds -> the field to name when ComfyUI refuses that input.
_FIELDS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "seed": "seed",
    "width": "width",
    "height": "height",
    "steps": "steps",
    "cfg": "guidance",
    "sampler_name": "sampler",
    "scheduler": "sampler",
    "checkpoint": "checkpoint",
    "filename_prefix": "filename_prefix",
    "image": "images",
    "mask": "mask",
    "denoise": "strength",
}

_POLL_CAP_S = 2.0  # the history polling interval grows to this at most
_CLEANUP_S = 2.0  # the time allowed to delete and interrupt after a cancel or failure
_WS_WAIT_S = 0.3  # how long the first prompt waits for the socket to be connected


class ComfyUIConfig(RemoteConfig, ComfyUIEditSettings):
    """Settings of a ComfyUI provider; width..sampler are used when the request has none."""

    type: Literal["comfyui"] = Field(default="comfyui", description="A ComfyUI server.")
    url: str | None = Field(default="http://127.0.0.1:8188", description="ComfyUI's base URL.")
    checkpoint: str | None = Field(
        default=None,
        description="The ckpt_name (a file under ComfyUI's models/checkpoints) for "
        "{{checkpoint}}; required unless `workflow` is set.",
    )
    workflow: str | None = Field(
        default=None,
        description="An API-format workflow file with {{placeholders}}; none = the built-in "
        "text-to-image one.",
    )
    api_key_env: str | None = Field(
        default=None,
        description="The environment variable holding a Bearer token for a reverse proxy in "
        "front of ComfyUI (ComfyUI itself has no auth).",
    )
    width: int = Field(
        default=512,
        ge=16,
        le=16384,
        multiple_of=8,
        description="Width when the request has none (16-16384, a multiple of 8).",
    )
    height: int = Field(
        default=512,
        ge=16,
        le=16384,
        multiple_of=8,
        description="Height when the request has none (16-16384, a multiple of 8).",
    )
    steps: int = Field(
        default=20, ge=1, le=10000, description="Steps when the request has none (1-10000)."
    )
    guidance: float = Field(
        default=8.0, ge=0.0, le=100.0, description="CFG when the request has none (0-100)."
    )
    sampler: str = Field(
        default="Euler",
        description="An A1111 sampler name, mapped to ComfyUI's sampler_name and scheduler.",
    )
    filename_prefix: str = Field(
        default="imagegate",
        min_length=1,
        description="The SaveImage prefix of the files ComfyUI writes.",
    )
    websocket: bool = Field(
        default=True, description="Read progress from /ws; false = poll /history only."
    )
    poll_interval_s: PositiveFloat = Field(
        default=0.25,
        description="The first wait between two polls of /history (> 0); it grows by half "
        "each time, to 2 s.",
    )

    @model_validator(mode="after")
    def _needs_checkpoint(self) -> ComfyUIConfig:
        if self.workflow is None and self.checkpoint is None:
            raise ValueError(
                "the built-in workflow needs a checkpoint: set checkpoint to a file under "
                "ComfyUI's models/checkpoints (see GET /models/checkpoints), or set workflow"
            )
        return self


@dataclass
class _Run:
    """One queued prompt: one image of the request."""

    index: int
    seed: int
    prompt_id: str
    submitted: bool = False
    finished: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class _Events:
    """Routes WebSocket messages to the runs, and folds their steps into one Progress."""

    def __init__(self, runs: list[_Run], callback: ProgressCallback | None) -> None:
        self.runs = {run.prompt_id: run for run in runs}
        self.n = len(runs)
        self.callback = callback
        self.last: Progress | None = None
        self.ready = asyncio.Event()  # the socket said hello, or gave up

    def rename(self, run: _Run, prompt_id: str) -> None:
        self.runs.pop(run.prompt_id, None)
        run.prompt_id = prompt_id
        self.runs[prompt_id] = run

    def handle(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("data"), dict):
            return
        kind, data = message.get("type"), message["data"]
        run = self.runs.get(str(data.get("prompt_id")))
        if run is None:
            return
        if kind == "progress":
            value, most = data.get("value"), data.get("max")
            if isinstance(value, int) and isinstance(most, int) and 0 <= value <= most > 0:
                self._emit(Progress(run.index * most + value, self.n * most))
        elif (kind == "executing" and data.get("node") is None) or kind in (
            "execution_success",
            "execution_error",
            "execution_interrupted",
        ):
            run.ended.set()

    def finish(self) -> None:
        if self.last is not None and self.last.step < self.last.steps:
            self._emit(Progress(self.last.steps, self.last.steps))

    def _emit(self, progress: Progress) -> None:
        if self.callback is not None and (self.last is None or progress != self.last):
            self.last = progress
            self.callback(progress)


class ComfyUIProvider(RemoteProvider):
    """Text to image on a ComfyUI server, through a workflow with placeholders."""

    type = "comfyui"
    Config = ComfyUIConfig
    config: ComfyUIConfig

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self.workflow, self._slots = _load_workflow(self.config, name)
        self._edits = _edit_workflows(self.config, name)
        # Edits only where their workflow loads (an instance value: it depends on the config).
        setattr(self, "capabilities", frozenset({"txt2img", *self._edits}))  # noqa: B010

    @property
    def model(self) -> str:
        """The checkpoint, or the workflow file when it names none."""
        return self.config.checkpoint or Path(self.config.workflow or "comfyui").name

    # -- public surface ------------------------------------------------------------------

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        """Queue one prompt per image, then await each; clean up the queue on any exit."""
        sampler_name, scheduler = self._sampler(request)
        headers = self._headers()
        task = require(self.name, self.capabilities, request)
        workflow, slots = self._edits.get(task, (self.workflow, self._slots))
        inputs = {}
        if task != "txt2img":
            inputs = await edit_values(self._http(), request, headers, deadline, self._error)
        runs = [_Run(i, seed, str(uuid.uuid4())) for i, seed in enumerate(request.seeds())]
        events = _Events(runs, progress)
        client_id = uuid.uuid4().hex
        listener = None
        if self.config.websocket:
            listener = asyncio.create_task(self._listen(client_id, headers, events))
            # ComfyUI sends a prompt's events only to a socket already there: wait a moment.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(events.ready.wait(), _WS_WAIT_S)
        try:
            for run in runs:
                values = self._values(request, run.seed, sampler_name, scheduler) | inputs
                graph = (workflow, slots)
                await self._submit(run, values, client_id, headers, deadline, events, graph)
            images: list[GeneratedImage] = []
            for run in runs:
                images += await self._wait(run, headers, deadline)
            events.finish()
            return images
        except BaseException:
            await self._clean_up(runs, headers)
            raise
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def probe(self, deadline: Deadline) -> str | None:
        """``GET /system_stats``; with a checkpoint, confirm ComfyUI has it."""
        http, headers = self._http(), self._headers()
        resp = await http.request("GET", "/system_stats", deadline=deadline, headers=headers)
        stats = self._json(resp)
        system = stats.get("system") if isinstance(stats, dict) else None
        version = system.get("comfyui_version") if isinstance(system, dict) else None
        detail = f"ComfyUI {version or '(version unknown)'}"
        if self.config.checkpoint is not None and "checkpoint" in self._slots.values():
            resp = await http.request(
                "GET", "/object_info/CheckpointLoaderSimple", deadline=deadline, headers=headers
            )
            names = _choices(self._json(resp), "CheckpointLoaderSimple", "ckpt_name")
            if self.config.checkpoint not in names:
                shown = ", ".join(names[:20]) or "none"
                near = alike(self.config.checkpoint, names)
                hint = f" (ComfyUI names it {near!r})" if near else ""
                raise InvalidRequest(
                    f"checkpoint: ComfyUI has no checkpoint {self.config.checkpoint!r}{hint}; "
                    f"it has: {shown}. Set checkpoint to one of them",
                    field="checkpoint",
                    limit=f"one of: {shown}",
                    provider=self.name,
                )
            detail += f", checkpoint {self.config.checkpoint} present"
        return detail

    def effective_params(self, request: ImageRequest) -> dict[str, Any]:
        """The steps, A1111 sampler and scheduler names and guidance put into the workflow."""
        sampler, scheduler = split_sampler(request.sampler or self.config.sampler)
        return {
            "steps": request.steps or self.config.steps,
            "sampler": sampler,
            "scheduler": request.scheduler or scheduler,
            "guidance": self.config.guidance if request.guidance is None else request.guidance,
        }

    def samplers(self) -> tuple[str, ...] | None:
        """The A1111 samplers KSampler has an equivalent of."""
        return tuple(SAMPLERS)

    def schedulers(self) -> tuple[str, ...] | None:
        """Automatic, and the A1111 schedules KSampler has an equivalent of."""
        return (AUTOMATIC, *SCHEDULES)

    def describe(self) -> dict[str, Any]:
        """Name, type, checkpoint, url, the token's variable (never the token) and workflow."""
        info = super().describe()
        info.update(workflow=self.config.workflow or "built-in")
        return info

    # -- one request ---------------------------------------------------------------------

    def _sampler(self, request: ImageRequest) -> tuple[str, str]:
        """ComfyUI's (sampler_name, scheduler) for the request's A1111 sampler and scheduler."""
        return ksampler(request.sampler or self.config.sampler, request.scheduler, self.name)

    def _values(
        self, request: ImageRequest, seed: int, sampler_name: str, scheduler: str
    ) -> dict[str, Any]:
        cfg, params = self.config, self.effective_params(request)
        return {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "seed": seed,
            "width": request.width or cfg.width,
            "height": request.height or cfg.height,
            "steps": params["steps"],
            "cfg": float(params["guidance"]),
            "sampler_name": sampler_name,
            "scheduler": scheduler,
            "checkpoint": request.model or cfg.checkpoint or "",
            "filename_prefix": cfg.filename_prefix,
        }

    async def _submit(
        self,
        run: _Run,
        values: dict[str, Any],
        client_id: str,
        headers: dict[str, str],
        deadline: Deadline,
        events: _Events,
        graph: tuple[dict[str, Any], dict[tuple[str, str], str]] | None = None,
    ) -> None:
        workflow, slots = graph or (self.workflow, self._slots)
        body = {
            "prompt": _fill(workflow, values),
            "client_id": client_id,
            "prompt_id": run.prompt_id,
        }
        try:
            resp = await self._http().request(
                "POST", "/prompt", deadline=deadline, json=body, headers=headers
            )
        except (Timeout, ConnectError) as exc:
            # Sent but unanswered: it may sit in the queue, so the clean-up must remove it.
            run.submitted = exc.stage in ("first_byte", "read")
            raise
        run.submitted = resp.ok
        if not resp.ok:
            raise _map_error(resp, self.name, slots)
        data = self._json(resp)
        answered = data.get("prompt_id") if isinstance(data, dict) else None
        if not isinstance(answered, str) or not answered:
            raise _protocol(resp, self.name, "the answer to /prompt has no prompt_id")
        if answered != run.prompt_id:  # a ComfyUI older than client-chosen ids
            events.rename(run, answered)

    async def _wait(
        self, run: _Run, headers: dict[str, str], deadline: Deadline
    ) -> list[GeneratedImage]:
        """Poll /history until the prompt is there (sooner when the socket says it ended)."""
        started = time.monotonic()
        interval = self.config.poll_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.ended.wait(), min(interval, deadline.remaining()))
            if deadline.expired:
                raise Timeout(
                    f"prompt {run.prompt_id} did not finish before the request deadline (it "
                    "was removed from ComfyUI's queue); raise gateway.deadline_s or the "
                    "provider's timeout_s, or ask for fewer steps",
                    provider=self.name,
                    stage="total",
                    elapsed_s=round(time.monotonic() - started, 3),
                )
            interval = min(interval * 1.5, max(_POLL_CAP_S, self.config.poll_interval_s))
            resp = await self._http().request(
                "GET", f"/history/{run.prompt_id}", deadline=deadline, headers=headers
            )
            history = self._json(resp)
            entry = history.get(run.prompt_id) if isinstance(history, dict) else None
            if isinstance(entry, dict):
                run.finished = True
                return await self._collect(run, entry, headers, deadline)

    async def _collect(
        self, run: _Run, entry: dict[str, Any], headers: dict[str, str], deadline: Deadline
    ) -> list[GeneratedImage]:
        status = _dict(entry.get("status"))
        messages = status.get("messages")
        if status.get("status_str") == "error":
            raise _execution_failed(run.prompt_id, _list(messages), self.name)
        outputs = _dict(entry.get("outputs"))
        files = [
            image
            for output in outputs.values()
            if isinstance(output, dict) and isinstance(output.get("images"), list)
            for image in output["images"]
            if isinstance(image, dict) and image.get("type", "output") == "output"
        ]
        if not files:
            raise ProtocolError(
                f"prompt {run.prompt_id} finished without saving an image; the workflow needs "
                "a SaveImage node",
                provider=self.name,
            )
        reported = reported_by_history(entry.get("prompt"))
        images = []
        for file in files:
            params = {
                "filename": str(file.get("filename", "")),
                "subfolder": str(file.get("subfolder", "")),
                "type": "output",
            }
            resp = await self._http().request(
                "GET", "/view", deadline=deadline, params=params, headers=headers
            )
            if not resp.ok:
                raise _map_error(resp, self.name)
            png = resp.content
            if not png.startswith(b"\x89PNG\r\n\x1a\n") or png[12:16] != b"IHDR":
                raise _protocol(resp, self.name, f"{params['filename']} is not a PNG")
            width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
            images.append(
                GeneratedImage(
                    png=png, width=width, height=height, seed=run.seed, reported=reported
                )
            )
        return images

    async def _clean_up(self, runs: list[_Run], headers: dict[str, str]) -> None:
        """Delete the prompts still queued and interrupt the one running; never raises."""
        left = [run.prompt_id for run in runs if run.submitted and not run.finished]
        if not left:
            return
        deadline = Deadline(_CLEANUP_S)
        with contextlib.suppress(ProviderError):
            http = self._http()
            await http.request(
                "POST", "/queue", deadline=deadline, json={"delete": left}, headers=headers
            )
            await http.request(
                "POST", "/interrupt", deadline=deadline, json={"prompt_id": left[0]},
                headers=headers,
            )  # fmt: skip

    async def _listen(self, client_id: str, headers: dict[str, str], events: _Events) -> None:
        """Feed ``events`` from the WebSocket until cancelled; a failure only ends progress."""
        from websockets.asyncio.client import connect

        parts = urlsplit(self.config.url or "")
        scheme = "wss" if parts.scheme == "https" else "ws"
        path = parts.path.rstrip("/") + "/ws"
        uri = urlunsplit((scheme, parts.netloc, path, f"clientId={client_id}", ""))
        tls: dict[str, Any] = {}
        if scheme == "wss":
            tls["ssl"] = trust_context(self.config.ca_file)
        try:
            async with connect(
                uri,
                additional_headers=headers,
                open_timeout=self.config.connect_timeout_s + self.config.tls_timeout_s,
                max_size=2**26,
                logger=_WS_LOG,
                **tls,
            ) as socket:
                async for message in socket:
                    events.ready.set()
                    if isinstance(message, str):
                        with contextlib.suppress(ValueError):
                            events.handle(json.loads(message))
        except Exception as exc:  # refused, upgrade refused, dropped: progress ends there
            log.debug(
                "%s: no progress from the websocket (%s); polling /history only",
                self.name,
                redact(f"{type(exc).__name__}: {exc}", [self._key or ""]),
            )
        finally:
            events.ready.set()

    # -- plumbing ------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        key = self._api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _error(self, resp: Response) -> ProviderError:
        return _map_error(resp, self.name)


# --------------------------------------------------------------------------- workflows


def _edit_workflows(
    config: ComfyUIConfig, provider: str
) -> dict[str, tuple[dict[str, Any], dict[tuple[str, str], str]]]:
    """The edit tasks' workflows: a built-in one is skipped when it cannot run (no checkpoint),
    a configured one that does not load is a ConfigError."""
    found = {}
    for task, template in TEMPLATES.items():
        if task == "txt2img":
            continue
        if getattr(config, template.setting) is None and config.checkpoint is None:
            continue
        found[task] = _load_workflow(config, provider, task)
    return found


def _load_workflow(
    config: ComfyUIConfig, provider: str, task: str = "txt2img"
) -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    """The workflow graph and, per (node id, input), the placeholder it holds."""
    template = TEMPLATES[task]
    key = f"providers.{provider}.{template.setting}"
    path: str | None = getattr(config, template.setting)
    if path is None:
        text = resources.files("imagegate.providers").joinpath(template.builtin)
        graph = json.loads(text.read_text(encoding="utf-8"))
    else:
        try:
            graph = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read {path} ({exc.strerror})", key=key) from exc
        except ValueError as exc:
            raise ConfigError(f"{path} is not JSON ({exc})", key=key) from exc
    if isinstance(graph, dict) and isinstance(graph.get("nodes"), list):
        raise ConfigError(
            f"{path} is a UI workflow; export it from ComfyUI with "
            "'Export (API)' and point workflow at that file",
            key=key,
        )
    if not isinstance(graph, dict) or not all(
        isinstance(node, dict) and "class_type" in node and isinstance(node.get("inputs"), dict)
        for node in graph.values()
    ):
        raise ConfigError(
            f"{path} is not an API-format workflow (node id -> {{class_type, "
            "inputs}}); export it with 'Export (API)'",
            key=key,
        )
    slots: dict[tuple[str, str], str] = {}
    found: set[str] = set()
    for node_id, node in graph.items():
        for name, value in node["inputs"].items():
            if isinstance(value, str):
                names = _PLACEHOLDER.findall(value)
                found.update(names)
                if names:
                    slots[(str(node_id), name)] = names[0]
    unknown = sorted(found - {*PLACEHOLDERS, *template.placeholders})
    if unknown:
        raise ConfigError(
            f"{path} uses unknown placeholders {unknown}",
            key=key,
            allowed=[f"{{{{{p}}}}}" for p in (*PLACEHOLDERS, *template.placeholders)],
        )
    missing = [name for name in (*_REQUIRED, *template.required) if name not in found]
    if missing:
        raise ConfigError(
            f"{path} lacks {', '.join(f'{{{{{m}}}}}' for m in missing)}; put it "
            "where the prompt text, the sampler's seed (and LoadImage's image, the mask's "
            "loader) go, so each is what was asked",
            key=key,
        )
    if "checkpoint" in found and config.checkpoint is None:
        raise ConfigError(
            f"{path} uses {{{{checkpoint}}}}; set checkpoint as well",
            key=f"providers.{provider}.checkpoint",
        )
    return graph, slots


def _fill(value: Any, values: dict[str, Any]) -> Any:
    """``value`` with every placeholder replaced: typed when it is the whole string."""
    if isinstance(value, dict):
        return {key: _fill(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, values) for item in value]
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), value)
    return value


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _choices(info: Any, node: str, name: str) -> list[str]:
    """The options of a combo input in an /object_info answer (old and v3 node shapes)."""
    try:
        spec = info[node]["input"]["required"][name]
    except (KeyError, TypeError):
        return []
    if isinstance(spec, list) and spec and isinstance(spec[0], list):
        return [str(option) for option in spec[0]]
    if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict):
        return [str(option) for option in spec[1].get("options", [])]
    return []


# --------------------------------------------------------------------------- errors


def _protocol(resp: Response, provider: str, what: str) -> ProtocolError:
    return protocol_error(resp, provider, what, "check that the url is a ComfyUI server")


def _execution_failed(prompt_id: str, messages: list[Any], provider: str) -> UpstreamError:
    """A prompt whose history says "error": what its execution_error or interruption said."""
    for entry in messages:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict)):
            continue
        kind, data = entry
        node = f"node {data.get('node_id')} ({data.get('node_type')})"
        if kind == "execution_error":
            said = f"{data.get('exception_type')}: {data.get('exception_message')}".strip()
            return UpstreamError(
                f"prompt {prompt_id} failed in {node}: {redact(said)[:300]}; check ComfyUI's "
                "log and the workflow, or route elsewhere",
                provider=provider,
            )
        if kind == "execution_interrupted":
            return UpstreamError(
                f"prompt {prompt_id} was interrupted in {node} by another client of ComfyUI; "
                "try again",
                provider=provider,
            )
    return UpstreamError(
        f"prompt {prompt_id} ended with an error and no message; check ComfyUI's log",
        provider=provider,
    )


def _map_error(
    resp: Response, provider: str, slots: dict[tuple[str, str], str] | None = None
) -> ProviderError:
    """A non-2xx ComfyUI answer as an error of the tree: the one place statuses are mapped.

    400 from /prompt -> InvalidRequest naming the node input ComfyUI refused (its
    ``node_errors``), or the workflow for a graph-wide error (``missing_node_type``,
    ``prompt_no_outputs``...). Anything else as the transport's defaults: 401/403 (a reverse
    proxy) AuthError, 404 InvalidRequest (wrong url), 503 Unavailable, other 5xx UpstreamError.
    """
    body: Any = None
    with contextlib.suppress(ProtocolError):
        body = resp.json()
    if resp.status == 400 and isinstance(body, dict) and "error" in body:
        kw: dict[str, Any] = {"provider": provider, "elapsed_s": round(resp.timings.total_s, 3)}
        for node_id, node in (body.get("node_errors") or {}).items():
            errors = node.get("errors") if isinstance(node, dict) else None
            if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
                continue
            first = errors[0]
            extra = _dict(first.get("extra_info"))
            input_name = str(extra.get("input_name") or "")
            where = f"node {node_id} ({node.get('class_type')}) input {input_name or '?'}"
            placeholder = (slots or {}).get((str(node_id), input_name))
            field = _FIELDS.get(placeholder or "") or f"{node.get('class_type')}.{input_name}"
            said = redact(f"{first.get('type')}: {first.get('details') or first.get('message')}")
            return InvalidRequest(
                f"ComfyUI refused the workflow at {where}: {said[:400]}; fix {field}",
                field=field,
                **kw,
            )
        error = body["error"] if isinstance(body["error"], dict) else {"message": body["error"]}
        said = redact(f"{error.get('type')}: {error.get('message')} {error.get('details') or ''}")
        return InvalidRequest(
            f"ComfyUI refused the workflow: {said.strip()[:400]}; fix the workflow (a custom "
            "node missing on the server?)",
            field="workflow",
            **kw,
        )
    try:
        raise_for_status(resp, provider)
    except ProviderError as exc:
        return exc
    return UpstreamError(f"{resp.timings.host} answered {resp.status}", provider=provider)
