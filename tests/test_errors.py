"""The error tree: one root, class properties the router relies on, messages with fixes."""

from __future__ import annotations

import inspect

import pytest

from imagegate import errors
from imagegate.errors import (
    AllProvidersFailed,
    ConfigError,
    ConnectError,
    ContentFiltered,
    ImagegateError,
    MissingDependency,
    ProtocolError,
    ProviderError,
    Timeout,
    UpstreamError,
)

PROVIDER_FAILURES = [
    "ConnectError",
    "Timeout",
    "AuthError",
    "RateLimited",
    "QuotaExceeded",
    "ContentFiltered",
    "InvalidRequest",
    "Unavailable",
    "UpstreamError",
    "ProtocolError",
]


def test_every_exported_error_descends_from_the_root() -> None:
    """Each class in errors.__all__ (but the Stage alias) is an ImagegateError."""
    for name in errors.__all__:
        obj = getattr(errors, name)
        if inspect.isclass(obj):
            assert issubclass(obj, ImagegateError), name


@pytest.mark.parametrize("name", PROVIDER_FAILURES)
def test_every_provider_failure_is_a_provider_error(name: str) -> None:
    """The design's list of provider failures are all ProviderError subclasses."""
    assert issubclass(getattr(errors, name), ProviderError)


def test_module_docstring_draws_every_class() -> None:
    """The tree in the module docstring names every error class."""
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        if inspect.isclass(getattr(errors, name)):
            assert name in doc, name


def test_timeout_before_the_body_was_sent_cannot_have_been_billed() -> None:
    """A stall in connect or TLS is safe to fail over; one after sending is not."""
    assert not Timeout("x", stage="tls").may_have_been_billed
    assert not Timeout("x", stage="connect").may_have_been_billed
    assert Timeout("x", stage="first_byte").may_have_been_billed


def test_content_filter_does_not_fail_over() -> None:
    """A provider's own safety filter is not routed around."""
    assert ContentFiltered.failover is False


def test_retryable_is_a_class_property() -> None:
    """Server errors are retryable, malformed answers are not."""
    assert UpstreamError.retryable
    assert not ProtocolError.retryable


def test_config_error_names_file_key_and_allowed_values() -> None:
    """ConfigError's message carries everything needed to fix the file."""
    err = ConfigError(
        "bad value", file="imagegate.toml", key="providers.local.dtype", allowed=["auto", "float32"]
    )
    assert str(err) == "imagegate.toml: providers.local.dtype: bad value (allowed: auto, float32)"
    assert err.exit_code == 2


def test_missing_dependency_gives_the_pip_line() -> None:
    """A missing extra says exactly what to install."""
    assert "pip install 'imagegate[local]'" in str(MissingDependency("local", "torch"))


def test_all_providers_failed_exits_with_three() -> None:
    """The CLI exit code for a route that failed entirely is 3."""
    assert AllProvidersFailed("x", []).exit_code == 3


def test_reset_after_sending_may_have_been_billed() -> None:
    """A reset while waiting for or reading the answer may follow a charge; a refusal not."""
    assert not ConnectError("x", stage="connect").may_have_been_billed
    assert ConnectError("x", stage="read").may_have_been_billed


def test_an_error_carries_its_fix_as_a_field_and_ends_with_it() -> None:
    """``fix`` is a field; the message still ends with it, and ``cause`` is the rest."""
    err = Timeout("no first byte in 2 s", stage="first_byte", fix="raise first_byte_timeout_s")

    assert err.fix == "raise first_byte_timeout_s"
    assert err.message == "no first byte in 2 s; raise first_byte_timeout_s"
    assert err.cause == "no first byte in 2 s"


def test_a_message_written_with_its_fix_gives_it_up_once() -> None:
    """An error raised the older way, the fix after the last "; ", still carries it."""
    err = ConnectError("refused by 127.0.0.1:9; start the server", stage="connect")

    assert (err.cause, err.fix) == ("refused by 127.0.0.1:9", "start the server")
    assert MissingDependency("local", "torch").fix == "pip install 'imagegate[local]'"
