"""imagegate: one request model, many text-to-image backends, and a router that never hangs.

Nothing heavy happens on import: torch, diffusers and the server load only when used.
"""

from importlib.metadata import PackageNotFoundError, version

from imagegate import errors
from imagegate.config import Settings, load_config
from imagegate.gateway import Gateway, SyncGateway, generate
from imagegate.request import Attempt, GeneratedImage, ImageRequest, ImageResult

try:
    __version__ = version("imagegate")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
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
]
