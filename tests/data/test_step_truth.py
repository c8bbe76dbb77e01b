"""Ground truth per step on the synthetic task: exact on references, exact on known mistakes."""

import random

import pytest

from glore_jax.data.step_truth import Equation, parse_equation, reference_equations, step_truth
from glore_jax.data.steps import split_steps
from glore_jax.data.synthetic import SyntheticConfig, make_split

REF = "Tom has 3*12=36 apples.\nHe has 36+15=51 apples.\nHe has 51-7=44 apples.\n#### 44"


def _truth(solution: str, reference: str = REF, gold: str = "44"):
  return step_truth(split_steps(solution), reference_equations(reference), gold)


def test_reference_solutions_are_flawless_on_every_generated_problem():
  cfg = SyntheticConfig(operations=("+", "-", "*", "/"), max_steps=5)
  for split in ("train", "test"):
    for p in make_split(3, 200, split, cfg):
      truth = step_truth(split_steps(p.reference), reference_equations(p.reference), p.answer)
      assert all(truth.ok), (p.reference, truth)
      assert truth.first_error is None
      assert truth.prefix_sound == [True] * len(truth.ok)


def test_digit_slip_is_an_arithmetic_error_and_everything_after_is_unsound():
  t = _truth("Tom has 3*12=36 apples.\nHe has 36+15=52 apples.\nHe has 52-7=45 apples.\n#### 45")
  assert t.arithmetic_ok == [True, False, True, True]
  assert t.quantities_ok == [True, True, False, False]
  assert t.ok == [True, False, False, False]
  assert t.first_error == 1
  assert t.prefix_sound == [True, False, False, False]


def test_wrong_quantity_with_right_arithmetic():
  # copies 17 instead of the question's 15: the equation holds but uses the wrong operand
  t = _truth("Tom has 3*12=36 apples.\nHe has 36+17=53 apples.\nHe has 53-7=46 apples.\n#### 46")
  assert t.arithmetic_ok == [True, True, True, True]
  assert t.quantities_ok == [True, False, False, False]
  assert t.first_error == 1


def test_commutative_order_is_accepted_but_not_for_minus():
  assert (
    _truth("Tom has 12*3=36 apples.\nHe has 15+36=51 apples.\nHe has 51-7=44 apples.\n#### 44").ok
    == [True] * 4
  )
  assert (
    _truth("Tom has 3*12=36 apples.\nHe has 36+15=51 apples.\nHe has 7-51=44 apples.\n#### 44").ok[
      2
    ]
    is False
  )


def test_early_answer_missing_equation_and_extra_steps_are_errors():
  assert _truth("Tom has 3*12=36 apples.\n#### 44").ok == [True, False]
  assert (
    _truth(
      "Tom has 3*12=36 apples.\nHe has many apples.\nHe has 51-7=44 apples.\n#### 44"
    ).first_error
    == 1
  )
  extra = _truth(REF.replace("#### 44", "He has 44+0=44 apples.\n#### 44"))
  assert extra.ok == [True, True, True, False, False]
  assert _truth(REF.replace("#### 44", "#### 45")).ok == [True, True, True, False]


def test_right_answer_through_wrong_work_is_not_flawless():
  # two compensating slips: the outcome is right, the process is not
  t = _truth("Tom has 3*12=35 apples.\nHe has 35+15=51 apples.\nHe has 51-7=44 apples.\n#### 44")
  assert t.first_error == 0
  assert t.ok[-1] is True  # the answer line itself is right


def test_parse_and_non_synthetic_reference():
  assert parse_equation("She has 120/4=30 beads.") == Equation(120, "/", 4, 30)
  assert parse_equation("no numbers here") is None
  assert not Equation(7, "/", 2, 3).holds  # integer division must be exact
  gsm8k = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nSo she sold 48+24 = 72 in all.\n#### 72"
  assert reference_equations("She sold half of her clips.\n#### 72") is None
  assert reference_equations(gsm8k) is not None  # GSM8K lines with equations still parse


@pytest.mark.parametrize("seed", [0, 1])
def test_random_single_mutations_are_located(seed):
  rng = random.Random(seed)
  for p in make_split(seed, 100, "test", SyntheticConfig()):
    steps = split_steps(p.reference)
    ref = reference_equations(p.reference)
    i = rng.randrange(len(ref))
    eq = ref[i]
    bad = steps[i].replace(f"={eq.result}", f"={eq.result + rng.choice([-10, -1, 1, 10])}")
    truth = step_truth(steps[:i] + [bad] + steps[i + 1 :], ref, p.answer)
    assert truth.first_error == i
    assert truth.arithmetic_ok[i] is False


def test_distractor_questions_keep_the_computation_and_expose_quantity_errors():
  plain = SyntheticConfig(max_steps=3)
  with_d = SyntheticConfig(max_steps=3, distractors=3)
  assert make_split(5, 40, "test", SyntheticConfig(max_steps=3, distractors=0)) == make_split(
    5, 40, "test", plain
  )  # distractors=0 is the original task, draw for draw
  for p in make_split(5, 40, "test", with_d):
    ref = reference_equations(p.reference)
    assert step_truth(split_steps(p.reference), ref, p.answer).first_error is None
    main, *_ = p.question.split(" ", 1)
    others = {
      w for w in p.question.replace(".", "").split() if w.istitle() and w not in (main, "How")
    }
    assert len(others) == 1  # one other person, never the asker
    # using the other person's count instead of the right operand is a quantity error
    other_count = int(p.question.split(f"{others.pop()} has ")[1].split()[0])
    steps = split_steps(p.reference)
    eq = ref[-1]
    if eq.op in "+-" and other_count != eq.right:
      value = eq.left + other_count if eq.op == "+" else eq.left - other_count
      bad = steps[-2].replace(f"{eq.op}{eq.right}={eq.result}", f"{eq.op}{other_count}={value}")
      truth = step_truth(steps[:-2] + [bad, f"#### {value}"], ref, p.answer)
      assert truth.first_error == len(ref) - 1
      assert truth.arithmetic_ok[len(ref) - 1] and not truth.quantities_ok[len(ref) - 1]
