"""`imagegate edit IMAGE PROMPT [--mask MASK] [--strength S]` on the tiny local pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from test_cli import cli, tiny_config

__all__ = ["tiny_config"]


def _files(folder: Path) -> tuple[Path, Path]:
    """room.png (64x48, one colour) and mask.png (white on its left half)."""
    Image.new("RGB", (64, 48), (200, 80, 40)).save(folder / "room.png")
    mask = Image.new("L", (64, 48), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 47), fill=255)
    mask.save(folder / "mask.png")
    return folder / "room.png", folder / "mask.png"


def test_edit_writes_an_image_of_the_inputs_size(tiny_config: Path, isolated_env: Path) -> None:
    """edit room.png "a blue room" --strength 0.5 --json: one 64x48 image, from local."""
    room, _ = _files(isolated_env)
    run = cli("edit", str(room), "a blue room", "--strength", "0.5", "--steps", "2",
              "--out", "out.png", "--json", cwd=isolated_env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["provider"] == "local"
    with Image.open(isolated_env / "out.png") as made:
        assert made.size == (64, 48)


def test_edit_with_a_mask_keeps_the_rest_of_the_image(
    tiny_config: Path, isolated_env: Path
) -> None:
    """--mask (white = repaint) on the left half: the right half comes back unchanged."""
    room, mask = _files(isolated_env)
    run = cli("edit", str(room), "a door", "--mask", str(mask), "--mask-blur", "0",
              "--strength", "1", "--steps", "2", "--out", "out.png", cwd=isolated_env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    with Image.open(isolated_env / "out.png") as made:
        assert made.convert("RGB").getpixel((60, 20)) == (200, 80, 40)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["missing.png", "x"], "IMAGE"),
        (["mask.png", "x", "--mask", "notes.txt"], "--mask"),
        (["notes.txt", "x"], "IMAGE"),
        (["room.png", "x", "--mask", "small.png"], "--mask"),
        (["room.png", "x", "--strength", "2"], "strength"),
    ],
)
def test_bad_edit_input_exits_2_naming_what(
    tiny_config: Path, isolated_env: Path, args: list[str], named: str
) -> None:
    """A missing file, a text file, a mask of another size, strength 2: exit 2, named."""
    _files(isolated_env)
    (isolated_env / "notes.txt").write_text("not an image")
    Image.new("L", (32, 32), 255).save(isolated_env / "small.png")
    run = cli("edit", *args, cwd=isolated_env)
    assert run.returncode == 2, run.stderr
    assert named in run.stderr
