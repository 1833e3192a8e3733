"""The malloc settings for CPU diffusion: applied once, never twice, and opt-out-able."""

from __future__ import annotations

import pytest

from imagegate.allocator import TUNABLES, tuned_env

linux_glibc = pytest.mark.skipif(
    tuned_env({}) is None, reason="the settings are glibc's; other platforms keep their malloc"
)


@linux_glibc
def test_settings_are_added_to_an_empty_environment() -> None:
    """A plain environment gets the tunables and the marker."""
    env = tuned_env({})
    assert env is not None
    assert env["GLIBC_TUNABLES"] == TUNABLES


@linux_glibc
def test_existing_tunables_are_kept() -> None:
    """Tunables the user set stay, ours are appended."""
    env = tuned_env({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
    assert env is not None
    assert env["GLIBC_TUNABLES"] == f"glibc.pthread.rseq=0:{TUNABLES}"


def test_opt_out_and_second_pass_change_nothing() -> None:
    """IMAGEGATE_MALLOC=system, or a process already tuned, is left alone."""
    assert tuned_env({"IMAGEGATE_MALLOC": "system"}) is None
    assert tuned_env({"GLIBC_TUNABLES": TUNABLES}) is None
