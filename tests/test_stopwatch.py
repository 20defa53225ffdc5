from __future__ import annotations

import contextvars
import time
from pathlib import Path

import pytest

from monai_cbo import stopwatch
from monai_cbo.stopwatch import Recorder, active, count, mark, process_start, recording, stage


def test_without_a_recorder_every_call_is_a_shared_no_op():
    assert active() is None
    first, second = stage("encoder"), stage("decoder.box")
    assert first is second  # one shared do-nothing context, nothing allocated per call
    with first:
        count("slices_encoded", 3)
        mark("mask_written")
    assert active() is None


def test_an_active_recorder_adds_up_seconds_calls_and_counters_per_name():
    with recording() as rec:
        assert active() is rec
        for _ in range(3):
            with stage("encoder"):
                time.sleep(0.01)
            count("slices_encoded")
        with stage("write"):
            pass
        count("slices_in_volume", 12)
        mark("mask_written")
    assert active() is None
    figures = rec.as_dict()
    assert list(figures["stages"]) == ["encoder", "write"]
    assert figures["stages"]["encoder"]["calls"] == 3 and figures["stages"]["encoder"]["seconds"] >= 0.03
    assert figures["counters"] == {"slices_encoded": 3, "slices_in_volume": 12}
    assert abs(rec.marks["mask_written"] - time.time()) < 5
    rec.add("startup", 1.5)
    assert rec.total >= 1.53


def test_a_recorder_is_held_per_context():
    outer = Recorder()

    def elsewhere() -> Recorder | None:
        with stage("encoder"):
            count("slices_encoded")
        return active()

    with recording(outer):
        assert contextvars.Context().run(elsewhere) is None  # a fresh context records nothing
        inner = Recorder()
        with recording(inner):
            with stage("decoder.box"):
                pass
        assert active() is outer
        with stage("encoder"):
            pass
    assert list(inner.seconds) == ["decoder.box"] and list(outer.seconds) == ["encoder"]
    assert outer.counters == {}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the process start comes from /proc (Linux)")
def test_the_process_start_is_before_the_command_lines_first_import():
    started, method = process_start()
    assert started is not None and method.startswith("/proc")
    assert started <= stopwatch.IMPORTED_AT + 0.05 <= time.time() + 0.05


def test_a_spawn_time_from_the_environment_is_used_only_where_it_is_a_past_finite_time(monkeypatch):
    real_open = open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise OSError("no /proc here")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
    monkeypatch.setenv(stopwatch.SPAWNED_AT_ENV, repr(time.time() - 2.0))
    started, method = process_start()
    assert started is not None and started <= time.time() and method.startswith(stopwatch.SPAWNED_AT_ENV)
    for bad in ("nan", "inf", "-inf", "not a time", repr(time.time() + 3600)):
        monkeypatch.setenv(stopwatch.SPAWNED_AT_ENV, bad)
        assert process_start() == (None, "unknown"), bad
