"""The exception tree. Decisions about pods are values (see `selection`), never exceptions.

    InjectorError                 anything this package raises on purpose
    ├── PolicyError               a policy set that cannot be loaded; carries every problem
    ├── InputError                a manifest or review that cannot be read (bad YAML, not an object)
    ├── SuiteError                `policies test` files that cannot be run; carries every problem
    ├── CertificateError          a certificate or key that cannot be read or made
    └── ClusterError              no cluster access, or the apiserver refused a call
"""

from __future__ import annotations

from collections.abc import Sequence


class InjectorError(Exception):
    """Base class of every error this package raises on purpose."""


class PolicyError(InjectorError):
    """A policy directory or file that cannot be loaded; `problems` holds every `file:line: msg`."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class InputError(InjectorError):
    """Input that cannot be read: invalid YAML or JSON, a document that is not an object."""


class SuiteError(InjectorError):
    """Test files (or the policies they test) that cannot be run; `problems`: `file:line: msg`."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class CertificateError(InjectorError):
    """A certificate or key file that cannot be read, parsed or generated."""


class ClusterError(InjectorError):
    """No cluster access (no kubeconfig, unreachable, forbidden) or a refused call: one line."""
