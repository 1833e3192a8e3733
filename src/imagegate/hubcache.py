"""Model files on this machine: pull a diffusers model from the Hugging Face hub, list the cache.

``imagegate models pull MODEL`` and ``imagegate models list`` call :func:`pull` and
:func:`list_cached`; the local provider uses the small helpers here to tell, without touching
the network, whether a model is already cached and, when it is not, to fail at once with the
fix instead of waiting out the hub client's retries.

huggingface_hub comes with the ``local`` extra, so it is imported inside functions only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from imagegate.errors import ConfigError, ConnectError, MissingDependency, Unavailable

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TINY_VAE",
    "CachedModel",
    "PullProgress",
    "cached_snapshot",
    "hub_cache_dir",
    "hub_offline",
    "hub_unreachable",
    "is_hub_id",
    "list_cached",
    "not_cached_error",
    "pull",
    "select_files",
]

DEFAULT_MODEL = "stabilityai/sd-turbo"
DEFAULT_TINY_VAE = "madebyollin/taesd"

PullProgress = Callable[[str], None]
"""Receives one short line per phase of a pull (listing, downloading, done)."""

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
_WEIGHT_EXTS = (".safetensors", ".bin")
_SIDE_EXTS = (".json", ".txt", ".model")
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class CachedModel:
    """One model repository in the hub cache."""

    repo_id: str
    size_bytes: int
    path: Path
    is_pipeline: bool


def _hub() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants  # a submodule the package does not load by itself
    except ImportError:
        raise MissingDependency("local", "huggingface_hub") from None
    return huggingface_hub


def hub_cache_dir() -> Path:
    """The hub cache folder in use now (``HF_HUB_CACHE``, else under ``HF_HOME``)."""
    return Path(_hub().constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """Whether hub access is switched off, read from the environment at call time."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return True
    return bool(_hub().constants.HF_HUB_OFFLINE)


def is_hub_id(model: str) -> bool:
    """Whether ``model`` reads as a hub repository id (``owner/name``) rather than a folder."""
    return bool(_REPO_ID.match(model)) and not Path(model).expanduser().exists()


def cached_snapshot(model: str, cache_dir: Path | None = None) -> Path | None:
    """The cached snapshot folder of hub model ``model``, or None when it is not cached.

    A pipeline is recognised by its ``model_index.json``, a single model (a VAE) by its
    ``config.json``. Never touches the network.
    """
    hub = _hub()
    cache = cache_dir or hub_cache_dir()
    for marker in ("model_index.json", "config.json"):
        found = hub.try_to_load_from_cache(model, marker, cache_dir=cache)
        if isinstance(found, str):
            return Path(found).parent
    return None


def hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the hub cannot be reached now (offline mode, DNS, refused), or None when it can.

    One plain HTTP request with a short timeout and proxies from the environment, so an
    unreachable hub is known in seconds rather than after the hub client's backoff retries.
    """
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    import httpx

    endpoint = str(_hub().constants.ENDPOINT)
    try:
        httpx.head(endpoint, timeout=timeout_s)
    except httpx.TransportError as exc:
        host = urlsplit(endpoint).hostname or endpoint
        return f"{host} is unreachable ({type(exc).__name__}: {exc})"
    return None


def not_cached_error(model: str, reason: str, *, provider: str | None = None) -> Unavailable:
    """The Unavailable error for a hub model that is not cached while the hub is unreachable."""
    return Unavailable(
        f"model {model} is not in the hub cache ({hub_cache_dir()}) and it cannot be "
        f"downloaded: {reason}; run `imagegate models pull {model}` on a machine with internet "
        "access, or set model to a local folder",
        provider=provider,
        stage="runtime",
    )


def select_files(files: Iterable[str], variant: str | None = None) -> list[str]:
    """The files of a hub repository a diffusers load needs, in sorted order.

    Keeps ``model_index.json``, configs, tokenizer and scheduler files at the top level or one
    folder down, and per folder one set of weights: the ``variant`` (such as ``fp16``)
    safetensors when asked and present, else the full safetensors, else ``.bin``. Drops
    single-file checkpoints (``.ckpt``, a top-level ``sd_turbo.safetensors``), ONNX, Flax.
    """
    by_folder: dict[str, list[PurePosixPath]] = {}
    for name in files:
        path = PurePosixPath(name)
        if len(path.parts) <= 2:
            by_folder.setdefault(str(path.parent), []).append(path)
    chosen: list[str] = []
    for paths in by_folder.values():
        chosen += [str(p) for p in paths if p.suffix in _SIDE_EXTS]
        weights = [p for p in paths if _is_weight(p)]
        chosen += [str(p) for p in _pick_weights(weights, variant)]
    return sorted(chosen)


def _is_weight(path: PurePosixPath) -> bool:
    stem = path.name.split(".")[0]
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", stem)
    return stem in _WEIGHT_STEMS and path.suffix in _WEIGHT_EXTS


def _variant_of(path: PurePosixPath) -> str | None:
    parts = path.name.split(".")
    return parts[1] if len(parts) == 3 else None


def _pick_weights(weights: list[PurePosixPath], variant: str | None) -> list[PurePosixPath]:
    wanted = [variant] if variant else []
    for want in [*wanted, None]:
        for ext in _WEIGHT_EXTS:
            group = [p for p in weights if p.suffix == ext and _variant_of(p) == want]
            if group:
                return group
    return []


def pull(
    model: str,
    progress: PullProgress | None = None,
    *,
    variant: str | None = None,
    tqdm_class: Any = None,
) -> Path:
    """Download hub model ``model`` into the hub cache and return its snapshot folder.

    Only the files a diffusers load needs are fetched (see :func:`select_files`); the default
    model brings its tiny VAE along. ``progress`` gets one line per phase; ``tqdm_class`` is
    handed to the hub client for a byte-level progress bar. Without network access this fails
    within seconds with Unavailable (offline mode) or ConnectError (hub unreachable).
    """
    say = progress or (lambda _line: None)
    if not is_hub_id(model):
        raise ConfigError(
            f"{model!r} is not a hub id such as {DEFAULT_MODEL!r}; a local folder needs no pull",
            key="model",
        )
    reason = hub_unreachable()
    if reason is not None:
        error_type = Unavailable if hub_offline() else ConnectError
        raise error_type(
            f"cannot pull {model}: {reason}; run `imagegate models pull {model}` on a machine "
            "with internet access (unset HF_HUB_OFFLINE), then copy the hub cache "
            f"({hub_cache_dir()}) here, or set model to a local folder",
            stage="connect",
        )
    hub = _hub()
    repos = [model, DEFAULT_TINY_VAE] if model == DEFAULT_MODEL else [model]
    folder: Path | None = None
    for repo in repos:
        say(f"listing the files of {repo}")
        try:
            files = select_files(hub.list_repo_files(repo), variant)
            say(f"downloading {len(files)} files of {repo}")
            path = Path(hub.snapshot_download(repo, allow_patterns=files, tqdm_class=tqdm_class))
        except Exception as exc:
            raise _pull_error(repo, exc) from exc
        say(f"{repo} is in {path}")
        folder = folder or path
    assert folder is not None
    return folder


def _pull_error(repo: str, exc: Exception) -> Exception:
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return ConfigError(
            f"{repo} is gated: accept its licence on huggingface.co, then set HF_TOKEN",
            key="model",
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return ConfigError(f"{repo} is not a model on the hub; check the id", key="model")
    return ConnectError(f"pulling {repo} failed ({exc}); check the network and try again")


def list_cached(cache_dir: Path | None = None) -> list[CachedModel]:
    """The model repositories in the hub cache, sorted by id; empty when there is no cache."""
    hub = _hub()
    cache = cache_dir or hub_cache_dir()
    if not cache.is_dir():
        return []
    info = hub.scan_cache_dir(cache)
    found: list[CachedModel] = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        is_pipeline = any(
            f.file_name == "model_index.json" for rev in repo.revisions for f in rev.files
        )
        found.append(
            CachedModel(repo.repo_id, repo.size_on_disk, Path(repo.repo_path), is_pipeline)
        )
    return sorted(found, key=lambda m: m.repo_id)
