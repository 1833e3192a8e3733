"""What every provider reached over HTTP shares: one lazily opened Transport, its key, JSON.

A remote provider subclasses ``RemoteProvider`` instead of ``Provider``. It names the config
key that holds the secret's environment variable (``key_setting``), maps its vendor's failed
answers in ``_error``, and gets:

* ``_read_key()`` / ``_api_key()``: the secret, read with ``read_secret`` now, or once and kept;
* ``_http(*secrets)``: the transport, opened on first use from the provider's config, with
  every secret passed in added to its redaction list;
* ``_json(resp)``: the body of a successful answer, else the vendor's error;
* ``aclose()`` closing the transport, and ``describe()`` adding the url (and the key's variable
  name, never the key).

It lives beside ``base`` rather than in it so that ``base`` stays free of the HTTP layer.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from pydantic import Field

from imagegate.errors import ProviderError
from imagegate.providers.base import Provider, ProviderConfig, RemoteConfig, read_secret
from imagegate.transport import Response, Transport, expect_json

__all__ = ["HOSTED_API_CONCURRENCY", "HostedAPIConfig", "RemoteProvider"]

HOSTED_API_CONCURRENCY = 64
"""Requests a hosted API gets at once from one process unless its table says otherwise."""


class HostedAPIConfig(RemoteConfig):
    """Settings of a vendor's hosted API (OpenAI-compatible, Novita, Stability, HF Inference).

    Such an API scales on its side and bills each image, so it is paid by default and takes
    many requests at once: its 429s (with Retry-After) pace the router, not a local queue of
    one. Servers that serialize (A1111, ComfyUI, a local pipeline) keep one at a time.
    """

    paid: bool = Field(
        default=True,
        description="The API bills per request: a request it may have received is never sent "
        "elsewhere (unless gateway.failover_after_send).",
    )
    concurrency: int = Field(
        default=HOSTED_API_CONCURRENCY,
        ge=1,
        le=1024,
        description="Requests sent to this API at once from one process (1-1024); "
        "a 429 still opens the breaker and honours Retry-After.",
    )


class RemoteProvider(Provider):
    """A provider that talks HTTP to a vendor through one ``Transport``."""

    config: RemoteConfig
    key_setting: ClassVar[str] = "api_key_env"
    """The config key naming the environment variable that holds the secret."""
    describes_key: ClassVar[bool] = True
    """Whether ``describe()`` shows ``key_setting`` (the variable's name, never its value)."""
    json_any_content_type: ClassVar[bool] = False
    """Whether ``_json`` parses a body whatever its content type (else: application/json)."""

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self._transport: Transport | None = None
        self._key: str | None = None

    async def aclose(self) -> None:
        """Close the connection pool."""
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()

    def describe(self) -> dict[str, Any]:
        """The base URL and, where shown, the key's variable name (never the key) added."""
        info = super().describe()
        info["url"] = self.config.url
        if self.describes_key:
            info[self.key_setting] = getattr(self.config, self.key_setting)
        return info

    # -- plumbing ------------------------------------------------------------------------

    @abstractmethod
    def _error(self, resp: Response) -> ProviderError:
        """The error tree's answer to a failed response (the provider's ``_map_error``)."""

    def _read_key(self) -> str:
        """The secret named by the ``key_setting`` config key, read now; "" when none is set."""
        env = getattr(self.config, self.key_setting)
        secret = read_secret(env, provider=self.name, key=self.key_setting)
        return secret.get_secret_value() if secret is not None else ""

    def _api_key(self) -> str:
        """The secret, read on first use and kept."""
        if self._key is None:
            self._key = self._read_key()
        return self._key

    def _http(self, *secrets: str) -> Transport:
        """The transport, opened on first use; ``secrets`` (default: the kept key) redacted."""
        if not secrets:
            secrets = (self._api_key(),)
        if self._transport is None:
            base = (self.config.url or "").rstrip("/") + "/"
            cfg = self.config.model_copy(update={"url": base})
            self._transport = Transport.for_config(self.name, cfg, secrets=secrets)
        else:
            known = self._transport.secrets
            added = tuple(s for s in secrets if s and s not in known)
            if added:
                self._transport.secrets = (*known, *added)
        return self._transport

    def _json(self, resp: Response) -> Any:
        """The JSON body of a successful answer; the vendor's error otherwise."""
        if not resp.ok:
            raise self._error(resp)
        return resp.json() if self.json_any_content_type else expect_json(resp, self.name)
