"""Exports a work directory's labels and refinement data in formats other tools train on.

  python -m glore_jax.export --workdir=DIR [--out=DIR/export] [--format=jsonl|parquet]

Writes, for each input the work directory has:

- `sorm_stepwise.jsonl` (from `label/`) and `orm_stepwise.jsonl` (from `sample/`): TRL's
  stepwise-supervision format, one solution per line: `prompt` (the reward models' prompt),
  `completions` (the solution's steps), `labels` (one bool per step: the SORM's hard label, or
  the sample's outcome for the ORM), plus `problem_id` and, for the SORM, `soft_labels`.
- `refine_global.jsonl`, `refine_local.jsonl` (from `refine_data/`): chat SFT examples,
  `messages` = [user: the refiner's input, assistant: its target], as TRL's SFTTrainer reads.

The questions come from the config the work directory was run with (`resolved_config.json`,
written when a run starts), or from `--config`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from etils import epath

from glore_jax.data.prompts import PromptFormat
from glore_jax.data.steps import join_steps
from glore_jax.provenance import RUN_CONFIG
from glore_jax.workdir import read_all, read_json, stage_done

if TYPE_CHECKING:
  import ml_collections

FORMATS = ("jsonl", "parquet")


def stepwise_rows(
  records: Iterable[dict], questions: dict[str, str], fmt: PromptFormat, *, kind: str
) -> list[dict[str, Any]]:
  """TRL stepwise-supervision rows from label records (kind 'sorm') or samples ('orm').

  Args:
    records: label-stage records (`steps`, `sorm_hard`, `sorm_soft`) or sample-stage records
      (`steps`, `correct`).
    questions: question text by problem id.
    fmt: the run's prompt format.
    kind: 'sorm' or 'orm'.

  Returns:
    One row per solution with at least one step.
  """
  rows = []
  for r in records:
    steps = list(r["steps"])
    if not steps:
      continue
    row = {"prompt": fmt.reward_prompt(questions[r["problem_id"]]), "completions": steps}
    if kind == "sorm":
      row["labels"] = [bool(int(v)) for v in r["sorm_hard"]]
      row["soft_labels"] = [float(v) for v in r["sorm_soft"]]
    else:
      row["labels"] = [bool(r["correct"])] * len(steps)
    if len(row["labels"]) != len(steps):
      raise ValueError(
        f"problem {r['problem_id']}: {len(row['labels'])} labels for {len(steps)} steps"
      )
    row["problem_id"] = r["problem_id"]
    rows.append(row)
  return rows


def chat_rows(
  records: Iterable[dict], questions: dict[str, str], fmt: PromptFormat, *, kind: str
) -> list[dict[str, Any]]:
  """Chat SFT rows (`messages`) from refine_data records of `kind` ('global' or 'local'): the
  same input and target text the refiners are trained on (train_refiner.py).

  Args:
    records: refine_data records.
    questions: {problem id: question text}.
    fmt: the run's prompt format.
    kind: 'global' or 'local'; records of the other kind are skipped.
  """
  rows = []
  for r in records:
    if r["kind"] != kind:
      continue
    q = questions[r["problem_id"]]
    if kind == "global":
      prompt = fmt.global_refine_input(q, r["draft_steps"])
      target = fmt.global_refine_target(r["target_steps"])
    else:
      prompt = fmt.local_refine_input(q, r["draft_steps"], r["bad_index"])
      target = fmt.local_refine_target(r["target_steps"], r["bad_index"])
    rows.append(
      {
        "messages": [
          {"role": "user", "content": prompt},
          {"role": "assistant", "content": join_steps(target, fmt.separator)},
        ],
        "problem_id": r["problem_id"],
      }
    )
  return rows


def write_rows(rows: list[dict], path: epath.Path, file_format: str) -> epath.Path:
  """Writes rows as JSON lines or (with pyarrow) a parquet file; the path written.

  Args:
    rows: JSON-ready rows.
    path: the output file (parquet: its suffix becomes .parquet).
    file_format: 'jsonl' or 'parquet'.

  Raises:
    SystemExit: 'parquet' without pyarrow installed.
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if file_format == "jsonl":
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path
  try:
    import pyarrow as pa
    import pyarrow.parquet as pq
  except ImportError:
    raise SystemExit("--format=parquet needs pyarrow (pip install pyarrow)") from None
  path = path.with_suffix(".parquet")
  with path.open("wb") as f:
    pq.write_table(pa.Table.from_pylist(rows), f)
  return path


def run_config(workdir: epath.Path) -> ml_collections.ConfigDict:
  """The config a work directory was run with, from its resolved_config.json."""
  import ml_collections

  path = workdir / RUN_CONFIG
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: give the run's config with --config")
  return ml_collections.ConfigDict(read_json(path)["config"])


def export(
  workdir: str | os.PathLike,
  out: str | os.PathLike | None = None,
  *,
  config: ml_collections.ConfigDict | None = None,
  file_format: str = "jsonl",
) -> dict[str, epath.Path]:
  """Exports what `workdir` has (labels, samples, refinement data); {name: path written}.

  Args:
    workdir: a run's work directory (local or gs://).
    out: the folder to write to; default <workdir>/export.
    config: the run's config; default: the work directory's resolved_config.json.
    file_format: 'jsonl' or 'parquet'.
  """
  from glore_jax.stages.common import problems
  from glore_jax.stages.layout import LAYOUT

  if file_format not in FORMATS:
    raise ValueError(f"format {file_format!r}: expected one of {', '.join(FORMATS)}")
  workdir = epath.Path(workdir)
  out = epath.Path(out) if out else workdir / "export"
  config = config if config is not None else run_config(workdir)
  fmt = PromptFormat.from_config(config.prompts)
  sources = {name: workdir / LAYOUT[name] for name in ("label", "sample", "refine_data")}
  ready = {name: path for name, path in sources.items() if stage_done(path)}
  if not ready:
    raise FileNotFoundError(f"{workdir} has no finished sample, label or refine_data stage")
  questions = {p.id: p.question for p in problems(config, "train")}
  written = {}
  if "label" in ready:
    rows = stepwise_rows(read_all(ready["label"]), questions, fmt, kind="sorm")
    written["sorm_stepwise"] = write_rows(rows, out / "sorm_stepwise.jsonl", file_format)
  if "sample" in ready:
    rows = stepwise_rows(read_all(ready["sample"]), questions, fmt, kind="orm")
    written["orm_stepwise"] = write_rows(rows, out / "orm_stepwise.jsonl", file_format)
  if "refine_data" in ready:
    records = read_all(ready["refine_data"])
    for kind in ("global", "local"):
      rows = chat_rows(records, questions, fmt, kind=kind)
      written[f"refine_{kind}"] = write_rows(rows, out / f"refine_{kind}.jsonl", file_format)
  return written


def main(argv: list[str] | None = None) -> int:
  """`python -m glore_jax.export`: exports a work directory's data.

  Exit status 0; 2 on a bad value; 3 when a needed file is missing.
  """
  import argparse

  parser = argparse.ArgumentParser(
    prog="python -m glore_jax.export",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--workdir", required=True, help="the run's work directory")
  parser.add_argument("--out", default=None, help="output folder (default: WORKDIR/export)")
  parser.add_argument("--format", default="jsonl", choices=FORMATS)
  parser.add_argument(
    "--config",
    default=None,
    help="the run's config file, when the workdir has no resolved_config.json",
  )
  args = parser.parse_args(argv)
  config = None
  if args.config:
    from glore_jax.config_files import load_config_file

    config = load_config_file(args.config)
  try:
    written = export(args.workdir, args.out, config=config, file_format=args.format)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 3 if isinstance(e, FileNotFoundError) else 2
  for name, path in written.items():
    print(f"{name}: {path}")
  return 0


def run() -> None:
  """The `glore-jax-export` console script."""
  sys.exit(main())


if __name__ == "__main__":
  run()
