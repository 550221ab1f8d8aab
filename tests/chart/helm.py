"""Rendering the chart with the project's own helm (built by `make tools`): `bin/$HELM`, Helm 3
(`helm`, the default) or Helm 4 (`helm4`)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from typing import Any

import yaml

from tests.conftest import ROOT

CHART = ROOT / "charts" / "sidecar-injector"
HELM = ROOT / "bin" / os.environ.get("HELM", "helm")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run bin/$HELM; a missing binary is a failure (run `make tools`), never a skip."""
    assert HELM.is_file(), f"{HELM} is missing: run `make tools`"
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=check)


def set_args(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def render(values: dict[str, str] | None = None, *, namespace: str = "sidecar-injector",
           kube_version: str | None = None, extra: Sequence[str] = (),
           release: str = "release") -> list[dict[str, Any]]:
    """`helm template` the chart; the objects it renders."""
    args = ["template", release, str(CHART), "--namespace", namespace,
            *set_args(values or {}), *extra]
    if kube_version:
        args += ["--kube-version", kube_version]
    out = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]
