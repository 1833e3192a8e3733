"""The CLI, run as a user runs it: a subprocess through the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngImageFile
from serverkit import IMAGEGATE

from imagegate.store.pngmeta import parse_infotext


def cli(
    *args: str, cwd: Path, encoding: str = "utf-8", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `imagegate ARGS` with the given console encoding, capturing its output."""
    full_env = {**os.environ, "PYTHONIOENCODING": encoding, "COLUMNS": "120", **(env or {})}
    return subprocess.run(
        [IMAGEGATE, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        encoding=encoding,
        errors="strict",
        timeout=180,
        check=False,
    )


@pytest.fixture
def tiny_config(isolated_env: Path, tiny_model: Path) -> Path:
    """./imagegate.toml whose local provider is the tiny saved pipeline."""
    path = isolated_env / "imagegate.toml"
    path.write_text(f'[providers.local]\ntype = "diffusers"\nmodel = "{tiny_model}"\n')
    return path


def test_generate_writes_a_png_whose_png_info_shows_the_parameters(
    tiny_config: Path, isolated_env: Path
) -> None:
    """The issue's acceptance command: PNG Info shows prompt, Steps: 2, Seed: 7, Size: 64x64."""
    run = cli(
        "generate",
        "a red fox",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--seed",
        "7",
        "--out",
        "a.png",
        cwd=isolated_env,
    )
    assert run.returncode == 0, run.stderr
    with Image.open(isolated_env / "a.png") as img:
        assert isinstance(img, PngImageFile)
        text = img.text["parameters"]
        assert img.size == (64, 64)
    assert text.splitlines()[0] == "a red fox"
    fields = parse_infotext(text)
    assert (fields["Steps"], fields["Seed"], fields["Size"]) == ("2", "7", "64x64")


@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
def test_generate_survives_a_console_that_cannot_show_the_prompt(
    tiny_config: Path, isolated_env: Path, encoding: str
) -> None:
    """A prompt with '✔' on a cp1252 or ascii console: exit 0, no UnicodeEncodeError."""
    run = cli(
        "generate",
        "a \u2714 fox",
        "--size",
        "64x64",
        "--steps",
        "1",
        "--seed",
        "1",
        cwd=isolated_env,
        encoding=encoding,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "seed=1" in run.stdout


def test_generate_json_prints_one_document_in_the_design_shape(
    tiny_config: Path, isolated_env: Path
) -> None:
    """--json prints the ImageResult shape of design.md and nothing else on stdout."""
    run = cli(
        "generate",
        "a fox",
        "--size",
        "64x64",
        "--steps",
        "1",
        "--seed",
        "3",
        "-n",
        "2",
        "--json",
        cwd=isolated_env,
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert set(doc) == {"provider", "model", "elapsed_s", "images", "attempts"}
    assert doc["provider"] == "local"
    assert [img["seed"] for img in doc["images"]] == [3, 4]
    assert set(doc["images"][0]) == {"id", "path", "width", "height", "seed", "sha256"}
    assert Path(doc["images"][0]["path"]).is_file()
    assert doc["attempts"] == [
        {
            "provider": "local",
            "outcome": "ok",
            "error": None,
            "elapsed_s": doc["attempts"][0]["elapsed_s"],
        }
    ]


def test_history_lists_the_generation(tiny_config: Path, isolated_env: Path) -> None:
    """`imagegate history --json` shows what was generated, newest first."""
    assert (
        cli("generate", "first", "--size", "64x64", "--steps", "1", cwd=isolated_env).returncode
        == 0
    )
    run = cli("history", "--json", cwd=isolated_env)
    assert run.returncode == 0, run.stderr
    jobs = json.loads(run.stdout)
    assert jobs[0]["request"]["prompt"] == "first"
    assert jobs[0]["status"] == "succeeded"


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["generate", ""], "prompt"),
        (["generate", "x", "--size", "65x64"], "width"),
        (["generate", "x", "--size", "4096x512"], "width"),
        (["generate", "x", "--size", "big"], "--size"),
        (["generate", "x", "--steps", "0"], "steps"),
        (["generate", "x", "-n", "9"], "n"),
        (["generate", "x", "--steps", "two"], "--steps"),
        (["history", "--limit", "0"], "--limit"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_field(
    isolated_env: Path, args: list[str], names: str
) -> None:
    """Bad input: exit code 2 and one line naming the field, never a traceback."""
    run = cli(*args, cwd=isolated_env)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert names in lines[0]
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[providers.local]\ntype = "dall-e-9"\n', "providers.local.type"),
        ('[gateway]\nroute = ["local"]\ndeadline = 3\n', "gateway.deadline"),
    ],
)
def test_bad_config_exits_2_naming_file_and_key(isolated_env: Path, toml: str, key: str) -> None:
    """An unknown provider type or a misspelt key: exit 2, the file and key named."""
    (isolated_env / "imagegate.toml").write_text(toml)
    run = cli("generate", "x", cwd=isolated_env)
    assert run.returncode == 2
    assert key in run.stderr
    assert "imagegate.toml" in run.stderr


def test_every_provider_failing_exits_3_and_explains(isolated_env: Path) -> None:
    """A model missing from the cache while offline: exit 3, the attempt explained."""
    (isolated_env / "imagegate.toml").write_text(
        '[providers.local]\ntype = "diffusers"\nmodel = "nobody/not-cached"\n'
    )
    run = cli("generate", "x", cwd=isolated_env)
    assert run.returncode == 3, run.stderr
    assert "nobody/not-cached" in run.stderr
    assert "Traceback" not in run.stderr


def test_providers_json_shows_origin_and_breaker(isolated_env: Path) -> None:
    """`imagegate providers --json` names each provider's origin and breaker state."""
    run = cli("providers", "--json", cwd=isolated_env)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["route"] == ["local"]
    assert doc["providers"][0]["origin"] == "built-in"
    assert doc["providers"][0]["breaker"] == "closed"


def test_models_list_json_on_an_empty_cache(isolated_env: Path) -> None:
    """`imagegate models list --json` in a fresh process prints a JSON list."""
    run = cli("models", "list", "--json", cwd=isolated_env, env={"HF_HOME": str(isolated_env)})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == []


def test_models_pull_offline_fails_fast_with_the_fix(isolated_env: Path) -> None:
    """Pulling with the hub offline names the model and what to do, without a traceback."""
    run = cli("models", "pull", "stabilityai/sd-turbo", cwd=isolated_env)
    assert run.returncode != 0
    assert "stabilityai/sd-turbo" in run.stderr
    assert "Traceback" not in run.stderr


def test_json_failure_is_still_one_json_document(isolated_env: Path) -> None:
    """With --json, a refused request prints {"error": {...}} on stdout and exits 2."""
    run = cli("generate", "x", "--size", "65x64", "--json", cwd=isolated_env)
    assert run.returncode == 2
    doc = json.loads(run.stdout)
    assert doc["error"]["type"] == "InvalidRequest"
    assert "width" in doc["error"]["message"]
    assert doc["error"]["fix"] == "Change width and try again."


def test_a_prompt_survives_the_c_locale(tiny_config: Path, isolated_env: Path) -> None:
    """Under LC_ALL=C with UTF-8 mode off, "phare à l'aube ✔" reaches the PNG intact."""
    prompt = "phare \u00e0 l'aube \u2714"
    run = cli(
        "generate",
        prompt,
        "--size",
        "64x64",
        "--steps",
        "1",
        "--seed",
        "3",
        "--out",
        "c.png",
        cwd=isolated_env,
        env={"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"},
    )
    assert run.returncode == 0, run.stderr
    with Image.open(isolated_env / "c.png") as img:
        assert isinstance(img, PngImageFile)
        assert img.text["parameters"].splitlines()[0] == prompt


def test_arguments_are_decoded_as_the_bytes_typed() -> None:
    """Surrogate escapes become the UTF-8 text typed; bytes that are not UTF-8 become U+FFFD."""
    from imagegate.cli import decode_arg

    typed = "à ✔".encode()
    assert decode_arg(typed.decode("ascii", "surrogateescape")) == "à ✔"
    assert decode_arg(b"a\xff".decode("ascii", "surrogateescape")) == "a\ufffd"
    assert decode_arg("plain") == "plain"


def test_a_model_not_in_the_cache_offline_fails_before_torch_is_imported(
    isolated_env: Path,
) -> None:
    """HF_HUB_OFFLINE=1 and an empty cache: a non-zero exit, and torch never imported."""
    code = (
        "import sys\n"
        "from imagegate.cli import main\n"
        "rc = main(['generate', 'x'])\n"
        "print(rc, 'torch' in sys.modules, 'diffusers' in sys.modules, 'sqlalchemy' in sys.modules)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(isolated_env / "hf")}
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=isolated_env,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.stdout.split() == ["3", "False", "False", "False"], run.stderr
    assert "imagegate models pull" in run.stderr
