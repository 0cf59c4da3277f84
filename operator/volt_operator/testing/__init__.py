"""Test and demo harness: a local Kubernetes control plane (`cluster`) and node agent."""
