"""Failures injected into training through the objective registry (abft.objectives), as a user's objective would."""

from abft.objectives import OBJECTIVES
from abft.objectives.base import Entry


def patch_loss(mp, change) -> None:
    """`--method abft` with its loss replaced by change(loss, n) on its n-th call (mp: a MonkeyPatch)."""
    entry, calls = OBJECTIVES["abft"], [0]

    def build(*args):
        objective = entry.build(*args)

        def call(step):
            out = objective(step)
            calls[0] += 1
            out.loss = change(out.loss, calls[0])
            return out

        return call

    mp.setitem(OBJECTIVES, "abft", Entry(build, entry.help))


def nan_from_step_2(loss, n):
    return loss * float("nan") if n >= 2 else loss  # step 2 with one micro-batch a step
