"""Optimizers, value clipping and learning-rate schedules as the built-in algorithm means them."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from model.hyperparameters import Hyperparameters
from model.optim import LearningRateSchedule, build_optimizer, build_schedule, clip_gradients


def one_param(value: float = 1.0) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor([value]))


def schedule(**kw: object) -> tuple[torch.optim.Optimizer, LearningRateSchedule]:
    hp = Hyperparameters(**kw)  # type: ignore[arg-type]
    opt = build_optimizer([one_param()], hp)
    return opt, build_schedule(opt, hp)


def lr_of(opt: torch.optim.Optimizer) -> float:
    (lr,) = {g["lr"] for g in opt.param_groups}
    return lr


# --- optimizers ----------------------------------------------------------------------------------


def test_adam_uses_coupled_l2_weight_decay_like_mxnet():
    p = one_param(1.0)
    opt = build_optimizer([p], Hyperparameters(optimizer_type="adam", learning_rate=0.01, weight_decay=0.1))
    assert type(opt) is torch.optim.Adam
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["weight_decay"] == 0.1
    p.grad = torch.zeros(1)
    opt.step()
    # L2: the gradient becomes wd * w, and Adam's first step moves by ~lr; decoupled decay would give 0.999.
    assert p.item() == pytest.approx(0.99, abs=1e-6)


def test_sgd_momentum_none_means_zero():
    opt = build_optimizer([one_param()], Hyperparameters(optimizer_type="sgd", learning_rate=0.5))
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["momentum"] == 0.0
    p = one_param(1.0)
    opt = build_optimizer([p], Hyperparameters(optimizer_type="sgd", learning_rate=0.5, weight_decay=0.1))
    p.grad = torch.tensor([2.0])
    opt.step()
    assert p.item() == pytest.approx(1.0 - 0.5 * (2.0 + 0.1 * 1.0))


def test_sgd_momentum_given():
    p = one_param(0.0)
    opt = build_optimizer([p], Hyperparameters(optimizer_type="sgd", learning_rate=1.0, momentum=0.9))
    assert opt.param_groups[0]["momentum"] == 0.9
    for _ in range(2):
        p.grad = torch.tensor([1.0])
        opt.step()
    assert p.item() == pytest.approx(-(1.0 + 1.9))  # buffer 1, then 0.9 * 1 + 1


def test_rmsprop():
    p = one_param(0.0)
    opt = build_optimizer([p], Hyperparameters(optimizer_type="rmsprop", learning_rate=0.01))
    assert type(opt) is torch.optim.RMSprop and opt.param_groups[0]["alpha"] == 0.9
    p.grad = torch.tensor([2.0])
    opt.step()
    # v = 0.1 * g^2; step = lr * g / sqrt(v)
    assert p.item() == pytest.approx(-0.01 * 2.0 / math.sqrt(0.1 * 4.0), rel=1e-5)


def test_unknown_optimizer_rejected():
    with pytest.raises(ValueError, match="optimizer_type"):
        build_optimizer([one_param()], Hyperparameters(optimizer_type="adagrad"))


# --- clipping ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clip", "expected"),
    [(1.0, [-1.0, 0.5, 1.0]), (2.5, [-2.5, 0.5, 2.5]), (-1.0, [-5.0, 0.5, 3.0]), (0.0, [-5.0, 0.5, 3.0])],
)
def test_clip_gradient_values(clip, expected):
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([-5.0, 0.5, 3.0])
    frozen = torch.nn.Parameter(torch.zeros(2))  # no gradient: skipped, not an error
    clip_gradients([p, frozen], Hyperparameters(clip_gradient=clip))
    assert p.grad.tolist() == expected and frozen.grad is None


# --- schedules -----------------------------------------------------------------------------------


def test_plateau_reduce_after_threshold_then_counter_resets():
    opt, s = schedule(learning_rate=1.0, plateau_reduce_lr_factor=0.5, plateau_reduce_lr_threshold=2)
    assert s.current_lr == 1.0 and lr_of(opt) == 1.0
    assert s.on_checkpoint(False) is False and s.current_lr == 1.0
    assert s.on_checkpoint(False) is True and s.current_lr == 0.5 and lr_of(opt) == 0.5
    assert s.on_checkpoint(False) is False and s.current_lr == 0.5  # counter was reset
    assert s.on_checkpoint(True) is False  # improvement resets it too
    assert s.on_checkpoint(False) is False and s.current_lr == 0.5
    assert s.on_checkpoint(False) is True and s.current_lr == 0.25
    s.on_batch(10_000)
    assert s.current_lr == 0.25  # plateau_reduce does not decay with updates


@pytest.mark.parametrize(
    ("num_updates", "expected"),
    [(0, 1.0), (5, 1 / 1.25), (20, 0.5), (60, 0.25)],  # t = n / 10 checkpoints, half-life 2
)
def test_fixed_rate_inv_t(num_updates, expected):
    opt, s = schedule(
        lr_scheduler_type="fixed_rate_inv_t",
        learning_rate=1.0,
        checkpoint_frequency_num_batches=10,
        fixed_rate_lr_half_life=2,
    )
    s.on_batch(num_updates)
    assert s.current_lr == pytest.approx(expected) and lr_of(opt) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("num_updates", "expected"),
    [(0, 1.0), (5, 1 / math.sqrt(1.75)), (20, 0.5), (60, 1 / math.sqrt(10))],
)
def test_fixed_rate_inv_sqrt_t(num_updates, expected):
    opt, s = schedule(
        lr_scheduler_type="fixed_rate_inv_sqrt_t",
        learning_rate=1.0,
        checkpoint_frequency_num_batches=10,
        fixed_rate_lr_half_life=2,
    )
    s.on_batch(num_updates)
    assert s.current_lr == pytest.approx(expected) and lr_of(opt) == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["fixed_rate_inv_t", "fixed_rate_inv_sqrt_t"])
def test_fixed_rate_schedules_halve_at_half_life_and_ignore_checkpoints(kind):
    _, s = schedule(lr_scheduler_type=kind, learning_rate=0.2, checkpoint_frequency_num_batches=1000)
    for _ in range(5):
        assert s.on_checkpoint(False) is False
    s.on_batch(10 * 1000)  # default half-life: 10 checkpoints
    assert s.current_lr == pytest.approx(0.1)


def test_warmup_is_linear_then_hands_over():
    opt, s = schedule(learning_rate=1.0, learning_rate_warmup=4)
    assert s.current_lr == 0.25  # the first update already moves
    rates = []
    for n in range(1, 7):
        s.on_batch(n)
        rates.append(lr_of(opt))
    assert rates == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_warmup_multiplies_the_schedule():
    _, s = schedule(
        lr_scheduler_type="fixed_rate_inv_t",
        learning_rate=1.0,
        learning_rate_warmup=4,
        checkpoint_frequency_num_batches=1,
        fixed_rate_lr_half_life=2,
    )
    s.on_batch(2)
    assert s.current_lr == pytest.approx(0.5 * 0.5)
    _, s = schedule(learning_rate=1.0, learning_rate_warmup=10, plateau_reduce_lr_threshold=1)
    s.on_batch(5)
    s.on_checkpoint(False)
    assert s.current_lr == pytest.approx(0.5 * 0.5)


def test_scheduled_rate_drives_the_update():
    p = one_param(0.0)
    hp = Hyperparameters(optimizer_type="sgd", learning_rate=1.0, learning_rate_warmup=2)
    opt = build_optimizer([p], hp)
    s = build_schedule(opt, hp)
    p.grad = torch.tensor([1.0])
    opt.step()  # at 0.5
    s.on_batch(1)  # still 0.5
    opt.step()
    s.on_batch(2)  # 1.0
    opt.step()
    assert p.item() == pytest.approx(-2.0)


def test_rate_applies_to_every_param_group():
    hp = Hyperparameters(learning_rate=0.1, plateau_reduce_lr_threshold=1)
    opt = build_optimizer([{"params": [one_param()]}, {"params": [one_param()], "lr": 9.0}], hp)
    s = build_schedule(opt, hp)
    s.on_checkpoint(False)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.05)] * 2


@pytest.mark.parametrize("kind", ["plateau_reduce", "fixed_rate_inv_t", "fixed_rate_inv_sqrt_t"])
def test_state_dict_round_trip_continues_the_sequence(kind):
    hp = Hyperparameters(
        lr_scheduler_type=kind,
        learning_rate=0.3,
        learning_rate_warmup=7,
        checkpoint_frequency_num_batches=5,
        fixed_rate_lr_half_life=1,
        plateau_reduce_lr_threshold=2,
    )
    events = [(n, n % 5 == 0 and n % 15 != 0) for n in range(1, 41)]  # (update, checkpoint without improvement)

    def run(s: LearningRateSchedule, opt: torch.optim.Optimizer, part: list[tuple[int, bool]]) -> list[float]:
        out = []
        for n, plateau in part:
            s.on_batch(n)
            if n % 5 == 0:
                s.on_checkpoint(not plateau)
            out.append(lr_of(opt))
        return out

    opt = build_optimizer([one_param()], hp)
    s = build_schedule(opt, hp)
    straight = run(s, opt, events)

    opt1 = build_optimizer([one_param()], hp)
    s1 = build_schedule(opt1, hp)
    first = run(s1, opt1, events[:23])
    saved = copy.deepcopy(s1.state_dict())
    opt2 = build_optimizer([one_param()], hp)
    s2 = build_schedule(opt2, hp)
    s2.load_state_dict(saved)
    assert lr_of(opt2) == pytest.approx(first[-1])  # the resumed optimizer starts at the saved rate
    assert first + run(s2, opt2, events[23:]) == pytest.approx(straight)
    assert len(set(straight)) > 3  # the sequence actually changes


def test_state_dict_survives_torch_save(tmp_path):
    _, s = schedule(learning_rate=1.0, plateau_reduce_lr_threshold=1)
    s.on_batch(17)
    s.on_checkpoint(False)
    torch.save(s.state_dict(), tmp_path / "lr.pt")
    _, s2 = schedule(learning_rate=1.0, plateau_reduce_lr_threshold=1)
    s2.load_state_dict(torch.load(tmp_path / "lr.pt", weights_only=True))
    assert s2.state_dict() == s.state_dict() and s2.current_lr == 0.5


def test_unknown_scheduler_rejected():
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        schedule(lr_scheduler_type="cosine")
