"""A check the policy tests share: an action is one the masks it was shown allow."""

from esper_lab.contracts import Action, Op, StepResult


def assert_legal(result: StepResult, action: Action) -> None:
    if action.op is not Op.WAIT:
        assert result.masks.op[action.slot, action.op], f"{action} not allowed by the op mask"
    if action.op is Op.GERMINATE:
        assert result.masks.blueprint[action.slot, action.blueprint], f"{action}: blueprint not allowed"
