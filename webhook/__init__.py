"""Sidecar Injector: a Kubernetes mutating admission webhook driven by policy files."""

from importlib.metadata import version

__version__ = version("sidecar-injector")  # pyproject.toml holds the one version
