#!/usr/bin/env python3
"""Writes deploy/20-configmaps.yaml from src/inject/defaults/ (meshd's built-in settings).
tests/deploy.rs fails when the two disagree."""
import json
import os

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
d = os.path.join(root, "src/inject/defaults")
cfg = open(os.path.join(d, "config.yaml")).read()
values = json.dumps(json.load(open(os.path.join(d, "values.json"))), indent=2)
mesh = open(os.path.join(d, "mesh.yaml")).read()


def block(text, indent):
    pad = " " * indent
    return "\n".join((pad + l) if l else "" for l in text.rstrip("\n").split("\n"))


out = f"""# Generated from src/inject/defaults/ by scripts/gen-configmaps.py (tests/deploy.rs checks
# they agree): mesh config and the sidecar injector's settings, the same meshd uses when
# these ConfigMaps are absent.
apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
  labels:
    istio.io/rev: default
data:
  mesh: |
{block(mesh, 4)}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: istio-sidecar-injector
  namespace: istio-system
  labels:
    istio.io/rev: default
data:
  config: |
{block(cfg, 4)}
  values: |
{block(values, 4)}
"""
open(os.path.join(root, "deploy/20-configmaps.yaml"), "w").write(out)
