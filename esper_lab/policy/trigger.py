"""The gain trigger: a growth controller without learning, in the spirit of GradMax, TINY and SENN
(grow where a cheap first-order estimate of the gain per parameter is highest, once it passes a
threshold), the control a reviewer asks for next to a learned growth policy (issue 25).

It incubates candidates for free: a seed in TRAINING runs straight-through (`h + (s - s.detach())`),
so the host's forward is exactly unchanged while the seed learns from the loss gradient g = dL/dh
at its surface. Blending its output s in at alpha 1 would change the loss by <g, s> to first order;
each update moves s against g (under plain SGD, by GradMax's lr |dL/dtheta|^2 a step), so the score is the
Cauchy-Schwarz bound |g| |s| on that decrease per `ROI_PARAMS` active params (TINY's and SENN's
"gain per parameter"), read from the plane's sensors alone:

    score = seed_grad_norm * delta_l2_norm * output_l2_norm * ROI_PARAMS / seed_param_count_active

(`seed_grad_norm` is |g| / sqrt(batch) and, while TRAINING, where the output is exactly the
host's, `delta_l2_norm * output_l2_norm` is |s| / sqrt(batch): the bound on the batch-mean loss
drop over the batch size). Two things the sensors showed on digits_cnn shaped the rest:
`seed_grad_norm` alone is blueprint-blind while TRAINING (it is g itself; `grad_ratio` reads
exactly 1), so GradMax's |g|^2 per param would only ever pick the cheapest blueprint; and the
straight-through output keeps growing along -g unchecked, so the score grows with every step of
incubation while what blending buys falls (the first-order estimate stops holding). Hence a
candidate is judged from the first step its sensors saw it move (`delta_l2_norm` > 0), with no
patience to wait out, and only while its output is small beside the host's (`TRUST_DELTA`).
"""

from __future__ import annotations

import torch

from esper_lab.contracts import ROI_PARAMS, Action, AlphaTarget, Blueprint, Op, PlaneReport, Stage, StepResult, Tempo

# Calibrated on digits_cnn a0 as stage1_growth's full preset runs it (8 batches a step; seeds 0-5,
# conv_light, conv_heavy and attention at both surfaces, each judged on its first measured step;
# the gain: the validation-loss drop with the seed blended at alpha 1/3, a fast ramp's first step).
# - TRUST_DELTA: the first-order bound is trusted while the seed's output is at most this fraction
#   of the host's. Up to it, 109 of 126 incubated seeds (any age up to six steps) lowered the loss
#   when blended in; past it, 18 of 54 did, and at full alpha the median lost 0.76 nats (44 of the
#   54 were conv_heavy: its output outgrows the host's within two steps). With full-data epochs
#   (~22 batches a step) the same 0.2 split them: 74 of 107 below, 13 of 73 above.
# - GAIN_THRESHOLD: conv_light never passed it (it scored 5e-5 to 2.4e-4 at either surface),
#   conv_heavy at the deep surface did in 5 of 6 seeds (2.6e-4 to 4.6e-4); the 14 candidates that
#   passed gained 0.0029 nats per 1000 params, 2.6 times the 22 that did not (0.0011). The score
#   grows with the updates a step makes (with full-data epochs it read about 10 times higher, and
#   4e-3 separated the same way): recalibrate for other tasks or step sizes.
TRUST_DELTA = 0.2
GAIN_THRESHOLD = 2.5e-4


def gain_scores(report: PlaneReport) -> torch.Tensor:
    """[S] first-order expected loss decrease per `ROI_PARAMS` params of each slot's seed (the
    module docstring); meaningful for TRAINING seeds, 0 where a slot has no seed."""
    column = report.column
    params = column("seed_param_count_active").clamp(min=1)
    return column("seed_grad_norm") * column("delta_l2_norm") * column("output_l2_norm") * ROI_PARAMS / params


class GainTriggerPolicy:
    """Incubate a candidate at every surface, commit the best one whose score passes `threshold`.

    One op per step, first that applies: commit (ADVANCE into BLENDING, fast tempo, full alpha) the
    highest-scoring measured candidate that passes `threshold` inside the trust region; else prune
    the first measured candidate that does not (its surface is embargoed, then tries the next
    blueprint); else advance a germinated seed into TRAINING; else germinate at the first dormant
    surface. The blueprint is the surface's next in a rotation over the allowed ones (NOOP has no
    parameters to score), offset by the surface index so that the surfaces' candidates cover
    different blueprints at once, and moved on by each germination and veto there. A committed
    seed is left blending; the trigger never prunes it or fossilises. A candidate it did not act on
    is judged again on the next step. Stateless: the action is a function of the result alone.
    """

    def __init__(self, threshold: float = GAIN_THRESHOLD):
        self.threshold = threshold

    def act(self, results: list[StepResult]) -> list[Action]:
        return [self._one(r) for r in results]

    def _one(self, result: StepResult) -> Action:
        report, masks = result.report, result.masks
        stages = [Stage(int(s)) for s in report.column("stage").tolist()]
        deltas, scores = report.column("delta_l2_norm").tolist(), gain_scores(report).tolist()
        measured = [slot for slot, stage in enumerate(stages) if stage is Stage.TRAINING and deltas[slot] > 0]
        passing = [slot for slot in measured if scores[slot] >= self.threshold and deltas[slot] <= TRUST_DELTA and masks.op[slot, Op.ADVANCE]]
        if passing:
            return Action(Op.ADVANCE, max(passing, key=lambda slot: (scores[slot], -slot)))
        failing = [slot for slot in measured if masks.op[slot, Op.PRUNE]]
        if failing:
            return Action(Op.PRUNE, failing[0])
        for slot, stage in enumerate(stages):
            if stage is Stage.GERMINATED and masks.op[slot, Op.ADVANCE]:
                return Action(Op.ADVANCE, slot)
        tries = (report.column("germinations") + report.column("governor_vetoes")).long().tolist()
        for slot in range(len(stages)):
            allowed = [b for b in Blueprint if b is not Blueprint.NOOP and masks.blueprint[slot, b]]
            if allowed and masks.op[slot, Op.GERMINATE]:
                blueprint = allowed[(slot + tries[slot]) % len(allowed)]
                return Action(Op.GERMINATE, slot, blueprint, tempo=Tempo.FAST, target=AlphaTarget.FULL)
        return Action(Op.WAIT)
