"""A ComfyUI server as a loopback fake (HTTP and WebSocket), and the comfyui conformance case.

Reuse it in any test (the tests folder is on ``sys.path``)::

    from vendor_comfyui import ComfyUIFake

    with ComfyUIFake() as fake:
        config = {"type": "comfyui", "url": fake.url, "checkpoint": fake.checkpoints[0]}
        fake.arm("execution_error")          # the next prompt fails while running (see EXPECTED)
        fake.prompts                         # every accepted /prompt body
        fake.interrupts, fake.deleted        # /interrupt bodies, prompt ids deleted from /queue
        fake.ws_clients                      # clientIds that opened /ws

What it follows (providers.md section 10): ``POST /prompt`` validates the API-format graph
(unknown class -> ``missing_node_type``; combo values, ranges -> ``node_errors``; a supplied
``prompt_id`` must be a canonical UUID) and queues it; one worker runs prompts in order, one
sampler step per ``step_s`` seconds, sending ``execution_start``, ``executing``, ``progress``,
``executed``, ``execution_success`` and ``executing {node: null}`` to the socket whose
clientId is the prompt's ``client_id``; ``/history/{id}`` is ``{}`` until the prompt ends;
``/view`` serves the PNGs; ``/queue`` (GET, POST delete), ``/interrupt``, ``/system_stats``,
``/object_info/{class}``. ``key`` set = a reverse proxy demanding ``Bearer key`` (401).

Edits (providers.md section 13.3): ``POST /upload/image`` stores the multipart part
``image`` (a file name is required: 400 otherwise) under ``subfolder`` of the input folder,
appending `` (1)`` to a taken name unless ``overwrite`` is true or the bytes are the same,
and answers ``{"name", "subfolder", "type"}``; a LoadImage or LoadImageMask naming a file
that was not uploaded fails validation with ``custom_validation_failed`` ("Invalid image
file: ..."). LoadImage, LoadImageMask (channel), ImageScale, VAEEncode and SetLatentNoiseMask
are known; KSampler's ``denoise`` must be in 0-1. The saved image of an edit is the loaded
image scaled by ImageScale, with the mask's pixels (red channel) painted in the seed's
colour, or all of it without a mask. ``uploads`` maps each stored name to its bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack
from typing import Any

import pytest
from conformance import CANARY_ENV, Setup, case
from fakekit import Armed, bearer_token
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from faults import serve_app
from PIL import Image
from vendor_novita import tiny_png

from imagegate.errors import AuthError, InvalidRequest, ProviderError, UpstreamError
from imagegate.providers.base import Provider
from imagegate.providers.comfyui import ComfyUIConfig, ComfyUIProvider

__all__ = ["EXPECTED", "SAMPLER_NAMES", "SCHEDULER_NAMES", "ComfyUIFake"]

SAMPLER_NAMES = (
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "res_multistep",
    "gradient_estimation",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
)
SCHEDULER_NAMES = (
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
)

EXPECTED: dict[str, type[ProviderError]] = {
    "node_errors": InvalidRequest,
    "missing_node_type": InvalidRequest,
    "execution_error": UpstreamError,
    "out_of_memory": UpstreamError,
    "execution_interrupted": UpstreamError,
    "server_error": UpstreamError,
    "proxy_unauthorized": AuthError,
}
"""What the fake can be armed with, and what each must become in the error tree.

``node_errors`` / ``missing_node_type``: the next /prompt answers 400 with them;
``execution_error`` / ``out_of_memory`` / ``execution_interrupted``: the next prompt fails
while running; ``server_error``: /prompt answers 500 (aiohttp's plain text);
``proxy_unauthorized``: the reverse proxy in front answers /prompt with 401."""

EDIT_ERRORS: dict[str, type[ProviderError]] = {
    "upload_too_large": InvalidRequest,
    "node_errors": InvalidRequest,
    "execution_error": UpstreamError,
    "proxy_unauthorized": AuthError,
}
"""The errors an edit meets, and their classes. ``upload_too_large``: the next /upload/image
answers 413 (aiohttp's answer past ``--max-upload-size``)."""

_NODES: dict[str, tuple[str, ...]] = {
    "CheckpointLoaderSimple": ("ckpt_name",),
    "CLIPTextEncode": ("text", "clip"),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "KSampler": (
        "model",
        "seed",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "positive",
        "negative",
        "latent_image",
        "denoise",
    ),
    "VAEDecode": ("samples", "vae"),
    "LoadImage": ("image",),
    "LoadImageMask": ("image", "channel"),
    "ImageScale": ("image", "upscale_method", "width", "height", "crop"),
    "VAEEncode": ("pixels", "vae"),
    "SetLatentNoiseMask": ("samples", "mask"),
    "SaveImage": ("images", "filename_prefix"),
    "PreviewImage": ("images",),
}
_RANGES = {
    ("EmptyLatentImage", "width"): (16, 16384),
    ("EmptyLatentImage", "height"): (16, 16384),
    ("EmptyLatentImage", "batch_size"): (1, 4096),
    ("KSampler", "seed"): (0, 2**64 - 1),
    ("KSampler", "steps"): (1, 10000),
    ("KSampler", "cfg"): (0.0, 100.0),
    ("KSampler", "denoise"): (0.0, 1.0),
    ("ImageScale", "width"): (0, 16384),
    ("ImageScale", "height"): (0, 16384),
}


def _open(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.copy()


def _node_error(kind: str, message: str, details: str, input_name: str, value: Any) -> Any:
    return {
        "type": kind,
        "message": message,
        "details": details,
        "extra_info": {"input_name": input_name, "received_value": value},
    }


class ComfyUIFake:
    """ComfyUI on 127.0.0.1 with its WebSocket; a context manager yielding itself."""

    def __init__(
        self,
        *,
        checkpoints: tuple[str, ...] = ("v1-5-pruned-emaonly.safetensors", "sdxl.safetensors"),
        step_s: float = 0.01,
        key: str | None = None,
        websocket: bool = True,
    ) -> None:
        self.checkpoints = checkpoints
        self.step_s = step_s
        self.key = key
        self.websocket = websocket
        self.url = ""
        self.prompts: list[dict[str, Any]] = []
        self.interrupts: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.ws_clients: list[str] = []
        self.history_polls = 0
        self.uploads: dict[str, bytes] = {}
        self._armed = Armed("ComfyUI", {**EXPECTED, **EDIT_ERRORS})
        self._stack = ExitStack()
        self._pending: list[dict[str, Any]] = []
        self._running: dict[str, Any] | None = None
        self._interrupt = False
        self._history: dict[str, Any] = {}
        self._files: dict[str, bytes] = {}
        self._sockets: dict[str, WebSocket] = {}
        self._number = 0
        self._wake: asyncio.Event | None = None

    def arm(self, name: str, times: int = 1) -> None:
        """Make the next ``times`` prompts meet the error ``name``."""
        self._armed.arm(name, times)

    def __enter__(self) -> ComfyUIFake:
        ws = "websockets-sansio" if self.websocket else "none"
        self.url = self._stack.enter_context(serve_app(self._app(), ws=ws))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # -- validation ----------------------------------------------------------------------

    def _validate(self, graph: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """ComfyUI's validation: (error, node_errors) when the graph is refused."""
        if not isinstance(graph, dict) or not graph:
            return {"type": "no_prompt", "message": "No prompt provided", "details": ""}, {}
        for node_id, node in graph.items():
            kind = node.get("class_type")
            if kind not in _NODES:
                error = {
                    "type": "missing_node_type",
                    "details": f"Node ID '#{node_id}'",
                    "message": f"Cannot execute because node {kind} does not exist.",
                }
                return error, {}
        outputs = [i for i, n in graph.items() if n["class_type"] in ("SaveImage", "PreviewImage")]
        if not outputs:
            error = {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": ""}
            return error, {}
        node_errors: dict[str, Any] = {}
        for node_id, node in graph.items():
            errors = self._node_errors(node["class_type"], node.get("inputs", {}))
            if errors:
                node_errors[node_id] = {
                    "errors": errors,
                    "dependent_outputs": outputs,
                    "class_type": node["class_type"],
                }
        if node_errors:
            error = {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
            }
            return error, node_errors
        return None

    def _node_errors(self, kind: str, inputs: dict[str, Any]) -> list[Any]:
        errors = []
        for name in _NODES[kind]:
            if name not in inputs and not (kind == "SaveImage" and name == "filename_prefix"):
                errors.append(
                    _node_error(
                        "required_input_missing", "Required input is missing", name, name, None
                    )
                )
        combos = {
            ("CheckpointLoaderSimple", "ckpt_name"): self.checkpoints,
            ("KSampler", "sampler_name"): SAMPLER_NAMES,
            ("KSampler", "scheduler"): SCHEDULER_NAMES,
            ("LoadImageMask", "channel"): ("alpha", "red", "green", "blue"),
            ("ImageScale", "upscale_method"): ("nearest-exact", "bilinear", "area", "bicubic",
                                               "lanczos"),
            ("ImageScale", "crop"): ("disabled", "center"),
        }  # fmt: skip
        if kind in ("LoadImage", "LoadImageMask") and "image" in inputs:
            name = str(inputs["image"])
            if name not in self.uploads:
                errors.append(
                    _node_error(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        f"image - Invalid image file: {name}",
                        "image",
                        name,
                    )
                )
        for (node, name), options in combos.items():
            if node == kind and name in inputs and inputs[name] not in options:
                shown = f"(list of length {len(options)})" if len(options) > 20 else list(options)
                errors.append(
                    _node_error(
                        "value_not_in_list",
                        "Value not in list",
                        f"{name}: '{inputs[name]}' not in {shown}",
                        name,
                        inputs[name],
                    )
                )
        for (node, name), (low, high) in _RANGES.items():
            value = inputs.get(name)
            if node == kind and isinstance(value, int | float) and not low <= value <= high:
                which = "smaller_than_min" if value < low else "bigger_than_max"
                errors.append(
                    _node_error(
                        f"value_{which}",
                        f"Value {which.replace('_', ' ')}",
                        f"{name} {value} out of [{low}, {high}]",
                        name,
                        value,
                    )
                )
        return errors

    # -- the worker ----------------------------------------------------------------------

    async def _send(self, client_id: str | None, kind: str, data: dict[str, Any]) -> None:
        socket = self._sockets.get(client_id or "")
        if socket is not None:
            with contextlib.suppress(Exception):
                await socket.send_json({"type": kind, "data": data})

    async def _worker(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                item = self._pending.pop(0)
                self._running, self._interrupt = item, False
                try:
                    await self._execute(item)
                finally:
                    self._running = None

    async def _execute(self, item: dict[str, Any]) -> None:
        prompt_id, graph, cid = item["prompt_id"], item["graph"], item["client_id"]
        stamp = {"prompt_id": prompt_id, "timestamp": int(time.time() * 1000)}
        messages: list[Any] = [["execution_start", stamp]]
        await self._send(cid, "execution_start", stamp)
        sampler = next(i for i, n in graph.items() if n["class_type"] == "KSampler")
        steps = int(graph[sampler]["inputs"]["steps"])
        failure = item["failure"]
        await self._send(
            cid, "executing", {"node": sampler, "display_node": sampler, "prompt_id": prompt_id}
        )
        for step in range(1, steps + 1):
            await asyncio.sleep(self.step_s)
            if self._interrupt or failure == "execution_interrupted":
                failure = "execution_interrupted"
                break
            await self._send(
                cid,
                "progress",
                {"value": step, "max": steps, "node": sampler, "prompt_id": prompt_id},
            )
            if failure in ("execution_error", "out_of_memory") and step * 2 >= steps:
                break
        outputs: dict[str, Any] = {}
        if failure is None:
            outputs = self._save(graph, prompt_id)
            for node_id, output in outputs.items():
                await self._send(
                    cid,
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": output,
                        "prompt_id": prompt_id,
                    },
                )
            messages.append(["execution_success", stamp])
            await self._send(cid, "execution_success", stamp)
        else:
            data = {**stamp, "node_id": sampler, "node_type": "KSampler", "executed": ["4"]}
            if failure == "execution_interrupted":
                kind = "execution_interrupted"
            else:
                kind = "execution_error"
                oom = failure == "out_of_memory"
                data["exception_type"] = "torch.OutOfMemoryError" if oom else "RuntimeError"
                data["exception_message"] = (
                    "Allocation on device. This error means you ran out of memory on your GPU."
                    if oom
                    else "mat1 and mat2 shapes cannot be multiplied (154x2048 and 768x320)"
                )
                data.update(traceback=["..."], current_inputs={}, current_outputs={})
            messages.append([kind, data])
            await self._send(cid, kind, data)
        self._history[prompt_id] = {
            "prompt": [item["number"], prompt_id, graph, {"client_id": cid}, list(outputs)],
            "outputs": outputs,
            "status": {
                "status_str": "success" if failure is None else "error",
                "completed": failure is None,
                "messages": messages,
            },
            "meta": {},
        }
        await self._send(
            cid, "executing", {"node": None, "display_node": None, "prompt_id": prompt_id}
        )

    def _render(self, graph: dict[str, Any]) -> tuple[int, Any]:
        """The batch size, and what makes an image from a seed: the edit, or a solid one."""
        latent = next((n for n in graph.values() if n["class_type"] == "EmptyLatentImage"), None)
        if latent is not None:
            width, height = int(latent["inputs"]["width"]), int(latent["inputs"]["height"])
            return int(latent["inputs"]["batch_size"]), lambda s: tiny_png(width, height, s)
        load = next(n for n in graph.values() if n["class_type"] == "LoadImage")
        scale = next((n for n in graph.values() if n["class_type"] == "ImageScale"), None)
        masked = next((n for n in graph.values() if n["class_type"] == "LoadImageMask"), None)
        image = _open(self.uploads[load["inputs"]["image"]]).convert("RGB")
        if scale is not None:
            image = image.resize((int(scale["inputs"]["width"]), int(scale["inputs"]["height"])))
        mask = None
        if masked is not None:
            channel = {"red": "R", "green": "G", "blue": "B", "alpha": "A"}[
                masked["inputs"]["channel"]
            ]
            raw = _open(self.uploads[masked["inputs"]["image"]]).convert("RGBA")
            mask = raw.getchannel(channel).resize(image.size)
            if channel == "A":
                mask = mask.point(lambda a: 255 - a)

        def render(seed: int) -> bytes:
            base = image.copy()
            paint = Image.new("RGB", base.size, (seed % 251, 60, 220))
            base.paste(paint, (0, 0), mask if mask is not None else None)
            out = io.BytesIO()
            base.save(out, format="PNG", compress_level=1)
            return out.getvalue()

        return 1, render

    def _save(self, graph: dict[str, Any], prompt_id: str) -> dict[str, Any]:
        sampler = next(n for n in graph.values() if n["class_type"] == "KSampler")
        batch, render = self._render(graph)
        outputs: dict[str, Any] = {}
        for node_id, node in graph.items():
            if node["class_type"] != "SaveImage":
                continue
            prefix = node["inputs"].get("filename_prefix", "ComfyUI")
            images = []
            for i in range(batch):
                name = f"{prefix}_{len(self._files) + 1:05}_.png"
                self._files[name] = render(int(sampler["inputs"]["seed"]) + i)
                images.append({"filename": name, "subfolder": "", "type": "output"})
            outputs[node_id] = {"images": images}
        return outputs

    # -- the app -------------------------------------------------------------------------

    def _denied(self, headers: Any) -> bool:
        return self.key is not None and bearer_token(headers) != self.key

    def _app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            self._wake = asyncio.Event()
            worker = asyncio.create_task(self._worker())
            yield
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

        app = FastAPI(lifespan=lifespan)

        @app.middleware("http")
        async def proxy(request: Request, call_next: Any) -> Response:
            if self._denied(request.headers):
                return Response("401 Authorization Required", status_code=401)
            response: Response = await call_next(request)
            return response

        @app.post("/prompt")
        async def prompt(request: Request) -> Response:
            if self._armed.take("proxy_unauthorized"):
                return Response("401 Authorization Required", status_code=401)
            if self._armed.take("server_error"):
                return Response(
                    "500 Internal Server Error\n\nServer got itself in trouble",
                    status_code=500,
                    media_type="text/plain",
                )
            try:
                body = await request.json()
            except ValueError:
                return Response("500 Internal Server Error", status_code=500)
            graph = body.get("prompt")
            armed = self._armed.take("node_errors", "missing_node_type")
            if armed == "node_errors":
                graph = {
                    **graph,
                    "3": {
                        **graph["3"],
                        "inputs": {**graph["3"]["inputs"], "sampler_name": "euler_z"},
                    },
                }
            elif armed == "missing_node_type":
                graph = {**graph, "99": {"class_type": "IPAdapterAdvanced", "inputs": {}}}
            refused = self._validate(graph)
            if refused is not None:
                return JSONResponse({"error": refused[0], "node_errors": refused[1]}, 400)
            prompt_id = body.get("prompt_id") or str(uuid.uuid4())
            try:
                valid = str(uuid.UUID(prompt_id)) == prompt_id
            except ValueError:
                valid = False
            if not valid:
                error = {
                    "type": "invalid_prompt_id",
                    "message": "Invalid prompt_id",
                    "details": prompt_id,
                }
                return JSONResponse({"error": error, "node_errors": {}}, 400)
            self.prompts.append(body)
            self._number += 1
            self._pending.append(
                {
                    "prompt_id": prompt_id,
                    "graph": graph,
                    "client_id": body.get("client_id"),
                    "number": self._number,
                    "failure": self._armed.take(
                        "execution_error", "out_of_memory", "execution_interrupted"
                    ),
                }
            )
            assert self._wake is not None
            self._wake.set()
            return JSONResponse({"prompt_id": prompt_id, "number": self._number, "node_errors": {}})

        @app.post("/upload/image")
        async def upload(request: Request) -> Response:
            if self._armed.take("upload_too_large"):
                return Response("413 Request Entity Too Large", status_code=413)
            async with request.form() as form:
                part = form.get("image")
                if part is None or isinstance(part, str) or not part.filename:
                    return Response(status_code=400)
                data = await part.read()
                subfolder = str(form.get("subfolder") or "")
                overwrite = str(form.get("overwrite") or "").lower() in ("true", "1")
                kind = str(form.get("type") or "input")
            if ".." in subfolder or subfolder.startswith("/"):
                return Response(status_code=400)
            name, stem, i = part.filename, part.filename.rsplit(".", 1), 0
            while True:
                key = f"{subfolder}/{name}" if subfolder else name
                if overwrite or key not in self.uploads or self.uploads[key] == data:
                    break
                i += 1
                name = f"{stem[0]} ({i}).{stem[1]}" if len(stem) == 2 else f"{stem[0]} ({i})"
            self.uploads[key] = data
            return JSONResponse({"name": name, "subfolder": subfolder, "type": kind})

        @app.get("/history/{prompt_id}")
        async def history(prompt_id: str) -> Response:
            self.history_polls += 1
            entry = self._history.get(prompt_id)
            return JSONResponse({prompt_id: entry} if entry else {})

        @app.get("/queue")
        async def queue() -> Response:
            def row(item: dict[str, Any]) -> list[Any]:
                return [item["number"], item["prompt_id"], item["graph"], {}, []]

            running = [row(self._running)] if self._running else []
            return JSONResponse(
                {"queue_running": running, "queue_pending": [row(i) for i in self._pending]}
            )

        @app.post("/queue")
        async def edit_queue(request: Request) -> Response:
            body = await request.json()
            for prompt_id in body.get("delete", []):
                self.deleted.append(prompt_id)
                self._pending = [i for i in self._pending if i["prompt_id"] != prompt_id]
            if body.get("clear"):
                self._pending.clear()
            return Response(status_code=200)

        @app.post("/interrupt")
        async def interrupt(request: Request) -> Response:
            body = await request.json() if await request.body() else {}
            self.interrupts.append(body)
            wanted = body.get("prompt_id")
            if self._running is not None and wanted in (None, self._running["prompt_id"]):
                self._interrupt = True
            return Response(status_code=200)

        @app.get("/view")
        async def view(filename: str, subfolder: str = "", type: str = "output") -> Response:
            data = self._files.get(filename) if type == "output" and not subfolder else None
            if data is None:
                return Response(status_code=404)
            return Response(data, media_type="image/png")

        @app.get("/system_stats")
        async def system_stats() -> Response:
            return JSONResponse(
                {
                    "system": {
                        "os": "posix",
                        "comfyui_version": "0.3.99",
                        "python_version": "3.11",
                        "pytorch_version": "2.9.0",
                        "ram_total": 2**34,
                        "ram_free": 2**33,
                    },
                    "devices": [
                        {
                            "name": "cuda:0 Fake GPU",
                            "type": "cuda",
                            "index": 0,
                            "vram_total": 2**34,
                            "vram_free": 2**33,
                        }
                    ],
                }
            )

        @app.get("/object_info/{node}")
        async def object_info(node: str) -> Response:
            combos = {
                "CheckpointLoaderSimple": {"ckpt_name": [list(self.checkpoints), {}]},
                "KSampler": {
                    "sampler_name": [list(SAMPLER_NAMES), {}],
                    "scheduler": [list(SCHEDULER_NAMES), {}],
                },
            }
            if node not in combos:
                return JSONResponse({})
            return JSONResponse({node: {"input": {"required": combos[node]}, "output_node": False}})

        @app.websocket("/ws")
        async def ws(socket: WebSocket, clientId: str = "") -> None:
            if self._denied(socket.headers):
                await socket.close(code=1008)
                return
            await socket.accept()
            self.ws_clients.append(clientId)
            self._sockets[clientId] = socket
            queue = {"exec_info": {"queue_remaining": len(self._pending)}}
            await socket.send_json({"type": "status", "data": {"status": queue, "sid": clientId}})
            try:
                while True:
                    await socket.receive_text()
            except WebSocketDisconnect:
                pass
            finally:
                if self._sockets.get(clientId) is socket:
                    del self._sockets[clientId]

        return app


@case("comfyui")
def comfyui_case(request: pytest.FixtureRequest, stack: ExitStack) -> Setup:
    """The fake ComfyUI, behind a proxy that wants the canary key as a Bearer token."""
    from conformance import CANARY

    fake = stack.enter_context(ComfyUIFake(key=CANARY))

    def build(url: str) -> Provider:
        config = ComfyUIConfig(
            url=url,
            checkpoint=fake.checkpoints[0],
            api_key_env=CANARY_ENV,
            poll_interval_s=0.02,
            tls_timeout_s=0.5,
        )
        return ComfyUIProvider("comfyui", config)

    return Setup(
        provider=build(fake.url),
        arm=fake.arm,
        errors=EXPECTED,
        at_url=build,
        tls_timeout_s=0.5,
        edit_errors=EDIT_ERRORS,
    )
