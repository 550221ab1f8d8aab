"""The control plane is the Kubernetes version the run selected (K8S_VERSION)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.controlplane import K8S_VERSION
from tests.e2e.kube import Kube

pytestmark = pytest.mark.e2e


def test_the_apiserver_is_the_selected_kubernetes_version(kube: Kube) -> None:
    info: Any = client.VersionApi(kube.api).get_code()
    print(f"kube-apiserver {info.git_version}")
    if os.environ.get("KUBEBUILDER_ASSETS"):
        assert info.git_version.startswith("v1.")  # the user's own binaries: any version
    else:
        assert info.git_version == K8S_VERSION
