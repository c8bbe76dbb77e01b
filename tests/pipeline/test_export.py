"""`python -m glore_jax.export`: SORM/ORM labels in TRL's stepwise-supervision format and the
refiner data as chat SFT rows, from a work directory's finished stages."""

from __future__ import annotations

import json

import pytest

from glore_jax import export, fingerprint, provenance
from glore_jax import workdir as wd
from glore_jax.stages import refine_data

from .conftest import make_ctx, micro_config
from .test_refine_data_stage import label_records, probs  # noqa: F401 (a fixture)


def _write_stage(ctx, name, rows):
  stage = wd.ShardedStage(
    ctx.path(name),
    name,
    config=fingerprint.record(ctx.config, name),
    num_items=len(rows),
    shard_size=max(len(rows), 1),
  )
  stage.write_shard(0, rows)
  wd.mark_done(ctx.path(name))


@pytest.fixture
def workdir(tmp_path, probs):  # noqa: F811
  ctx = make_ctx(tmp_path / "run", micro_config())
  labels = label_records(probs)
  _write_stage(ctx, "label", labels)
  samples = [
    {"problem_id": r["problem_id"], "steps": r["steps"], "correct": r["outcome"]} for r in labels
  ]
  _write_stage(ctx, "sample", samples)
  refine_data.run(ctx)
  provenance.write_run_config(ctx.config, ctx.workdir)
  return ctx


def _rows(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_writes_trl_stepwise_and_chat_rows(workdir, probs, capsys):  # noqa: F811
  ctx = workdir
  assert export.main(["--workdir", str(ctx.workdir)]) == 0
  out = ctx.workdir / "export"
  questions = {p.id: p.question for p in probs}
  labels = label_records(probs)

  sorm = _rows(out / "sorm_stepwise.jsonl")
  assert len(sorm) == len(labels)
  for row, r in zip(sorm, labels):
    assert row["prompt"] == ctx.prompts.reward_prompt(questions[r["problem_id"]])
    assert row["completions"] == r["steps"]
    assert row["labels"] == [bool(x) for x in r["sorm_hard"]]
    assert all(isinstance(x, bool) for x in row["labels"])
    assert row["soft_labels"] == r["sorm_soft"]
  assert sorm[0]["labels"] == [True, False, False]

  orm = _rows(out / "orm_stepwise.jsonl")
  assert [row["labels"] for row in orm] == [[r["outcome"]] * len(r["steps"]) for r in labels]

  stored = wd.read_all(ctx.path("refine_data"))
  for kind in ("global", "local"):
    chat = _rows(out / f"refine_{kind}.jsonl")
    mine = [r for r in stored if r["kind"] == kind]
    assert len(chat) == len(mine) > 0
    for row, r in zip(chat, mine):
      user, assistant = row["messages"]
      assert (user["role"], assistant["role"]) == ("user", "assistant")
      q = questions[r["problem_id"]]
      if kind == "global":
        assert user["content"] == ctx.prompts.global_refine_input(q, r["draft_steps"])
        assert assistant["content"] == "\n".join(r["target_steps"])
      else:
        marked = ctx.prompts.local_refine_input(q, r["draft_steps"], r["bad_index"])
        assert user["content"] == marked
        assert "[BAD]" in user["content"]
        assert assistant["content"] == "\n".join(r["target_steps"][r["bad_index"] :])
  printed = capsys.readouterr().out
  assert "sorm_stepwise:" in printed and "refine_local:" in printed


def test_export_parquet(workdir):
  pq = pytest.importorskip("pyarrow.parquet")
  written = export.export(workdir.workdir, workdir.workdir / "pq", file_format="parquet")
  table = pq.read_table(str(written["sorm_stepwise"])).to_pylist()
  assert written["sorm_stepwise"].name == "sorm_stepwise.parquet"
  assert table == _rows(
    export.write_rows(
      export.stepwise_rows(
        wd.read_all(workdir.path("label")),
        {p.id: p.question for p in micro_config_problems()},
        workdir.prompts,
        kind="sorm",
      ),
      workdir.workdir / "check.jsonl",
      "jsonl",
    )
  )


def micro_config_problems():
  from glore_jax.stages.common import problems

  return problems(micro_config(), "train")


def test_export_without_outputs_or_config_fails_clearly(tmp_path, capsys):
  assert export.main(["--workdir", str(tmp_path)]) == 3
  assert "resolved_config.json not found" in capsys.readouterr().err
