"""The learned policy's parts: features, masked factored heads, encoders, the policy interface.

Planes here are real (real hosts, real masks, real `check`); no host is trained."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_lab.contracts import (
    HEADS,
    SLOT_COLUMNS,
    STEP_METRICS,
    Action,
    ActionMasks,
    Blueprint,
    Decay,
    Op,
    PlaneReport,
    RewardParts,
    StepResult,
    SurfaceDensity,
)
from esper_lab.hosts import CNNConfig, CNNHost, TransformerConfig, TransformerHost
from esper_lab.plane import SeedPlane
from esper_lab.policy import GLOBAL_FIELDS, SLOT_FIELDS, Agent, Observation, Observer, PlanterPolicy, PolicyConfig, PPOPolicy
from esper_lab.policy.features import SLOT_ID_FIELDS, RunningNorm
from esper_lab.policy.heads import DEFAULTS, noise_sizes
from esper_lab.policy.synthetic import ImmuneAnswerEnv, KnownAnswerEnv

ENCODERS = ("flat", "slot_transformer")


def cnn_plane(seed: int = 0) -> SeedPlane:
    return SeedPlane(CNNHost(CNNConfig(density=SurfaceDensity.A1)), run_seed=seed, max_seeds=4)


def transformer_plane(seed: int = 0) -> SeedPlane:
    host = TransformerHost(TransformerConfig(vocab_size=17, context=8, n_layer=2, density=SurfaceDensity.A2))
    return SeedPlane(host, run_seed=seed, max_seeds=6)


def result_of(plane: SeedPlane, step: int = 1) -> StepResult:
    """A `StepResult` for a plane in any state (the metrics the features read, made up)."""
    metrics = {name: 0.1 for name in (*GLOBAL_FIELDS, *STEP_METRICS)}
    metrics.update(occupied_slots=plane.occupied_count(), n_slots=len(plane), host_params=1000, train_loss=float("nan"))
    zero = RewardParts(0.0, 0.0, 0.0, 0.0, 0.0)
    return StepResult(step, plane.report(), plane.action_masks(), metrics, zero, [], False, 0)


def random_walk(plane: SeedPlane, steps: int, generator: torch.Generator) -> SeedPlane:
    """Drive a plane through `steps` uniformly random legal actions: a random plane state."""
    for _ in range(steps):
        masks = plane.action_masks()
        pick = lambda m: int(m.nonzero().flatten()[torch.randint(int(m.sum()), (), generator=generator)])
        op = Op(pick(masks.op.any(0)))
        slot = pick(masks.op[:, op]) if op is not Op.WAIT else 0
        blueprint = Blueprint(pick(masks.blueprint[slot])) if op is Op.GERMINATE else Blueprint.NOOP
        plane.apply(Action(op, slot, blueprint))
        plane.tick()
    return plane


def agent_for(encoder: str, n_slots: int, **changes) -> Agent:
    return Agent(PolicyConfig(encoder=encoder, max_slots=n_slots, **changes), seed=0)


# --- features ------------------------------------------------------------------------------------
def test_feature_widths_come_from_the_field_lists_and_padding_masks_slots():
    plane = cnn_plane()
    plane.apply(Action(Op.GERMINATE, 2, Blueprint.CONV_CHANNEL_LADDER))
    obs = Observer(max_slots=9)([result_of(plane), result_of(cnn_plane())])
    assert obs.globals.shape == (2, len(GLOBAL_FIELDS))
    assert obs.slots.shape == (2, 9, len(SLOT_FIELDS))
    assert obs.slot_mask[:, :6].all() and not obs.slot_mask[:, 6:].any()
    assert not obs.op_mask[:, 6:].any() and not obs.blueprint_mask[:, 6:].any()
    assert (obs.slots[:, 6:] == 0).all()
    assert torch.isfinite(obs.globals).all()  # train_loss NaN at step 0 becomes 0
    legal_prune = SLOT_FIELDS.index("legal_prune")
    assert obs.slots[0, 2, legal_prune] == 1 and obs.slots[1, 2, legal_prune] == 0
    assert obs.ids[0, 2, 1] == Blueprint.CONV_CHANNEL_LADDER + 1 and obs.ids[1, 2, 1] == 0  # blueprint id, none = 0


def test_features_fail_fast_on_a_foreign_report_or_missing_metrics():
    result = result_of(cnn_plane())
    renamed = PlaneReport(("x",) + SLOT_COLUMNS[1:], result.report.values, result.report.slot_mask)
    with pytest.raises(ValueError, match="columns"):
        Observer()([dataclasses.replace(result, report=renamed)])
    metrics = {k: v for k, v in result.metrics.items() if k != "veto"}
    with pytest.raises(ValueError, match="veto"):
        Observer()([dataclasses.replace(result, metrics=metrics)])
    with pytest.raises(ValueError, match="max_slots"):
        Observer(max_slots=3)([result])


def test_running_norm_matches_batch_statistics_and_is_saved_with_the_agent():
    data = torch.randn(300, 4, generator=torch.Generator().manual_seed(0)) * 3 + 2
    norm = RunningNorm(4)
    for chunk in data.split(70):
        norm.update(chunk)
    assert torch.allclose(norm.mean, data.double().mean(0)) and torch.allclose(norm.var, data.double().var(0, unbiased=False))
    agent = agent_for("flat", 6)
    agent.normalise(Observer(6)([result_of(cnn_plane())]), update=True)
    state = agent.state_dict()
    assert state["global_norm.count"] == 1 and state["slot_norm.count"] == 6


# --- masks and heads ------------------------------------------------------------------------------
@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("make_plane", [cnn_plane, transformer_plane], ids=["cnn_a1", "transformer_a2"])
def test_no_illegal_action_is_ever_sampled_on_random_plane_states(encoder, make_plane):
    generator = torch.Generator().manual_seed(1)
    planes = [random_walk(make_plane(i), int(torch.randint(0, 12, (), generator=generator)), generator) for i in range(24)]
    n_slots = len(planes[0])
    policy = PPOPolicy(agent_for(encoder, n_slots), seed=3)
    sampled = 0
    for _ in range(10):  # 10 draws per state: 240 actions per case
        for plane, action in zip(planes, policy.act([result_of(p) for p in planes])):
            plane.check(action)  # raises IllegalAction naming slot, stage and op
            sampled += action.op is not Op.WAIT
    assert sampled >= 60  # a quarter of the draws at least are real edits, not WAIT


@pytest.mark.parametrize("greedy", [False, True])
def test_a_policy_chooses_only_from_its_own_op_set(greedy):
    generator = torch.Generator().manual_seed(2)
    planes = [random_walk(cnn_plane(i), int(torch.randint(0, 12, (), generator=generator)), generator) for i in range(24)]
    policy = PPOPolicy(agent_for("slot_transformer", len(planes[0]), ops=("germinate", "advance")), seed=1, greedy=greedy)
    chosen = {action.op for _ in range(10) for action in policy.act([result_of(p) for p in planes])}
    assert chosen <= {Op.WAIT, Op.GERMINATE, Op.ADVANCE} and (greedy or chosen > {Op.WAIT})
    with pytest.raises(ValueError, match="ops='prune'"):
        PolicyConfig(encoder="slot_transformer", ops="prune")
    with pytest.raises(ValueError, match="op names"):
        PolicyConfig(encoder="slot_transformer", ops=("grow",))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_slots=st.integers(1, 7))
def test_sampled_choices_obey_arbitrary_masks(seed, n_slots):
    g = torch.Generator().manual_seed(seed)
    op_mask = torch.rand(4, n_slots, len(Op), generator=g) < 0.3
    op_mask[..., Op.WAIT] = True
    blueprint_mask = torch.rand(4, n_slots, len(Blueprint), generator=g) < 0.3
    blueprint_mask[..., int(torch.randint(len(Blueprint), (), generator=g))] = True
    phage_mask = torch.rand(4, n_slots, generator=g) < 0.3
    obs = Observation(
        torch.randn(4, len(GLOBAL_FIELDS), generator=g),
        torch.randn(4, n_slots, len(SLOT_FIELDS), generator=g),
        torch.zeros(4, n_slots, len(SLOT_ID_FIELDS), dtype=torch.long),
        torch.ones(4, n_slots, dtype=torch.bool),
        op_mask,
        blueprint_mask,
        phage_mask,
    )
    noise = {h: torch.rand(4, n, generator=g) for h, n in noise_sizes(n_slots).items()}
    decision, _, _ = agent_for("slot_transformer", n_slots, role="both")(obs, noise=noise)
    rows = torch.arange(4)
    op, slot, blueprint = decision.choice["op"], decision.choice["slot"], decision.choice["blueprint"]
    assert op_mask.any(1)[rows, op].all()
    assert op_mask[rows, slot, op].all()
    germinate = op == Op.GERMINATE
    assert blueprint_mask[rows, slot, blueprint][germinate].all()
    sedate = decision.choice["decay"] == Decay.SEDATE
    assert phage_mask[rows, decision.choice["phage"]][sedate].all()
    assert (decision.used["decay"] == phage_mask.any(1)).all()  # HOLD alone is no decision
    for h in HEADS:  # unused heads carry Action's defaults and add nothing
        unused = ~decision.used[h]
        assert (decision.choice[h][unused] == DEFAULTS[h]).all()
        assert (decision.logp[h][unused] == 0).all() and (decision.entropy[h][unused] == 0).all()


def test_a_head_with_one_legal_choice_has_zero_entropy_and_zero_log_prob():
    plane = cnn_plane()
    masks = plane.action_masks()
    only_wait = torch.zeros_like(masks.op)
    only_wait[:, Op.WAIT] = True
    result = dataclasses.replace(result_of(plane), masks=ActionMasks(only_wait, masks.blueprint, masks.phage))
    decision = PPOPolicy(agent_for("flat", 6)).decide([result])[1]
    assert decision.choice["op"].item() == Op.WAIT
    assert decision.entropy["op"].item() == 0.0 and decision.logp["op"].item() == 0.0
    assert decision.total_logp.item() == 0.0  # WAIT uses no other head
    # GERMINATE legal on one slot with one blueprint: slot and blueprint heads are certain too
    one = torch.zeros_like(masks.op)
    one[:, Op.WAIT], one[4, Op.GERMINATE] = True, True
    blueprints = torch.zeros_like(masks.blueprint)
    blueprints[4, Blueprint.CONV_LIGHT] = True
    result = dataclasses.replace(result_of(plane), masks=ActionMasks(one, blueprints, masks.phage))
    agent = agent_for("flat", 6)
    obs = agent.normalise(Observer(6)([result]), update=False)
    decision, _, _ = agent(
        obs,
        given={
            **{h: torch.tensor([DEFAULTS[h]]) for h in HEADS},
            "op": torch.tensor([Op.GERMINATE]),
            "slot": torch.tensor([4]),
            "blueprint": torch.tensor([Blueprint.CONV_LIGHT]),
        },
    )
    for h in ("slot", "blueprint"):
        assert decision.entropy[h].item() == 0.0 and decision.logp[h].item() == 0.0
    assert decision.entropy["blend"].item() > 0  # style heads are unmasked and used by GERMINATE


def test_an_emrakul_agent_has_only_her_heads_and_plays_her_partners_tamiyo_uncredited():
    env = ImmuneAnswerEnv(3)
    env.reset()
    results = env.step([Action(Op.WAIT)] * 3)  # the baseline window fills: both phages may be sedated
    assert results[0].masks.phage[:2].all()
    agent = Agent(PolicyConfig(encoder="slot_transformer", role="emrakul"), seed=0)
    assert not hasattr(agent.heads, "op") and hasattr(agent.heads, "decay")
    partner = PlanterPolicy(Blueprint.CONV_LIGHT)
    obs, decision, _ = PPOPolicy(agent, seed=1, partner=partner).decide(results)
    actions = decision.actions()
    for action, planted in zip(actions, partner.act(results)):  # Tamiyo's fields are the partner's
        assert dataclasses.replace(action, decay=planted.decay, phage=planted.phage) == planted
    for h in ("op", "slot", "blueprint"):
        assert not decision.used[h].any() and (decision.logp[h] == 0).all()
    assert decision.used["decay"].all()
    own = decision.logp["decay"] + decision.logp["phage"]
    assert torch.allclose(decision.total_logp, own) and (own < 0).any()
    again, _, _ = agent(obs, given=decision.choice)  # the PPO update re-scores the same numbers
    assert torch.allclose(again.total_logp, decision.total_logp, atol=1e-6)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_sampling_and_rescoring_agree(encoder):
    env = KnownAnswerEnv(6)
    results = env.reset()
    policy = PPOPolicy(agent_for(encoder, 6), seed=2)
    for action in env.optimal_actions()[:3]:
        results = env.step([action] * 6)
    obs, decision, value = policy.decide(results)
    again, value_again, _ = policy.agent(obs, given=decision.choice)
    assert torch.allclose(again.total_logp, decision.total_logp, atol=1e-6)
    assert torch.allclose(value_again, value, atol=1e-6)
    # the same seed gives the same draws
    twin = PPOPolicy(agent_for(encoder, 6), seed=2)
    assert twin.act(results) == decision.actions()


# --- encoders -------------------------------------------------------------------------------------
def test_slot_transformer_ignores_padding_slots():
    results = [result_of(random_walk(cnn_plane(i), 6, torch.Generator().manual_seed(i))) for i in range(3)]
    agent = agent_for("slot_transformer", None)
    small, padded = Observer()(results), Observer(max_slots=11)(results)
    decision, value, _ = agent(small, given=None)
    decision_padded, value_padded, _ = agent(padded, given=decision.choice)
    assert torch.allclose(value, value_padded, atol=1e-5)
    assert torch.allclose(decision.total_logp, decision_padded.total_logp, atol=1e-5)
    assert (decision_padded.mask["slot"][:, 6:] == ~decision_padded.used["slot"][:, None]).all()


def test_flat_encoder_needs_its_slot_count():
    with pytest.raises(ValueError, match="max_slots"):
        PolicyConfig(encoder="flat")
    with pytest.raises(ValueError, match="encoder"):
        PolicyConfig(encoder="mlp")
    agent = agent_for("flat", 8)
    with pytest.raises(ValueError, match="8 slots got 6"):
        agent(Observer()([result_of(cnn_plane())]))


def test_recurrent_memory_resets_at_episode_start():
    agent = agent_for("flat", 6, recurrent=True)
    obs = Observer(6)([result_of(cnn_plane(i)) for i in range(2)])
    stale = (torch.randn(2, 64), torch.randn(2, 64))
    _, fresh_value, _ = agent(obs, None, given={h: torch.zeros(2, dtype=torch.long) for h in HEADS})
    _, reset_value, _ = agent(obs, stale, torch.tensor([True, False]), given={h: torch.zeros(2, dtype=torch.long) for h in HEADS})
    assert torch.equal(reset_value[0], fresh_value[0]) and not torch.equal(reset_value[1], fresh_value[1])
