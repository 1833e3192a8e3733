"""The one HTTP layer every remote provider uses.

- ``budgets``: ``RemoteConfig`` (the settings of a provider reached over the network) and
  ``StageBudgets`` (what one attempt may spend on dns, connect, tls, first byte and read);
- ``client``: ``Transport``, which watches each stage, names the one that ran over and maps
  every lower exception into the error tree;
- ``trust``: which certificates a provider trusts (one SSL context per setting, for every path);
- ``response``: what comes back (``Response`` with its ``StageTimings``), how an HTTP status
  maps into the error tree, JSON checks, and ``redact``.
"""

from imagegate.transport.budgets import RemoteConfig, StageBudgets
from imagegate.transport.client import StreamResponse, Transport, cause_of, env_proxy, safe_url
from imagegate.transport.response import (
    Response,
    StageTimings,
    check_content_type,
    expect_json,
    parse_retry_after,
    protocol_error,
    raise_for_status,
    redact,
)

__all__ = [
    "RemoteConfig",
    "Response",
    "StageBudgets",
    "StageTimings",
    "StreamResponse",
    "Transport",
    "cause_of",
    "check_content_type",
    "env_proxy",
    "expect_json",
    "parse_retry_after",
    "protocol_error",
    "raise_for_status",
    "redact",
    "safe_url",
]
