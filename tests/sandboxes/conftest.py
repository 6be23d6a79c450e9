"""Fixtures shared by the sandbox tests: one sandbox per backend per module.

``sandbox`` is parametrized over every backend: ``bwrap`` runs everywhere; ``docker`` params
carry the ``docker`` mark and *fail* (they are never skipped) when no engine answers, with the
backend's own message saying how to start one (CI starts one; see .ci/run).
"""

from __future__ import annotations

import pytest
from agentrl.sandboxes import get_sandbox, run_sync

BACKENDS = [
    pytest.param("bwrap", id="bwrap"),
    pytest.param("docker", id="docker", marks=pytest.mark.docker),
]


def make_sandbox(name: str, **kwargs):
    sandbox = get_sandbox(name, **kwargs)  # BackendUnavailableError fails the test, with the fix
    start = getattr(sandbox, "start", None)
    if callable(start):  # docker: build the image / warm the pool up front
        run_sync(start())
    return sandbox


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox(request):
    box = make_sandbox(request.param)
    yield box
    box.close_sync()


@pytest.fixture(scope="module")
def bwrap():
    box = make_sandbox("bwrap")
    yield box
    box.close_sync()
