"""A real `serve` process per test module, on a private copy of the shipped policies."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.conftest import SHIPPED_POLICIES
from tests.serverproc import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("serve")
    policies = workdir / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    (policies / "schema.json").unlink()
    process = ServerProcess(workdir, policies=policies,
                            args=["--reload-interval", "0.2", "--max-body-bytes", "65536"])
    process.start()
    yield process
    process.stop()


def review(obj: object, *, uid: str = "uid-1", namespace: str = "shop", operation: str = "CREATE",
           kind: str = "Pod", dry_run: bool = False) -> dict[str, object]:
    """An AdmissionReview as the apiserver sends it."""
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid, "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
            "operation": operation, "namespace": namespace, "dryRun": dry_run, "object": obj,
            "userInfo": {"username": "admin"},
        },
    }
