"""Settings: every serve flag also comes from SIDECAR_INJECTOR_<FLAG>; POD_NAMESPACE names the
webhook's own namespace."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook.settings import Settings, parse_kube_version, shipped_policies


def test_flags_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_INJECTOR_DEFAULT_POLICIES", "logging, metrics-exporter")
    monkeypatch.setenv("SIDECAR_INJECTOR_STRICT", "true")
    monkeypatch.setenv("SIDECAR_INJECTOR_ON_CONFLICT", "skip")
    monkeypatch.setenv("SIDECAR_INJECTOR_PORT", "9443")
    monkeypatch.setenv("SIDECAR_INJECTOR_PREFIX", "acme.io")
    monkeypatch.setenv("SIDECAR_INJECTOR_MAX_BODY_BYTES", "65536")
    monkeypatch.setenv("POD_NAMESPACE", "platform")
    settings = Settings()
    config = settings.engine_config()
    assert (settings.port, settings.max_body_bytes) == (9443, 65536)
    assert config.selection.default_policies == ("logging", "metrics-exporter")
    assert config.selection.strict is True
    assert config.on_conflict == "skip"
    assert config.selection.keys.status == "acme.io/status"
    assert config.selection.own_namespace == "platform"


def test_a_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_INJECTOR_PORT", "9443")
    assert Settings(port=8444).port == 8444


def test_the_shipped_policies_are_the_default() -> None:
    assert Settings().policies == shipped_policies()
    assert (shipped_policies() / "logging.yaml").is_file()


@pytest.mark.parametrize(("text", "version"), [
    pytest.param("1.28", (1, 28), id="plain"), pytest.param("v1.30.2", (1, 30), id="tag"),
    pytest.param("1.29+", (1, 29), id="gke-style"), pytest.param(None, None, id="absent"),
])
def test_kube_versions_are_read_loosely(text: str | None, version: tuple[int, int] | None) -> None:
    assert parse_kube_version(text) == version


def test_a_bad_kube_version_names_the_input() -> None:
    with pytest.raises(ValueError, match=r"'new' is not a Kubernetes version like 1\.29"):
        parse_kube_version("new")


def test_unknown_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="policys"):
        Settings(policys=tmp_path)  # type: ignore[call-arg]
