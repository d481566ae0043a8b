"""The economy against numbers worked by hand from seed 003 §5.1.

C_rent  = min(max_rent, log(1 + sum_occupied(BaseSlotRent + alpha_i * P_seed_i) / P_host))
BaseSlotRent = 0.0039 * P_host per occupied slot
R_total = R_task - W_rent * C_rent - W_churn * C_churn - intervention costs
"""

from __future__ import annotations

import math

import pytest
import torch

from esper_lab.config import EconomyConfig
from esper_lab.contracts import Op
from esper_lab.economy import BASE_SLOT_RENT, Ledger, rent_cost, reward

MAX_RENT = EconomyConfig().max_rent


def rent(rows: list[tuple[bool, float, float]], host_params: int) -> float:
    """rent_cost from (occupied, alpha, seed params) rows."""
    occupied = torch.tensor([r[0] for r in rows])
    alpha = torch.tensor([r[1] for r in rows])
    seed_params = torch.tensor([r[2] for r in rows])
    return rent_cost(alpha, seed_params, occupied, host_params, MAX_RENT)


# --- rent ---------------------------------------------------------------------------------------
def test_base_slot_rent_is_the_seed_constant():
    assert BASE_SLOT_RENT == 0.0039  # seed 003 §5.1


def test_rent_by_hand_two_occupied_one_free():
    # P_host = 1000; BaseSlotRent = 0.0039 * 1000 = 3.9 per occupied slot.
    #   slot 0: occupied, alpha 0.5, P_seed 200 -> 3.9 + 0.5 * 200 = 103.9
    #   slot 1: occupied, alpha 1.0, P_seed 100 -> 3.9 + 1.0 * 100 = 103.9
    #   slot 2: unoccupied (alpha 0.7, 500 params left in the row) -> pays nothing
    #   paid = 207.8; C_rent = log(1 + 207.8 / 1000) = log(1.2078) ~ 0.188801
    got = rent([(True, 0.5, 200), (True, 1.0, 100), (False, 0.7, 500)], host_params=1000)
    assert got == pytest.approx(math.log(1.2078), rel=1e-9)
    assert got == pytest.approx(0.188801, abs=1e-6)


def test_rent_by_hand_asymmetric_slots():
    # P_host = 4000; base 0.0039 * 4000 = 15.6 per occupied slot.
    #   slot 0: alpha 0.25, P_seed 800  -> 15.6 + 200 = 215.6
    #   slot 1: alpha 0.0,  P_seed 3000 -> 15.6 +   0 =  15.6
    #   paid = 231.2; C_rent = log(1 + 231.2 / 4000) = log(1.0578)
    got = rent([(True, 0.25, 800), (True, 0.0, 3000)], host_params=4000)
    assert got == pytest.approx(math.log(1.0578), rel=1e-9)


def test_rent_is_zero_with_no_occupied_slot():
    assert rent([(False, 1.0, 5000), (False, 0.0, 0)], host_params=1000) == 0.0


def test_alpha_zero_still_pays_the_base_slot_rent():
    # One occupied slot at alpha 0 (germinated, not blended yet) holding 5000 params:
    # only the base rent 0.0039 * P_host counts -> log(1 + 0.0039).
    got = rent([(True, 0.0, 5000)], host_params=1000)
    assert got == pytest.approx(math.log(1.0039), rel=1e-9)
    assert got > 0
    # Two such slots pay twice the base: log(1 + 0.0078).
    assert rent([(True, 0.0, 5000)] * 2, host_params=1000) == pytest.approx(math.log(1.0078), rel=1e-9)


def test_rent_is_capped_at_max_rent():
    # alpha 1 * 10 * P_host -> log(1 + 0.0039 + 10) ~ 2.398, far above the cap.
    assert math.log(1 + 0.0039 + 10) > MAX_RENT
    assert rent([(True, 1.0, 10_000)], host_params=1000) == MAX_RENT
    # Just under the cap the formula is untouched: paid/P_host = e^MAX_RENT - 1 - 0.0039 - 0.01.
    below = math.exp(MAX_RENT) - 1 - 0.0039 - 0.01
    got = rent([(True, 1.0, below * 1000)], host_params=1000)
    assert got == pytest.approx(math.log(1 + 0.0039 + below), rel=1e-6)
    assert got < MAX_RENT


def test_rent_grows_with_alpha_and_params():
    low = rent([(True, 0.2, 300)], host_params=1000)
    assert rent([(True, 0.8, 300)], host_params=1000) > low
    assert rent([(True, 0.2, 900)], host_params=1000) > low


# --- reward -------------------------------------------------------------------------------------
WEIGHTS = EconomyConfig(task_scale=10.0, rent_weight=2.0, churn_weight=3.0, internal_op_cost=0.25)


def test_reward_combines_parts_with_the_weights():
    # task = 10 * 0.5 = 5; rent 2 * 0.1 = 0.2; churn 3 * 0.2 = 0.6; GROW executed -> 0.25.
    # total = 5 - 0.2 - 0.6 - 0.25 = 3.95
    parts = reward(WEIGHTS, signal=0.5, rent=0.1, churn=0.2, op=Op.GROW_INTERNAL, vetoed=False)
    assert parts.task == pytest.approx(5.0)
    assert parts.rent == 0.1 and parts.churn == 0.2  # unweighted in the parts
    assert parts.intervention == 0.25
    assert parts.total == pytest.approx(3.95, abs=1e-12)


def test_reward_negative_gain_and_default_weights():
    # Defaults: task_scale 100, rent 0.05, churn 0.5. gain -0.02 -> task -2;
    # total = -2 - 0.05 * 0.3 - 0.5 * 0.4 - 0 = -2.215
    parts = reward(EconomyConfig(), signal=-0.02, rent=0.3, churn=0.4, op=Op.WAIT, vetoed=False)
    assert parts.task == pytest.approx(-2.0)
    assert parts.total == pytest.approx(-2.215, abs=1e-12)


@pytest.mark.parametrize(
    ("op", "vetoed", "cost"),
    [
        (Op.GROW_INTERNAL, False, 0.25),
        (Op.SHRINK_INTERNAL, False, 0.25),
        (Op.GROW_INTERNAL, True, 0.0),  # vetoed: nothing happened, nothing to pay
        (Op.SHRINK_INTERNAL, True, 0.0),
        (Op.WAIT, False, 0.0),
        (Op.GERMINATE, False, 0.0),  # structural edits pay through churn, not here
        (Op.PRUNE, False, 0.0),
        (Op.FOCUS_NEXT, False, 0.0),
    ],
)
def test_intervention_cost_only_for_executed_grow_and_shrink(op, vetoed, cost):
    # task 10 * 0.1 = 1; rent 2 * 0.05 = 0.1; churn 3 * 0.1 = 0.3 -> 0.6 - cost
    parts = reward(WEIGHTS, signal=0.1, rent=0.05, churn=0.1, op=op, vetoed=vetoed)
    assert parts.intervention == cost
    assert parts.total == pytest.approx(0.6 - cost, abs=1e-12)


# --- ledger -------------------------------------------------------------------------------------
ALPHA0 = torch.zeros(2)


def ledger(window: int = 4) -> Ledger:
    return Ledger(EconomyConfig(churn_window=window))


def record(book: Ledger, *ops: Op, vetoed: bool = False, alpha: torch.Tensor = ALPHA0) -> None:
    for op in ops:
        book.record(op, vetoed, alpha)


def test_single_edit_in_the_window_is_free():
    book = ledger()
    record(book, Op.GERMINATE, Op.WAIT, Op.WAIT)
    assert book.churn_cost() == 0.0


def test_churn_grows_with_denser_edits():
    # window 4: changes c in the window cost max(0, c - 1) / 4
    costs = []
    for n in range(1, 5):
        book = ledger()
        record(book, *[Op.GERMINATE] * n, *[Op.WAIT] * (4 - n))
        costs.append(book.churn_cost())
    assert costs == [0.0, 0.25, 0.5, 0.75]


def test_vetoed_and_non_edit_ops_are_not_edits():
    book = ledger()
    record(book, Op.GERMINATE, Op.GERMINATE, vetoed=True)
    record(book, Op.ADVANCE, Op.WAIT)  # ADVANCE follows the lifecycle: not churn
    assert book.churn_cost() == 0.0
    record(book, Op.PRUNE, Op.SET_ALPHA_TARGET)
    assert book.churn_cost() == pytest.approx(0.25)


def test_edits_fall_out_of_the_window():
    book = ledger(window=4)
    record(book, Op.GERMINATE, Op.PRUNE)  # two edits: 1/4
    assert book.churn_cost() == pytest.approx(0.25)
    record(book, Op.WAIT, Op.WAIT)  # window now [edit, edit, wait, wait]
    assert book.churn_cost() == pytest.approx(0.25)
    record(book, Op.WAIT)  # the first edit leaves after 4 steps
    assert book.churn_cost() == 0.0
    record(book, Op.WAIT)
    assert sum(book.edits) == 0


def test_edits_level_changes_and_flips_add_up():
    book = ledger(window=10)
    record(book, Op.GERMINATE, Op.GROW_INTERNAL, Op.SHRINK_INTERNAL)  # 3 changes -> 2/10
    assert book.churn_cost() == pytest.approx(0.2)


def test_alpha_direction_flips_are_counted():
    book = ledger(window=10)
    for a in (0.0, 0.5, 0.3, 0.3, 0.6):  # up, down (flip), still, up (flip vs the last move)
        book.record(Op.WAIT, False, torch.tensor([a, 0.0]))
    assert list(book.flips) == [0, 0, 1, 0, 1]
    assert book.churn_cost() == pytest.approx((2 - 1) / 10)


def test_a_monotone_alpha_ramp_costs_nothing():
    book = ledger(window=10)
    for a in (0.0, 0.2, 0.4, 0.4, 0.7, 1.0):
        book.record(Op.WAIT, False, torch.tensor([a, a / 2]))
    assert sum(book.flips) == 0
    assert book.churn_cost() == 0.0


def test_flips_are_counted_per_slot():
    book = ledger(window=10)
    for a, b in ((0.0, 1.0), (0.5, 0.5), (0.2, 0.8)):  # both slots turn around on step 3
        book.record(Op.WAIT, False, torch.tensor([a, b]))
    assert list(book.flips) == [0, 0, 2]


def test_oscillating_levels_high_rate_zero_net():
    book = ledger(window=4)
    record(book, Op.GROW_INTERNAL, Op.SHRINK_INTERNAL, Op.GROW_INTERNAL, Op.SHRINK_INTERNAL)
    assert book.level_change_rate() == 1.0
    assert book.net_level_change() == 0
    assert book.churn_cost() == pytest.approx(0.75)


def test_steady_growth_high_rate_positive_net():
    book = ledger(window=4)
    record(book, Op.GROW_INTERNAL, Op.GROW_INTERNAL, Op.GROW_INTERNAL)
    assert book.level_change_rate() == 1.0
    assert book.net_level_change() == 3


def test_level_rate_counts_only_executed_level_ops_over_the_window():
    book = ledger(window=4)
    assert book.level_change_rate() == 0.0 and book.net_level_change() == 0
    record(book, Op.GROW_INTERNAL)
    record(book, Op.GROW_INTERNAL, vetoed=True)
    record(book, Op.WAIT, Op.SHRINK_INTERNAL)
    assert book.level_change_rate() == pytest.approx(0.5)  # 2 changes over 4 steps
    assert book.net_level_change() == 0
    record(book, Op.WAIT)  # the first GROW leaves the window
    assert book.net_level_change() == -1
    assert book.level_change_rate() == pytest.approx(0.25)
