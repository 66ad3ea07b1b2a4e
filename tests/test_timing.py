"""The breakdown's sections: own time per path of nested names, nothing outside a breakdown."""

import threading
import time

import pytest

from vb_sweep.timing import collect_breakdown, section


def test_nested_sections_count_their_own_time_and_add_up_to_the_outer_one():
    with collect_breakdown() as breakdown:
        started = time.perf_counter()
        with section("epoch"):
            time.sleep(0.02)
            for _ in range(2):
                with section("forward"):
                    time.sleep(0.03)
        wall = time.perf_counter() - started
    assert breakdown.calls == {("epoch",): 1, ("epoch", "forward"): 2}
    assert breakdown.seconds[("epoch", "forward")] == pytest.approx(0.06, abs=0.02)
    assert breakdown.seconds[("epoch",)] == pytest.approx(0.02, abs=0.02)
    assert sum(breakdown.seconds.values()) == pytest.approx(wall, abs=0.005)


def test_an_exception_closes_its_section_and_other_threads_are_not_timed():
    with collect_breakdown() as breakdown:
        with pytest.raises(ValueError):
            with section("outer"):
                raise ValueError("stop")
        with section("after"):
            worker = threading.Thread(target=lambda: section("elsewhere").__enter__())
            worker.start()
            worker.join()
    assert set(breakdown.calls) == {("outer",), ("after",)}
    with section("no breakdown"):  # a no-op outside a breakdown
        pass
    with collect_breakdown(), pytest.raises(RuntimeError, match="already"):
        with collect_breakdown():
            pass
