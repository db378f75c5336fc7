"""Optimizers, gradient clipping and learning-rate schedules with the built-in algorithm's meaning.

The built-in seq2seq algorithm is Sockeye 1 on MXNet; its hyperparameters name MXNet behaviour
(``weight_decay`` as an L2 term added to the gradient, ``clip_gradient`` clipping each gradient
*value*, checkpoint-driven schedulers). This module maps those meanings onto ``torch.optim`` so that
a job configured for the built-in algorithm trains the way its user expects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from model.hyperparameters import Hyperparameters

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]

LR_SCHEDULERS = ("plateau_reduce", "fixed_rate_inv_t", "fixed_rate_inv_sqrt_t")


def _all_on_cuda(params: list) -> bool:
    """Whether every parameter is on a GPU; a group's ``params`` iterable is made a list, so it can be read."""
    tensors: list[Tensor] = []
    for p in params:
        if isinstance(p, dict):
            p["params"] = list(p["params"])
            tensors.extend(p["params"])
        else:
            tensors.append(p)
    return bool(tensors) and all(t.is_cuda for t in tensors)


def build_optimizer(params: ParamsT, hp: Hyperparameters) -> torch.optim.Optimizer:
    """The optimizer ``optimizer_type`` names, at ``learning_rate`` (the schedule takes over from there).

    ``weight_decay`` is passed as torch's coupled L2 term (added to the gradient before the update),
    which is what MXNet's ``wd`` does; AdamW's decoupled decay would change what the number means.
    """
    lr, wd = hp.learning_rate, hp.weight_decay
    params = list(params)
    if hp.optimizer_type == "adam":
        # MXNet's Adam defaults (beta1 0.9, beta2 0.999, epsilon 1e-8) are torch's. On a GPU the update of
        # every parameter is one fused kernel instead of a dozen per tensor.
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=True if _all_on_cuda(params) else None)
    if hp.optimizer_type == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=hp.momentum or 0.0, weight_decay=wd)
    if hp.optimizer_type == "rmsprop":
        # MXNet's RMSProp decays the squared-gradient average with gamma1 = 0.9 (torch's default is 0.99).
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-8, weight_decay=wd)
    raise ValueError(f"optimizer_type={hp.optimizer_type!r}: must be one of adam, sgd, rmsprop")


def clip_gradients(params: Iterable[Tensor], hp: Hyperparameters) -> None:
    """Clamp every gradient value to ``[-clip_gradient, clip_gradient]`` as the built-in algorithm
    does (element-wise, not by norm); ``clip_gradient <= 0`` disables clipping."""
    if hp.clip_gradient > 0:
        torch.nn.utils.clip_grad_value_(params, hp.clip_gradient)


class LearningRateSchedule:
    """Drives the optimizer's learning rate from updates and checkpoint results.

    The rate in effect after ``on_batch(n)`` is the one update ``n + 1`` uses:

    - ``plateau_reduce``: ``learning_rate`` times ``plateau_reduce_lr_factor`` for every run of
      ``plateau_reduce_lr_threshold`` consecutive checkpoints without improvement;
    - ``fixed_rate_inv_t``: ``lr0 / (1 + t / half_life)``;
    - ``fixed_rate_inv_sqrt_t``: ``lr0 / sqrt(1 + 3 t / half_life)``;

    with ``t = n / checkpoint_frequency_num_batches`` (checkpoints, fractional), so both fixed-rate
    schedules halve the rate after ``fixed_rate_lr_half_life`` checkpoints, as Sockeye's do.
    ``learning_rate_warmup = W > 0`` multiplies any of them by ``min(1, n / W)``; before the first
    update it counts as ``n = 1`` so that no update runs at a zero rate.

    Its state (counters and the plateau reductions so far) is small and goes into checkpoints via
    :meth:`state_dict`, so a resumed job continues the same sequence of rates.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, hp: Hyperparameters) -> None:
        if hp.lr_scheduler_type not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler_type={hp.lr_scheduler_type!r}: must be one of {', '.join(LR_SCHEDULERS)}")
        self.optimizer = optimizer
        self.kind = hp.lr_scheduler_type
        self.base_lr = hp.learning_rate
        self.warmup = hp.learning_rate_warmup
        self.reduce_factor = hp.plateau_reduce_lr_factor
        self.reduce_threshold = hp.plateau_reduce_lr_threshold
        self.half_life = hp.fixed_rate_lr_half_life
        self.checkpoint_interval = hp.checkpoint_frequency_num_batches
        self.num_updates = 0
        self.plateau_scale = 1.0
        self.checkpoints_without_improvement = 0
        self._apply()

    @property
    def current_lr(self) -> float:
        return self.base_lr * self._schedule_factor() * self._warmup_factor()

    def _schedule_factor(self) -> float:
        if self.kind == "plateau_reduce":
            return self.plateau_scale
        t = self.num_updates / self.checkpoint_interval
        if self.kind == "fixed_rate_inv_t":
            return 1.0 / (1.0 + t / self.half_life)
        return 1.0 / math.sqrt(1.0 + 3.0 * t / self.half_life)

    def _warmup_factor(self) -> float:
        if self.warmup <= 0:
            return 1.0
        return min(1.0, max(self.num_updates, 1) / self.warmup)

    def _apply(self) -> None:
        lr = self.current_lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def on_batch(self, num_updates: int) -> None:
        """Call after every optimizer update with the total number of updates so far."""
        self.num_updates = num_updates
        self._apply()

    def on_checkpoint(self, improved: bool) -> bool:
        """Call after every checkpoint evaluation; returns whether the rate was just reduced (the
        trainer may log it). Only ``plateau_reduce`` reacts."""
        if self.kind != "plateau_reduce":
            return False
        if improved:
            self.checkpoints_without_improvement = 0
            return False
        self.checkpoints_without_improvement += 1
        if self.checkpoints_without_improvement < self.reduce_threshold:
            return False
        self.plateau_scale *= self.reduce_factor
        self.checkpoints_without_improvement = 0
        self._apply()
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_updates": self.num_updates,
            "plateau_scale": self.plateau_scale,
            "checkpoints_without_improvement": self.checkpoints_without_improvement,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters and set the optimizer's rate to match (after loading the optimizer's
        own state, whose saved rate this overrides with the same value)."""
        self.num_updates = int(state["num_updates"])
        self.plateau_scale = float(state["plateau_scale"])
        self.checkpoints_without_improvement = int(state["checkpoints_without_improvement"])
        self._apply()


def build_schedule(optimizer: torch.optim.Optimizer, hp: Hyperparameters) -> LearningRateSchedule:
    return LearningRateSchedule(optimizer, hp)
