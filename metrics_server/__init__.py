"""metrics-server for Kubernetes, in Python on trio: serves metrics.k8s.io/v1beta1."""

__version__ = "0.1.0"
