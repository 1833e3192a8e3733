"""The public surface: a sorted __all__, and an import that never pulls in torch."""

from __future__ import annotations

import subprocess
import sys

import imagegate


def test_all_is_sorted_and_pinned() -> None:
    """__init__ exports exactly these names, sorted."""
    assert imagegate.__all__ == sorted(imagegate.__all__)
    assert set(imagegate.__all__) == {
        "Attempt",
        "Gateway",
        "GeneratedImage",
        "ImageRequest",
        "ImageResult",
        "Settings",
        "SyncGateway",
        "__version__",
        "errors",
        "generate",
        "load_config",
    }


def test_import_does_not_import_torch() -> None:
    """`import imagegate` stays light: no torch, diffusers or server modules."""
    code = (
        "import sys, imagegate, imagegate.cli, imagegate.config;"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
