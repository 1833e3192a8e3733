"""``imagegate doctor``: for each provider, the stage that fails, why, and what to do.

Stages, in order, stopping at the first failure: config, dns, connect, tls, http, auth, api,
runtime (a remote provider), or config, model (a local one), then generate (only when asked).
Each failing provider gets one ``cause`` sentence and one ``fix`` sentence that name the
host, the stage and the number. The environment part reports proxies, CA bundles, hub
settings, the console encoding, the data dir, the config file and versions. No secret is
ever shown: ``*_env`` variables are checked for presence only.
"""

from __future__ import annotations

from imagegate.doctor.checks import check_provider, check_providers, run_doctor, select
from imagegate.doctor.environment import environment
from imagegate.doctor.report import (
    STAGES,
    DoctorReport,
    ProviderReport,
    StageName,
    StageResult,
    format_text,
)

__all__ = [
    "STAGES",
    "DoctorReport",
    "ProviderReport",
    "StageName",
    "StageResult",
    "check_provider",
    "check_providers",
    "environment",
    "format_text",
    "run_doctor",
    "select",
]
