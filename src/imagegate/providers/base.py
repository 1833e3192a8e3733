"""The provider protocol, the settings every provider shares, and the entry-point registry.

A provider is one class in one module. It declares its ``type`` (the config's ``type =``),
its ``Config`` (a pydantic model that forbids unknown keys), and implements ``generate``.
Built-in providers register through the ``imagegate.providers`` entry-point group exactly
like third-party ones, so ``imagegate providers`` shows each one's origin.
"""

from __future__ import annotations

import builtins
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import SecretStr

from imagegate import redaction
from imagegate.config import ProviderConfig, RemoteConfig
from imagegate.deadline import Deadline
from imagegate.errors import AuthError
from imagegate.registry import ENTRY_POINT_GROUP, ProviderType, provider_types
from imagegate.request import GeneratedImage, ImageRequest

__all__ = [
    "ENTRY_POINT_GROUP",
    "Deadline",
    "Progress",
    "ProgressCallback",
    "Provider",
    "ProviderConfig",
    "ProviderType",
    "RemoteConfig",
    "effective_params",
    "provider_types",
    "read_secret",
]


@dataclass(frozen=True)
class Progress:
    """One step of one generation, as a provider reports it."""

    step: int
    steps: int

    @property
    def fraction(self) -> float:
        return self.step / self.steps if self.steps else 0.0


ProgressCallback = Callable[[Progress], None]


def read_secret(env_name: str | None, *, provider: str, key: str) -> SecretStr | None:
    """The secret held by environment variable ``env_name``; never read from a file."""
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise AuthError(
            f"the environment variable {env_name} (providers.{provider}.{key}) is not set; "
            "export it with the provider's key, or change the setting",
            provider=provider,
            stage="config",
        )
    redaction.remember(value)
    return SecretStr(value)


class Provider(ABC):
    """One backend. Subclasses set ``type`` and ``Config`` and implement ``generate``.

    Remote ones subclass ``imagegate.providers.remote.RemoteProvider`` instead.
    """

    type: ClassVar[str]
    Config: ClassVar[builtins.type[ProviderConfig]] = ProviderConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"txt2img"})
    """The tasks (``ImageRequest.task``) this provider can do; the router skips it for others."""

    config: ProviderConfig
    """This provider's settings, always an instance of its ``Config``; a subclass narrows the
    annotation (``config: MyConfig``) for typed access."""

    def __init__(self, name: str, config: ProviderConfig) -> None:
        """``config`` may be a generic ProviderConfig: it is validated into ``Config`` here."""
        cls = type(self).Config
        if not isinstance(config, cls):
            config = cls.model_validate(config.model_dump())
        self.name = name
        self.config = config

    @property
    def paid(self) -> bool:
        return self.config.paid

    @property
    def model(self) -> str:
        """The model this provider uses when the request names none."""
        return str(getattr(self.config, "model", None) or self.type)

    @abstractmethod
    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        """Make ``request.n`` images before ``deadline``, reporting steps to ``progress``."""

    def effective_params(self, request: ImageRequest) -> dict[str, Any]:
        """The steps, sampler, scheduler and guidance this provider uses for ``request``,
        where known.

        Written into the stored image's A1111 infotext; providers with their own defaults
        override this so the record shows what really ran.
        """
        return {
            "steps": request.steps,
            "sampler": request.sampler,
            "scheduler": request.scheduler,
            "guidance": request.guidance,
        }

    def samplers(self) -> tuple[str, ...] | None:
        """The A1111 sampler names (``imagegate.sampling``) this provider runs; None when it
        takes no sampler at all (a request's is then ignored, as the provider documents)."""
        return None

    def schedulers(self) -> tuple[str, ...] | None:
        """The A1111 scheduler names this provider runs, "automatic" included; None when it
        takes no scheduler."""
        return None

    def endpoint(self) -> str | None:
        """The base URL this provider talks to (the doctor checks its host); None if local."""
        url = getattr(self.config, "url", None)
        return str(url) if url else None

    def preflight(self) -> None:  # noqa: B027 - optional hook
        """Raise a ProviderError when this provider cannot serve at all, found cheaply: no
        generation, no heavy import, the network only where nothing else can tell (the
        gateway calls it before the store opens, so such a failure is quick)."""

    async def probe(self, deadline: Deadline) -> str | None:
        """A cheap check that the provider can serve, without generating.

        Remote providers call their own info endpoint (a model list, a config, a balance), so
        a wrong URL, a refused key or a sleeping Space shows here; on success they return a
        short detail such as "12 checkpoints". Raises a ProviderError (or MissingDependency)
        naming what failed. The router's background probe and the doctor both use it.
        """
        return None

    async def probe_handshake(self, deadline: Deadline) -> str | None:
        """The router's probe after a dns / connect / TLS failure: is the path back?

        By default the metadata check of ``probe``: the breaker being open, its request opens
        a fresh connection, so the handshake that failed is what it repeats. Override it where
        a lighter check proves the same.
        """
        return await self.probe(deadline)

    def probe_request(self) -> ImageRequest:
        """The cheapest real generation this provider accepts: the generation probe's request.

        Smallest size and one step by default; a provider with a larger minimum size, or one
        that ignores steps, overrides it.
        """
        return ImageRequest(prompt="a red circle", width=64, height=64, steps=1, seed=0, n=1)

    async def probe_generation(self, deadline: Deadline) -> str | None:
        """The router's probe of an *unpaid* provider that failed after sending (a hang at
        first byte or in the body, a 5xx): one real image of ``probe_request``, since its
        metadata endpoint may answer while its image endpoint does not."""
        request = self.probe_request()
        images = await self.generate(request, deadline, None)
        size = f"{images[0].width}x{images[0].height}" if images else "no"
        return f"made a {size} test image"

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections, threads and models."""

    def describe(self) -> dict[str, Any]:
        """What ``imagegate providers`` shows; never a secret."""
        return {"name": self.name, "type": self.type, "model": self.model, "paid": self.paid}


def effective_params(provider: Provider | None, request: ImageRequest) -> dict[str, Any]:
    """The steps, sampler, scheduler and guidance that really ran: the provider's figure where
    it knows one, else the request's. A 0 is a value, not a gap (guidance 0 is real)."""
    known = provider.effective_params(request) if provider is not None else {}
    return {
        key: known[key] if known.get(key) is not None else getattr(request, key)
        for key in ("steps", "sampler", "scheduler", "guidance")
    }
