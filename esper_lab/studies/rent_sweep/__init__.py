"""The rent sweep: does the price of active parameters set how much the policy grows?"""

from __future__ import annotations

import polars as pl

from esper_lab.contracts import GREEDY
from esper_lab.experiments.packs import Pack
from esper_lab.experiments.stats import bootstrap_rows, spearman, verdict
from esper_lab.studies.evidence import Evidence, Gate, say


def gates(pack: Pack, ev: Evidence) -> list[Gate]:
    """The economy is real (seed 003 §5.1): across cohorts that differ only in `rent_weight`, the
    trained policy's in-forward seed params (episode mean, held-out, greedy) fall as rent rises:
    Spearman's rho between the weight and the params, its CI from resampling training seeds."""
    weights = {name: (cohort.get("economy") or {}).get("rent_weight") for name, cohort in pack.cohorts.items()}
    greedy = ev.outcomes.filter(pl.col("arm") == GREEDY).with_columns(weight=pl.col("cohort").replace_strict(weights, return_dtype=pl.Float64))
    rho = None
    if greedy["weight"].n_unique() >= 4:
        rho = bootstrap_rows(greedy, lambda f: spearman(f["weight"].to_numpy(), f["forward_params_mean"].to_numpy()))
    return [
        Gate(
            "1 rent prices growth",
            "all",
            verdict(rho, 0.0, higher_passes=False),
            f"Spearman rho(rent_weight, in-forward seed params) {say(rho)} over {greedy['weight'].n_unique()} rent weights "
            f"{sorted(set(greedy['weight'].drop_nulls()))} (gate: CI below 0)",
        )
    ]
