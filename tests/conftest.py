"""Shared fixtures: policy directories written from text, the shipped policies, a default config."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from webhook.engine import EngineConfig
from webhook.policy import PolicySet, load_policy_dir

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_POLICIES = ROOT / "policies"

WritePolicies = Callable[..., Path]


@pytest.fixture
def write_policies(tmp_path: Path) -> WritePolicies:
    """Write `name=yaml_text` files into a fresh policies directory and return it."""

    def write(**files: str) -> Path:
        directory = tmp_path / "policies"
        directory.mkdir(exist_ok=True)
        for name, text in files.items():
            (directory / f"{name}.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
        return directory

    return write


@pytest.fixture(scope="session")
def shipped() -> PolicySet:
    """The policies that ship in policies/."""
    return load_policy_dir(SHIPPED_POLICIES)


@pytest.fixture
def config() -> EngineConfig:
    return EngineConfig()
