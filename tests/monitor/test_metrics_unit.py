"""The metrics convention and its bounded, incremental parsing (shared.metrics): pure logic."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import metrics
from shared.metrics import MetricsState, downsample, parse_record, record_values

T = 1_765_000_000_000


def lines(*records: object) -> bytes:
    return b"".join((json.dumps(r) if not isinstance(r, str) else r).encode() + b"\n" for r in records)


def test_numeric_fields_are_values_and_epoch_is_x() -> None:
    state = MetricsState()
    data = lines({"epoch": 1, "loss": 0.5, "accuracy": 0.8, "note": "hi", "ok": True, "nested": {"a": 1}})
    assert state.feed(data, now_ms=T) == 1
    assert state.series == {"loss": [[1, 0.5, T]], "accuracy": [[1, 0.8, T]]}
    assert state.offset == len(data)


def test_step_is_x_when_there_is_no_epoch_and_order_otherwise() -> None:
    assert record_values({"step": 7, "loss": 1}) == (7, {"loss": 1})
    assert record_values({"epoch": 2, "step": 7, "loss": 1}) == (2, {"loss": 1})
    state = MetricsState()
    state.feed(lines({"loss": 3}, {"loss": 2}, {"loss": 1}), now_ms=T)
    assert [p[0] for p in state.series["loss"]] == [1, 2, 3]


def test_other_lines_and_malformed_json_are_ignored() -> None:
    state = MetricsState()
    data = lines(
        "Epoch 1/2: loss 1.44",
        '{"loss": 0.5',  # malformed
        "[1, 2, 3]",  # JSON, not an object
        '{"loss": NaN}',  # not finite
        '{"loss": "0.5"}',  # a string
        "\xff\xfe not utf-8",
        "{" * 5000,  # deep nesting
        {"epoch": 1, "loss": 0.25},
    )
    assert state.feed(data, now_ms=T) == 1
    assert state.series == {"loss": [[1, 0.25, T]]}
    assert parse_record(b"") is None and parse_record(b"   ") is None


def test_a_line_split_across_reads_is_parsed_once_whole() -> None:
    data = lines({"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25})
    cut = data.index(b"0.25") + 2  # inside the second record
    state = MetricsState()
    assert state.feed(data[:cut], now_ms=T) == 1
    assert state.offset == data.index(b"\n") + 1  # the unfinished line is read again next time
    assert state.feed(data[state.offset :], now_ms=T + 1) == 1
    assert state.series["loss"] == [[1, 0.5, T], [2, 0.25, T + 1]]
    assert state.offset == len(data)
    assert state.feed(b"", now_ms=T + 2) == 0  # nothing new


def test_every_split_gives_the_same_series() -> None:
    data = lines(*({"epoch": i, "loss": 1 / i, "acc": i / 10} for i in range(1, 8)), "text line")
    whole = MetricsState()
    whole.feed(data, now_ms=T)
    for size in (1, 3, 17, 64):
        state = MetricsState()
        while state.offset < len(data):
            before = state.offset
            state.feed(data[state.offset : state.offset + size], now_ms=T)
            if state.offset == before:  # the line is longer than this read: read more next time
                state.feed(data[state.offset : state.offset + 4 * size + 200], now_ms=T)
        assert state.series == whole.series


def test_the_final_read_takes_an_unterminated_last_line() -> None:
    state = MetricsState()
    data = b'{"epoch": 1, "loss": 0.5}'
    assert state.feed(data, now_ms=T) == 0 and state.offset == 0
    assert state.feed(data, now_ms=T, final=True) == 1 and state.offset == len(data)


def test_an_overlong_line_is_skipped_without_being_held() -> None:
    state = MetricsState()
    huge = b'{"loss": 1, "pad": "' + b"x" * (metrics.MAX_LINE_BYTES * 3)
    first = huge[: metrics.MAX_LINE_BYTES + 10]
    assert state.feed(first, now_ms=T) == 0
    assert state.skipping and state.offset == len(first)
    rest = huge[len(first) :] + b'"}\n' + lines({"epoch": 1, "loss": 0.5})
    assert state.feed(rest, now_ms=T) == 1
    assert not state.skipping and state.series == {"loss": [[1, 0.5, T]]}


def test_series_are_bounded_and_keep_first_and_last_points() -> None:
    state = MetricsState()
    for i in range(1, 2001):
        state.feed(lines({"step": i, "loss": 1 / i}), now_ms=T + i)
    points = state.series["loss"]
    assert len(points) <= metrics.MAX_POINTS
    assert points[0][0] == 1 and points[-1][0] == 2000
    xs = [p[0] for p in points]
    assert xs == sorted(xs)
    recent = metrics.MAX_POINTS // 4
    assert xs[-recent:] == list(range(2001 - recent, 2001))  # recent points stay dense


def test_metric_names_are_bounded() -> None:
    state = MetricsState()
    record = {f"m{i}": i for i in range(metrics.MAX_SERIES + 5)} | {"x" * 65: 1}
    state.feed(lines(record), now_ms=T)
    assert len(state.series) == metrics.MAX_SERIES
    assert "x" * 65 not in state.series


def test_huge_numbers_stay_short() -> None:
    assert record_values({"a": 10**30, "b": 10**400})[1] == {"a": 1e30}


@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=0, max_size=600), st.integers(4, 300))
def test_downsample_bounds_and_keeps_ends(xs: list[int], limit: int) -> None:
    points = [[i, x, 0] for i, x in enumerate(xs)]
    out = downsample(points, limit)
    assert len(out) <= limit
    if points:
        assert out[0] == points[0] and out[-1] == points[-1]
        assert all(p in points for p in out)


def test_state_round_trips_through_json() -> None:
    state = MetricsState()
    state.feed(lines({"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}), now_ms=T)
    again = MetricsState.from_json(state.to_json())
    assert again == state
    assert MetricsState.from_json(None) == MetricsState()
    assert state.latest() == {"loss": {"x": 2, "value": 0.25, "time": "2025-12-06T05:46:40.000Z"}}


def test_worst_case_state_fits_a_table_entity() -> None:
    state = MetricsState()
    for i in range(metrics.MAX_POINTS * 2):
        record = {f"metric_{k:02d}": -1.2345678901234567e-300 for k in range(metrics.MAX_SERIES)}
        state.feed(lines({"step": 1.2345678901234567e300 + i, **record}), now_ms=T * 10)
    assert len(state.to_json()) <= metrics.MAX_STATE_CHARS


@pytest.mark.parametrize("limit", [0, 3])
def test_downsample_refuses_tiny_limits(limit: int) -> None:
    with pytest.raises(ValueError):
        downsample([], limit)
