"""Start-up decisions of glore_jax.distributed (the real multi-process run: test_multihost.py)."""

import jax
import pytest
from ml_collections import ConfigDict

from glore_jax import distributed
from glore_jax.model import make_mesh


def settings(**kw):
  base = dict(coordinator_address="", num_processes=0, process_id=-1)
  base.update(kw)
  return ConfigDict(base)


@pytest.mark.parametrize(
  "env, expected",
  [
    ({}, False),
    ({"GLORE_MULTIHOST": "1"}, True),
    ({"GLORE_MULTIHOST": "0"}, False),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2"}, False),  # one worker: a single host
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, True),
    ({"TPU_PROCESS_ADDRESSES": "a:8476,b:8476"}, True),
  ],
)
def test_multihost_detection(monkeypatch, env, expected):
  for key in ("GLORE_MULTIHOST", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
    monkeypatch.delenv(key, raising=False)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  assert distributed._on_tpu_pod() is expected


def test_single_process_is_a_no_op(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  monkeypatch.delenv("GLORE_MULTIHOST", raising=False)
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
  monkeypatch.delenv("TPU_PROCESS_ADDRESSES", raising=False)
  monkeypatch.setattr(distributed, "_initialized", False)
  distributed.initialize(settings())
  assert calls == [] and not distributed._initialized


def test_explicit_settings_are_passed_through(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **k: calls.append(k))
  monkeypatch.setattr(distributed, "_initialized", False)
  distributed.initialize(
    settings(coordinator_address="10.0.0.2:1234", num_processes=4, process_id=3)
  )
  assert calls == [dict(coordinator_address="10.0.0.2:1234", num_processes=4, process_id=3)]
  distributed.initialize(
    settings(coordinator_address="10.0.0.2:1234", num_processes=4, process_id=3)
  )
  assert len(calls) == 1  # once per process


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(coordinator_address="h:1", num_processes=0, process_id=0), "num_processes"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), "must be < num_processes"),
  ],
)
def test_incomplete_settings_fail_clearly(monkeypatch, kw, match):
  monkeypatch.setattr(distributed, "_initialized", False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **k: pytest.fail("must not start"))
  with pytest.raises(ValueError, match=match):
    distributed.initialize(settings(**kw))


def test_local_mesh_of_one_process_is_the_global_mesh():
  mesh = make_mesh(1, 4, 2)
  assert distributed.local_mesh(mesh) is mesh


def test_run_stages_samples_on_the_local_mesh_with_several_processes(monkeypatch):
  """sample/label/evaluate on the global mesh would deadlock across processes: run_stages hands
  them this process's local mesh; training stages keep the global one."""
  import glore_jax.stages as stages

  global_mesh, local = make_mesh(1, 4, 2), make_mesh(1, 2, 2, devices=jax.devices()[:4])
  config = ConfigDict({"stages": "policy,sample,label,train_orm,evaluate"})
  monkeypatch.setattr(
    stages, "make_context", lambda c, w: stages.Context(config=c, workdir=w, mesh=global_mesh)
  )
  seen = []
  monkeypatch.setattr(stages, "_runner", lambda stage: lambda ctx: seen.append((stage, ctx.mesh)))
  monkeypatch.setattr(
    distributed, "local_mesh", lambda mesh: local if mesh is global_mesh else None
  )
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  ctx = stages.run_stages(config, "unused")
  assert ctx.mesh is global_mesh
  assert [(s, m is local) for s, m in seen] == [
    ("policy", False),
    ("sample", True),
    ("label", True),
    ("train_orm", False),
    ("evaluate", True),
  ]
  monkeypatch.setattr(jax, "process_count", lambda: 1)
  assert stages.stage_context(ctx, "sample") is ctx
