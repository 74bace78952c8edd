"""The restart budget refills: max_restarts within any window, on an injected clock (exact)."""

from helix_jax.runtime.restarts import RestartBudget


def test_a_crash_loop_stops_and_the_budget_refills_after_the_window() -> None:
    now = [0.0]
    budget = RestartBudget(2, window_s=600.0, clock=lambda: now[0])
    assert budget.take("a")
    now[0] = 100.0
    assert budget.take("a")
    assert not budget.take("a") and budget.left("a") == 0  # the third crash in a row: stays down
    assert budget.take("b")  # per node
    now[0] = 599.9
    assert not budget.take("a")
    now[0] = 600.0  # the first restart has left the window
    assert budget.left("a") == 1 and budget.take("a") and not budget.take("a")
    assert budget.total == {"a": 3, "b": 1}


def test_zero_restarts_never_restarts() -> None:
    budget = RestartBudget(0, clock=lambda: 0.0)
    assert not budget.take("a") and budget.left("a") == 0
