"""Flags and environment variables, one model: every `serve` flag is also `SIDECAR_INJECTOR_<FLAG>`.

The webhook's own namespace comes from `POD_NAMESPACE` (the downward API), as SPEC section 4 says.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from webhook.compiled import name_problem
from webhook.engine import EngineConfig
from webhook.keys import DEFAULT_PREFIX, Keys
from webhook.selection import Selection, parse_policy_list

ENV_PREFIX = "SIDECAR_INJECTOR_"
DEFAULT_MAX_BODY_BYTES = 3 * 1024 * 1024


def shipped_policies() -> Path:
    """The policies shipped with the project: inside the wheel, else the source checkout's."""
    packaged = Path(__file__).parent / "policies"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "policies"


def parse_kube_version(text: str | None) -> tuple[int, int] | None:
    """`"1.28"` or `"v1.28.3"` -> `(1, 28)`; None when not given. ValueError names the input."""
    if not text:
        return None
    parts = text.strip().lstrip("v").split(".")
    try:
        return int(parts[0]), int(parts[1].rstrip("+"))
    except (IndexError, ValueError):
        raise ValueError(f"{text!r} is not a Kubernetes version like 1.29") from None


class Settings(BaseSettings):
    """Everything `serve` can be told, from flags or `SIDECAR_INJECTOR_*` variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    policies: Path = Field(default_factory=shipped_policies)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    host: str = "0.0.0.0"  # noqa: S104 - the webhook serves the cluster network; TLS only
    port: int = Field(default=8443, ge=1, le=65535)
    default_policies: str = ""
    prefix: str = DEFAULT_PREFIX
    kubeconfig: Path | None = None
    strict: bool = False
    on_conflict: Literal["deny", "skip"] = "deny"
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    request_timeout: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=4096, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    kube_version: str | None = None
    reload_interval: float = Field(default=2.0, gt=0)
    events: bool = True
    engine: Literal["webhook", "admission-policy", "hybrid"] = "webhook"
    engine_name: str = "sidecar-injector"
    engine_owner: str | None = Field(default=None, min_length=1, max_length=253)
    pod_opt_in: bool = True
    pod_namespace: str | None = Field(
        default=None, validation_alias=AliasChoices("POD_NAMESPACE", "pod_namespace")
    )

    @field_validator("engine_name")
    @classmethod
    def _check_engine_name(cls, value: str) -> str:
        problem = name_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("engine_owner")
    @classmethod
    def _check_engine_owner(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("engine") == "webhook":
            raise ValueError("needs --engine admission-policy or hybrid: with --engine webhook "
                             "nothing is applied for it to own")
        return value

    @field_validator("kube_version")
    @classmethod
    def _check_kube_version(cls, value: str | None) -> str | None:
        parse_kube_version(value)
        return value

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    def engine_config(self) -> EngineConfig:
        """The engine's view of these settings."""
        selection = Selection(
            keys=self.keys,
            default_policies=parse_policy_list(self.default_policies),
            strict=self.strict,
            own_namespace=self.pod_namespace or os.environ.get("POD_NAMESPACE") or None,
        )
        return EngineConfig(
            selection=selection,
            on_conflict=self.on_conflict,
            kube_version=parse_kube_version(self.kube_version),
        )
