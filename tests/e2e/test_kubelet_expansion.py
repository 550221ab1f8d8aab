"""A pod's annotation cannot make an injected container expand `$(VAR)` from its own env: the
stored pod holds the escaped form, which the kubelet turns back into the literal text."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import NewNamespace, Register, pod_manifest
from tests.e2e.kube import Kube

pytestmark = [pytest.mark.e2e, pytest.mark.engines("compiled", "hybrid")]


def test_an_annotation_naming_a_variable_is_stored_escaped(
    kube: Kube, register: Register, namespace: NewNamespace,
) -> None:
    ns = namespace()
    body = pod_manifest("registered", annotations={
        "sidecar.company.com/inject": "service-registration",
        "consul.company.com/tags": "v2,$(CONSUL_HTTP_TOKEN)"})
    stored, _ = kube.create_pod(ns, body)
    containers = [*stored["spec"].get("initContainers", []), *stored["spec"]["containers"]]
    values = [env.get("value", "") for container in containers
              for env in container.get("env", [])]
    assert "v2,$$(CONSUL_HTTP_TOKEN)" in values
    assert not any("$(CONSUL_HTTP_TOKEN)" in value.replace("$$(", "") for value in values)
