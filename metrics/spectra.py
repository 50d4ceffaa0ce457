"""Spectral isotropy of weight matrices (and of weight updates), per parameter group and layer.

For a matrix with singular values s_1 >= ... >= s_n (n = min(rows, cols)) and energy shares
q_i = s_i^2 / sum_j s_j^2:

* ``svd_entropy``   normalized SVD entropy -(1/log n) sum_i q_i log q_i, in [0, 1] (1 = all singular values
                    equal; defined as 1 when n = 1);
* ``effective_rank`` exp(-sum_i q_i log q_i), in [1, n] (Roy & Vetterli 2007);
* ``top10_energy``  sum_{i<=10} q_i, the share of energy in the ten largest directions;
* ``q75_q25``       75th over 25th percentile of the singular values (linear interpolation; inf when the
                    25th percentile is 0, i.e. a rank-deficient matrix).

A more isotropic matrix has higher entropy and effective rank and lower top-10 energy and Q75/Q25.
``model_spectra`` reports ``spectra/<group>/layer{i}/<metric>`` per layer and ``spectra/<group>/<metric>``
(mean over layers) for the groups of ``optim.groups``; ``update_spectra`` does the same for the
difference between the current weights and a ``snapshot_weights`` taken earlier, under ``spectra_update/``.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from optim.groups import ALIASES, group_of, layer_of

METRICS = ("svd_entropy", "effective_rank", "top10_energy", "q75_q25")
HIDDEN_GROUPS = ALIASES["hidden"]


def singular_values(W: torch.Tensor) -> torch.Tensor:
    """Singular values (descending, float32) of a 2-D tensor; a sharded DTensor is gathered first.

    Values below float32 precision (s_max * max(rows, cols) * eps, numpy's matrix_rank tolerance) are
    set to 0, so that a rank-deficient matrix reports Q75/Q25 = inf rather than a ratio of rounding noise.
    """
    if hasattr(W, "full_tensor"):  # FSDP2 parameter: a collective, every rank must call this
        W = W.full_tensor()
    if W.ndim != 2:
        raise ValueError(f"spectral metrics need a 2-D matrix, got shape {tuple(W.shape)}")
    s = torch.linalg.svdvals(W.detach().float())
    tolerance = s.max() * max(W.shape) * torch.finfo(torch.float32).eps
    return torch.where(s > tolerance, s, torch.zeros_like(s))


def spectrum_statistics(s: torch.Tensor) -> torch.Tensor:
    """[total energy, entropy (nats), top-10 energy share, Q25, Q75] of a singular value vector, float64.

    Computed on the device of `s` with no host read (every tensor made here is put there), so a GPU
    evaluation syncs once per matrix, in `metrics_from_singular_values`.
    """
    energy = s.double() ** 2
    q = energy / energy.sum()
    levels = torch.tensor([0.25, 0.75], dtype=torch.float64, device=s.device)
    q25, q75 = torch.quantile(s.double(), levels).unbind()
    # narrow/unbind rather than [:10]/[0]: the same values, and ops that fake CUDA tensors support
    # (tests/test_gpu_rehearsal.py runs this on them).
    top10 = q.narrow(0, 0, min(10, q.numel())).sum()
    return torch.stack([energy.sum(), -torch.xlogy(q, q).sum(), top10, q25, q75])


def metrics_from_singular_values(s: torch.Tensor) -> dict[str, float]:
    """The four isotropy metrics of a (descending) singular value vector; see the module docstring."""
    total, entropy, top10, q25, q75 = spectrum_statistics(s).tolist()
    if total <= 0:
        raise ValueError("all singular values are zero: a zero matrix has no spectrum")
    n = s.numel()
    return {
        "svd_entropy": entropy / math.log(n) if n > 1 else 1.0,
        "effective_rank": math.exp(entropy),
        "top10_energy": top10,
        "q75_q25": q75 / q25 if q25 > 0 else math.inf,
    }


def spectral_metrics(W: torch.Tensor) -> dict[str, float]:
    """``svd_entropy``, ``effective_rank``, ``top10_energy`` and ``q75_q25`` of a 2-D matrix."""
    return metrics_from_singular_values(singular_values(W))


def grouped_matrices(
    named: Iterable[tuple[str, torch.Tensor]], groups: Sequence[str] = HIDDEN_GROUPS
) -> list[tuple[str, str, int | None, torch.Tensor]]:
    """(name, group, layer, tensor) of every 2-D weight whose group is in ``groups``."""
    wanted = set(groups)
    out = []
    for name, W in named:
        if W.ndim != 2:
            continue
        group = group_of(name, W)
        if group in wanted:
            out.append((name, group, layer_of(name), W))
    return out


def summarize(
    entries: Iterable[tuple[str, int | None, torch.Tensor]], prefix: str = "spectra"
) -> dict[str, float]:
    """Metrics from (group, layer, singular values): per layer and mean over layers; zero spectra skipped."""
    out: dict[str, float] = {}
    per_group: dict[str, list[dict[str, float]]] = defaultdict(list)
    for group, layer, s in entries:
        if not bool((s > 0).any()):  # a zero matrix (or update) has no spectrum
            continue
        values = metrics_from_singular_values(s)
        per_group[group].append(values)
        if layer is not None:
            out.update({f"{prefix}/{group}/layer{layer}/{m}": v for m, v in values.items()})
    for group, rows in per_group.items():
        for m in METRICS:
            out[f"{prefix}/{group}/{m}"] = sum(r[m] for r in rows) / len(rows)
    return out


def spectra_of(
    named: Iterable[tuple[str, torch.Tensor]], groups: Sequence[str] = HIDDEN_GROUPS, prefix: str = "spectra"
) -> dict[str, float]:
    """``summarize`` over the named 2-D weights of the given groups."""
    matrices = grouped_matrices(named, groups)
    return summarize(((group, layer, singular_values(W)) for _, group, layer, W in matrices), prefix)


def model_spectra(model: nn.Module, groups: Sequence[str] = HIDDEN_GROUPS) -> dict[str, float]:
    """``spectra/<group>/<metric>`` (mean over layers) and ``spectra/<group>/layer{i}/<metric>``."""
    return spectra_of(model.named_parameters(), groups)


def snapshot_weights(model: nn.Module, groups: Sequence[str] = HIDDEN_GROUPS) -> dict[str, torch.Tensor]:
    """Copies of the weights ``update_spectra`` compares against (take it right before optimizer.step)."""
    return {name: W.detach().clone() for name, _, _, W in grouped_matrices(model.named_parameters(), groups)}


def update_spectra(
    previous: Mapping[str, torch.Tensor], model: nn.Module, groups: Sequence[str] = HIDDEN_GROUPS
) -> dict[str, float]:
    """Spectra of (current - previous) weights as ``spectra_update/<group>/...``."""
    deltas = []
    for name, _, _, W in grouped_matrices(model.named_parameters(), groups):
        if name not in previous:
            raise ValueError(f"no snapshot of {name!r}; take snapshot_weights(model) with the same groups")
        deltas.append((name, W.detach() - previous[name]))
    return spectra_of(deltas, groups, prefix="spectra_update")


if __name__ == "__main__":
    from common.errors import UserError
    from metrics.spectra_report import main

    try:
        sys.exit(main())
    except UserError as err:  # bad input: one line, exit 1; anything else keeps its traceback
        sys.exit(f"error: {err}")
