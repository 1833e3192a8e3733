"""OpenTelemetry traces, when the ``otel`` extra is installed and ``OTEL_*`` asks for them.

Nothing here imports OpenTelemetry until :func:`setup_from_env` (the server and ``imagegate
worker`` call it) finds an exporter configured by the standard variables
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_TRACES_EXPORTER``; ``OTEL_SDK_DISABLED=true`` turns it off), or a test calls
:func:`enable` with its own exporter. Until then every function is a no-op costing a global
lookup. The spans:

- ``METHOD /route`` (server): one per HTTP request; an incoming ``traceparent`` is its parent;
- ``job`` (consumer): one per job, continuing the trace of the request that submitted it
  (its ``traceparent`` is stored with the job, so a worker on another machine continues it),
  with a link to it;
- ``attempt PROVIDER``: one per attempt, child of the job, with the provider, the outcome,
  the failing stage and each stage's seconds;
- ``METHOD`` (client): the transport's upstream call, child of the attempt, which sends its
  ``traceparent`` upstream.

Service name, sampling, batching and the OTLP endpoint come from the OTEL_* variables as the
OpenTelemetry SDK reads them (``OTEL_SERVICE_NAME`` defaults to ``imagegate`` here).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Literal

from imagegate.errors import ProviderError

__all__ = [
    "Span",
    "configured",
    "enable",
    "enabled",
    "error",
    "flush",
    "inject",
    "set_attributes",
    "setup_from_env",
    "shutdown",
    "span",
    "traceparent",
]

log = logging.getLogger("imagegate.tracing")

Span = Any
"""An OpenTelemetry span, or None while tracing is off."""
Kind = Literal["internal", "server", "client", "consumer", "producer"]

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_state: dict[str, Any] = {}
"""``tracer`` and ``provider`` once enabled."""


def configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask for traces to be exported."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER")
    if exporter is not None:
        return exporter.strip().lower() not in ("", "none")
    return any(env.get(name, "").strip() for name in _ENDPOINTS)


def enabled() -> bool:
    """Whether spans are being recorded."""
    return "tracer" in _state


def setup_from_env() -> bool:
    """Start exporting traces when the OTEL_* variables ask for it; whether tracing is on.

    Without the ``otel`` extra a warning says how to install it, and tracing stays off.
    """
    if enabled() or not configured():
        return enabled()
    try:
        exporter = _exporter_from_env()
    except ImportError:
        log.warning(
            "OTEL_* variables ask for traces, but the `otel` extra is not installed; "
            "pip install 'imagegate[otel]'"
        )
        return False
    if exporter is not None:
        enable(exporter)
    return enabled()


def _exporter_from_env() -> Any:
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    name = names.split(",")[0].strip()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning("OTEL_TRACES_EXPORTER=%s: only otlp (HTTP) and console are built in", name)
        return None
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol and protocol != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: imagegate exports http/protobuf", protocol)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def enable(exporter: Any, *, batch: bool = True) -> None:
    """Record spans and hand them to ``exporter`` (batched, or one by one for tests)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    shutdown()
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "imagegate"}
    provider = TracerProvider(resource=Resource.create(attributes))
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    _state["provider"] = provider
    _state["propagator"] = TraceContextTextMapPropagator()
    _state["tracer"] = provider.get_tracer("imagegate", _version())


def flush() -> None:
    """Export the spans still pending (a server stopping)."""
    provider = _state.get("provider")
    if provider is not None:
        provider.force_flush()


def shutdown() -> None:
    """Export what is pending and stop recording."""
    provider = _state.pop("provider", None)
    _state.clear()
    if provider is not None:
        provider.shutdown()


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: Kind = "internal",
    attributes: Mapping[str, Any] | None = None,
    carrier: Mapping[str, str] | None = None,
    parent: str | None = None,
    root: bool = False,
) -> Iterator[Span]:
    """A span around the block, current inside it; None while tracing is off.

    Its parent is the current span, or the context in ``carrier`` (incoming headers), or the
    ``parent`` traceparent (linked too); ``root`` starts a new trace when ``parent`` is None.
    An exception escaping the block marks the span as an error.
    """
    tracer = _state.get("tracer")
    if tracer is None:
        yield None
        return
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    context = None
    links = []
    if carrier is not None:
        context = _state["propagator"].extract(carrier)
    elif parent is not None:
        context = _state["propagator"].extract({"traceparent": parent})
        linked = trace.get_current_span(context).get_span_context()
        if linked.is_valid:
            links.append(trace.Link(linked))
    elif root:
        context = otel_context.Context()
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=getattr(trace.SpanKind, kind.upper()),
        attributes=_clean(attributes or {}),
        links=links,
    ) as current:
        yield current


def set_attributes(current: Span, attributes: Mapping[str, Any]) -> None:
    """Set the attributes that are not None on ``current`` (nothing while tracing is off)."""
    if current is not None:
        current.set_attributes(_clean(attributes))


def error(current: Span, description: str) -> None:
    """Mark ``current`` as failed, with ``description``."""
    if current is not None:
        from opentelemetry.trace import Status, StatusCode

        current.set_status(Status(StatusCode.ERROR, description))


def provider_failed(current: Span, exc: ProviderError) -> None:
    """Mark ``current`` failed by a provider error: its stage and class as attributes."""
    set_attributes(current, {"imagegate.stage": exc.stage, "error.type": type(exc).__name__})
    error(current, exc.message)


def traceparent() -> str | None:
    """The current span's W3C ``traceparent``, to store with a job; None while off."""
    if not enabled():
        return None
    carrier: dict[str, str] = {}
    _state["propagator"].inject(carrier)
    return carrier.get("traceparent")


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to outgoing headers."""
    if enabled():
        _state["propagator"].inject(headers)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imagegate")
    except PackageNotFoundError:
        return "0.0.0"


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in attributes.items() if value is not None}
