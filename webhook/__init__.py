"""Sidecar Injector: a Kubernetes mutating admission webhook driven by policy files."""

__version__ = "0.1.0"
