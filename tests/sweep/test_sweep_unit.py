"""Sweeps, pure logic: the `sweep` section's validation (errors name the field), deterministic trials,
parameter substitution, early-termination policies and the best trial."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from shared.runspec import RunSpecError, SpecContext, parse_run_spec
from shared.sweep import (
    best_trial,
    generate_trials,
    substitute,
    sweep_cluster,
    sweep_environment,
    trial_id,
    trial_spec,
    trials_to_stop,
)

CTX = SpecContext()
ARGS = "$AZ_BATCHAI_INPUT_SAMPLE --lr ${{search_space.lr}} --batch-size ${{ search_space.batch_size }}"


def spec_with(sweep: dict[str, Any], **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "toolkit": "pytorch",
        "script": "train.py",
        "arguments": ARGS,
        "sweep": {
            "parameters": {"lr": {"values": [0.01, 0.1, 5.0]}, "batch_size": {"values": [32, 64]}},
            "max_trials": 6,
            "primary_metric": "loss",
            "goal": "minimize",
            **sweep,
        },
    }
    base.update(fields)
    return base


def errors_of(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(RunSpecError) as info:
        parse_run_spec(data, CTX)
    return {e["field"]: e["message"] for e in info.value.errors}


def test_a_sweep_section_parses_and_round_trips() -> None:
    spec = parse_run_spec(
        spec_with(
            {
                "sampling": "grid",
                "max_concurrent_trials": 2,
                "early_termination": {"policy": "median_stopping", "delay_evaluation": 2},
            }
        ),
        CTX,
    )
    assert spec.sweep is not None and spec.sweep.max_concurrent_trials == 2
    stored = json.loads(json.dumps(spec.to_json_dict(reveal_secrets=True)))
    assert stored["sweep"]["parameters"]["lr"] == {"values": [0.01, 0.1, 5.0]}
    assert stored["sweep"]["early_termination"]["delay_evaluation"] == 2
    assert parse_run_spec(stored, CTX) == spec
    assert parse_run_spec({"toolkit": "pytorch", "script": "t.py"}, CTX).sweep is None


@pytest.mark.parametrize(
    ("sweep", "field", "words"),
    [
        ({"parameters": {"lr": {"uniform": [1, 0]}}}, "sweep.parameters.lr.uniform", "min_value < max_value"),
        ({"parameters": {"lr": {"loguniform": [0, 701]}}}, "sweep.parameters.lr.loguniform", "700"),
        ({"parameters": {"lr": {"quniform": [0, 1, 0]}}}, "sweep.parameters.lr.quniform", "positive"),
        ({"parameters": {"lr": {"integer": [1.5, 3]}}}, "sweep.parameters.lr.integer.0", "integer"),
        ({"parameters": {"lr": {"values": []}}}, "sweep.parameters.lr.values", "at least 1"),
        ({"parameters": {"lr": {"values": [1, 1]}}}, "sweep.parameters.lr.values", "distinct"),
        ({"parameters": {"lr": {"values": ["a b"]}}}, "sweep.parameters.lr.values", "may contain only"),
        ({"parameters": {"lr": {"values": [[1]]}}}, "sweep.parameters.lr.values", "value 0 must be"),
        ({"parameters": {"lr": {"normal": [0, 1]}}}, "sweep.parameters.lr", "expected one of"),
        ({"parameters": {"1lr": {"values": [1]}}}, "sweep.parameters.1lr", "parameter name"),
        ({"parameters": {}}, "sweep.parameters", "at least 1"),
        (
            {"sampling": "grid", "parameters": {"lr": {"uniform": [0, 1]}}},
            "sweep.parameters.lr",
            "grid sampling needs discrete",
        ),
        ({"sampling": "bayesian"}, "sweep.sampling", ""),
        ({"max_trials": 0}, "sweep.max_trials", ""),
        ({"max_trials": 101}, "sweep.max_trials", ""),
        ({"max_trials": 2, "max_concurrent_trials": 3}, "sweep.max_concurrent_trials", "max_trials"),
        ({"goal": "lowest"}, "sweep.goal", ""),
        ({"primary_metric": "epoch"}, "sweep.primary_metric", "x axis"),
        ({"early_termination": {"policy": "hyperband"}}, "sweep.early_termination", "expected policy"),
        ({"early_termination": {"policy": "bandit"}}, "sweep.early_termination", "exactly one"),
        (
            {"early_termination": {"policy": "truncation", "truncation_percentage": 100}},
            "sweep.early_termination.truncation_percentage",
            "",
        ),
        (
            {"early_termination": {"policy": "median_stopping", "delay": 1}},
            "sweep.early_termination.delay",
            "unknown field",
        ),
        ({"extra": 1}, "sweep.extra", "unknown field"),
    ],
)
def test_a_bad_sweep_names_the_field(sweep: dict[str, Any], field: str, words: str) -> None:
    errors = errors_of(spec_with(sweep))
    assert field in errors, errors
    assert words in errors[field]


def test_required_sweep_fields_are_named() -> None:
    errors = errors_of(
        {"toolkit": "pytorch", "script": "t.py", "sweep": {"parameters": {"a": {"values": [1]}}}}
    )
    assert {"sweep.max_trials", "sweep.primary_metric", "sweep.goal"} <= set(errors)


def test_placeholders_must_name_a_parameter_of_a_sweep() -> None:
    errors = errors_of(spec_with({}, arguments="--x ${{search_space.momentum}}"))
    assert "momentum" in errors["arguments"]
    errors = errors_of({"toolkit": "pytorch", "script": "t.py", "arguments": "--lr ${{search_space.lr}}"})
    assert "needs a sweep section" in errors["arguments"]
    errors = errors_of(
        spec_with({}, toolkit="custom", script=None, arguments=None, command_line="run ${{search_space.x}}")
    )
    assert "x" in errors["command_line"]


def test_sweep_variables_are_the_sweeps() -> None:
    errors = errors_of(spec_with({}, environment_variables={"SWEEP_LR": "1"}))
    assert "SWEEP_LR" in errors["environment_variables"]


def test_grid_trials_are_the_product_in_order_and_capped() -> None:
    sweep = parse_run_spec(spec_with({"sampling": "grid", "max_trials": 4}), CTX).sweep
    assert sweep is not None
    trials = generate_trials(sweep)
    assert [t.parameters for t in trials] == [
        {"lr": 0.01, "batch_size": 32},
        {"lr": 0.01, "batch_size": 64},
        {"lr": 0.1, "batch_size": 32},
        {"lr": 0.1, "batch_size": 64},
    ]
    assert [t.index for t in trials] == [0, 1, 2, 3]


def test_random_trials_are_deterministic_from_the_seed_and_in_range() -> None:
    def trials(seed: int) -> list[dict[str, Any]]:
        sweep = parse_run_spec(
            spec_with(
                {
                    "seed": seed,
                    "max_trials": 20,
                    "parameters": {
                        "lr": {"loguniform": [-9.2, -2.3]},
                        "batch_size": {"integer": [16, 128]},
                        "dropout": {"uniform": [0.1, 0.5]},
                        "width": {"quniform": [32, 256, 32]},
                    },
                }
            ),
            CTX,
        ).sweep
        assert sweep is not None
        return [t.parameters for t in generate_trials(sweep)]

    first = trials(7)
    assert first == trials(7)
    assert first != trials(8)
    assert len(first) == 20
    for values in first:
        assert math.exp(-9.2) <= values["lr"] <= math.exp(-2.3)
        assert isinstance(values["batch_size"], int) and 16 <= values["batch_size"] <= 128
        assert 0.1 <= values["dropout"] <= 0.5
        assert isinstance(values["width"], int) and values["width"] % 32 == 0 and 32 <= values["width"] <= 256


def test_random_over_a_small_discrete_space_gives_no_duplicates() -> None:
    sweep = parse_run_spec(spec_with({"max_trials": 50}), CTX).sweep
    assert sweep is not None
    trials = generate_trials(sweep)
    keys = [tuple(sorted(t.parameters.items())) for t in trials]
    assert len(keys) == len(set(keys)) == 6


def test_a_trial_gets_its_parameters_in_arguments_and_environment() -> None:
    spec = parse_run_spec(spec_with({"sampling": "grid"}, environment_variables={"KEEP": "1"}), CTX)
    assert spec.sweep is not None
    trial = generate_trials(spec.sweep)[5]
    child = trial_spec(spec, trial, max_nodes=16)
    assert child.sweep is None
    assert child.arguments == "$AZ_BATCHAI_INPUT_SAMPLE --lr 5.0 --batch-size 64"
    assert child.environment_variables == {"KEEP": "1", "SWEEP_LR": "5.0", "SWEEP_BATCH_SIZE": "64"}
    assert spec.arguments == ARGS  # the parent is unchanged
    assert substitute(None, {}) is None
    assert sweep_environment({"flag": True, "lr": 1e-05}) == {"SWEEP_FLAG": "true", "SWEEP_LR": "1e-05"}
    assert trial_id("run-abc", 7) == trial_id("run-abc", 7) == "run-abc-t007"


def _sweep(policy: dict[str, Any], goal: str = "minimize") -> Any:
    sweep = parse_run_spec(spec_with({"early_termination": policy, "goal": goal}), CTX).sweep
    assert sweep is not None
    return sweep


def _series(*values: float) -> list[list[float]]:
    return [[float(i + 1), v, 0.0] for i, v in enumerate(values)]


def test_median_stopping_stops_a_trial_worse_than_the_median_after_the_delay() -> None:
    sweep = _sweep({"policy": "median_stopping", "delay_evaluation": 2})
    good = {"a": _series(1.0, 0.5, 0.3), "b": _series(1.1, 0.6, 0.4)}
    # Before the delay nothing is judged, however bad.
    assert trials_to_stop(sweep, {"bad": _series(9.0)}, good) == {}
    stops = trials_to_stop(sweep, {"bad": _series(9.0, 8.0)}, good)
    assert list(stops) == ["bad"] and "median" in stops["bad"] and "step 2" in stops["bad"]
    # A trial better than the median keeps going; so does one with no peers at its step.
    assert trials_to_stop(sweep, {"ok": _series(1.0, 0.55)}, good) == {}
    assert trials_to_stop(sweep, {"alone": _series(9.0, 9.0)}, {}) == {}
    # Maximize flips the comparison.
    maximize = _sweep({"policy": "median_stopping", "delay_evaluation": 1}, goal="maximize")
    assert list(trials_to_stop(maximize, {"low": _series(0.1)}, {"a": _series(0.9), "b": _series(0.8)})) == [
        "low"
    ]
    assert trials_to_stop(maximize, {"high": _series(0.95)}, {"a": _series(0.9), "b": _series(0.8)}) == {}


def test_none_never_stops() -> None:
    sweep = _sweep({"policy": "none"})
    assert trials_to_stop(sweep, {"bad": _series(9.0, 9.0)}, {"a": _series(0.1, 0.1)}) == {}
    default = parse_run_spec(spec_with({}), CTX).sweep
    assert default is not None and trials_to_stop(default, {"bad": _series(9.0)}, {"a": _series(0.1)}) == {}


def test_truncation_stops_the_worst_percentage() -> None:
    sweep = _sweep({"policy": "truncation", "truncation_percentage": 50})
    others = {"a": _series(0.1), "b": _series(0.2), "c": _series(0.3)}
    assert list(trials_to_stop(sweep, {"worst": _series(0.9)}, others)) == ["worst"]
    assert trials_to_stop(sweep, {"best": _series(0.05)}, others) == {}


def test_bandit_stops_outside_the_slack_of_the_leader() -> None:
    sweep = _sweep({"policy": "bandit", "slack_amount": 0.2})
    assert list(trials_to_stop(sweep, {"far": _series(0.5)}, {"lead": _series(0.2)})) == ["far"]
    assert trials_to_stop(sweep, {"near": _series(0.35)}, {"lead": _series(0.2)}) == {}
    factor = _sweep({"policy": "bandit", "slack_factor": 0.5}, goal="maximize")
    # leader 0.9 / 1.5 = 0.6: 0.5 is outside, 0.7 within.
    assert list(trials_to_stop(factor, {"far": _series(0.5)}, {"lead": _series(0.9)})) == ["far"]
    assert trials_to_stop(factor, {"near": _series(0.7)}, {"lead": _series(0.9)}) == {}


def test_best_trial_is_the_best_final_value() -> None:
    sweep = _sweep({"policy": "none"})
    assert best_trial(sweep, {"a": 0.3, "b": 0.1, "c": None, "d": 0.2}) == "b"
    assert best_trial(sweep, {"a": None}) is None
    maximize = _sweep({"policy": "none"}, goal="maximize")
    assert best_trial(maximize, {"a": 0.3, "b": 0.9, "c": 0.9}) == "b"


def test_a_sweep_resubmit_reruns_failed_and_cancelled_trials_not_stopped_ones() -> None:
    from shared.registry import RunRecord
    from shared.sweep_runs import attempt_id, attempt_of, to_rerun

    def trial(state: str, code: str | None = None) -> RunRecord:
        errors = [{"code": code, "message": "m"}] if code else []
        return RunRecord(run_id="p-t000", dataset="d", state=state, errors=errors)

    assert to_rerun(trial("failed", "JobFailed"))
    assert to_rerun(trial("cancelled", "Cancelled"))
    assert not to_rerun(trial("cancelled", "early_terminated"))
    assert not to_rerun(trial("succeeded"))
    assert not to_rerun(trial("running"))
    parent = RunRecord(
        run_id="p", dataset="d", state="running", sweep={"role": "parent", "attempts": {"2": 1}}
    )
    assert [attempt_of(parent, i) for i in range(3)] == [0, 0, 1]
    assert attempt_id("p", 2, 1) == "p-t002-r1" and attempt_id("p", 2, 0) == "p-t002"


@pytest.mark.parametrize(
    ("concurrent", "fields", "cap", "scale"),
    [
        # no scale given: an auto scale from 0 to the concurrent trials' nodes
        (3, {}, 16, {"auto_scale": {"minimum_node_count": 0, "maximum_node_count": 3}}),
        (3, {"node_count": 2}, 16, {"auto_scale": {"minimum_node_count": 0, "maximum_node_count": 6}}),
        (3, {"node_count": 2}, 4, {"auto_scale": {"minimum_node_count": 0, "maximum_node_count": 4}}),
        (6, {}, 16, {"auto_scale": {"minimum_node_count": 0, "maximum_node_count": 6}}),
        (1, {}, 16, {}),  # one trial at a time: the spec's own cluster
        # a manual target and an auto scale's maximum are raised, bounded by MAX_NODES_PER_RUN
        (4, {"cluster": {"manual": {"target_node_count": 2}}}, 16, {"manual": {"target_node_count": 4}}),
        (4, {"cluster": {"manual": {"target_node_count": 2}}}, 3, {"manual": {"target_node_count": 3}}),
        (4, {"cluster": {"manual": {"target_node_count": 5}}}, 16, {"manual": {"target_node_count": 5}}),
        (
            4,
            {"cluster": {"auto_scale": {"minimum_node_count": 1, "maximum_node_count": 2}}},
            16,
            {"auto_scale": {"minimum_node_count": 1, "maximum_node_count": 4}},
        ),
    ],
)
def test_a_sweeps_cluster_has_room_for_its_concurrent_trials(
    concurrent: int, fields: dict[str, Any], cap: int, scale: dict[str, Any]
) -> None:
    spec = parse_run_spec(spec_with({"sampling": "grid", "max_concurrent_trials": concurrent}, **fields), CTX)
    assert sweep_cluster(spec, cap).model_dump(exclude_none=True) == scale
    trial = trial_spec(spec, generate_trials(spec.sweep)[0], max_nodes=cap)
    assert trial.cluster == sweep_cluster(spec, cap)  # the trials run on the parent's cluster


def test_a_sweep_with_fewer_trials_than_its_concurrency_asks_for_fewer_nodes() -> None:
    sweep = {"parameters": {"lr": {"values": [0.1, 0.2]}}, "max_trials": 6, "max_concurrent_trials": 5}
    spec = parse_run_spec(
        spec_with({"sampling": "grid", **sweep}, arguments="--lr ${{search_space.lr}}"), CTX
    )
    assert sweep_cluster(spec, 16).auto_scale.maximum_node_count == 2


def test_the_recorded_spec_derives_the_trials_in_the_order_the_parent_started_them() -> None:
    """The registry stores a spec with sorted keys; the parent keeps its parameter order, so a pass
    reading the recorded spec derives the same grid (a different order numbers the trials differently)."""
    from shared.registry import RunRecord
    from shared.sweep import parameters_digest
    from shared.sweep_runs import in_trial_order, same_trials

    spec = parse_run_spec(spec_with({"sampling": "grid"}), CTX)  # lr before batch_size
    started = generate_trials(spec.sweep)
    recorded = parse_run_spec(json.loads(json.dumps(spec.to_json_dict(), sort_keys=True)), CTX)
    assert [t.parameters for t in generate_trials(recorded.sweep)] != [t.parameters for t in started]
    info = {
        "role": "parent",
        "digest": parameters_digest(started),
        "parameter_order": list(spec.sweep.parameters),
    }
    parent = RunRecord(run_id="p", dataset="d", state="running", sweep=info)
    assert not same_trials(parent, recorded)
    again = in_trial_order(parent, recorded)
    assert same_trials(parent, again)
    assert [t.parameters for t in generate_trials(again.sweep)] == [t.parameters for t in started]
    # a parent recorded before the order was kept: the recorded spec is not taken for its trials
    assert not same_trials(
        RunRecord(run_id="p", dataset="d", state="running", sweep={"role": "parent"}), again
    )
