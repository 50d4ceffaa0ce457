"""The optimizers a route can name: one table of `OptimizerSpec`, and everything derived from it.

Each spec says how its optimizer is built, its default lr, whether it orthogonalizes (the Muon family:
2-D matrices only), whether it can be `optim.base`, its settings section `optim.<name>` and the `optim`
keys it reads. From the table come the route grammar's names (optim.routing), the `optim.<name>`
sections of the config schema and their checks (optim.config, training.config), the keys added after
the first run directories (training.config.LATER_KEYS), the tuned keys that act on an arm
(ablations.running.tuning) and the parts of the combined optimizer (optim.build). A name that is not in the
table is an error wherever it appears.

Adding an optimizer is one entry in `SPECS` (its section and builder beside it) plus its tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from common.errors import UserError
from optim.muon import Muon
from optim.newton_schulz import NS_COEFFICIENTS
from optim.sign import Lion, Signum

# A sign update (signum, lion, adam0) moves every element by lr: RMS 1 x lr. AdamW's update has RMS of
# about sqrt((1 - beta1) / (1 + beta1)) x lr on noise-dominated gradients (0.23 at beta1 = 0.9), the 0.2
# that Muon's match_rms_adamw also uses (Moonlight). So a sign method's default lr is 0.2 x adamw_lr:
# the same update RMS, hence the same learning rate for every group whichever optimizer it goes to.
SIGN_LR_RATIO = 0.2

# optim.ns_dtype -> Muon's ns_dtype (None: bf16 on CUDA and on CPUs with native bf16 matmul, else fp32)
NS_DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}

# The builder of one optimizer: (its param groups, their lr, the `optim` section) -> the optimizer.
Builder = Callable[[list[dict[str, Any]], float, Any], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer a route can name, and what the rest of the code needs to know of it.

    `section` is the dataclass of its own keys, `optim.<name>.*` (it must have `lr`: None takes
    `default_lr`); None: it has none. `keys` are the top-level `optim` keys only it (and the optimizers
    sharing them) reads: a tuned key among them does not act on an arm without such an optimizer. The
    keys every optimizer reads (adamw_lr, embed_lr, head_lr, weight_decay) belong to none. `nonnegative`
    and `fractions` (in [0, 1)) are the keys the loader checks, relative to `optim`.
    """

    name: str
    build: Builder
    default_lr: Callable[[Any], float]
    section: type | None = None
    keys: tuple[str, ...] = ()
    orthogonalizes: bool = False  # the Muon family: 2-D matrices only, never the scalar group
    base: bool = False  # may be optim.base (the optimizer of every parameter no entry routes)
    nonnegative: tuple[str, ...] = ()
    fractions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.section is not None and "lr" not in {f.name for f in dataclasses.fields(self.section)}:
            raise TypeError(f"optimizer {self.name!r}: its section {self.section.__name__} needs an lr field")

    def reads(self, key: str) -> bool:
        """Whether the dotted key `optim.<...>` is one of this optimizer's own."""
        return key in {f"optim.{k}" for k in self.keys} or key.startswith(f"optim.{self.name}.")


# The sections: each optimizer's own keys (config.yaml's `optim.<name>`).


@dataclass
class SGDConfig:
    """SGD with momentum, as a routing target.

    Keys:
        lr: null: adamw_lr (its momentum is optim.sgd_momentum)
    """

    lr: float | None = None


@dataclass
class SignumConfig:
    """Signum: the sign of the momentum.

    Keys:
        lr: null: 0.2 x adamw_lr (the same update RMS as AdamW's)
        momentum: 0: SignGD
    """

    lr: float | None = None  # None: SIGN_LR_RATIO x adamw_lr
    momentum: float = 0.9


@dataclass
class LionConfig:
    """Lion (Chen et al. 2023).

    Keys:
        lr: null: 0.2 x adamw_lr
        betas: Lion's interpolation and momentum coefficients
    """

    lr: float | None = None  # None: SIGN_LR_RATIO x adamw_lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])


@dataclass
class Adam0Config:
    """Adam with beta1 = beta2 = 0: g / (|g| + eps), the paper's SignGD proxy.

    Keys:
        lr: null: 0.2 x adamw_lr
        eps: added to |g|
    """

    lr: float | None = None  # None: SIGN_LR_RATIO x adamw_lr
    eps: float = 1e-8


@dataclass
class NorMuonConfig:
    """NorMuon: Muon with a per-row second-moment normalization.

    Keys:
        lr: null: Muon's lr (the per-row normalization keeps Muon's update norm)
        beta2: EMA coefficient of each row's mean square
    """

    lr: float | None = None
    beta2: float = 0.95


# The builders and default learning rates.


def _muon(groups: list[dict[str, Any]], lr: float, cfg: Any, normuon_beta2: float | None = None) -> Muon:
    return Muon(
        groups,
        lr=lr,
        weight_decay=float(cfg.weight_decay),
        momentum=float(cfg.momentum),
        nesterov=bool(cfg.nesterov),
        ns_coefficients=NS_COEFFICIENTS[cfg.ns_coefficients],
        ns_steps=int(cfg.ns_steps),
        adjust_lr_fn=cfg.adjust_lr_fn,
        ns_dtype=NS_DTYPES[cfg.ns_dtype],
        orthogonalization=cfg.orthogonalize,
        momentum_order=cfg.momentum_order,
        momentum_warmup_steps=int(cfg.momentum_warmup_steps),
        normuon_beta2=normuon_beta2,
    )


def _adamw(groups: list[dict[str, Any]], lr: float, cfg: Any) -> torch.optim.AdamW:
    return _fused_adamw(groups, lr, tuple(float(b) for b in cfg.betas), float(cfg.eps))


def _adam0(groups: list[dict[str, Any]], lr: float, cfg: Any) -> torch.optim.AdamW:
    # torch's Adam with beta1 = beta2 = 0: g / (|g| + eps), the paper's SignGD proxy
    return _fused_adamw(groups, lr, (0.0, 0.0), float(cfg.adam0.eps))


def _fused_adamw(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], eps: float
                 ) -> torch.optim.AdamW:
    # Fused AdamW (one kernel per parameter) on CUDA and on CPU alike: on the project's 2-core CPU it
    # stepped `small`'s parameters in 12 ms against 39 ms for foreach.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)


def _sgd(groups: list[dict[str, Any]], lr: float, cfg: Any) -> torch.optim.SGD:
    return torch.optim.SGD(groups, lr=lr, momentum=float(cfg.sgd_momentum), foreach=True)


def _signum(groups: list[dict[str, Any]], lr: float, cfg: Any) -> Signum:
    return Signum(groups, lr=lr, momentum=float(cfg.signum.momentum))


def _lion(groups: list[dict[str, Any]], lr: float, cfg: Any) -> Lion:
    return Lion(groups, lr=lr, betas=tuple(float(b) for b in cfg.lion.betas))


def _normuon(groups: list[dict[str, Any]], lr: float, cfg: Any) -> Muon:
    return _muon(groups, lr, cfg, normuon_beta2=float(cfg.normuon.beta2))


def _adamw_lr(cfg: Any) -> float:
    return cfg.adamw_lr


def _muon_lr(cfg: Any) -> float:
    return cfg.muon_lr if cfg.muon_lr is not None else cfg.adamw_lr


def _sign_lr(cfg: Any) -> float:
    return SIGN_LR_RATIO * cfg.adamw_lr


# Muon's keys, which NorMuon reads as well.
MUON_KEYS = ("muon_lr", "momentum", "nesterov", "ns_steps", "ns_dtype", "adjust_lr_fn", "per_head",
             "ns_coefficients", "orthogonalize", "momentum_order", "momentum_warmup_steps")

# The table, in the order the optimizers were added: config.yaml lists the sections in this order, and
# the combined optimizer its parts (the orthogonalizing ones first: `part_order`).
SPECS: dict[str, OptimizerSpec] = {spec.name: spec for spec in (
    OptimizerSpec("muon", _muon, _muon_lr, keys=MUON_KEYS, orthogonalizes=True,
                  nonnegative=("muon_lr", "momentum_warmup_steps"), fractions=("momentum",)),
    OptimizerSpec("adamw", _adamw, _adamw_lr, keys=("betas", "eps"), base=True, nonnegative=("eps",)),
    OptimizerSpec("sgd", _sgd, _adamw_lr, SGDConfig, keys=("sgd_momentum",), base=True,
                  nonnegative=("sgd.lr",), fractions=("sgd_momentum",)),
    OptimizerSpec("signum", _signum, _sign_lr, SignumConfig, nonnegative=("signum.lr",),
                  fractions=("signum.momentum",)),
    OptimizerSpec("lion", _lion, _sign_lr, LionConfig, nonnegative=("lion.lr",),
                  fractions=("lion.betas.0", "lion.betas.1")),
    OptimizerSpec("adam0", _adam0, _sign_lr, Adam0Config, nonnegative=("adam0.lr", "adam0.eps")),
    OptimizerSpec("normuon", _normuon, _muon_lr, NorMuonConfig, keys=MUON_KEYS, orthogonalizes=True,
                  nonnegative=("normuon.lr",), fractions=("normuon.beta2",)),
)}


@contextlib.contextmanager
def registered(spec: OptimizerSpec) -> Iterator[OptimizerSpec]:
    """`spec` in the table for the duration (tests: a toy optimizer; its section, if any, is not added
    to the config schema, which is built when optim.config is imported)."""
    if spec.name in SPECS:
        raise ValueError(f"optimizer {spec.name!r} is already registered")
    SPECS[spec.name] = spec
    try:
        yield spec
    finally:
        del SPECS[spec.name]


def part_order() -> tuple[str, ...]:
    """Every optimizer's name: the orthogonalizing ones first, as the combined optimizer orders its parts
    (so param_groups[0], whose lr train/lr logs, is Muon's whenever Muon is used)."""
    return tuple(sorted(SPECS, key=lambda name: not SPECS[name].orthogonalizes))


def orthogonalizing() -> tuple[str, ...]:
    """The Muon family: the optimizers that orthogonalize (2-D matrices only)."""
    return tuple(name for name, spec in SPECS.items() if spec.orthogonalizes)


def bases() -> tuple[str, ...]:
    """The optimizers `optim.base` may name."""
    return tuple(name for name, spec in SPECS.items() if spec.base)


def spec_of(name: str, key: str = "optim.route") -> OptimizerSpec:
    """The spec of optimizer `name`; an unknown name is an error naming `key` (never a fall-through)."""
    try:
        return SPECS[name]
    except KeyError:
        raise UserError(f"{key}: unknown optimizer {name!r}; choose one of {', '.join(part_order())}"
                        ) from None


def sections() -> list[OptimizerSpec]:
    """The optimizers with an `optim.<name>` section, in the table's order."""
    return [spec for spec in SPECS.values() if spec.section is not None]


def checked_keys() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(keys that must be >= 0, keys that must be in [0, 1)) over every optimizer, relative to `optim`."""
    nonnegative = dict.fromkeys(k for spec in SPECS.values() for k in spec.nonnegative)
    fractions = dict.fromkeys(k for spec in SPECS.values() for k in spec.fractions)
    return tuple(nonnegative), tuple(fractions)


def optimizer_lr(name: str, cfg: Any) -> float:
    """The lr of an optimizer's groups: `optim.<name>.lr` if set, else its default rule."""
    spec = spec_of(name)
    own = getattr(cfg, name).lr if spec.section is not None else None
    return float(own if own is not None else spec.default_lr(cfg))


# The `optim` keys that only set learning rates (with optim.<name>.lr): what optim.build.parameter_rates
# resolves, ties included (muon_lr null is adamw_lr, a sign method's null lr 0.2 x adamw_lr, ...).
RATE_KEYS = ("adamw_lr", "muon_lr", "embed_lr", "head_lr")


def is_rate_key(key: str) -> bool:
    """Whether the dotted key `optim.<...>` only sets learning rates (optim.muon_lr, optim.signum.lr...)."""
    name, _, rest = key.removeprefix("optim.").partition(".")
    return key.startswith("optim.") and (key.removeprefix("optim.") in RATE_KEYS
                                         or (rest == "lr" and name in SPECS))


def keys_acting_on(used: Iterable[str]) -> Callable[[str], bool]:
    """Whether a dotted config key changes a run whose routing uses the optimizers `used`: every key but
    an optimizer's own (optim.muon_lr, optim.<name>.*, ...) when no optimizer reading it is used."""
    used = set(used)

    def acts(key: str) -> bool:
        owners = {name for name, spec in SPECS.items() if spec.reads(key)}
        return not owners or bool(owners & used)

    return acts
