"""The AUTOMATIC1111 API that ``webuiapi`` and A1111 scripts use, answering as A1111 1.10 does.

Checkpoints are the named routes and the configured providers: ``sd_model_checkpoint`` (POST
/sdapi/v1/options, or ``override_settings`` in one request) selects a route or pins a provider;
``route`` restores the default route. txt2img runs as a job like any other and answers A1111's
shape: base64 PNGs that carry the ``parameters`` chunk, the parsed request with A1111's 55
fields and defaults, and ``info`` as a JSON string with A1111's keys (what the backend reported
it ran, where it did). ``/interrupt`` ends a running job with the image made so far.

``models`` holds the bodies, ``answers`` builds the answers (reused by every generating route),
``catalog`` the lists and options, ``routes`` the handlers.
"""

from __future__ import annotations

from imagegate.server.a1111.routes import router

__all__ = ["router"]
