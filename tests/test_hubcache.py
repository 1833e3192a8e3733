"""Pulling models into the hub cache and listing it, tested offline on a hand-made cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegate import hubcache
from imagegate.errors import ConfigError, Unavailable

SD_TURBO_FILES = [
    ".gitattributes",
    "README.md",
    "model_index.json",
    "sd_turbo.safetensors",
    "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
]
COMMON = [
    "feature_extractor/preprocessor_config.json",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "vae/config.json",
]


def fake_cached_repo(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Lay out ``repo_id`` in ``cache`` the way the hub client does: blobs, snapshot, ref."""
    commit = "a" * 40
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for index, (name, data) in enumerate(sorted(files.items())):
        blob = repo / "blobs" / f"{index:040x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A hub cache holding one pipeline repo and one single-model (VAE) repo."""
    root = tmp_path / "hub"
    fake_cached_repo(
        root,
        "someone/pipe",
        {"model_index.json": b"{}", "unet/config.json": b"{}", "unet/w.safetensors": b"x" * 100},
    )
    fake_cached_repo(root, "someone/vae", {"config.json": b"{}", "w.safetensors": b"y" * 10})
    return root


def test_list_cached_reports_each_repo_with_size_and_kind(cache: Path) -> None:
    """list_cached() names each cached repo, its size, path and whether it is a pipeline."""
    found = hubcache.list_cached(cache)
    assert [(m.repo_id, m.is_pipeline) for m in found] == [
        ("someone/pipe", True),
        ("someone/vae", False),
    ]
    assert found[0].size_bytes >= 104
    assert found[0].path == cache / "models--someone--pipe"


def test_list_cached_reads_the_configured_cache_folder(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an argument, list_cached() scans the hub cache folder in use."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert [m.repo_id for m in hubcache.list_cached()] == ["someone/pipe", "someone/vae"]


def test_list_cached_is_empty_without_a_cache(tmp_path: Path) -> None:
    """A cache folder that does not exist lists no hubcache."""
    assert hubcache.list_cached(tmp_path / "none") == []


def test_cached_snapshot_finds_pipelines_and_single_models(cache: Path) -> None:
    """cached_snapshot() returns the snapshot folder of a cached repo, None otherwise."""
    pipe = hubcache.cached_snapshot("someone/pipe", cache)
    assert pipe is not None
    assert (pipe / "model_index.json").is_file()
    assert hubcache.cached_snapshot("someone/vae", cache) is not None
    assert hubcache.cached_snapshot("someone/absent", cache) is None


def test_pull_offline_fails_at_once_with_the_fix() -> None:
    """With HF_HUB_OFFLINE=1 a pull raises Unavailable telling how to get the model."""
    with pytest.raises(Unavailable) as caught:
        hubcache.pull("stabilityai/sd-turbo")
    message = str(caught.value)
    assert "HF_HUB_OFFLINE" in message
    assert "imagegate models pull stabilityai/sd-turbo" in message


def test_pull_of_a_folder_is_a_config_error(tmp_path: Path) -> None:
    """A folder path is not something to pull."""
    with pytest.raises(ConfigError):
        hubcache.pull(str(tmp_path))


def test_hub_unreachable_names_offline_mode_without_network() -> None:
    """hub_unreachable() reports offline mode without making a request."""
    assert hubcache.hub_unreachable() == "HF_HUB_OFFLINE is set"


@pytest.mark.parametrize(
    ("model", "expected"),
    [("stabilityai/sd-turbo", True), ("/opt/models/sd", False), ("./sd", False), ("sd", False)],
)
def test_hub_ids_are_told_from_folders(model: str, expected: bool) -> None:
    """owner/name reads as a hub id; absolute, relative and bare names as folders."""
    assert hubcache.is_hub_id(model) is expected


def test_select_files_takes_full_safetensors_and_skips_duplicates() -> None:
    """A pull takes configs, tokenizer files and full safetensors, no .bin, ckpt or fp16."""
    assert hubcache.select_files(SD_TURBO_FILES) == sorted(
        [
            *COMMON,
            "text_encoder/model.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
        ]
    )


def test_select_files_takes_the_variant_when_asked() -> None:
    """variant='fp16' takes the fp16 safetensors instead of the full ones."""
    chosen = hubcache.select_files(SD_TURBO_FILES, variant="fp16")
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in chosen
    assert "unet/diffusion_pytorch_model.safetensors" not in chosen


def test_select_files_falls_back_to_bin_without_safetensors() -> None:
    """A folder with only .bin weights keeps them."""
    files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin"]
    assert hubcache.select_files(files) == sorted(files)


def test_select_files_keeps_top_level_weights_of_a_single_model() -> None:
    """A single-model repo (such as TAESD) keeps its top-level config and weights."""
    files = ["config.json", "diffusion_pytorch_model.safetensors", "taesd_decoder.pth"]
    assert hubcache.select_files(files) == ["config.json", "diffusion_pytorch_model.safetensors"]
