"""launch/colab_demo.ipynb runs top to bottom on CPU with the micro config, against this
checkout (no install), and shows the result tables and the reliability plot."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "launch" / "colab_demo.ipynb"


def test_notebook_is_valid_and_parameterised():
  nbformat = pytest.importorskip("nbformat", reason="needs nbformat (the 'test' extra)")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(params) == 1
  for name in ("GLORE_REPO", "GLORE_CONFIG", "GLORE_WORKDIR", "GLORE_INSTALL"):
    assert name in params[0].source
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
    "commit the notebook without outputs"
  )
  source = "\n".join(c.source for c in nb.cells)
  assert "glore_jax.main" in source and "configs/demo.py" in source and "[tpu]" in source
  assert "YOUR-ORG" not in source, "no placeholder URL: GLORE_REPO is a parameter"
  assert "about 10 minutes" not in source  # the demo takes 4-5 minutes on 2 cores (README)


@pytest.mark.slow
def test_notebook_runs_the_micro_pipeline_on_cpu(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat", reason="needs nbformat (the 'test' extra)")
  nbclient = pytest.importorskip("nbclient", reason="needs nbclient (the 'test' extra)")
  pytest.importorskip("ipykernel", reason="needs ipykernel (the 'test' extra)")
  workdir = tmp_path / "demo"
  monkeypatch.setenv("GLORE_REPO", str(REPO))
  monkeypatch.setenv("GLORE_CONFIG", "configs/micro.py")
  monkeypatch.setenv("GLORE_WORKDIR", str(workdir))
  monkeypatch.setenv("GLORE_INSTALL", "0")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device, as in a Colab CPU runtime
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
    nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()

  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  assert "[policy]" in text and "[evaluate]" in text  # stage summaries streamed
  assert "| greedy" in text or "greedy" in text
  markdown = [
    o["data"]["text/markdown"]
    for o in outputs
    if o.get("output_type") == "display_data" and "text/markdown" in o.get("data", {})
  ]
  assert markdown and "|" in markdown[0]
  images = [
    o["data"]["image/png"]
    for o in outputs
    if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
  ]
  assert images and base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
  results = json.loads((workdir / "evaluate" / "results.json").read_text())
  assert "greedy" in results
