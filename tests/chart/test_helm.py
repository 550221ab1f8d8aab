"""The helm the chart suites run is the one pinned in tools/versions.env for its major."""

from __future__ import annotations

from tests.chart.helm import HELM, helm
from tests.e2e.controlplane import ROOT


def test_the_helm_in_use_is_a_pinned_version() -> None:
    pins = dict(line.split("=", 1) for line in (ROOT / "tools" / "versions.env").read_text()
                .splitlines() if line.startswith("HELM"))
    wanted = pins["HELM4_VERSION"] if HELM.name == "helm4" else pins["HELM_VERSION"]
    said = helm("version", "--short").stdout.strip()
    assert said.startswith(wanted), f"{HELM} says {said}, tools/versions.env pins {wanted}"
