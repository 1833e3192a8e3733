"""One provider's stages in order, stopping at the first failure; every provider at once.

A remote provider goes through config, dns, connect, tls (https only), then the provider's
own ``probe()`` (its info endpoint), whose outcome becomes http, auth, api and runtime: one
request, so those stages share its time. A local provider (``endpoint()`` is None) goes
through config and model. ``--generate`` adds one cheap generation. Each stage runs within
its own budget and providers run concurrently, so the doctor takes about as long as the
slowest provider, not the sum.

Which stage a probe's error belongs to is read from its class and stage only, never from the
provider's type, so a new provider needs no change here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from imagegate.config import Settings
from imagegate.doctor.environment import environment
from imagegate.doctor.network import (
    Target,
    is_network_error,
    network_stages,
    probe_network_failure,
)
from imagegate.doctor.report import (
    DoctorReport,
    ProviderReport,
    StageFailed,
    StageName,
    StageResult,
)
from imagegate.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    ImagegateError,
    InvalidRequest,
    MissingDependency,
    ProviderError,
    QuotaExceeded,
    Timeout,
    Unavailable,
    UpstreamError,
)
from imagegate.providers.base import Deadline, Provider, RemoteConfig, provider_types
from imagegate.request import ImageRequest
from imagegate.router import Router, configured_timeouts
from imagegate.transport import StageBudgets, env_proxy, safe_url

PROBE_S = 10.0
"""Budget of the probe (http, auth, api, runtime), as the router's background probe has."""
MODEL_S = 20.0
"""Budget of the model stage: find the local model (the hub check inside waits 3 s at most)."""
GENERATE_S = 180.0
"""Budget of the test generation when the provider sets no ``timeout_s``."""
_BACKSTOP_S = 1.0  # a stage that ignores its deadline is cut off this much later

_SIZE_FIELDS = frozenset({"width", "height", "size", "steps"})
_NO_PROBE = "not checked: this provider has no info endpoint (--generate checks it end to end)"


@dataclass(frozen=True)
class _Keys:
    """The ``*_env`` settings of one provider: the variable names, and the values to hide."""

    names: tuple[str, ...]
    secrets: tuple[str, ...]

    def shown(self) -> str:
        return ", ".join(self.names)


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.0f} ms"


def _split(exc: ImagegateError) -> tuple[str, str]:
    """An error of the tree as (what happened, the fix), from its fields."""
    return exc.cause, exc.fix or ""


def _since(started: float) -> float:
    return time.monotonic() - started


# --------------------------------------------------------------------------- config


def _config_stage(name: str, provider: Provider) -> tuple[StageResult, _Keys, Target | None]:
    """Every ``*_env`` variable is set (values never shown), the URL and CA file are valid."""
    started = time.monotonic()
    cfg = provider.config
    settings = [
        (key, value)
        for key, value in cfg.model_dump().items()
        if key.endswith("_env") and isinstance(value, str) and value
    ]
    keys = _Keys(
        names=tuple(value for _, value in settings),
        secrets=tuple(os.environ[v] for _, v in settings if os.environ.get(v)),
    )

    def fail(detail: str, cause: str, fix: str) -> StageFailed:
        return StageFailed(StageResult("config", False, _since(started), detail), cause, fix)

    endpoint = provider.endpoint()
    target: Target | None = None
    if endpoint is not None:
        url: httpx.URL | None
        try:
            url = httpx.URL(endpoint)
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            shown = safe_url(url) if url is not None else "(unparseable)"
            raise fail(
                f"url {shown} is not an http(s) address",
                f"providers.{name}.url = {shown} is not an http:// or https:// address with "
                "a host, so there is nothing to connect to (0 stages past config)",
                f"set providers.{name}.url to the server's base address, such as "
                "http://127.0.0.1:7860",
            )
        ca_file = getattr(cfg, "ca_file", None)
        if ca_file and not Path(ca_file).expanduser().is_file():
            raise fail(
                f"ca_file {ca_file} does not exist",
                f"providers.{name}.ca_file names {ca_file}, which does not exist, so TLS to "
                f"{url.host} cannot be checked",
                f"point providers.{name}.ca_file at the PEM bundle of the CA that signed "
                f"{url.host}'s certificate, or remove the setting",
            )
        port = url.port or (443 if url.scheme == "https" else 80)
        # Each stage has its own budget here: the attempt's timeout_s caps only the probe.
        budgets = (
            dataclasses.replace(StageBudgets.from_config(cfg), attempt_s=None)
            if isinstance(cfg, RemoteConfig)
            else StageBudgets(2.0, 2.0, 2.0, PROBE_S, PROBE_S)
        )
        target = Target(
            provider=name,
            url=safe_url(url),
            scheme=url.scheme,
            host=url.host,
            port=port,
            budgets=budgets,
            ca_file=ca_file,
            proxy=env_proxy(url),
        )
    for key, var in settings:
        if not os.environ.get(var):
            where = f"{target.where}" if target else "the provider"
            raise fail(
                f"{var} (providers.{name}.{key}) is not set",
                f"providers.{name}.{key} names the environment variable {var}, which is not "
                f"set, so no request to {where} can carry the key (stopped at config, 0 "
                "connections made)",
                f"export {var} with the provider's key (or put it in ./.env); imagegate reads "
                f"keys only from the environment; or point providers.{name}.{key} at the "
                "variable that holds it",
            )
    parts = [f"url {target.url}"] if target else []
    if target and target.proxy:
        parts.append(f"proxy {target.proxy}")
    if keys.names:
        parts.append(f"{keys.shown()} set")
    detail = "; ".join(parts) or "valid"
    return StageResult("config", True, _since(started), detail), keys, target


# --------------------------------------------------------------------------- the probe


def _probe_stage(exc: ImagegateError) -> StageName:
    """The stage a probe's error belongs to, from its class and stage alone."""
    if isinstance(exc, AuthError | QuotaExceeded):
        return "auth"
    if isinstance(exc, Unavailable):
        return "runtime" if exc.stage == "runtime" else "api"
    if isinstance(exc, UpstreamError | Timeout | ConnectError):
        return "http"
    return "api"  # InvalidRequest (a 404, a missing model), ProtocolError, RateLimited...


_LEADS: dict[StageName, str] = {
    "http": "the {type} server at {where} failed the info request after {ms}",
    "auth": "{where} refused the credentials from {keys} after {ms}",
    "api": "{where} answered after {ms}, but not as a working {type} API",
    "runtime": "{where} is reachable, but the app behind it is not running (checked in {ms})",
}

_NO_KEY_LEAD = "{where} asks for credentials, and this provider has none configured ({ms})"


async def _probe_stages(
    provider: Provider, target: Target, tls_pending: bool, keys: _Keys
) -> list[StageResult]:
    """http, auth, api (and runtime) from one ``probe()`` call; StageFailed at the first."""
    started = time.monotonic()
    budget = min(PROBE_S, provider.config.timeout_s or PROBE_S)
    where = target.where
    try:
        async with asyncio.timeout(budget + _BACKSTOP_S):
            detail = await provider.probe(Deadline(budget))
    except TimeoutError:
        raise StageFailed(
            StageResult("http", False, _since(started), f"no answer in {budget:.1f} s"),
            f"the {provider.type} info check of {where} did not finish in {budget:.1f} s "
            "although the connection opened, so the server is stuck or overloaded",
            "check the server's logs and load, or route to another provider",
        ) from None
    except ImagegateError as exc:
        elapsed = exc.elapsed_s if isinstance(exc, ProviderError) else None
        elapsed = elapsed if elapsed is not None else _since(started)
        if isinstance(exc, ProviderError) and is_network_error(exc):
            if tls_pending and exc.stage == "tls":
                raise await probe_network_failure(exc, target) from None
            stage: StageName = "http"
            cause, fix = _split(exc)
            cause = f"the {provider.type} info check failed at its {exc.stage} stage: {cause}"
        elif isinstance(exc, MissingDependency):
            stage = "api"
            cause = (
                f"the {provider.type} provider needs {exc.module}, which is not installed, so "
                f"it cannot talk to {where} (checked in {_ms(elapsed)})"
            )
            fix = f"pip install 'imagegate[{exc.extra}]'"
        else:
            stage = _probe_stage(exc)
            what, fix = _split(exc)
            what = what.removeprefix(f"{where} ")  # the lead names the host already
            lead = (_LEADS[stage] if stage != "auth" or keys.names else _NO_KEY_LEAD).format(
                type=provider.type, where=where, ms=_ms(elapsed), keys=keys.shown() or "no key"
            )
            cause = f"{lead}: {what}"
            if stage == "auth" and keys.names:
                fix = f"{fix} (here: {keys.shown()})"
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                fix = f"{fix} (try again in about {retry_after:.0f} s)"
        raise StageFailed(
            StageResult(stage, False, elapsed, exc.cause.partition("; ")[0]),
            cause,
            fix or "see the detail, and run the doctor again",
            passed=_passed_before(stage, target, keys, elapsed),
        ) from None
    elapsed = _since(started)
    stages = []
    if tls_pending:
        stages.append(StageResult("tls", True, None, f"handshake through the proxy {target.proxy}"))
    stages += _passed_before("api", target, keys, elapsed)
    stages.append(StageResult("api", True, elapsed, detail or "answered"))
    return stages


def _passed_before(
    stage: StageName, target: Target, keys: _Keys, elapsed: float | None
) -> list[StageResult]:
    """The probe's stages that an answer at ``stage`` shows passed."""
    order: list[StageName] = ["http", "auth"]
    done = order[: order.index(stage)] if stage in order else order
    detail = {
        "http": f"{target.where} answered",
        "auth": f"{keys.shown()} not refused" if keys.names else "no key configured",
    }
    return [StageResult(s, True, elapsed, detail[s]) for s in done]


# --------------------------------------------------------------------------- model, generate


def _model_size(model: str) -> str | None:
    """The size on disk of a local model folder or a cached hub model, where found."""
    try:
        from imagegate import hubcache

        folder = hubcache.cached_snapshot(model) if hubcache.is_hub_id(model) else Path(model)
    except (ImagegateError, OSError, ValueError):
        return None
    if folder is None or not folder.is_dir():
        return None
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return f"{total / 1e9:.2f} GB" if total >= 1e8 else f"{total / 1e6:.1f} MB"


async def _model_stage(name: str, provider: Provider) -> StageResult:
    """A local provider's model: found (in the cache or a folder), its size, device, dtype."""
    started = time.monotonic()
    model = provider.model
    try:
        async with asyncio.timeout(MODEL_S + _BACKSTOP_S):
            found = await provider.probe(Deadline(MODEL_S))
    except TimeoutError:
        raise StageFailed(
            StageResult("model", False, _since(started), f"no answer in {MODEL_S:.0f} s"),
            f"checking the local model {model} of {name} did not finish in {MODEL_S:.0f} s",
            "check the disk holding the hub cache, or set HF_HUB_OFFLINE=1 if the hub is slow",
        ) from None
    except MissingDependency as exc:
        raise StageFailed(
            StageResult("model", False, _since(started), str(exc).partition(";")[0]),
            f"the {provider.type} provider {name!r} needs {exc.module}, which is not installed "
            f"in this Python, so the model {model} cannot run here (checked in "
            f"{_ms(_since(started))})",
            f"pip install 'imagegate[{exc.extra}]', or remove {name} from the route",
        ) from None
    except ImagegateError as exc:
        what, fix = _split(exc)
        raise StageFailed(
            StageResult("model", False, _since(started), what),
            f"the {provider.type} provider {name!r} cannot load its model {model} (checked in "
            f"{_ms(_since(started))}): {what}",
            fix or f"run `imagegate models pull {model}`, or set providers.{name}.model",
        ) from None
    info = provider.describe()
    size = await asyncio.to_thread(_model_size, model)
    parts = [found or model]
    if size:
        parts.append(size)
    parts.append(f"device {info.get('device', '?')}, dtype {info.get('dtype', '?')}")
    return StageResult("model", True, _since(started), "; ".join(parts))


async def _generate_stage(name: str, provider: Provider, where: str | None) -> StageResult:
    """One cheap generation: 64x64 and 1 step, or the provider's defaults if it refuses those."""
    budget = provider.config.timeout_s or GENERATE_S
    started = time.monotonic()
    cheap = ImageRequest(prompt="a red circle on white", width=64, height=64, steps=1, seed=1)
    request = cheap
    on = where or "the local pipeline"
    try:
        async with asyncio.timeout(budget + _BACKSTOP_S):
            try:
                images = await provider.generate(request, Deadline(budget), None)
            except InvalidRequest as exc:
                if exc.field not in _SIZE_FIELDS:
                    raise
                request = ImageRequest(prompt=cheap.prompt, seed=1)  # its smallest it takes
                images = await provider.generate(request, Deadline(budget), None)
    except TimeoutError:
        raise StageFailed(
            StageResult("generate", False, _since(started), f"no image in {budget:.0f} s"),
            f"a test generation on {on} did not finish in {budget:.0f} s",
            f"raise providers.{name}.timeout_s if the server is known to be slow",
        ) from None
    except ImagegateError as exc:
        what, fix = _split(exc)
        stage = getattr(exc, "stage", None)
        at = f" at the {stage} stage" if stage else ""
        raise StageFailed(
            StageResult("generate", False, _since(started), what),
            f"a test generation on {on} failed{at} after {_ms(_since(started))}: {what}",
            fix or "see the detail",
        ) from None
    first = images[0] if images else None
    size = f"{first.width}x{first.height}, seed {first.seed}" if first else "no image"
    asked = "64x64, 1 step" if request is cheap else "the provider's defaults"
    return StageResult("generate", True, _since(started), f"{len(images)} image ({size}; {asked})")


# --------------------------------------------------------------------------- orchestration


class _Check:
    """One provider's check, in two halves: reach it (config, dns, connect, tls), then use it
    (probe or model, then generate).

    ``check_providers`` runs every provider's first half before any second half, so that a
    probe's first-use work (imports, loading CAs, a model lookup in a thread) is not charged
    to another provider's connect or TLS clock running at the same moment.
    """

    def __init__(self, name: str, provider: Provider, *, generate: bool) -> None:
        self.name = name
        self.provider = provider
        self.generate = generate
        self.stages: list[StageResult] = []
        self.cause: str | None = None
        self.fix: str | None = None
        self.keys = _Keys((), ())
        self.target: Target | None = None
        self.tls_pending = False

    @property
    def stopped(self) -> bool:
        return self.cause is not None

    async def reach(self) -> None:
        """config, then dns, connect and tls for a remote provider."""

        async def body() -> None:
            config, self.keys, self.target = _config_stage(self.name, self.provider)
            self.stages.append(config)
            if self.target is not None:
                network, self.tls_pending = await network_stages(self.target)
                self.stages += network

        await self._run(body, lambda: "connect" if self.stages else "config")

    async def use(self) -> None:
        """The probe (http, auth, api, runtime) or the model, then generate when asked."""

        async def body() -> None:
            target = self.target
            if target is None:
                self.stages.append(await _model_stage(self.name, self.provider))
            elif type(self.provider).probe is Provider.probe:
                self.stages.append(StageResult("api", True, 0.0, _NO_PROBE))
            else:
                self.stages += await _probe_stages(
                    self.provider, target, self.tls_pending, self.keys
                )
            if self.generate:
                where = target.where if target else None
                self.stages.append(await _generate_stage(self.name, self.provider, where))

        def failed_at() -> StageName:
            if self.stages[-1].name in ("api", "model", "runtime"):
                return "generate"
            return "api" if self.target is not None else "model"

        await self._run(body, failed_at)

    async def _run(
        self, body: Callable[[], Awaitable[None]], failed_at: Callable[[], StageName]
    ) -> None:
        if self.stopped:
            return
        try:
            await body()
        except StageFailed as failed:
            seen = {s.name for s in self.stages}
            self.stages += [s for s in failed.passed if s.name not in seen]
            self.stages.append(failed.result)
            self.cause, self.fix = failed.cause, failed.fix
        except Exception as exc:  # a bug in a provider must not hide the other providers
            what = f"{type(exc).__name__}: {exc}"
            self.stages.append(StageResult(failed_at(), False, None, what))
            self.cause = f"checking {self.name} failed unexpectedly ({what})"
            self.fix = "run with IMAGEGATE_DEBUG=1 and report this with the message"

    def report(self) -> ProviderReport:
        report = ProviderReport(self.name, self.provider.type, self.stages, self.cause, self.fix)
        return report.scrubbed(self.keys.secrets)


async def check_provider(
    name: str, provider: Provider, *, generate: bool = False, close: bool = True
) -> ProviderReport:
    """Every stage of one provider, in order, stopping at the first failure; never raises."""
    return (await check_providers({name: provider}, generate=generate, close=close))[0]


async def check_providers(
    providers: Mapping[str, Provider],
    *,
    generate: bool = False,
    close: bool = False,
    router: Router | None = None,
) -> list[ProviderReport]:
    """Check ``providers`` concurrently (the server's live ones: ``close=False``).

    With the server's ``router``, each report also notes where a learned first-byte limit
    differs from the configured one.
    """
    checks = [_Check(name, p, generate=generate) for name, p in providers.items()]
    try:
        await asyncio.gather(*(check.reach() for check in checks))
        await asyncio.gather(*(check.use() for check in checks))
    finally:
        if close:
            for provider in providers.values():
                with contextlib.suppress(Exception):
                    await provider.aclose()
    reports = [check.report() for check in checks]
    if router is not None:
        reports = [
            dataclasses.replace(report, notes=learned_notes(router, report.name))
            for report in reports
        ]
    return reports


def learned_notes(router: Router, name: str) -> list[str]:
    """One line per request shape whose learned first-byte limit is not the configured one."""
    if name not in router.providers:
        return []
    budget = configured_timeouts(router.providers[name].config).get("first_byte_s")
    configured = f"{budget:g} s" if budget is not None else "not set"
    return [
        f"the router learned a first-byte limit of {limit.limit_s:.1f} s for {shape.label} "
        f"requests ({limit.why}), where first_byte_timeout_s is {configured}: a first byte "
        "that late is treated as a hang; set gateway.hang_p99_multiple = 0 to wait the "
        "configured budget"
        for shape, limit in router.learned_hang_limits(name)
    ]


def select(settings: Settings, names: Sequence[str]) -> list[str]:
    """The providers to check: those named (each must exist), else every enabled one."""
    unknown = [n for n in names if n not in settings.providers]
    if unknown:
        raise ConfigError(
            f"{unknown[0]!r} is not a configured provider; name one of the configured ones",
            file=settings.source,
            key="doctor NAME",
            allowed=sorted(settings.providers),
        )
    if names:
        return list(dict.fromkeys(names))
    return [n for n, cfg in settings.providers.items() if cfg.enabled]


def _unbuildable(name: str, kind: str, exc: Exception) -> ProviderReport:
    if isinstance(exc, ImagegateError):
        what, fix = _split(exc)
        if isinstance(exc, ProviderError) and exc.provider:
            what = f"{exc.provider}: {what}"
    else:
        what, fix = f"{type(exc).__name__}: {exc}", ""
    return ProviderReport(
        name,
        kind,
        [StageResult("config", False, 0.0, what)],
        cause=f"the provider {name} ({kind}) could not be set up from its config: {what}",
        fix=fix or f"correct the [providers.{name}] table",
    )


async def run_doctor(
    settings: Settings,
    names: Sequence[str] = (),
    *,
    generate: bool = False,
    stdout_encoding: str | None = None,
) -> DoctorReport:
    """Check the named (or every enabled) provider concurrently, and the environment."""
    types = provider_types()
    providers: dict[str, Provider] = {}
    broken: dict[str, ProviderReport] = {}
    for name in select(settings, names):
        cfg = settings.providers[name]
        try:
            providers[name] = types[cfg.type].cls(name, cfg)
        except Exception as exc:  # a missing extra, a bad setting: reported, not raised
            broken[name] = _unbuildable(name, cfg.type, exc)
    checked = await check_providers(providers, generate=generate, close=True)
    by_name = {r.name: r for r in checked} | broken
    ordered = [by_name[n] for n in select(settings, names)]
    return DoctorReport(environment(settings, stdout_encoding=stdout_encoding), ordered)
