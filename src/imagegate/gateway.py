"""The Gateway: one request in, images out, every attempt explained and stored.

``Gateway`` is the async core; ``SyncGateway`` runs one on a private event loop thread for
code that is not async; ``generate()`` is the one-line form on the default configuration.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import time
from collections.abc import Coroutine, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from imagegate.config import DEFAULT_ROUTE_NAMES, GatewaySettings, Settings, load_config
from imagegate.deadline import running_job
from imagegate.errors import (
    AllProvidersFailed,
    Cancelled,
    ImagegateError,
    InvalidRequest,
    ProviderError,
    StorageError,
    Timeout,
)
from imagegate.jobend import Failed, JobRecorder, Succeeded
from imagegate.providers.base import (
    Deadline,
    ProgressCallback,
    Provider,
    effective_params,
    provider_types,
)
from imagegate.request import Attempt, AttemptError, GeneratedImage, ImageRequest, ImageResult
from imagegate.router import Router
from imagegate.sampling import SAMPLERS, SCHEDULERS

if TYPE_CHECKING:
    from imagegate.store import Store

T = TypeVar("T")


def build_providers(settings: Settings) -> dict[str, Provider]:
    """One provider instance per enabled provider in the configuration."""
    types = provider_types()
    return {
        name: types[cfg.type].cls(name, cfg)
        for name, cfg in settings.providers.items()
        if cfg.enabled
    }


class Gateway:
    """The async gateway: validate, route, generate, store."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: bool | Store = True,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        """``store``: the Store to record in (a shared one when scaled out), True for the
        default one in the data dir, False for none."""
        self.settings = settings if settings is not None else load_config()
        self.providers: dict[str, Provider] = (
            dict(providers) if providers is not None else build_providers(self.settings)
        )
        self.router = Router(self.settings.gateway, self.providers)
        self.policies: dict[str, GatewaySettings] = {
            name: self.settings.gateway.model_copy(
                update={
                    "route": route.route,
                    **route.model_dump(exclude={"route"}, exclude_none=True),
                }
            )
            for name, route in self.settings.routes.items()
        }
        """Each named route's settings: the gateway's, with the route's own overrides."""
        self.store: Store | None = None if isinstance(store, bool) else store
        """The Store it records in; the default one is made by ``open()`` (SQLAlchemy loads
        only then, so a request that cannot run at all fails before it)."""
        self._default_store = store is True

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the store (creating and migrating it when needed)."""
        if self.store is None and self._default_store:
            from imagegate.store import Store

            self.store = Store(self.settings.data_dir, storage=self.settings.storage)
        if self.store is not None:
            await self.store.open()

    async def aclose(self) -> None:
        """Stop probes, close providers and the store."""
        await self.router.aclose()
        for provider in self.providers.values():
            await provider.aclose()
        if self.store is not None:
            await self.store.close()

    def route_names(self) -> list[str]:
        """The routes a request may name: ``default`` (the ``[gateway] route``) and each
        ``[routes.NAME]``."""
        return ["default", *self.policies]

    def select(self, name: str, *, field: str) -> dict[str, str]:
        """What a model or checkpoint name picks: ``{"route": NAME}`` for a route (the
        default one's names included) or ``{"provider": NAME}`` for a provider or one of
        their models; InvalidRequest naming ``field`` and the allowed names otherwise."""
        if name in DEFAULT_ROUTE_NAMES:
            return {}
        if name in self.policies:
            return {"route": name}
        if name in self.providers:
            return {"provider": name}
        for provider_name, provider in self.providers.items():
            if provider.model == name:
                return {"provider": provider_name}
        allowed = ", ".join([*self.route_names(), *sorted(self.providers)])
        raise InvalidRequest(
            f"{field}: {name!r} is neither a route, a configured provider nor one of their "
            f"models (allowed: {allowed}); see GET /v1/models",
            field=field,
            limit=f"one of {allowed}",
        )

    def policy_for(self, request: ImageRequest) -> GatewaySettings:
        """The settings a request runs under: its named route's, or the gateway's."""
        if request.route is None or request.route in DEFAULT_ROUTE_NAMES:
            return self.settings.gateway
        policy = self.policies.get(request.route)
        if policy is None:
            allowed = ", ".join(self.route_names())
            raise InvalidRequest(
                f"route: {request.route!r} is not a configured route (allowed: {allowed}); "
                "see GET /v1/models",
                field="route",
                limit=f"one of {allowed}",
            )
        return policy

    def sampling(self, route: list[str]) -> tuple[list[str] | None, list[str] | None]:
        """The sampler and the scheduler names that every provider on ``route`` taking one
        runs, in A1111's order; None where no provider on it takes one (any name is then
        accepted, and ignored)."""
        chosen: list[list[str] | None] = []
        for kind, table in (("samplers", SAMPLERS), ("schedulers", SCHEDULERS)):
            names: list[str] | None = None
            for name in route:
                supported = getattr(self.providers[name], kind)()
                if supported is not None:
                    runs = set(supported)
                    names = [
                        i.name
                        for i in table
                        if i.name in runs and (names is None or i.name in names)
                    ]
            chosen.append(names)
        return chosen[0], chosen[1]

    def check_sampling(self, request: ImageRequest, route: list[str]) -> None:
        """InvalidRequest naming the allowed values when a provider on ``route`` cannot run
        the request's sampler or scheduler."""
        samplers, schedulers = self.sampling(route)
        for field, value, allowed in (
            ("sampler", request.sampler, samplers),
            ("scheduler", request.scheduler, schedulers),
        ):
            if value is not None and allowed is not None and value not in allowed:
                shown = ", ".join(allowed)
                raise InvalidRequest(
                    f"{field}: {value!r} is not run by the providers of this route "
                    f"({', '.join(route)}); use one of: {shown}",
                    field=field,
                    limit=f"one of: {shown}",
                    fix=f"Change {field} and try again (GET /sdapi/v1/{field}s lists them).",
                )

    def route_for(self, request: ImageRequest) -> list[str]:
        """The providers to try, in order: the pinned one, or the request's route; a sampler
        or scheduler that a provider on it cannot run is refused here."""
        route = self._route_for(request)
        self.check_sampling(request, route)
        return route

    def _route_for(self, request: ImageRequest) -> list[str]:
        if request.provider is None:
            policy = self.policy_for(request)
            return [name for name in policy.route if name in self.providers]
        if request.route is not None and request.route not in DEFAULT_ROUTE_NAMES:
            raise InvalidRequest(
                "provider: pins one provider, and route names a route; send one of them",
                field="provider",
            )
        if request.provider not in self.providers:
            allowed = ", ".join(sorted(self.providers))
            raise InvalidRequest(
                f"provider: {request.provider!r} is not configured (allowed: {allowed}); "
                "pick one of those or leave it out to use the route",
                field="provider",
                limit=f"one of {allowed}",
            )
        return [request.provider]

    def _deadline(self, deadline_s: float, queued_s: float, caller_waits: bool) -> Deadline:
        """The request's deadline, or a Timeout when its time in the queue used it up."""
        limit = self.settings.gateway.max_queue_wait_s
        if limit is not None and queued_s > limit:
            raise Timeout(
                f"the job waited {queued_s:.1f} s in the queue, past gateway.max_queue_wait_s "
                f"({limit:g} s), and did not run",
                stage="total",
                fix="submit it again when the queue is shorter, add workers, or raise "
                "gateway.max_queue_wait_s",
            )
        if not caller_waits:
            return Deadline(deadline_s)
        if queued_s >= deadline_s:
            raise Timeout(
                f"the request waited {queued_s:.1f} s in the queue, its whole deadline_s "
                f"({deadline_s:g} s), and did not run",
                stage="total",
                fix="retry when the queue is shorter, use /v1/jobs for long waits, or raise "
                "gateway.deadline_s",
            )
        return Deadline(deadline_s - queued_s)

    def preflight(self, request: ImageRequest) -> None:
        """Fail at once when no provider on the request's route can serve it at all.

        Each provider's ``preflight`` checks, without the network where it can and without
        heavy imports, what would make every attempt fail (the local one: its model is in
        the cache, or the hub can be reached). Raises AllProvidersFailed with one attempt
        per provider when all of them fail it; other errors (a wrong folder) as they are.
        """
        route = self.route_for(request)
        attempts: list[Attempt] = []
        last: ProviderError | None = None
        for name in route:
            try:
                self.providers[name].preflight()
            except ProviderError as exc:
                error = AttemptError(
                    type=type(exc).__name__, stage=exc.stage, message=exc.message, fix=exc.fix
                )
                attempts.append(Attempt(provider=name, outcome="error", error=error, elapsed_s=0))
                last = exc
            else:
                return
        if last is not None:
            reasons = "; ".join(f"{a.provider}: {a.error.type}" for a in attempts if a.error)
            raise AllProvidersFailed(
                f"no provider on the route {route} can serve the request: {reasons}. {last.cause}",
                attempts,
                last=last,
                fix=last.fix,
            )

    async def generate(
        self,
        request: ImageRequest | str,
        *,
        progress: ProgressCallback | None = None,
        source: str = "library",
        **fields: Any,
    ) -> ImageResult:
        """Generate images for ``request`` (or a prompt plus fields), and store them."""
        if isinstance(request, str):
            request = ImageRequest.parse({"prompt": request, **fields})
        route = self.route_for(request)
        job_id = (
            await self.store.create_job(request, route=route, source=source)
            if self.store is not None
            else None
        )
        return await self._run(request, job_id, progress, route)

    async def execute(
        self,
        job_id: str,
        request: ImageRequest,
        *,
        progress: ProgressCallback | None = None,
        recorder: JobRecorder | None = None,
        queued_s: float = 0.0,
        caller_waits: bool = False,
    ) -> ImageResult:
        """Run a job that is already in the store (a queued one) and record how it ended.

        The same path as :meth:`generate` from routing on: the job ends succeeded (images
        stored), failed (with the reason) or cancelled, and the result or error is returned
        or raised as ``generate`` would. ``recorder`` (a backplane's, which also writes the
        job's terminal event) records the end instead of the store.

        ``queued_s`` is how long the job waited to start. Past ``gateway.max_queue_wait_s`` it
        fails without running. When ``caller_waits`` (a synchronous request), the wait counts
        against ``deadline_s``: the deadline runs from the request's arrival.
        """
        return await self._run(
            request, job_id, progress, None, recorder, queued_s=queued_s, caller_waits=caller_waits
        )

    async def _run(
        self,
        request: ImageRequest,
        job_id: str | None,
        progress: ProgressCallback | None,
        route: list[str] | None,
        recorder: JobRecorder | None = None,
        *,
        queued_s: float = 0.0,
        caller_waits: bool = False,
    ) -> ImageResult:
        started = time.monotonic()
        if recorder is None:
            recorder = self.store
        try:
            if route is None:
                route = self.route_for(request)
            policy = self.policy_for(request)
            deadline = self._deadline(policy.deadline_s, queued_s, caller_waits)
            with running_job(job_id):
                outcome = await self.router.run(request, route, deadline, progress, policy=policy)
        except ImagegateError as exc:
            if recorder is not None and job_id is not None:
                await recorder.end(job_id, Failed(exc, exc.attempts, time.monotonic() - started))
            raise
        except asyncio.CancelledError:
            if recorder is not None and job_id is not None:
                await asyncio.shield(
                    recorder.end(
                        job_id,
                        Failed(
                            Cancelled("cancelled by the caller"),
                            elapsed_s=time.monotonic() - started,
                            status="cancelled",
                        ),
                    )
                )
            raise
        provider = outcome.provider
        result = ImageResult(
            images=outcome.images,
            provider=provider.name,
            model=_reported_model(outcome.images) or request.model or provider.model,
            attempts=outcome.attempts,
            elapsed_s=round(time.monotonic() - started, 4),
            request=request,
            job_id=job_id,
        )
        if recorder is not None and job_id is not None:
            try:
                ended = await recorder.end(
                    job_id,
                    Succeeded(
                        result,
                        cost=provider.config.cost_of([(i.width, i.height) for i in result.images]),
                        effective=effective_params(provider, request),
                    ),
                )
                result = ended.result
            except StorageError as exc:  # the image was not kept: the job failed
                exc.attempts = list(outcome.attempts)
                await recorder.end(job_id, Failed(exc, exc.attempts, time.monotonic() - started))
                raise
        return result


def _reported_model(images: list[GeneratedImage]) -> str | None:
    """The model the backend says made the images, when it says."""
    for image in images:
        if image.reported is not None and image.reported.model:
            return image.reported.model
    return None


class SyncGateway:
    """A Gateway for synchronous code: it runs on a private event loop in a thread."""

    def __init__(self, settings: Settings | None = None, *, store: bool = True) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="imagegate-loop", daemon=True
        )
        self._thread.start()
        self._gateway = Gateway(settings, store=store)
        self._call(self._gateway.open())

    @property
    def settings(self) -> Settings:
        return self._gateway.settings

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def generate(
        self,
        request: ImageRequest | str,
        *,
        progress: ProgressCallback | None = None,
        source: str = "library",
        **fields: Any,
    ) -> ImageResult:
        """Generate images; blocks until they are stored."""
        return self._call(
            self._gateway.generate(request, progress=progress, source=source, **fields)
        )

    def close(self) -> None:
        """Close the gateway and stop its loop thread."""
        if self._loop.is_closed():
            return
        self._call(self._gateway.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_default: SyncGateway | None = None
_default_lock = threading.Lock()


def generate(prompt: str, **fields: Any) -> ImageResult:
    """Generate on the default configuration: ``imagegate.generate("a fox", seed=1)``."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SyncGateway()
            atexit.register(_default.close)
        gateway = _default
    return gateway.generate(prompt, **fields)
