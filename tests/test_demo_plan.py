"""The demo's plan: the steps and samples that fill a wall-clock budget, rounded per machine class."""
from __future__ import annotations

import dataclasses
import json

import pytest

from guided_diffusion.commands import demo_plan
from guided_diffusion.commands.demo_plan import (CLASS_RATES, CLASSIFIER_MAX_STEPS, DIFFUSION_SHARE, FIXED_SECONDS,
                                                 MARGIN, MIN_STEPS, DemoPlan, Rates, SampledRow, class_rates,
                                                 guide_step_of, ladder_round, plan_demo, round_down, sampling_seconds)

AVX2 = Rates(diffusion_step=0.66, classifier_step=0.32, model_forward=0.32, classifier_gradient=0.16, start=20.0)
ROWS = [SampledRow("ddim15", classifier=False), SampledRow("ddim15", classifier=True, classifier_interval="400,800",
                                                           guide=True)]


def scaled(rates: Rates, factor: float) -> Rates:
    """The rates of a machine ``factor`` times slower (its start too)."""
    return Rates(**{name: value * factor for name, value in dataclasses.asdict(rates).items()})


def test_rows_count_the_evaluations_sampling_makes():
    assert SampledRow("ddim15", classifier=False).evaluations() == (15, 0)
    assert SampledRow("ddim15", classifier=True).evaluations() == (15, 15)
    # t in [400, 800] on the 15-step DDIM grid: 6 steps (the cost the sweep reports for interval guidance)
    assert SampledRow("ddim15", classifier=True, classifier_interval="400,800").evaluations() == (15, 6)
    assert SampledRow("ddim15", classifier=True, classifier_interval="400,800", guide=True).evaluations() == (30, 6)
    # the guide only for t >= 300: 10 of the 15 steps (t = 335 ... 938)
    assert SampledRow("ddim15", classifier=False, guide=True, guide_interval="300,1000").evaluations() == (25, 0)
    # 500 samples = 10 batches of 50: 10 x (15 x 0.32) alone, 10 x (30 x 0.32 + 6 x 0.16) guided
    assert sampling_seconds(AVX2, ROWS, 500) == pytest.approx(10 * 15 * 0.32 + 10 * (30 * 0.32 + 6 * 0.16))
    assert sampling_seconds(AVX2, ROWS, 501) == pytest.approx(sampling_seconds(AVX2, ROWS, 550))


def test_rounding_helpers():
    assert round_down(473.9) == 470 and round_down(1288) == 1200 and round_down(99.5) == 99 and round_down(7.9) == 7
    assert round_down(0.5) == 0
    for value in (0.01, 0.2, 0.61, 0.64, 3.0):
        rung = ladder_round(value)
        assert value * (1 - 1e-4) <= rung < value * 2 ** 0.125 * (1 + 1e-4)   # rounded up, by less than one rung
        assert ladder_round(rung) == pytest.approx(rung)             # a rung is its own rounding
    assert ladder_round(0.61) == ladder_round(0.64)                  # a few percent apart: the same rung
    with pytest.raises(ValueError):
        ladder_round(0)
    assert guide_step_of(460, 0.25) == 120 and guide_step_of(380, 0.25) == 100 and guide_step_of(4, 0.25) == 1
    assert guide_step_of(1, 0.25) is None and guide_step_of(460, None) is None and guide_step_of(30, 0.99) == 29


def test_the_plan_fills_the_budget_and_splits_it():
    plan = plan_demo(720, AVX2, ROWS, machine="cpu-fp32")
    usable = 720 * (1 - MARGIN)
    sampling = sampling_seconds(AVX2, ROWS, 500)
    training = plan.diffusion_steps * AVX2.diffusion_step + plan.classifier_steps * AVX2.classifier_step
    assert plan.num_samples == 500
    assert plan.predicted["total"] == pytest.approx(20 + FIXED_SECONDS + sampling + training, abs=0.2)
    # filled: what rounding to two digits leaves is under 3% of the training time, and nothing is over
    free = usable - 20 - FIXED_SECONDS - sampling
    assert 0.97 * free <= training <= free
    assert plan.classifier_steps * AVX2.classifier_step == pytest.approx((1 - DIFFUSION_SHARE) * free, rel=0.03)
    assert plan.guide_step is None and plan.given == {}
    # time already spent is time not trained
    later = plan_demo(720, dataclasses.replace(AVX2, start=120.0), ROWS, machine="cpu-fp32")
    assert later.diffusion_steps < plan.diffusion_steps and later.classifier_steps < plan.classifier_steps


def test_a_faster_machine_trains_longer_and_samples_more():
    slow = plan_demo(720, AVX2, ROWS, machine="cpu-fp32", guide_fraction=0.25)
    fast = plan_demo(720, scaled(AVX2, 1 / 3.5), ROWS, machine="cpu-bf16", guide_fraction=0.25)
    assert fast.diffusion_steps > 3.5 * slow.diffusion_steps       # the classifier's cap gives the model the rest
    assert fast.classifier_steps == CLASSIFIER_MAX_STEPS
    assert fast.guide_step == guide_step_of(fast.diffusion_steps, 0.25)
    gpu = plan_demo(720, scaled(AVX2, 1 / 100), ROWS, machine="cuda")
    assert gpu.num_samples == 1000 and slow.num_samples == 500     # 1000 per row where it costs <= 10% of the budget


def test_given_values_are_kept_and_the_rest_planned_around_them():
    plan = plan_demo(720, AVX2, ROWS, machine="cpu-fp32", diffusion_steps=200, num_samples=100)
    assert plan.diffusion_steps == 200 and plan.num_samples == 100
    assert plan.given == {"diffusion_steps": 200, "num_samples": 100}
    free = 720 * (1 - MARGIN) - 20 - FIXED_SECONDS - sampling_seconds(AVX2, ROWS, 100) - 200 * AVX2.diffusion_step
    assert plan.classifier_steps == min(round_down(free / AVX2.classifier_step), CLASSIFIER_MAX_STEPS)
    plan = plan_demo(720, AVX2, ROWS, machine="cpu-fp32", classifier_steps=300)
    assert plan.classifier_steps == 300 and plan.diffusion_steps > 500


def test_a_budget_too_short_runs_the_least_and_says_so():
    plan = plan_demo(120, AVX2, ROWS, machine="cpu-fp32")
    assert (plan.diffusion_steps, plan.classifier_steps) == (MIN_STEPS, MIN_STEPS) and plan.predicted["total"] > 120
    assert plan.warning.startswith("a budget of 2 min is too short") and "--budget_minutes" in plan.warning
    assert plan.describe().splitlines()[-1] == f"[demo] warning: {plan.warning}"
    assert plan_demo(720, AVX2, ROWS, machine="cpu-fp32").warning is None


def test_machines_of_one_class_get_one_plan():
    """Within the tolerance the class's reference rates plan (the same plan, the same figures); outside it the
    measured rates, rounded up to the ladder."""
    reference = CLASS_RATES["cpu-fp32"]
    plans = []
    for factor in (0.85, 1.0, 1.08):
        rates, source = class_rates("cpu-fp32", scaled(reference, factor))
        assert source == "class" and rates == reference
        plans.append(plan_demo(720, rates, ROWS, machine="cpu-fp32"))
    assert len({(p.diffusion_steps, p.classifier_steps, p.num_samples) for p in plans}) == 1
    assert class_rates("cpu-fp32", scaled(reference, 1.15))[1] == "measured"   # slower: it would overrun
    slower = scaled(reference, 1.6)
    rates, source = class_rates("cpu-fp32", slower)
    assert source == "measured" and rates == slower.rounded()
    for name, value in dataclasses.asdict(rates).items():
        assert value >= getattr(slower, name) * (1 - 1e-4)            # rounded up: the plan stays within budget
    # a class without a reference: the ladder makes machines a few percent apart agree
    rung = scaled(reference, 0.3).rounded()
    a, _ = class_rates("cpu-bf16", scaled(rung, 0.94))
    b, _ = class_rates("cpu-bf16", scaled(rung, 0.99))
    assert a == b == rung


def test_a_plan_round_trips_through_json(tmp_path):
    plan = plan_demo(720, AVX2, ROWS, machine="cpu-fp32", measured=scaled(AVX2, 1.1), guide_fraction=0.25)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"request": {"a": 1}, "plan": plan.to_json()}))
    assert demo_plan.read_plan(path, {"a": 1}) == plan
    assert demo_plan.read_plan(path, {"a": 2}) is None                 # another request plans again
    path.write_text("{broken")
    assert demo_plan.read_plan(path, {"a": 1}) is None
    assert "guided by its own step" in plan.describe() and "cpu-fp32" in plan.describe()
    assert DemoPlan.from_json(json.loads(json.dumps(plan.to_json()))).measured == scaled(AVX2, 1.1)


def test_measured_rates_are_positive_and_ordered(tmp_path):
    """The measurement runs the configs' own training steps (tiny batches here) and the sampling evaluations."""
    from guided_diffusion.commands.demo import CONFIGS

    rates = demo_plan.measure_rates(CONFIGS / "diffusion.yaml", CONFIGS / "classifier.yaml", "32-true",
                                    diffusion_overrides=["--data.batch_size=4"],
                                    classifier_overrides=["--data.batch_size=4"])
    assert all(value > 0 for value in dataclasses.asdict(rates).values())
    # a classifier gradient is a forward and a backward of a smaller network than the diffusion model's forward
    assert rates.classifier_gradient < 5 * rates.model_forward
