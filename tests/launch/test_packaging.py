"""Packaging: ranges in setup.cfg, the tested pins in requirements.txt, the extras a TPU VM and a
TensorBoard viewer need, and configs that an installed wheel (no clone) finds."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def _setup_cfg() -> configparser.ConfigParser:
  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  return cfg


def _requirements(text: str) -> list[Requirement]:
  return [Requirement(line) for line in text.splitlines() if line.strip()]


def _pins() -> dict[str, str]:
  text = (REPO / "requirements.txt").read_text()
  lines = [line.split("#")[0].strip() for line in text.splitlines()]
  reqs = [Requirement(line) for line in lines if line]
  pins = {}
  for r in reqs:
    [spec] = list(r.specifier)
    assert spec.operator == "==", f"requirements.txt pins exactly: {r}"
    pins[r.name.lower().replace("_", "-")] = spec.version
  return pins


def test_install_requires_are_ranges_and_the_pins_satisfy_them():
  cfg = _setup_cfg()
  pins = _pins()
  requires = _requirements(cfg["options"]["install_requires"])
  extras = cfg["options.extras_require"]
  checked = requires + [r for name in ("test", "tfds") for r in _requirements(extras[name])]
  for r in checked:
    ops = {s.operator for s in r.specifier}
    assert "==" not in ops, f"setup.cfg declares a range, not a pin: {r}"
    assert ops >= {">=", "<"}, f"{r}: expected a lower and an upper bound"
    name = r.name.lower().replace("_", "-")
    assert name in pins, f"{name} is declared but requirements.txt does not pin the tested version"
    assert r.specifier.contains(pins[name]), f"the tested {name}=={pins[name]} is outside {r}"


def test_extras_for_tpu_vms_and_tensorboard():
  extras = _setup_cfg()["options.extras_require"]
  tpu = _requirements(extras["tpu"])
  names = {r.name: r for r in tpu}
  assert "jax" in names and "tpu" in names["jax"].extras
  # gs:// through etils.epath needs gcsfs: directly or through etils' epath-gcs extra
  assert "gcsfs" in names or "epath-gcs" in names.get("etils", Requirement("etils")).extras
  assert [r.name for r in _requirements(extras["tensorboard"])] == ["tensorboard"]


def test_einops_is_declared_and_pinned_since_the_model_imports_it():
  imports = [
    p
    for p in (REPO / "glore_jax").rglob("*.py")
    if re.search(r"^\s*(import|from) einops", p.read_text(), re.M)
  ]
  assert imports, "the model's reshapes are einops.rearrange calls (glore_jax/model/)"
  declared = {r.name for r in _requirements(_setup_cfg()["options"]["install_requires"])}
  assert "einops" in declared
  assert "einops" in _pins()


def test_ci_installs_the_tested_set():
  run = (REPO / ".ci" / "run").read_text()
  assert re.search(r"pip install .*-r requirements.txt .*-e \"\.\[test,tfds(,[a-z-]+)*\]\"", run)


def _copy_of_checkout(dest: Path) -> Path:
  """The files git would commit (tracked and untracked, not ignored), copied to `dest`."""
  listed = subprocess.run(
    ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, text=True
  )
  if listed.returncode != 0:
    pytest.skip("not a git checkout: cannot tell the sources from build outputs")
  for name in filter(None, listed.stdout.split("\0")):
    if (REPO / name).is_file():
      (dest / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(REPO / name, dest / name)
  return dest


@pytest.mark.slow  # builds a wheel (~20 s)
def test_wheel_runs_configs_from_another_directory(tmp_path):
  """A wheel installed without the clone: --config=configs/micro.py resolves from the package
  (here it stops at a config error before any compute, after loading the config file)."""
  pytest.importorskip("setuptools")
  source = _copy_of_checkout(tmp_path / "source")  # the build writes egg-info beside the sources
  wheels = tmp_path / "wheels"
  build = subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "--no-deps",
      "--no-build-isolation",
      "-q",
      "-w",
      str(wheels),
      str(source),
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert build.returncode == 0, build.stderr[-3000:]
  [wheel] = list(wheels.glob("glore_jax-*.whl"))
  names = zipfile.ZipFile(wheel).namelist()
  for config in ("demo", "micro", "llama2_7b_gsm8k", "llama2_13b_gsm8k", "repro_synthetic"):
    assert f"glore_jax/configs/{config}.py" in names
  assert not [n for n in names if n.startswith("configs/")], "configs only inside the package"

  site = tmp_path / "site"
  subprocess.run(
    [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
    check=True,
    capture_output=True,
    timeout=300,
  )
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {**os.environ, "PYTHONPATH": str(site), "GLORE_JAX_MALLOC": "0"}
  probe = subprocess.run(
    [
      sys.executable,
      "-c",
      "import glore_jax, glore_jax.configs.llama2_13b_gsm8k as c; "
      "print(glore_jax.__file__); print(c.get_config().sorm.batch_size)",
    ],
    cwd=elsewhere,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert probe.returncode == 0, probe.stderr[-3000:]
  assert probe.stdout.splitlines()[0].startswith(str(site))  # the wheel, not the clone
  for spec in ("configs/micro.py", "glore_jax/configs/micro.py"):
    main = subprocess.run(
      [
        sys.executable,
        "-m",
        "glore_jax.main",
        f"--config={spec}",
        f"--workdir={tmp_path / 'w'}",
        "--config.stages=no_such_stage",
      ],
      cwd=elsewhere,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert main.returncode == 2, main.stderr[-3000:]
    assert "unknown stage 'no_such_stage'" in main.stderr
  assert not (tmp_path / "w").exists()  # stopped before any work
