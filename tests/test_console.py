"""The console writer never breaks on a console that cannot show a character."""

from __future__ import annotations

import io
import json

import pytest

from imagegate.console import Console


def stream(encoding: str) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict", write_through=True)


def written(s: io.TextIOWrapper) -> bytes:
    s.flush()
    buffer = s.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue()


@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
def test_unencodable_characters_are_replaced_not_raised(encoding: str) -> None:
    """'✔' on a cp1252 or ascii console prints as a replacement, with no exception."""
    out, err = stream(encoding), stream(encoding)
    console = Console(out, err)
    console.line("done \u2714 a lighthouse")
    console.info("step \u2714")
    console.error("failed \u2714")
    assert b"done ? a lighthouse" in written(out)
    assert b"failed ?" in written(err)


@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
def test_json_is_ascii_and_round_trips(encoding: str) -> None:
    """JSON output escapes non-ASCII, so it stays valid on any console."""
    out = stream(encoding)
    Console(out, stream(encoding)).json({"prompt": "a \u2714 fox"})
    assert json.loads(written(out))["prompt"] == "a \u2714 fox"


def test_progress_bar_on_an_ascii_console_does_not_raise() -> None:
    """The progress bar draws on stderr even when the console is ascii."""
    err = stream("ascii")
    console = Console(stream("ascii"), err)
    with console.progress("denoising \u2714") as bar:
        bar.update(bar.task_ids[0], total=2, completed=1)
