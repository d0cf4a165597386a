"""Tests of the deployment artefacts: Dockerfile, Compose, Kubernetes, scale-out."""
