"""Gradio apps and Hugging Face Spaces (``type = "gradio"``), spoken over imagegate's own HTTP.

Why not ``gradio_client``: it has no TLS budget (httpx folds the handshake into one connect
timeout), its Hub calls run with ``timeout=None``, ``Client()`` polls a BUILDING Space every
2 s without limit, and ``predict()`` has no timeout; the story behind imagegate is calls to
RUNNING Spaces dying in the TLS handshake after 10-30 s. So this module speaks Gradio's small
HTTP protocol on ``imagegate.transport``: every call (Hub, config, join, stream, file) has
its per-stage budgets inside the request's deadline. One attempt, in stages:

1. Runtime (``space = "owner/name"`` only): ``GET {hub_url}/api/spaces/{owner}/{name}``
   gives ``runtime.stage`` and ``host``. RUNNING is trusted for ``RUNTIME_CACHE_S`` (no Hub
   call per request); any failure forgets it. SLEEPING/STOPPED with ``wake = true``: one
   background ``GET {host}/config`` (``WAKE_BUDGET_S``, never awaited) wakes it and the
   attempt fails at once with ``Unavailable(stage="runtime", retry_after=wake_retry_after_s)``;
   the router serves elsewhere and its background ``probe()`` (stage RUNNING and ``/config``
   answers) lets the Space rejoin. Other stages are Unavailable too, naming the fix.
2. Schema, kept until an attempt fails: ``GET /config`` (``api_prefix``: ``/gradio_api``
   since Gradio 5, empty before; ``dependencies`` give the ``fn_index``) and ``GET
   {prefix}/info``. Without ``api_name``, the first endpoint taking a prompt and returning
   an image. Fields map to parameters by name (``DEFAULT_PARAMS``) or by ``params``; a
   ``randomize_seed`` is sent False; other parameters keep the app's defaults; a request
   field with nowhere to go is refused, never dropped.
3. ``POST {prefix}/call/{api_name}`` ``{"data", "session_hash"}`` -> ``event_id``, then
   ``GET {prefix}/call/{api_name}/{event_id}``: SSE ``generating``, ``progress`` (reported
   when sent; Gradio 6 sends none here), ``heartbeat`` (every 15 s, within
   ``read_timeout_s``), ``complete`` (outputs) or ``error``.
4. The image's file data is fetched from ``{prefix}/file={path}`` in the same deadline and
   re-encoded as PNG (Gradio sends WebP). An output labelled "seed" is the seed reported.

Edits: with ``image_param`` (and ``mask_param``) set, the input images are uploaded first
and passed as FileData (``gradio_edit``). n > 1 is n calls seeded seed, seed+1, ...
Cancelling closes the stream and, in the background, ``POST {prefix}/cancel``
(``CANCEL_BUDGET_S``). The token (``token_env``) goes to the Hub as ``Authorization`` and to
the Space as ``x-hf-authorization`` (gradio_client's header, stripped by the Space proxy),
never elsewhere. Answers map in ``_map_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, PositiveFloat, model_validator

from imagegate.errors import (
    AuthError,
    ContentFiltered,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from imagegate.images import to_png
from imagegate.providers import gradio_protocol as proto
from imagegate.providers.base import (
    Deadline,
    ProgressCallback,
    Provider,
    ProviderConfig,
    RemoteConfig,
    read_secret,
)
from imagegate.providers.edits import require
from imagegate.providers.gradio_edit import GradioEditSettings, edit_params, upload_inputs
from imagegate.providers.gradio_edit import capabilities as edit_capabilities
from imagegate.providers.gradio_protocol import Endpoint
from imagegate.request import GeneratedImage, ImageRequest
from imagegate.transport import (
    Response,
    StageBudgets,
    StreamResponse,
    Transport,
    expect_json,
    parse_retry_after,
    raise_for_status,
    redact,
)

__all__ = ["DEFAULT_PARAMS", "GradioConfig", "GradioProvider"]

log = logging.getLogger(__name__)

RequestField = Literal[
    "prompt",
    "negative_prompt",
    "seed",
    "width",
    "height",
    "steps",
    "guidance",
    "sampler",
    "strength",
]

DEFAULT_PARAMS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "text", "positive_prompt"),
    "negative_prompt": ("negative_prompt", "negative", "neg_prompt"),
    "seed": ("seed",),
    "width": ("width",),
    "height": ("height",),
    "steps": ("steps", "num_inference_steps", "num_steps", "inference_steps"),
    "guidance": ("guidance", "guidance_scale", "cfg", "cfg_scale"),
    "sampler": ("sampler", "sampler_name"),
    "strength": ("strength", "denoising_strength", "denoise"),
}
"""Endpoint parameter names each request field goes to, in order of preference."""


RUNTIME_CACHE_S = 5.0  # a RUNNING stage is trusted this long before the Hub is asked again
HUB_BUDGET_S = 10.0  # first byte and read gaps of a Hub API call
WAKE_BUDGET_S = 10.0  # the background request that wakes a sleeping Space
CANCEL_BUDGET_S = 2.0  # the background POST /cancel after the caller cancelled
BROKEN_RETRY_AFTER_S = 300.0  # a paused or broken Space is not probed more often than this
SEED_LIMIT = 2**31 - 1  # Spaces commonly cap seed sliders at int32's maximum

RUNNING = frozenset({"RUNNING", "RUNNING_BUILDING"})
ASLEEP = frozenset({"SLEEPING", "STOPPED"})
STARTING = frozenset({"BUILDING", "APP_STARTING", "RUNNING_APP_STARTING"})
BROKEN: dict[str, str] = {
    "PAUSED": "only its owner can restart it: ask them, or take it off the route",
    "BUILD_ERROR": "its build failed: the owner must fix it (see the Space's logs)",
    "RUNTIME_ERROR": "the app crashed: the owner must restart or fix it (see its logs)",
    "CONFIG_ERROR": "its README configuration is wrong: the owner must fix it",
    "NO_APP_FILE": "it has no app file: the owner must add one",
    "DELETING": "it is being deleted: take it off the route",
}


GRADIO_CONCURRENCY = 2
"""Requests in flight to one Gradio app: one running, one waiting in the Space's queue."""


class GradioConfig(RemoteConfig, GradioEditSettings):
    """Settings of a Gradio app or a Hugging Face Space; ``space`` or ``url`` is required.

    With both, ``space`` is checked on the Hub (runtime stage, wake) and ``url`` overrides
    the Space's host (a mirror, a proxy, a test server).
    """

    type: Literal["gradio"] = Field(default="gradio", description="A Gradio app or a Space.")
    space: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$",
        description='A Hugging Face Space, "owner/name"; its runtime stage is read from the Hub.',
    )
    url: str | None = Field(
        default=None,
        description="The app's URL; with `space`, it overrides the Space's host (a mirror, a "
        "proxy).",
    )
    api_name: str | None = Field(
        default=None,
        min_length=1,
        description="The endpoint to call; none = the first that takes a prompt and returns "
        "an image.",
    )
    params: dict[RequestField, str] = Field(
        default_factory=dict,
        description="Request field -> the endpoint's parameter name, where the names differ.",
    )
    token_env: str | None = Field(
        default=None,
        description="The environment variable holding a Hugging Face token (private or "
        "ZeroGPU Spaces).",
    )
    wake: bool = Field(
        default=True,
        description="Wake a sleeping Space in the background while traffic goes elsewhere.",
    )
    concurrency: int = Field(
        default=GRADIO_CONCURRENCY,
        ge=1,
        le=1024,
        description="Requests sent to the app at once per process (1-1024); a Space queues "
        "them on its side, so a few keep it busy without flooding a shared free Space.",
    )
    wake_retry_after_s: PositiveFloat = Field(
        default=30.0,
        description="Seconds a waking Space stays off the route before the probe looks again "
        "(> 0).",
    )
    hub_url: str = Field(
        default="https://huggingface.co",
        description="The Hugging Face Hub asked for a Space's host and runtime stage.",
    )

    @model_validator(mode="after")
    def _space_or_url(self) -> GradioConfig:
        if not self.space and not self.url:
            raise ValueError('set space = "owner/name" or url = "http://host:port"')
        return self


@dataclass(frozen=True)
class _Runtime:
    stage: str
    host: str
    at: float


@dataclass(frozen=True)
class _App:
    host: str
    prefix: str
    version: str
    endpoint: Endpoint


class GradioProvider(Provider):
    """Text to image on a Gradio app or a Hugging Face Space, woken when it sleeps."""

    type = "gradio"
    Config = GradioConfig
    config: GradioConfig

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self._host_http: Transport | None = None
        self._hub_http: Transport | None = None
        self._runtime: _Runtime | None = None
        self._app: _App | None = None
        self._waking: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Edits only where configured (an instance value: it depends on the config).
        setattr(self, "capabilities", edit_capabilities(self.config))  # noqa: B010

    # -- public surface ------------------------------------------------------------------

    @property
    def model(self) -> str:
        return self.config.space or str(self.config.url)

    def endpoint(self) -> str | None:
        """The app's base URL: ``url``, else the Space's host (as the Hub last said)."""
        if self.config.url:
            return self.config.url.rstrip("/")
        if self._runtime is not None:
            return self._runtime.host
        return _default_host(self.config.space or "")

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        """Make ``request.n`` images, one call each, on a Space known to be running."""
        self._check_request(request)
        require(self.name, self.capabilities, request)
        token = self._token()
        seeds = request.seeds(high=SEED_LIMIT)
        with self._forget_on_failure():
            host = await self._ready_host(deadline, token)
            app = await self._schema(host, deadline, token)
        self._check_fields(app.endpoint, request)
        with self._forget_on_failure():
            files = None
            if request.images:
                files = await upload_inputs(
                    self._host(), f"{app.host}{app.prefix}", request, _space_auth(token),
                    deadline, lambda resp: _map_error(self.name, "upload", resp=resp),
                )  # fmt: skip
            return [
                await self._one(app, request, seed, deadline, token, progress, files)
                for seed in seeds
            ]

    async def probe(self, deadline: Deadline) -> str | None:
        """Stage RUNNING on the Hub (for a Space) and the app's /config and /info answer."""
        token = self._token()
        self._runtime = None
        self._app = None
        host = await self._ready_host(deadline, token)
        app = await self._schema(host, deadline, token)
        stage = f"{self._runtime.stage}, " if self._runtime is not None else ""
        return f"{stage}gradio {app.version}, endpoint /{app.endpoint.api_name}"

    async def aclose(self) -> None:
        """Stop background wake and cancel requests and close the connections."""
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for http in (self._host_http, self._hub_http):
            if http is not None:
                await http.aclose()
        self._host_http = self._hub_http = None

    def describe(self) -> dict[str, Any]:
        """Name, type, paid, plus the Space or URL, the endpoint and whether it wakes."""
        info = super().describe()
        info.update(
            space=self.config.space,
            url=self.endpoint(),
            api_name=self._app.endpoint.api_name if self._app else self.config.api_name,
            wake=self.config.wake,
        )
        return info

    # -- 1. runtime ------------------------------------------------------------------------

    async def _ready_host(self, deadline: Deadline, token: str | None) -> str:
        """The host to call, once the Hub says the Space runs; Unavailable when it does not."""
        space = self.config.space
        if not space:
            return str(self.config.url).rstrip("/")
        runtime = self._runtime
        if runtime is None or time.monotonic() - runtime.at > RUNTIME_CACHE_S:
            runtime = await self._fetch_runtime(space, deadline, token)
        if runtime.stage in RUNNING:
            self._runtime = runtime
            return runtime.host
        self._runtime = None
        if runtime.stage in ASLEEP and self.config.wake:
            self._wake(runtime.host, token)
        raise _not_running(self.name, space, runtime.stage, self.config)

    async def _fetch_runtime(self, space: str, deadline: Deadline, token: str | None) -> _Runtime:
        hub = self.config.hub_url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        resp = await self._hub().request(
            "GET", f"{hub}/api/spaces/{space}", deadline=deadline, headers=headers
        )
        if not resp.ok:
            raise _map_error(self.name, "hub", resp=resp)
        info = expect_json(resp)
        runtime = info.get("runtime") if isinstance(info, dict) else None
        stage = runtime.get("stage") if isinstance(runtime, dict) else None
        if not isinstance(stage, str):
            raise _map_error(self.name, "hub", detail="the Hub's answer has no runtime.stage")
        host = self.config.url or info.get("host")
        if not host and info.get("subdomain"):
            host = f"https://{info['subdomain']}.hf.space"
        return _Runtime(stage, str(host or _default_host(space)).rstrip("/"), time.monotonic())

    def _wake(self, host: str, token: str | None) -> None:
        """Send one request to a sleeping Space's host in the background; never awaited."""
        if self._waking is not None and not self._waking.done():
            return
        log.info("%s: waking the Space %s (one request to %s)", self.name, self.model, host)
        self._waking = self._spawn("GET", f"{host}/config", WAKE_BUDGET_S, token)

    # -- 2. schema -------------------------------------------------------------------------

    async def _schema(self, host: str, deadline: Deadline, token: str | None) -> _App:
        """The app's API prefix and chosen endpoint, read once and kept until a failure."""
        if self._app is not None and self._app.host == host:
            return self._app
        headers = _space_auth(token)
        resp = await self._host().request(
            "GET", f"{host}/config", deadline=deadline, headers=headers
        )
        if not resp.ok:
            raise _map_error(self.name, "config", resp=resp)
        config = expect_json(resp)
        if not isinstance(config, dict):
            raise _map_error(self.name, "config", detail="/config is not a JSON object")
        prefix = str(config.get("api_prefix") or "").rstrip("/")
        resp = await self._host().request(
            "GET", f"{host}{prefix}/info", deadline=deadline, headers=headers
        )
        if not resp.ok:
            raise _map_error(self.name, "info", resp=resp)
        info = expect_json(resp)
        named = info.get("named_endpoints") if isinstance(info, dict) else None
        if not isinstance(named, dict):
            raise _map_error(self.name, "info", detail="/info has no named_endpoints")
        endpoint = self._pick_endpoint(named, config.get("dependencies") or [])
        self._app = _App(host, prefix, str(config.get("version") or "?"), endpoint)
        return self._app

    def _pick_endpoint(self, named: Mapping[str, Any], dependencies: list[Any]) -> Endpoint:
        wanted = self.config.api_name
        names = sorted(named)
        if wanted is not None:
            key = "/" + wanted.strip("/")
            if key not in named:
                raise InvalidRequest(
                    f"api_name: the app has no endpoint {key!r} (it has: {', '.join(names)}); "
                    "set api_name to one of those",
                    field="api_name",
                    limit=f"one of {', '.join(names)}",
                    provider=self.name,
                )
            candidates = [key]
        else:
            candidates = [k for k in named if proto.returns_image(named[k])]
        for key in candidates:
            params = [p for p in named[key].get("parameters") or [] if isinstance(p, dict)]
            fields = self._map_fields(key, params, strict=wanted is not None)
            if fields is None:
                continue
            name = key.strip("/")
            return Endpoint(
                name,
                proto.fn_index(dependencies, name),
                params,
                named[key].get("returns") or [],
                fields,
            )
        raise InvalidRequest(
            f"api_name: no endpoint of the app takes a prompt and returns an image (it has: "
            f'{", ".join(names) or "none"}); set api_name, and params = {{ prompt = "..." }}',
            field="api_name",
            provider=self.name,
        )

    def _map_fields(
        self, key: str, params: list[dict[str, Any]], *, strict: bool
    ) -> dict[str, str] | None:
        """Request field -> parameter name for endpoint ``key``; None if prompt has no home."""
        available = [proto.param_name(p) for p in params]
        fields: dict[str, str] = {}
        for field, names in DEFAULT_PARAMS.items():
            found = next((n for n in names if n in available), None)
            if found is not None:
                fields[field] = found
        mapped: dict[str, str] = {str(k): v for k, v in self.config.params.items()}
        mapped.update(edit_params(self.config))
        for field, name in mapped.items():
            if name not in available:
                setting = f"{field}_param" if field in ("image", "mask") else f"params.{field}"
                raise InvalidRequest(
                    f"{setting}: endpoint {key} has no parameter {name!r} (it has: "
                    f"{', '.join(available)}); fix {setting}",
                    field=setting,
                    limit=f"one of {', '.join(available)}",
                    provider=self.name,
                )
            fields[field] = name
        if "prompt" not in fields:
            if strict:
                raise InvalidRequest(
                    f"params.prompt: no parameter of endpoint {key} is a prompt (it has: "
                    f'{", ".join(available)}); set params = {{ prompt = "<one of those>" }}',
                    field="params.prompt",
                    provider=self.name,
                )
            return None
        return fields

    # -- 3. one call -----------------------------------------------------------------------

    async def _one(
        self,
        app: _App,
        request: ImageRequest,
        seed: int,
        deadline: Deadline,
        token: str | None,
        progress: ProgressCallback | None,
        files: dict[str, Any] | None = None,
    ) -> GeneratedImage:
        endpoint = app.endpoint
        base = f"{app.host}{app.prefix}/call/{endpoint.api_name}"
        headers = _space_auth(token)
        session = uuid.uuid4().hex
        data = proto.call_data(endpoint, request, seed, files)
        body = {"data": data, "session_hash": session}
        resp = await self._host().request(
            "POST", base, deadline=deadline, json=body, headers=headers
        )
        if not resp.ok:
            raise _map_error(self.name, "call", resp=resp)
        answer = expect_json(resp)
        event_id = answer.get("event_id") if isinstance(answer, dict) else None
        if not isinstance(event_id, str):
            raise _map_error(self.name, "call", detail="the call's answer has no event_id")
        try:
            async with self._host().stream(
                "GET", f"{base}/{event_id}", deadline=deadline, headers=headers
            ) as stream:
                outputs = await self._outputs(stream, progress)
        except asyncio.CancelledError:
            if endpoint.fn_index is not None:
                ids = {"session_hash": session, "fn_index": endpoint.fn_index, "event_id": event_id}
                url = f"{app.host}{app.prefix}/cancel"
                self._spawn("POST", url, CANCEL_BUDGET_S, token, ids)
            raise
        png, width, height = await self._image(app, outputs, deadline, token)
        return GeneratedImage(
            png=png, width=width, height=height, seed=proto.seed_of(endpoint, outputs, seed)
        )

    async def _outputs(self, stream: StreamResponse, progress: ProgressCallback | None) -> Any:
        """Read the SSE stream until ``complete`` (its outputs) or ``error`` (raised)."""
        if stream.status != 200:
            content = await stream.aread()
            secrets = self._host().secrets
            whole = Response(
                stream.status, stream.headers, content, "", stream.timings, self.name, secrets
            )
            raise _map_error(self.name, "stream", resp=whole)
        async for event, data in proto.sse(stream):
            if event == "complete":
                return data
            if event == "error":
                raise _map_error(self.name, "event", event=data)
            if event == "progress" and progress is not None:
                step = proto.progress_of(data)
                if step is not None:
                    progress(step)
        raise _map_error(self.name, "stream", detail="the event stream ended without a result")

    # -- 4. the image ----------------------------------------------------------------------

    async def _image(
        self, app: _App, outputs: Any, deadline: Deadline, token: str | None
    ) -> tuple[bytes, int, int]:
        file = next(proto.files(outputs), None)
        if file is None:
            raise _map_error(self.name, "image", detail="the outputs hold no image file")
        url = file.get("url")
        path = file.get("path")
        if not (isinstance(url, str) and url.startswith(app.host + "/")):
            if not isinstance(path, str):
                raise _map_error(self.name, "image", detail="the image has no path or url")
            url = f"{app.host}{app.prefix}/file={path}"
        resp = await self._host().request("GET", url, deadline=deadline, headers=_space_auth(token))
        if not resp.ok:
            raise _map_error(self.name, "file", resp=resp)
        try:
            return await asyncio.to_thread(to_png, resp.content)
        except (OSError, ValueError) as exc:
            raise _map_error(
                self.name, "image", detail=f"the image did not decode ({exc})"
            ) from exc

    # -- helpers ---------------------------------------------------------------------------

    def _check_request(self, request: ImageRequest) -> None:
        if request.model is not None and request.model != self.model:
            raise InvalidRequest(
                f"model: this provider serves {self.model!r} only; got {request.model!r}. "
                "Leave model out, or route to a provider that has it.",
                field="model",
                limit=f"must be {self.model!r}",
                provider=self.name,
            )

    def _check_fields(self, endpoint: Endpoint, request: ImageRequest) -> None:
        """Refuse a request field the endpoint has no parameter for: nothing is dropped."""
        inputs = {"image": request.images or None, "mask": request.mask}
        for field, value in proto.request_values(request, request.seed, inputs).items():
            if value is not None and field not in endpoint.fields:
                raise InvalidRequest(
                    f"{field}: endpoint /{endpoint.api_name} of {self.model} takes no {field}; "
                    f'leave {field} out, or map it with params = {{ {field} = "..." }}',
                    field=field,
                    limit=f"not supported by /{endpoint.api_name}",
                    provider=self.name,
                )

    @contextlib.contextmanager
    def _forget_on_failure(self) -> Iterator[None]:
        """On a failure, ask the Hub again next time and read the schema again."""
        try:
            yield
        except ProviderError:
            self._runtime = None
            self._app = None
            raise

    def _token(self) -> str | None:
        secret = read_secret(self.config.token_env, provider=self.name, key="token_env")
        return secret.get_secret_value() if secret is not None else None

    def _host(self) -> Transport:
        if self._host_http is None:
            self._host_http = self._transport(StageBudgets.from_config(self.config))
        return self._host_http

    def _hub(self) -> Transport:
        if self._hub_http is None:
            full = StageBudgets.from_config(self.config)
            first_byte_s, read_s = (
                min(full.first_byte_s, HUB_BUDGET_S),
                min(full.read_s, HUB_BUDGET_S),
            )
            budgets = dataclasses.replace(full, first_byte_s=first_byte_s, read_s=read_s)
            self._hub_http = self._transport(budgets)
        return self._hub_http

    def _transport(self, budgets: StageBudgets) -> Transport:
        token = self._token()
        secrets = (token,) if token else ()
        return Transport(self.name, budgets, verify=self.config.ca_file or True, secrets=secrets)

    def _spawn(
        self, method: str, url: str, budget_s: float, token: str | None, body: Any = None
    ) -> asyncio.Task[None]:
        """Send one request in the background on a deadline of its own; never awaited.

        Its answer and its errors are ignored; ``aclose`` cancels it if it is still running.
        """

        async def send() -> None:
            with contextlib.suppress(ProviderError):
                await self._host().request(
                    method, url, deadline=Deadline(budget_s), json=body, headers=_space_auth(token)
                )

        task = asyncio.get_running_loop().create_task(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


# --------------------------------------------------------------------------- error mapping


def _map_error(
    provider: str,
    what: Literal["hub", "config", "info", "upload", "call", "stream", "event", "file", "image"],
    *,
    resp: Response | None = None,
    event: Any = None,
    detail: str | None = None,
) -> ProviderError:
    """The one place where the Hub's and the app's answers become the error tree.

    ``resp``: an HTTP answer that was not 2xx; ``event``: the data of an SSE ``error``
    event; ``detail``: an answer that broke the protocol.
    """
    if detail is not None:
        fix = "check hub_url" if what == "hub" else "check that url/space is a Gradio 4+ app"
        return ProtocolError(f"{detail}; {fix}", provider=provider, stage="read")
    if resp is None:
        message = _event_message(event)
        for pattern, kind, fix in _EVENT_ERRORS:
            if re.search(pattern, message.lower()):
                return kind(f"the app answered: {message}; {fix}", provider=provider)
        message = message or "an error without a message (the app lacks show_error=True)"
        return UpstreamError(
            f"the app failed: {message}; check the Space's logs, or route elsewhere",
            provider=provider,
        )
    status = resp.status
    said = f"{resp.timings.host}:{resp.timings.port} answered {status} ({resp.snippet()})"
    kw: dict[str, Any] = {"provider": provider, "elapsed_s": round(resp.timings.total_s, 3)}
    if status == 404 and what in _NOT_FOUND:
        field, fix = _NOT_FOUND[what]
        return InvalidRequest(f"{said}; {fix}", field=field, provider=provider)
    if status in (400, 422) and what == "call":
        fix = "the app refused the call's data: check params"
        return InvalidRequest(f"{said}; {fix}", field="params", provider=provider)
    cls: type[ProviderError]
    if status in (401, 403):
        cls, fix = AuthError, _AUTH_FIX["hub" if what == "hub" else "space"]
    elif status == 429:
        cls, fix = RateLimited, "wait, or set token_env to a token with a higher limit"
        kw["retry_after"] = _ratelimit_reset(resp)
    elif status in (502, 503, 504) and what != "hub":
        cls, fix = Unavailable, _BUSY_FIX["call" if what == "call" else "app"]
        kw["retry_after"] = parse_retry_after(resp.headers.get("retry-after"))
    else:
        try:
            raise_for_status(resp, provider)
        except ProviderError as exc:
            return exc
        return ProtocolError(f"{said} unexpectedly", **kw)
    return cls(f"{said}; {fix}", **kw)


_EVENT_ERRORS: list[tuple[str, type[ProviderError], str]] = [
    (r"\b429\b|too many requests|rate limit", RateLimited, "wait, or duplicate the Space"),
    (r"quota", QuotaExceeded, "the Space's GPU quota is spent: set token_env to a token "
        "with quota left (PRO has more), or wait for the daily reset"),
    (r"queue is full", Unavailable, "route elsewhere, or try again later"),
    (r"\b(nsfw|unsafe|safety checker|content filter)", ContentFiltered, "change the prompt"),
    (r"\bis (less|greater) than (the )?(minimum|maximum)\b", InvalidRequest,
        "change the request to fit the app's limits"),
]  # fmt: skip
"""SSE ``error`` texts that say more than "the app failed": pattern, class, fix."""

_NOT_FOUND: dict[str, tuple[str, str]] = {
    "hub": ("space", "no such Space (a private one answers 404 without a token): check "
        "space and token_env"),
    "config": ("url", "no Gradio app there: check url / space"),
    "info": ("url", "no Gradio API there: check url / space"),
    "call": ("api_name", "no such endpoint: check api_name"),
}  # fmt: skip
_AUTH_FIX = {
    "hub": "set token_env to a Hugging Face token that may read the Space",
    "space": "a private Space needs token_env; an app behind a login (auth=) is not supported",
}
_BUSY_FIX = {
    "call": "the app's queue is full or stopped: route elsewhere, or try again later",
    "app": "the app is starting, restarting or overloaded: route elsewhere, or try later",
}


def _event_message(data: Any) -> str:
    """The text of an SSE ``error`` event: ``{"error": "..."}``, a string, or nothing."""
    if isinstance(data, dict):
        data = data.get("error") or data.get("message")
    return redact(" ".join(str(data).split()))[:300] if data else ""


def _ratelimit_reset(resp: Response) -> float | None:
    """Seconds until the limit resets: the IETF ``RateLimit: ...;t=N`` header, or Retry-After."""
    match = re.search(r"(?:^|;)\s*t=(\d+(?:\.\d+)?)", resp.headers.get("ratelimit", ""))
    if match:
        return float(match.group(1))
    return parse_retry_after(resp.headers.get("retry-after"))


def _not_running(provider: str, space: str, stage: str, cfg: GradioConfig) -> Unavailable:
    """Unavailable(stage="runtime") naming the Space's stage and what to do about it."""
    retry: float = cfg.wake_retry_after_s
    if stage in ASLEEP and cfg.wake:
        why = (f"is {stage}; imagegate sent it a request to wake it and routes elsewhere until "
            "the Hub says RUNNING (waking takes 30 s to a few minutes)")  # fmt: skip
    elif stage in ASLEEP:
        why = f"is {stage}; set wake = true, or open the Space's page to wake it"
    elif stage in STARTING:
        why = f"is {stage}; routing elsewhere until it runs"
    elif stage in BROKEN:
        why, retry = f"is {stage}: {BROKEN[stage]}", BROKEN_RETRY_AFTER_S
    else:
        why = f"is in stage {stage}, not RUNNING; routing elsewhere until it runs"
    return Unavailable(
        f"the Space {space} {why}", provider=provider, stage="runtime", retry_after=retry
    )


# --------------------------------------------------------------------------- protocol helpers


def _space_auth(token: str | None) -> dict[str, str]:
    return {"x-hf-authorization": f"Bearer {token}"} if token else {}


def _default_host(space: str) -> str:
    """``owner/na_me.x`` -> ``https://owner-na-me-x.hf.space`` (the Hub's own rule)."""
    return "https://" + re.sub(r"[/_.]", "-", space).lower() + ".hf.space"
