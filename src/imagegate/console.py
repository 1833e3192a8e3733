"""The one console writer: results on stdout, progress and errors on stderr.

Nothing written here can fail on a console whose encoding cannot show a character (cp1252 on
Windows, ascii in a bare container): the streams are switched to replace what they cannot
encode, and JSON is always written as ASCII.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from rich.console import Console as RichConsole
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table


def _safe(stream: IO[str]) -> IO[str]:
    """Make ``stream`` replace characters its encoding cannot show instead of raising."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(ValueError, OSError):  # a closed or detached stream
            reconfigure(errors="replace")
    return stream


class Console:
    """Writes everything the CLI shows; the only place that touches stdout and stderr."""

    def __init__(self, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
        self.stdout = _safe(stdout if stdout is not None else sys.stdout)
        self.stderr = _safe(stderr if stderr is not None else sys.stderr)
        self.out = RichConsole(file=self.stdout, highlight=False, soft_wrap=True)
        self.err = RichConsole(file=self.stderr, highlight=False, soft_wrap=True)

    def line(self, text: str) -> None:
        """One line of result text on stdout (no markup is interpreted)."""
        self.out.print(text, markup=False)

    def info(self, text: str) -> None:
        """One line of progress or context on stderr."""
        self.err.print(text, markup=False, style="dim")

    def error(self, text: str) -> None:
        """One line saying what went wrong and what to do, on stderr."""
        self.err.print(f"error: {text}", markup=False, style="bold red")

    def json(self, document: Any) -> None:
        """One JSON document on stdout and nothing else; always ASCII."""
        self.stdout.write(json.dumps(document, ensure_ascii=True, indent=2, default=str) + "\n")
        self.stdout.flush()

    def table(self, columns: list[str], rows: list[list[str]]) -> None:
        """A plain table on stdout."""
        table = Table(*columns, box=None, show_edge=False, pad_edge=False)
        for row in rows:
            table.add_row(*row)
        self.out.print(table)

    @contextmanager
    def progress(self, description: str) -> Iterator[Progress]:
        """A progress bar on stderr; transient, so only results remain on the screen."""
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
        )
        with bar:
            bar.add_task(description, total=None)
            yield bar
