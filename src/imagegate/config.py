"""Settings: imagegate.toml + environment + .env, validated into one object.

Lookup order: an explicit path > ``IMAGEGATE_CONFIG`` > ``./imagegate.toml`` > the user config
dir > the built-in default (``route = ["local"]`` and a ``diffusers`` provider named
``local``). ``IMAGEGATE_ROUTE="a,b"`` overrides the route and ``IMAGEGATE_DATA_DIR`` the data
dir. Secrets never live here: providers name the environment variables that hold them.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import platformdirs
from dotenv import load_dotenv
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError

from imagegate.errors import ConfigError
from imagegate.registry import provider_types

APP_NAME = "imagegate"
CONFIG_FILE = "imagegate.toml"
DEFAULT_PROVIDER = "local"


class ProviderConfig(BaseModel):
    """Settings every provider takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="The provider type: a name in the `imagegate.providers` group.")
    enabled: bool = Field(
        default=True, description="false = keep the table but load no provider from it."
    )
    paid: bool = Field(
        default=False,
        description="The provider bills per request: a request it may have received is never "
        "sent elsewhere (unless gateway.failover_after_send).",
    )
    cost_per_image: float = Field(
        default=0.0,
        ge=0,
        description="What one image costs, in your currency (>= 0); summed into each job's "
        "cost and the cost metric.",
    )
    cost_per_megapixel: float = Field(
        default=0.0,
        ge=0,
        description="What one megapixel of output costs (>= 0), for providers that price by "
        "size; added to cost_per_image per image.",
    )

    def cost_of(self, sizes: list[tuple[int, int]]) -> float:
        """What images of these (width, height) cost at this provider's prices."""
        pixels = sum(width * height for width, height in sizes)
        return self.cost_per_image * len(sizes) + self.cost_per_megapixel * pixels / 1e6

    timeout_s: PositiveFloat | None = Field(
        default=None,
        description="Seconds one attempt at this provider may take (> 0); none = what is left "
        "of gateway.deadline_s.",
    )
    concurrency: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Requests this provider serves at once per process (1-1024); the default "
        "depends on the type: 1 for servers that run one generation at a time.",
    )


class RemoteConfig(ProviderConfig):
    """Settings every provider reached over the network takes; a timeout of 0 is refused."""

    url: str | None = Field(default=None, description="The server's base URL.")
    ca_file: str | None = Field(
        default=None,
        description="A PEM bundle of CAs to trust instead of the system's (a private or test CA).",
    )
    connect_timeout_s: PositiveFloat = Field(
        default=2.0, description="Seconds for DNS and for the TCP connect, each (> 0)."
    )
    tls_timeout_s: PositiveFloat = Field(
        default=2.0, description="Seconds for the TLS handshake (> 0)."
    )
    first_byte_timeout_s: PositiveFloat = Field(
        default=120.0,
        description="Seconds from sending a request to the first byte of the answer (> 0).",
    )
    read_timeout_s: PositiveFloat = Field(
        default=30.0, description="Seconds the answer may pause between two reads (> 0)."
    )


class GatewaySettings(BaseModel):
    """The ``[gateway]`` table: routing, deadlines and retries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    route: list[str] = Field(
        default_factory=lambda: [DEFAULT_PROVIDER],
        min_length=1,
        description="Provider names tried in this order (at least one); each needs a "
        "[providers.NAME] table, except `local`. IMAGEGATE_ROUTE=a,b overrides it.",
    )
    deadline_s: PositiveFloat = Field(
        default=180.0,
        description="Seconds a request may take in all, every attempt and failover included (> 0). "
        "A synchronous request (the OpenAI and A1111 routes) counts from its arrival, time in "
        "the queue included; a job (/v1/jobs) from when it starts.",
    )
    max_queue_wait_s: PositiveFloat | None = Field(
        default=None,
        description="Seconds a job may wait in the queue before it fails without running "
        "(> 0; default: no limit).",
    )
    retry_budget: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="Retries allowed as a share of recent requests (0-1), so a failing "
        "provider cannot multiply the load.",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=10, description="Attempts one request makes at most (1-10)."
    )
    hedge_connect_after_s: float = Field(
        default=0.5,
        ge=0.0,
        description="Seconds a connect and TLS handshake may lag before the next provider "
        "starts connecting too (>= 0; 0 = off); only one of them sends the request.",
    )
    hedge_after_s: float = Field(
        default=0.0,
        ge=0.0,
        description="Seconds an unpaid provider's answer may lag before the next one is sent "
        "the same request (>= 0); 0 = after its learned p95 (hedge_learned).",
    )
    hedge_learned: bool = Field(
        default=True,
        description="Hedge unpaid providers after their learned p95 for the request's shape "
        "(needs learn_min_samples successes; never below hedge_min_s).",
    )
    hedge_min_s: float = Field(
        default=0.5,
        ge=0.0,
        le=3600.0,
        description="The shortest learned hedge delay, in seconds (0-3600).",
    )
    learn_min_samples: int = Field(
        default=20,
        ge=1,
        le=10_000,
        description="Successes of one provider and request shape needed before learned hedging "
        "and hang detection use them (1-10000).",
    )
    hang_p99_multiple: float = Field(
        default=2.0,
        ge=0.0,
        le=1000.0,
        description="A first byte later than this multiple of the learned first-byte p99 is a "
        "hang (0-1000; 0 = off); the provider's first_byte_timeout_s stays the cap.",
    )
    hang_min_s: float = Field(
        default=1.0,
        gt=0.0,
        le=3600.0,
        description="The shortest learned hang limit, in seconds (more than 0, at most 3600).",
    )
    breaker_open_s: float = Field(
        default=2.0,
        gt=0.0,
        le=3600.0,
        description="Seconds a breaker stays open before its first probe (more than 0, at most "
        "3600); doubles with each failed probe up to breaker_max_open_s.",
    )
    breaker_max_open_s: float = Field(
        default=60.0,
        gt=0.0,
        le=86_400.0,
        description="The longest a breaker stays open between two probes, in seconds (more "
        "than 0, at most 86400).",
    )
    half_open_hedge_s: float = Field(
        default=5.0,
        ge=0.0,
        le=3600.0,
        description="A paid provider's half-open trial request is hedged to the next provider "
        "after this many seconds when no latency is learned yet (0-3600).",
    )
    failover_after_send: bool = Field(
        default=False,
        description="Fail over to the next provider even after a paid one may have received "
        "(and billed) the request.",
    )
    data_dir: Path | None = Field(
        default=None,
        description="Where images and the history database live; none = the user data dir. "
        "IMAGEGATE_DATA_DIR overrides it.",
    )
    keep_days: PositiveFloat | None = Field(
        default=None,
        description="Delete images older than this many days (> 0; fractions allowed); "
        "unset = keep them.",
    )
    max_store_gb: PositiveFloat | None = Field(
        default=None,
        description="Delete the oldest images while the image files exceed this many GB "
        "(> 0); unset = no limit.",
    )
    retention_sweep_s: PositiveFloat = Field(
        default=600.0,
        description="Seconds between retention sweeps of a server (> 0; default 600); a "
        "sweep runs only when keep_days or max_store_gb is set.",
    )


class RouteSettings(BaseModel):
    """One ``[routes.NAME]`` table: a named failover order with its own limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    route: list[str] = Field(
        min_length=1, description="Providers to try, in order (at least one, each configured)."
    )
    deadline_s: PositiveFloat | None = Field(
        default=None,
        description="Whole-request deadline on this route, > 0 s (default: the gateway's).",
    )
    max_attempts: int | None = Field(
        default=None,
        ge=1,
        le=10,
        description="Attempts per request on this route, 1-10 (default: the gateway's).",
    )
    hedge_after_s: float | None = Field(
        default=None,
        ge=0.0,
        description="Start the next unpaid provider after this many s, >= 0; 0 = after its "
        "learned p95 (default: the gateway's).",
    )


class ServerSettings(BaseModel):
    """The ``[server]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_keys_env: str = Field(
        default="IMAGEGATE_API_KEYS",
        description="The environment variable holding the server's API keys, comma-separated; "
        "unset or empty = no auth.",
    )
    url_expiry_s: int = Field(
        default=3600,
        ge=1,
        le=7 * 24 * 3600,
        description="How long a presigned image URL works, 1 s to 7 days (default 1 h); "
        "URLs are signed only with auth on.",
    )
    url_secret_env: str = Field(
        default="IMAGEGATE_URL_SECRET",
        description="Environment variable holding the URL-signing secret; unset = one "
        "generated into <data_dir>/url-secret (mode 0600). Set it when replicas share no data dir.",
    )
    max_queue: int = Field(
        default=100,
        ge=1,
        description="Jobs waiting at once before the server answers 429 with Retry-After (>= 1).",
    )
    max_body_bytes: int = Field(
        default=1_000_000,
        ge=1024,
        description="The largest request body the server reads, in bytes (>= 1024); more is a 413.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (besides loopback ones) the server answers without keys, and "
        "the hosts of web pages allowed to write to it; default none.",
    )
    max_edit_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="The largest request body of the routes that take input images (OpenAI "
        "edits and variations, A1111 img2img, jobs), in bytes (>= 1024; default 64 MiB).",
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="The largest request line plus headers the server reads, in bytes, before "
        "any auth (1 KiB to 1 MiB; default 64 KiB); more is a 400 and the connection closes.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds a connection may take to send a complete request line and headers, "
        "counted from its opening or its previous answer (> 0, at most 300; default 10); "
        "later, it is closed.",
    )
    keep_alive_s: int = Field(
        default=5,
        ge=1,
        le=300,
        description="Seconds an idle keep-alive connection stays open after an answer "
        "(1 to 300; default 5).",
    )
    max_connections: int = Field(
        default=512,
        ge=8,
        le=65536,
        description="Open connections at most (8 to 65536; default 512), lowered to half the "
        "process's file-descriptor limit; one more closes the connection that has waited "
        "longest for a request, never one being served.",
    )
    max_event_streams: int = Field(
        default=16,
        ge=1,
        le=10000,
        description="Job event streams (`GET /v1/jobs/{id}/events`) open at once per key, or "
        "for all callers without keys (1 to 10000; default 16); one more is a 429.",
    )


class WebhookSettings(BaseModel):
    """The ``[webhooks]`` table: how the end of a job is posted to its ``webhook_url``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret_env: str = Field(
        default="IMAGEGATE_WEBHOOK_SECRET",
        description="Environment variable holding the Standard Webhooks signing secret "
        "(`whsec_` + base64, at least 24 bytes); unset = `webhook_url` is refused with a 400.",
    )
    allow_private: bool = Field(
        default=False,
        description="Allow destinations on loopback, private, link-local or other "
        "non-public addresses (default false: refused at submit and at each send).",
    )
    retry_for_s: float = Field(
        default=86_400.0,
        gt=0,
        le=30 * 86_400,
        description="How long after a job ends its event is retried, > 0 to 30 days "
        "(default 1 day); then the delivery is given up as failed.",
    )
    backoff_s: float = Field(
        default=5.0,
        gt=0,
        description="Seconds before the first retry (> 0, default 5); each retry waits twice "
        "the one before, up to `max_backoff_s`.",
    )
    max_backoff_s: float = Field(
        default=3600.0,
        gt=0,
        description="The longest wait between two attempts in seconds (> 0, default 1 h).",
    )
    timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="What one delivery attempt may take in seconds, > 0 to 300 (default 10).",
    )
    poll_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Seconds between two looks for events due, > 0 to 60 (default 1); a job "
        "that ends in this process is sent at once.",
    )


class ScaleSettings(BaseModel):
    """The ``[scale]`` table: where jobs and history live when scaled out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backplane: str | None = Field(
        default=None,
        description="A postgresql:// URL for the shared job queue and history; none = SQLite "
        "in the data dir, jobs run in the serving process.",
    )
    heartbeat_s: float = Field(
        default=2.0, gt=0, description="Seconds between a running job's heartbeats (> 0)."
    )
    stalled_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds without a heartbeat after which a running job counts as stalled "
        "and is requeued or failed (> 0).",
    )
    sweep_s: float = Field(
        default=2.0, gt=0, description="Seconds between two looks for stalled jobs (> 0)."
    )
    remote_concurrency: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="Jobs one `worker --queue remote` runs at once (1-1024); each provider "
        "still gets at most its own `concurrency` of them.",
    )


class StorageSettings(BaseModel):
    """The ``[storage]`` table: where image bytes live."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["file", "postgresql", "s3"] = Field(
        default="file",
        description="Where image bytes live: `file` (default: `images/` in the data dir), "
        "`postgresql` (in the `[scale] backplane` database, which it needs) or `s3` (an "
        "S3-compatible bucket, which `bucket` names).",
    )
    bucket: str | None = Field(
        default=None,
        max_length=63,
        description='The S3 bucket (3-63 characters; required with `backend = "s3"`, '
        "default none).",
    )
    prefix: str = Field(
        default="",
        max_length=512,
        description="Prepended to every S3 object key, e.g. `imagegate/` (default empty, at "
        "most 512 characters).",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        description="The S3 endpoint URL for a store other than AWS (MinIO, R2, GCS "
        "interoperability); default none = AWS's. Credentials come only from the standard "
        "`AWS_*` environment variables.",
    )
    region: str | None = Field(
        default=None,
        max_length=64,
        description="The S3 region (default none = `AWS_REGION` / `AWS_DEFAULT_REGION`, else "
        "us-east-1).",
    )
    timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="What one S3 call may wait for the store to connect or answer, > 0 to "
        "600 s (default 30); a store that stops answering fails the job with a StorageError.",
    )
    chunk_kb: int = Field(
        default=256,
        ge=16,
        le=16_384,
        description="Size of the pieces image bytes are written and streamed in, in KiB "
        "(16-16384, default 256).",
    )


class Settings(BaseModel):
    """Everything imagegate reads from configuration, validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gateway: GatewaySettings = Field(
        default_factory=GatewaySettings, description="Routing, deadlines and retries."
    )
    routes: dict[str, RouteSettings] = Field(
        default_factory=dict,
        description="Named routes, selected by the OpenAI `model`, the jobs' `route`, "
        "`--route`; names are 1-64 characters, distinct from provider names and from "
        "'route', 'default', 'auto'.",
    )
    server: ServerSettings = Field(
        default_factory=ServerSettings, description="What `imagegate serve` accepts."
    )
    scale: ScaleSettings = Field(
        default_factory=ScaleSettings, description="Where jobs and history live when scaled out."
    )
    webhooks: WebhookSettings = Field(
        default_factory=WebhookSettings,
        description="Signed callbacks posted when a job ends.",
    )
    storage: StorageSettings = Field(
        default_factory=StorageSettings,
        description="Where image bytes live: the data dir, the database or an S3 bucket.",
    )
    providers: dict[str, ProviderConfig] = Field(
        default_factory=dict,
        description="One table per provider, named as the route names it; `type` picks its kind.",
    )
    source: str | None = Field(
        default=None, exclude=True, description="The file read (not a key: set by the loader)."
    )

    @property
    def data_dir(self) -> Path:
        """Where images and the database live."""
        env = os.environ.get("IMAGEGATE_DATA_DIR")
        if env:
            return Path(env).expanduser()
        if self.gateway.data_dir is not None:
            return self.gateway.data_dir.expanduser()
        return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def config_path(explicit: str | Path | None = None) -> Path | None:
    """The config file the lookup order picks, or None for the built-in default."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError("the config file does not exist", file=str(path))
        return path
    env = os.environ.get("IMAGEGATE_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError("IMAGEGATE_CONFIG names a file that does not exist", file=str(path))
        return path
    for candidate in (
        Path.cwd() / CONFIG_FILE,
        Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / CONFIG_FILE,
    ):
        if candidate.is_file():
            return candidate
    return None


def load_config(path: str | Path | None = None) -> Settings:
    """Read, merge and validate the configuration; raises ConfigError naming file and key."""
    load_dotenv(Path.cwd() / ".env", override=False)
    source = config_path(path)
    raw: dict[str, Any] = {}
    if source is not None:
        try:
            raw = tomllib.loads(source.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", file=str(source)) from None
        except OSError as exc:
            raise ConfigError(f"cannot read the file: {exc.strerror}", file=str(source)) from None
    return parse_settings(raw, source=str(source) if source else None)


def parse_settings(raw: dict[str, Any], *, source: str | None = None) -> Settings:
    """Validate a config mapping (as read from TOML) into Settings."""
    raw = dict(raw)
    providers_raw = raw.pop("providers", {})
    if not isinstance(providers_raw, dict):
        raise ConfigError("must be a table of providers", file=source, key="providers")
    gateway = dict(raw.get("gateway", {}))
    route_env = os.environ.get("IMAGEGATE_ROUTE")
    if route_env:
        gateway["route"] = [name.strip() for name in route_env.split(",") if name.strip()]
    raw["gateway"] = gateway
    try:
        settings = Settings.model_validate({**raw, "source": source})
    except ValidationError as exc:
        raise _config_error(exc, source, Settings) from None

    providers = {name: _provider_config(name, cfg, source) for name, cfg in providers_raw.items()}
    if DEFAULT_PROVIDER not in providers and (
        not providers or DEFAULT_PROVIDER in settings.gateway.route
    ):
        providers[DEFAULT_PROVIDER] = _provider_config(
            DEFAULT_PROVIDER, {"type": "diffusers"}, source
        )
    for name in settings.gateway.route:
        if name not in providers:
            raise ConfigError(
                f"names the provider {name!r}, which is not configured; add a "
                f"[providers.{name}] table or change the route",
                file=source,
                key="gateway.route",
                allowed=sorted(providers),
            )
    _check_routes(settings, providers, source)
    _check_storage(settings, source)
    return settings.model_copy(update={"providers": providers})


DEFAULT_ROUTE_NAMES = frozenset({"route", "default", "auto"})
"""Names that always mean the ``[gateway] route``; no named route or provider may take them."""


def _check_routes(
    settings: Settings, providers: dict[str, ProviderConfig], source: str | None
) -> None:
    for name, route in settings.routes.items():
        key = f"routes.{name}"
        if name in DEFAULT_ROUTE_NAMES or name in providers or not 1 <= len(name) <= 64:
            raise ConfigError(
                "a route name must be 1-64 characters and differ from every provider name "
                f"and from {', '.join(sorted(DEFAULT_ROUTE_NAMES))} (they mean the default route)",
                file=source,
                key=key,
            )
        for provider in route.route:
            if provider not in providers:
                raise ConfigError(
                    f"names the provider {provider!r}, which is not configured",
                    file=source,
                    key=f"{key}.route",
                    allowed=sorted(providers),
                )


def _check_storage(settings: Settings, source: str | None) -> None:
    storage = settings.storage
    if storage.backend == "s3" and not storage.bucket:
        raise ConfigError('backend = "s3" needs a bucket', file=source, key="storage.bucket")
    if storage.backend == "postgresql" and not settings.scale.backplane:
        raise ConfigError(
            'backend = "postgresql" keeps images in the [scale] backplane database; set '
            "scale.backplane to a postgresql:// URL",
            file=source,
            key="storage.backend",
        )


def _provider_config(name: str, cfg: Any, source: str | None) -> ProviderConfig:
    key = f"providers.{name}"
    if not isinstance(cfg, dict):
        raise ConfigError("must be a table", file=source, key=key)
    types = provider_types()
    kind = cfg.get("type")
    if kind not in types:
        raise ConfigError(
            f"unknown provider type {kind!r}" if kind else "the provider needs a type",
            file=source,
            key=f"{key}.type",
            allowed=sorted(types),
        )
    model = types[kind].cls.Config
    try:
        return model.model_validate(cfg)
    except ValidationError as exc:
        raise _config_error(exc, source, model, prefix=key) from None


def _config_error(
    exc: ValidationError, source: str | None, model: type[BaseModel], prefix: str = ""
) -> ConfigError:
    err = exc.errors(include_url=False)[0]
    loc = [str(part) for part in err["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc)
    allowed: list[str] | None = None
    if err["type"] == "extra_forbidden":
        allowed = sorted(_fields_at(model, loc[:-1]))
        message = "is not a known key"
    elif err["type"] == "literal_error":
        message = f"{err['msg']}; got {err.get('input')!r}"
    else:
        message = f"{err['msg']}; got {err.get('input')!r}"
    return ConfigError(message, file=source, key=key, allowed=allowed)


def _fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """The keys allowed at ``path`` inside ``model`` (for 'unknown key' errors)."""
    current: Any = model
    for part in path:
        field = current.model_fields.get(part) if hasattr(current, "model_fields") else None
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return list(current.model_fields) if hasattr(current, "model_fields") else []
