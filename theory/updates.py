"""Full-batch update rules of the theory models: GD, SignGD, Adam and momentum-free Muon.

Each rule maps a gradient G to the step that is *subtracted* from the weights (W <- W - step),
so the training loops of `theory.assoc_memory` and `theory.scaling` share one calling convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from common.errors import UserError

OPTIMIZERS = ("gd", "signgd", "adam", "muon")  # the comparison of the papers (default grid)
RULES = (*OPTIMIZERS, "muon_ns")  # muon_ns: the project's Newton-Schulz Muon, to compare with exact polar


def polar(G: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """Exact polar factor U V^T of G from an SVD, dropping directions with negligible singular values.

    This is what Muon's Newton-Schulz iteration approximates (NS gives U S' V^T with S' in about
    [0.5, 1.5]); the theory models use the exact factor in fp64. Singular values below
    ``rtol * s_max`` (default: max(m, n) * machine epsilon, as for a pseudo-inverse) are treated as
    zero: their singular vectors are arbitrary rounding noise (the cross-entropy gradient is rank
    deficient because every column of softmax - onehot sums to zero).
    """
    if G.ndim != 2:
        raise ValueError(f"polar() needs a 2-D matrix, got shape {tuple(G.shape)}; reshape it first")
    U, sv, Vh = torch.linalg.svd(G, full_matrices=False)
    if rtol is None:
        rtol = max(G.shape) * torch.finfo(G.dtype).eps
    keep = sv > sv.max() * rtol
    return U[:, keep] @ Vh[keep, :]


@dataclass
class UpdateRule:
    """One optimizer of the comparison, with its (tiny) state.

    name: "gd" (lr * G), "signgd" (lr * sign(G): Adam with beta1 = beta2 = 0 and eps -> 0),
    "adam" (bias-corrected Adam with ``betas`` and ``eps``), "muon" (lr * polar(G), no momentum),
    "muon_ns" (lr * optim.muon.orthogonalize(G) in fp64: the 5-step quintic Newton-Schulz of training).
    """

    name: str
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    _t: int = field(default=0, init=False, repr=False)
    _m: torch.Tensor | None = field(default=None, init=False, repr=False)
    _v: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise UserError(f"unknown optimizer {self.name!r}; choose one of {', '.join(RULES)}")
        if not self.lr > 0:
            raise UserError(f"learning rate must be positive, got {self.lr} for {self.name}")

    def step(self, G: torch.Tensor) -> torch.Tensor:
        """Return the update for gradient G (to subtract from the weights)."""
        if self.name == "gd":
            return self.lr * G
        if self.name == "signgd":
            return self.lr * torch.sign(G)
        if self.name == "muon":
            return self.lr * polar(G)
        if self.name == "muon_ns":
            from optim.muon import orthogonalize  # only this rule needs the training optimizer

            return self.lr * orthogonalize(G, dtype=G.dtype)
        return self.lr * self._adam_direction(G)

    def _adam_direction(self, G: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.betas
        if self._m is None:
            self._m, self._v = torch.zeros_like(G), torch.zeros_like(G)
        self._t += 1
        self._m.mul_(b1).add_(G, alpha=1 - b1)
        self._v.mul_(b2).addcmul_(G, G, value=1 - b2)
        m_hat = self._m / (1 - b1**self._t)
        v_hat = self._v / (1 - b2**self._t)
        return m_hat / (v_hat.sqrt() + self.eps)
