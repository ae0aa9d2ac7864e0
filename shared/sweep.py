"""Hyperparameter sweeps: the run spec's `sweep` section, trial generation and early termination.

Pure logic, no I/O: the same spec (and seed) always gives the same trials in the same order, so a
replayed trigger or monitor pass derives the same trial ids and can never start a trial twice (the
registry's compare-and-swap makes the start itself happen once).

A trial receives its parameters as Azure ML sweep jobs do: substituted wherever
`${{search_space.<name>}}` appears in `arguments` or `command_line`, and as environment variables
`SWEEP_<NAME>` (the name upper-cased).

Early termination reads the series of the primary metric the trials print (shared.metrics points
`[x, value, time]`, x the epoch/step):

- `median_stopping`: from step `delay_evaluation` on, every `evaluation_interval` steps, stop a trial
  whose best value so far is worse than the median of the other trials' best-so-far at that step
  (Azure ML's MedianStoppingPolicy). Others count only when they reached that step.
- `truncation`: at those steps, stop a trial ranked in the worst `truncation_percentage` percent of
  the trials that reached the step (Azure ML's TruncationSelectionPolicy; needs at least 2 trials).
- `bandit`: at those steps, stop a trial whose best so far is worse than the best trial's by more
  than `slack_factor` (ratio) or `slack_amount` (absolute) (Azure ML's BanditPolicy).
- `none`: no trial is stopped early.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:  # annotations only: shared.runspec imports this module
    from shared.runspec import ClusterSpec, RunSpec

__all__ = [
    "MAX_TRIALS",
    "PLACEHOLDER",
    "SweepSpec",
    "Trial",
    "best_trial",
    "generate_trials",
    "placeholders",
    "sized_for_trials",
    "substitute",
    "sweep_cluster",
    "sweep_environment",
    "trial_id",
    "trial_spec",
    "trials_to_stop",
]

MAX_TRIALS = 100  # trials per sweep: each is a run record and a job
MAX_CONCURRENT_TRIALS = 20
MAX_VALUES = 100  # values of one discrete parameter
PLACEHOLDER = re.compile(r"\$\{\{\s*search_space\.([A-Za-z0-9_]*)\s*\}\}")
_PARAM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


class _SweepStrict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


Number = Annotated[StrictInt | StrictFloat, Field(allow_inf_nan=False)]


class Choice(_SweepStrict):
    """A discrete parameter: one of `values` (grid or random)."""

    values: Annotated[list[Any], Field(min_length=1, max_length=MAX_VALUES)]

    @field_validator("values")
    @classmethod
    def _plain_values(cls, values: list[Any]) -> list[Any]:
        for index, value in enumerate(values):
            if not isinstance(value, int | float | str):  # bool is an int
                raise ValueError(f"value {index} must be a number, a string or a boolean")
            if isinstance(value, str) and not 1 <= len(value) <= 256:
                raise ValueError(f"value {index} must be 1-256 characters")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"value {index} must be a finite number")
            if isinstance(value, str) and not re.match(r"^[A-Za-z0-9_.:,+@%=/-]+$", value):
                raise ValueError(
                    f"value {index} ({value!r}) may contain only letters, digits and _ . : , + @ % = / -"
                )
        if len({repr(v) for v in values}) != len(values):
            raise ValueError("values must be distinct")
        return values


class Uniform(_SweepStrict):
    """A float drawn uniformly from [min_value, max_value] (random sampling only)."""

    uniform: Annotated[list[Number], Field(min_length=2, max_length=2)]

    @field_validator("uniform")
    @classmethod
    def _ordered(cls, bounds: list[float]) -> list[float]:
        if not bounds[0] < bounds[1]:
            raise ValueError("expected [min_value, max_value] with min_value < max_value")
        return bounds


class LogUniform(_SweepStrict):
    """exp(uniform(min, max)) as in Azure ML: `[-9.2, -2.3]` spans about 1e-4..1e-1."""

    loguniform: Annotated[list[Number], Field(min_length=2, max_length=2)]

    @field_validator("loguniform")
    @classmethod
    def _ordered(cls, bounds: list[float]) -> list[float]:
        if not bounds[0] < bounds[1]:
            raise ValueError("expected [min_exponent, max_exponent] with min < max (natural log)")
        if bounds[1] > 700:
            raise ValueError("max exponent must be at most 700 (exp overflows past that)")
        return bounds


class QUniform(_SweepStrict):
    """round(uniform(min, max) / q) * q: a float on a grid of step q."""

    quniform: Annotated[list[Number], Field(min_length=3, max_length=3)]

    @field_validator("quniform")
    @classmethod
    def _ordered(cls, bounds: list[float]) -> list[float]:
        if not bounds[0] < bounds[1]:
            raise ValueError("expected [min_value, max_value, q] with min_value < max_value")
        if not bounds[2] > 0:
            raise ValueError("q (the step) must be positive")
        return bounds


class IntegerRange(_SweepStrict):
    """An integer in [min_value, max_value] inclusive (grid or random)."""

    integer: Annotated[list[StrictInt], Field(min_length=2, max_length=2)]

    @field_validator("integer")
    @classmethod
    def _ordered(cls, bounds: list[int]) -> list[int]:
        if not bounds[0] <= bounds[1]:
            raise ValueError("expected [min_value, max_value] with min_value <= max_value")
        if bounds[1] - bounds[0] >= 1_000_000:
            raise ValueError("the range may hold at most 1,000,000 integers")
        return bounds


Parameter = Choice | Uniform | LogUniform | QUniform | IntegerRange


def _parameter(value: Any) -> Parameter:
    """One parameter from its JSON object; the key present picks the kind (errors name it)."""
    kinds: dict[str, type[_SweepStrict]] = {
        "values": Choice,
        "uniform": Uniform,
        "loguniform": LogUniform,
        "quniform": QUniform,
        "integer": IntegerRange,
    }
    if isinstance(value, _SweepStrict):
        return value  # type: ignore[return-value]
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in kinds:
        raise ValueError(
            "expected one of {'values': [...]}, {'uniform': [min, max]}, {'loguniform': [min, max]}, "
            "{'quniform': [min, max, q]}, {'integer': [min, max]}"
        )
    return kinds[next(iter(value))].model_validate(value)  # type: ignore[return-value]


class MedianStopping(_SweepStrict):
    policy: Literal["median_stopping"]
    delay_evaluation: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 1
    evaluation_interval: Annotated[StrictInt, Field(ge=1, le=1_000_000)] = 1


class Truncation(_SweepStrict):
    policy: Literal["truncation"]
    truncation_percentage: Annotated[StrictInt, Field(ge=1, le=99)]
    delay_evaluation: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 1
    evaluation_interval: Annotated[StrictInt, Field(ge=1, le=1_000_000)] = 1


class Bandit(_SweepStrict):
    policy: Literal["bandit"]
    slack_factor: Annotated[Number, Field(gt=0, le=1000)] | None = None
    slack_amount: Annotated[Number, Field(gt=0)] | None = None
    delay_evaluation: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 1
    evaluation_interval: Annotated[StrictInt, Field(ge=1, le=1_000_000)] = 1

    @model_validator(mode="after")
    def _one_slack(self) -> Bandit:
        if (self.slack_factor is None) == (self.slack_amount is None):
            raise ValueError("give exactly one of slack_factor and slack_amount")
        return self


class NoTermination(_SweepStrict):
    policy: Literal["none"]


def _policy_tag(value: Any) -> str | None:
    policy = value.get("policy") if isinstance(value, dict) else getattr(value, "policy", None)
    return f"<{policy}>" if isinstance(policy, str) else None


# Tags in <...> so error paths leave them out (shared.runspec.validation_errors drops them).
EarlyTermination = Annotated[
    Annotated[MedianStopping, Tag("<median_stopping>")]
    | Annotated[Truncation, Tag("<truncation>")]
    | Annotated[Bandit, Tag("<bandit>")]
    | Annotated[NoTermination, Tag("<none>")],
    Discriminator(
        _policy_tag,
        custom_error_type="invalid_policy",
        custom_error_message="expected policy 'median_stopping', 'truncation', 'bandit' or 'none'",
    ),
]


def _bounds(count: int, description: str) -> dict[str, Any]:
    return {
        "type": "array",
        "items": {"type": "number"},
        "minItems": count,
        "maxItems": count,
        "description": description,
    }


_PARAMETERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "minProperties": 1,
    "maxProperties": 16,
    "description": "name -> one kind of parameter; a trial sees ${{search_space.<name>}} and SWEEP_<NAME>",
    "additionalProperties": {
        "oneOf": [
            {
                "type": "object",
                "properties": {"values": {"type": "array", "minItems": 1}},
                "required": ["values"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"uniform": _bounds(2, "[min, max]")},
                "required": ["uniform"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"loguniform": _bounds(2, "[min, max] natural-log exponents")},
                "required": ["loguniform"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"quniform": _bounds(3, "[min, max, q]")},
                "required": ["quniform"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {
                    "integer": {**_bounds(2, "[min, max] inclusive"), "items": {"type": "integer"}}
                },
                "required": ["integer"],
                "additionalProperties": False,
            },
        ]
    },
}


class SweepSpec(_SweepStrict):
    """The run spec's `sweep` section: a parent run of trial runs over `parameters`."""

    parameters: Annotated[
        dict[str, Any], Field(min_length=1, max_length=16), WithJsonSchema(_PARAMETERS_SCHEMA)
    ]
    sampling: Literal["grid", "random"] = "random"
    seed: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] = 0
    max_trials: Annotated[StrictInt, Field(ge=1, le=MAX_TRIALS)]
    max_concurrent_trials: Annotated[StrictInt, Field(ge=1, le=MAX_CONCURRENT_TRIALS)] = 1
    primary_metric: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    goal: Literal["minimize", "maximize"]
    early_termination: EarlyTermination = Field(default_factory=lambda: NoTermination(policy="none"))

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        from shared.runspec import SpecFieldError

        out: dict[str, Parameter] = {}
        upper: dict[str, str] = {}
        for name, parameter in value.items():
            if not isinstance(name, str) or not _PARAM_NAME.match(name):
                raise SpecFieldError(
                    str(name), "a parameter name is 1-32 letters, digits and '_', starting with a letter"
                )
            if name.upper() in upper:
                raise SpecFieldError(name, f"clashes with {upper[name.upper()]!r} as SWEEP_{name.upper()}")
            upper[name.upper()] = name
            try:
                out[name] = _parameter(parameter)
            except ValidationError as exc:
                error = exc.errors(include_url=False, include_input=False)[0]
                inner = ".".join(str(part) for part in error["loc"])
                message = str(error["msg"]).removeprefix("Value error, ")
                if error["type"] == "extra_forbidden":
                    message = "unknown field"
                raise SpecFieldError(f"{name}.{inner}" if inner else name, message) from None
            except ValueError as exc:
                raise SpecFieldError(name, str(exc)) from None
        return out

    @field_validator("primary_metric")
    @classmethod
    def _metric_name(cls, value: str) -> str:
        if value in ("epoch", "step"):
            raise ValueError("epoch and step are the x axis, not a metric")
        return value

    @model_validator(mode="after")
    def _grid_needs_discrete(self) -> SweepSpec:
        from shared.runspec import SpecFieldError

        if self.sampling == "grid":
            for name, parameter in self.parameters.items():
                if not isinstance(parameter, Choice | IntegerRange):
                    raise SpecFieldError(
                        f"parameters.{name}",
                        "grid sampling needs discrete parameters ('values' or 'integer'); use random",
                    )
        if self.max_concurrent_trials > self.max_trials:
            raise SpecFieldError("max_concurrent_trials", "must not exceed max_trials")
        return self

    def grid_size(self) -> int:
        size = 1
        for parameter in self.parameters.values():
            size *= len(_grid_values(parameter))
        return size


# --- trials ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One trial of a sweep: its index (0-based, stable) and its parameter values."""

    index: int
    parameters: dict[str, Any]


def _grid_values(parameter: Parameter) -> list[Any]:
    if isinstance(parameter, Choice):
        return list(parameter.values)
    if isinstance(parameter, IntegerRange):
        return list(range(parameter.integer[0], parameter.integer[1] + 1))
    raise ValueError("not a discrete parameter")


def _sample(parameter: Parameter, rng: random.Random) -> Any:
    if isinstance(parameter, Choice):
        return parameter.values[rng.randrange(len(parameter.values))]
    if isinstance(parameter, IntegerRange):
        return rng.randint(parameter.integer[0], parameter.integer[1])
    if isinstance(parameter, Uniform):
        return rng.uniform(*parameter.uniform)
    if isinstance(parameter, LogUniform):
        return math.exp(rng.uniform(*parameter.loguniform))
    assert isinstance(parameter, QUniform)
    low, high, q = parameter.quniform
    value = round(rng.uniform(low, high) / q) * q
    return int(value) if all(isinstance(b, int) for b in parameter.quniform) else value


def generate_trials(sweep: SweepSpec) -> list[Trial]:
    """The sweep's trials, deterministic from the spec and its seed.

    Grid: the cartesian product in parameter order (the first `max_trials` of it). Random: `max_trials`
    draws from `random.Random(seed)`, skipping repeats of an earlier draw while distinct ones remain
    (a small discrete space gives fewer trials than max_trials rather than duplicates)."""
    names = list(sweep.parameters)
    if sweep.sampling == "grid":
        product = itertools.product(*(_grid_values(sweep.parameters[n]) for n in names))
        combos = itertools.islice(product, sweep.max_trials)
        return [Trial(i, dict(zip(names, combo, strict=True))) for i, combo in enumerate(combos)]
    rng = random.Random(sweep.seed)
    discrete = all(isinstance(p, Choice | IntegerRange) for p in sweep.parameters.values())
    space = sweep.grid_size() if discrete else None
    trials: list[Trial] = []
    seen: set[str] = set()
    attempts = 0
    while len(trials) < sweep.max_trials and attempts < sweep.max_trials * 20:
        attempts += 1
        values = {name: _sample(sweep.parameters[name], rng) for name in names}
        key = repr(sorted(values.items()))
        if key in seen:
            if space is not None and len(seen) >= space:
                break
            continue
        seen.add(key)
        trials.append(Trial(len(trials), values))
    return trials


def trial_id(parent_id: str, index: int) -> str:
    """A trial's run id: derived from its parent's id and its index, so a replay finds the same run."""
    return f"{parent_id}-t{index:03d}"


def format_value(value: Any) -> str:
    """A parameter value as the command line and environment see it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float
    return str(value)


def placeholders(text: str | None) -> list[str]:
    """The parameter names `${{search_space.<name>}}` refers to in `text`, in order."""
    return [m.group(1) for m in PLACEHOLDER.finditer(text or "")]


def substitute(text: str | None, parameters: dict[str, Any]) -> str | None:
    """`text` with each `${{search_space.<name>}}` replaced by that parameter's value."""
    if text is None:
        return None
    return PLACEHOLDER.sub(lambda m: format_value(parameters[m.group(1)]), text)


def sweep_environment(parameters: dict[str, Any]) -> dict[str, str]:
    """The trial's SWEEP_<NAME> environment variables."""
    return {f"SWEEP_{name.upper()}": format_value(value) for name, value in parameters.items()}


def sweep_cluster(spec: RunSpec, max_nodes: int) -> ClusterSpec:
    """The cluster settings of a sweep's parent and trials: room for its concurrent trials.

    A sweep runs up to ``max_concurrent_trials`` trials (fewer when it has fewer) of ``node_count``
    nodes each at once, so its cluster gets that many nodes, at most ``max_nodes`` (the operator's
    MAX_NODES_PER_RUN): a manual scale's target and an auto scale's maximum are raised to it, and a
    spec that names no scale gets an auto scale from 0 to it (nodes follow the trials that are
    queued or running, on both backends, and none are held once they end). A cluster that already
    has the room is left as the spec says."""
    sweep = spec.sweep
    if sweep is None:
        return spec.cluster
    concurrent = min(sweep.max_concurrent_trials, len(generate_trials(sweep)))
    wanted = max(spec.node_count, min(max_nodes, concurrent * spec.node_count))
    cluster = spec.cluster
    if cluster.manual is not None:
        if cluster.manual.target_node_count >= wanted:
            return cluster
        return cluster.model_copy(
            update={"manual": cluster.manual.model_copy(update={"target_node_count": wanted})}
        )
    if cluster.auto_scale is not None:
        if cluster.auto_scale.maximum_node_count >= wanted:
            return cluster
        auto = cluster.auto_scale.model_copy(update={"maximum_node_count": wanted})
        return cluster.model_copy(update={"auto_scale": auto})
    if wanted <= spec.node_count:
        return cluster
    from shared.runspec import AutoScale

    return cluster.model_copy(
        update={"auto_scale": AutoScale(minimum_node_count=0, maximum_node_count=wanted)}
    )


def sized_for_trials(spec: RunSpec, max_nodes: int) -> RunSpec:
    """A sweep's spec with its cluster sized for its concurrent trials (``sweep_cluster``): what its
    parent ensures and, through ``trial_spec``, what each trial's job runs on, so they name one cluster."""
    return spec.model_copy(update={"cluster": sweep_cluster(spec, max_nodes)})


def trial_spec(spec: RunSpec, trial: Trial, *, max_nodes: int) -> RunSpec:
    """The RunSpec of one trial: the parent's spec without its sweep section, parameters substituted
    into `arguments`/`command_line` and set as SWEEP_<NAME> environment variables, on the sweep's
    cluster (``sweep_cluster``; ``max_nodes``: MAX_NODES_PER_RUN). No callback: the parent's fires
    once for the whole sweep."""
    return spec.model_copy(
        update={
            "sweep": None,
            "cluster": sweep_cluster(spec, max_nodes),
            "callback_url": None,
            "arguments": substitute(spec.arguments, trial.parameters),
            "command_line": substitute(spec.command_line, trial.parameters),
            "environment_variables": {**spec.environment_variables, **sweep_environment(trial.parameters)},
        }
    )


def parameters_digest(trials: list[Trial]) -> str:
    """A short digest of a trial set (recorded with the parent: a changed derivation is detectable)."""
    text = repr([(t.index, sorted(t.parameters.items())) for t in trials])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- early termination and the best trial -------------------------------------------------------------

Point = list[float]  # [x, value, time ms] as shared.metrics stores them


def _better(goal: str, a: float, b: float) -> bool:
    return a < b if goal == "minimize" else a > b


def _best_until(points: list[Point], step: float, goal: str) -> float | None:
    """The best value of `points` with x <= step (None if the series has none there)."""
    values = [p[1] for p in points if p[0] <= step]
    if not values:
        return None
    return min(values) if goal == "minimize" else max(values)


def _evaluation_steps(policy: Any, last_step: float) -> list[float]:
    delay = max(policy.delay_evaluation, 1)
    if last_step < delay:
        return []
    count = int((last_step - delay) // policy.evaluation_interval) + 1
    return [delay + i * policy.evaluation_interval for i in range(count)]


def trials_to_stop(
    sweep: SweepSpec, running: dict[str, list[Point]], others: dict[str, list[Point]]
) -> dict[str, str]:
    """Which running trials the policy stops: `{trial id: why}`.

    `running` maps each running trial's id to its primary-metric series; `others` the same for trials
    that already ended (succeeded, failed or stopped). A trial is judged at each evaluation step it
    reached (x >= step), against the trials that also reached that step."""
    policy = sweep.early_termination
    if isinstance(policy, NoTermination):
        return {}
    goal = sweep.goal
    every = {**others, **running}
    stops: dict[str, str] = {}
    for trial, points in running.items():
        if not points:
            continue
        for step in _evaluation_steps(policy, max(p[0] for p in points)):
            peers = {
                other: _best_until(series, step, goal)
                for other, series in every.items()
                if series and max(p[0] for p in series) >= step
            }
            mine = peers.pop(trial, None)
            values = [v for v in peers.values() if v is not None]
            if mine is None or not values:
                continue
            reason = _judge(policy, goal, mine, values)
            if reason:
                stops[trial] = f"{reason} at step {step:g}"
                break
    return stops


def _judge(policy: Any, goal: str, mine: float, others: list[float]) -> str | None:
    if isinstance(policy, MedianStopping):
        median = statistics.median(others)
        if _better(goal, median, mine):
            return f"best {sweep_metric_text(mine)} worse than the median {sweep_metric_text(median)}"
        return None
    if isinstance(policy, Truncation):
        everyone = sorted([*others, mine], reverse=goal == "maximize")  # best first
        cut = math.floor(len(everyone) * policy.truncation_percentage / 100)
        if cut and mine in everyone[len(everyone) - cut :] and _better(goal, everyone[0], mine):
            return f"best {sweep_metric_text(mine)} in the worst {policy.truncation_percentage}%"
        return None
    assert isinstance(policy, Bandit)
    leader = min(others) if goal == "minimize" else max(others)
    if not _better(goal, leader, mine):
        return None
    if policy.slack_factor is not None:
        bound = (
            leader * (1 + policy.slack_factor) if goal == "minimize" else leader / (1 + policy.slack_factor)
        )
    else:
        assert policy.slack_amount is not None
        bound = leader + policy.slack_amount if goal == "minimize" else leader - policy.slack_amount
    if _better(goal, bound, mine):
        return f"best {sweep_metric_text(mine)} outside the slack of the leader {sweep_metric_text(leader)}"
    return None


def sweep_metric_text(value: float) -> str:
    return f"{value:.6g}"


def final_value(points: list[Point]) -> float | None:
    """A trial's metric: the value of its last point (its final epoch)."""
    return points[-1][1] if points else None


def best_trial(sweep: SweepSpec, finals: dict[str, float | None]) -> str | None:
    """The trial with the best final primary metric (ties: the first in id order), or None."""
    scored = sorted((tid, v) for tid, v in finals.items() if v is not None and math.isfinite(v))
    best: tuple[str, float] | None = None
    for tid, value in scored:
        if best is None or _better(sweep.goal, value, best[1]):
            best = (tid, value)
    return best[0] if best else None
