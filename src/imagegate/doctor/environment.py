"""The environment part of the doctor's report: what outside imagegate shapes its connections.

Proxies (credentials taken out), CA bundles (and whether the file is there), hub settings,
the console's encoding, the data dir, the config file in use and the versions that matter.
Nothing here imports torch or diffusers: their versions come from package metadata.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from imagegate.config import Settings
from imagegate.transport import redact

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
CA_VARS = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
HUB_VARS = ("HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE")
CONSOLE_VARS = ("PYTHONIOENCODING", "PYTHONUTF8")
_HEAVY = ("torch", "diffusers", "gradio_client")  # reported only when installed


def env_value(name: str) -> str | None:
    """The variable in upper or lower case (proxies are often set as ``https_proxy``)."""
    return os.environ.get(name) or os.environ.get(name.lower()) or None


def safe_proxy(value: str) -> str:
    """A proxy setting with any user name and password replaced by ***."""
    if "@" not in value:
        return value
    has_scheme = "://" in value
    parts = urllib.parse.urlsplit(value if has_scheme else f"//{value}")
    host = parts.netloc.rpartition("@")[2]
    shown = urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))
    return shown if has_scheme else shown.removeprefix("//")


def proxies() -> dict[str, str]:
    """The proxy variables that are set, credentials hidden."""
    found = {}
    for name in PROXY_VARS:
        value = env_value(name)
        if value:
            found[name] = value if name == "NO_PROXY" else safe_proxy(value)
    return found


def _path_setting(name: str) -> dict[str, Any] | None:
    value = env_value(name)
    if value is None:
        return None
    return {"value": value, "exists": Path(value).expanduser().exists()}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """imagegate, Python and httpx; torch, diffusers and gradio-client only when installed."""
    found = {
        "imagegate": _version("imagegate"),
        "python": f"{platform.python_version()} ({sys.platform})",
        "httpx": _version("httpx"),
    }
    for module in _HEAVY:
        if importlib.util.find_spec(module) is not None:
            found[module] = _version(module.replace("_", "-"))
    return found


def environment(settings: Settings, *, stdout_encoding: str | None = None) -> dict[str, Any]:
    """Everything in the environment that changes how imagegate connects, loads and prints."""
    encoding = stdout_encoding if stdout_encoding is not None else sys.stdout.encoding
    return {
        "proxy": proxies() or "none",
        "ca_bundle": {name: _path_setting(name) for name in CA_VARS if env_value(name)}
        or "system default",
        "hub": {name: redact(os.environ[name]) for name in HUB_VARS if os.environ.get(name)}
        or "defaults",
        "console": {
            "stdout_encoding": encoding,
            **{name: os.environ.get(name) for name in CONSOLE_VARS if os.environ.get(name)},
        },
        "data_dir": str(settings.data_dir),
        "config_file": settings.source or "built-in default",
        "versions": versions(),
    }
