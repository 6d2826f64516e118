"""fp32 master copies of trainable tensors held in bf16 / fp16, so that small Adam updates are not lost.

    masters = MasterWeights(params)                  # params in fp32 (CPU default): masters.tensors is params
    optimizer = torch.optim.Adam(masters.tensors, lr)
    ... backward into params ...
    masters.grads_in(); optimizer.step(); masters.weights_out(); masters.zero_grad()

In bf16 an update under half an ulp of the weight rounds away (lr 2e-5 moves 3% of the entries of a weight
of scale 0.2), and in fp16 Adam's squared gradients and eps underflow to 0/0. Adam therefore steps fp32
copies (its state is fp32 too) and the model receives them rounded after every step; checkpoints hold the
fp32 copies. fp32 tensors are their own masters: nothing is copied and results are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class MasterWeights:
    def __init__(self, params: Sequence[torch.Tensor]):
        self.params = list(params)
        self.tensors = [p if p.dtype == torch.float32 else p.detach().float() for p in self.params]
        self._pairs = [(p, m) for p, m in zip(self.params, self.tensors, strict=True) if m is not p]

    def grads_in(self) -> None:
        """The model's gradients, in fp32, on the master copies (before the optimiser step)."""
        for p, m in self._pairs:
            m.grad = None if p.grad is None else p.grad.float()

    @torch.no_grad()
    def weights_out(self) -> None:
        """The master copies, rounded to the model's dtype, into the model (after a step or a restore)."""
        for p, m in self._pairs:
            p.copy_(m)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
        for m in self.tensors:
            m.grad = None
