"""Tests of the deployment artefacts: manifests/, charts/, Dockerfile."""
