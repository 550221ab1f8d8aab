"""The public interface on Pods and Namespaces: every label and annotation key, in one place.

`P/` below is the configurable prefix (default `sidecar.company.com`) plus `/`.

- `P/inject` (Namespace label): `enabled` opts the namespace in (the chart's selectors read it).
- `P/inject` (Pod label): `enabled` opts one pod in; `false` opts it out (the apiserver does not
  even call the webhook).
- `P/policies` (Namespace annotation): `a,b`, the namespace's default policies.
- `P/inject` (Pod annotation): `a,b` these policies in this order; `true`, `enabled` or absent:
  the namespace defaults, else the global defaults; `false`: never inject this pod.
- `P/status` (Pod annotation, written by the webhook): JSON record of what was injected, or why
  nothing was.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "sidecar.company.com"

#: Namespaces the webhook never touches nor stamps, whatever their labels say.
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})

#: Values of the pod annotation `P/inject` that mean "the defaults".
USE_DEFAULTS = frozenset({"", "true", "enabled"})
#: Value of `P/inject` (annotation or label) that opts a pod out.
OPT_OUT = "false"
#: Value of the `P/inject` label that opts a namespace or a pod in.
OPT_IN = "enabled"


@dataclass(frozen=True, slots=True)
class Keys:
    """The label and annotation keys under one prefix."""

    prefix: str = DEFAULT_PREFIX

    @property
    def inject(self) -> str:
        """`P/inject`: opt-in/opt-out label, and the pod annotation naming policies."""
        return f"{self.prefix}/inject"

    @property
    def policies(self) -> str:
        """`P/policies`: the Namespace annotation listing its default policies."""
        return f"{self.prefix}/policies"

    @property
    def status(self) -> str:
        """`P/status`: the Pod annotation the webhook writes."""
        return f"{self.prefix}/status"
