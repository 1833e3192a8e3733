"""A tiny random-weight Stable Diffusion pipeline, built in code and saved to a folder.

It has the real architecture (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, a CLIP
BPE tokenizer, a scheduler) at toy sizes, so the provider's real ``from_pretrained`` path runs
offline in well under a second per image. The tokenizer's vocabulary is written here by hand:
every byte-level character, alone and ending a word, plus a few merges, all ids below 1000,
so any ASCII prompt tokenizes without an unknown token.

Import the fixtures from a conftest (or a test module)::

    from tests.tiny_pipeline import tiny_model, tiny_vae
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

VOCAB_SIZE = 1000
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
_MERGES = (
    ("t", "h"),
    ("h", "e"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("o", "n"),
    ("a", "t"),
    ("e", "n"),
    ("o", "r"),
    ("s", "t"),
    ("th", "e</w>"),
)


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from bytes to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def tiny_vocabulary() -> tuple[dict[str, int], list[str]]:
    """The hand-written vocabulary and merges: ids 0 and 1 are the special tokens."""
    vocab: dict[str, int] = {BOS: 0, EOS: 1}
    for char in _bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges: list[str] = []
    for head, tail in _MERGES:
        merges.append(f"{head} {tail}")
        vocab.setdefault(head + tail, len(vocab))
    assert len(vocab) < VOCAB_SIZE
    return vocab, merges


def build_tiny_tokenizer(folder: Path) -> object:
    """Write vocab.json and merges.txt into ``folder`` and load a CLIPTokenizer from them."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def build_tiny_pipeline(folder: Path) -> Path:
    """Build the tiny random-weight StableDiffusionPipeline and save it (safetensors)."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    lib: Any = diffusers

    torch.manual_seed(0)
    unet = lib.UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
    )
    scheduler = lib.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    torch.manual_seed(0)
    vae = lib.AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=8,
            intermediate_size=16,
            layer_norm_eps=1e-5,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=VOCAB_SIZE,
        )
    )
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_tiny_tokenizer(Path(scratch))
    pipe = lib.StableDiffusionPipeline(
        unet=unet,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def build_tiny_autoencoder_tiny(folder: Path) -> Path:
    """Build a toy AutoencoderTiny (the TAESD architecture, scaled down) and save it."""
    import diffusers
    import torch

    lib: Any = diffusers
    torch.manual_seed(0)
    vae = lib.AutoencoderTiny(
        encoder_block_out_channels=(4, 4),
        decoder_block_out_channels=(4, 4),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=4,
        upsampling_scaling_factor=2,
    )
    vae.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the tiny random-weight pipeline, built once per test session."""
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a toy AutoencoderTiny, built once per test session."""
    return build_tiny_autoencoder_tiny(tmp_path_factory.mktemp("tiny-taesd"))
