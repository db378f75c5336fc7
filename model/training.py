"""The training loop: updates, checkpoints, evaluation, early stopping, resume — the built-in
algorithm's semantics (docs/ARCHITECTURE.md §4; the README's hyperparameter table) on PyTorch.

Every ``checkpoint_frequency_num_batches`` updates the model is evaluated on the validation channel
(perplexity and accuracy always, BLEU with beam search when ``bleu_sample_size`` asks for it or
``optimized_metric`` is bleu), the metric lines are printed, the best weights so far go to the model
directory, and the whole training state goes to the checkpoint directory. Training stops after
``checkpoint_threshold`` checkpoints without improvement (never before ``min_num_epochs``), at
``max_num_batches`` / ``max_num_epochs``, or when ``max_training_seconds`` of wall-clock time are spent.

Under DDP (``torchrun``) every rank trains on its shard of each epoch's batches; rank 0 evaluates and
writes, and broadcasts its decisions so that every rank stops at the same update.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model import checkpoint as ckpt
from model import data_io, metrics
from model.averaging import BEST_DIR, BestCheckpoints, better_or_equal
from model.checkpoint_decoder import bleu_sample, evaluate_bleu, evaluate_likelihood
from model.constants import CHECKPOINT_FILE
from model.distributed import DistInfo, parameter_checksum
from model.hyperparameters import Hyperparameters, architecture_names
from model.loss import forward_real, token_losses
from model.optim import LearningRateSchedule, clip_gradients
from model.precision import autocast_context
from model.progress import Progress, format_duration

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 30.0  # at most this long between two progress lines in the log
STOPPED_BY_SIGTERM = "stopped by SIGTERM"
BUDGETS = ("max_num_batches", "max_num_epochs", "max_training_seconds")  # the limits a later job may raise


def budget_reason(hp: Hyperparameters, name: str) -> str:
    """The stop reason of a job that spent one of its ``BUDGETS``; ``resume`` reads the name back."""
    return f"{name}={getattr(hp, name)} reached"


def budgets_reached(hp: Hyperparameters, state: TrainingState, out_of_time: bool | None = None) -> list[str]:
    """The budget hyperparameters that ``state`` has spent (none, one or several). `out_of_time` replaces
    the clock's own verdict where the ranks must agree on it (each rank's clock reads a little apart)."""
    if out_of_time is None:
        out_of_time = hp.max_training_seconds is not None and state.seconds >= hp.max_training_seconds
    spent = {"max_num_batches": 0 < hp.max_num_batches <= state.num_updates,
             "max_num_epochs": hp.max_num_epochs is not None and state.epoch >= hp.max_num_epochs,
             "max_training_seconds": out_of_time}
    return [name for name in BUDGETS if spent[name]]


@dataclass
class TrainingState:
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already trained (this rank's shard)
    num_updates: int = 0
    num_checkpoints: int = 0
    best_metric: float | None = None
    best_checkpoint: int = 0
    checkpoints_without_improvement: int = 0
    last_checkpoint_update: int = 0  # num_updates at the last checkpoint (every rank keeps it)
    target_tokens: int = 0
    seconds: float = 0.0  # wall-clock time of the training loop, checkpoints included, summed over restarts
    stop_reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    average: dict[str, Any] | None = None  # what checkpoint averaging found at the end (average_checkpoints > 1)


def compile_for_training(model: nn.Module, hp: Hyperparameters, device: torch.device) -> nn.Module:
    """The model the training step runs: ``torch.compile``d (dynamic shapes, since every batch has its own)
    when ``torch_compile`` asks for it, else the model itself. Evaluation and search always run the plain
    model: their shapes change every step, and they are a small part of the time."""
    if hp.torch_compile == "off" or (hp.torch_compile == "auto" and device.type != "cuda"):
        return model
    log.info("compiling the training step with torch.compile (the first updates take longer)")
    return torch.compile(model, dynamic=True)


class StopSignal:
    """SIGTERM (SageMaker's stop, spot interruption) becomes a flag the loop checks after each update,
    so the job saves a checkpoint and exits cleanly instead of dying mid-write."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopSignal:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: finishing this update, saving a checkpoint, then exiting")
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Trainer:
    def __init__(
        self,
        hp: Hyperparameters,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LearningRateSchedule,
        train_data: data_io.ParallelData,
        val_data: data_io.ParallelData,
        target_tokens: list[str],
        model_dir: Path,
        checkpoint_dir: Path,
        device: torch.device,
        dist: DistInfo | None = None,
        parent: Mapping[str, Any] | None = None,
        sharded_train: bool = False,
    ) -> None:
        self.hp = hp
        self.parent = dict(parent) if parent is not None else None  # a warm start's parent, for metrics.json
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.train_data = train_data
        self.val_data = val_data
        self.target_tokens = target_tokens
        self.model_dir = model_dir
        self.checkpoint_dir = checkpoint_dir
        self.device = device
        self.dist = dist or DistInfo()
        # ShardedByS3Key: each host holds its own training files; its ranks split them, and every rank runs
        # as many updates an epoch as the smallest share allows (else the others would wait forever).
        self.sharded_train = sharded_train
        self.config = data_io.DataConfig.from_hyperparameters(hp)
        self.state = TrainingState()
        self.bleu_indices = bleu_sample(len(val_data), hp)
        self.length_ratio = data_io.length_ratio(train_data)
        self.eval_batch_size = hp.batch_size if hp.batch_type == "sentence" else max(
            1, hp.batch_size // (hp.max_seq_len_target + 1))
        self._window = {"loss": 0.0, "nll": 0.0, "correct": 0, "tokens": 0}
        self._clock_start: tuple[float, float] | None = None  # (monotonic time, state.seconds) when fit began
        self._step_model: nn.Module | None = None  # what train_step runs: the model, or it compiled
        self._step_sums: list[torch.Tensor] = []  # loss, NLL, correct of the steps not yet in _window
        # With average_checkpoints > 1: the best parameter sets, on disk beside the training checkpoint.
        self.best_params = (BestCheckpoints(checkpoint_dir / BEST_DIR, hp.average_checkpoints, hp.optimized_metric)
                            if hp.average_checkpoints > 1 else None)

    # --- checkpoints -------------------------------------------------------------------------------
    @property
    def checkpoint_file(self) -> Path:
        return self.checkpoint_dir / CHECKPOINT_FILE

    def tick(self) -> float:
        """The training loop's wall-clock seconds so far, over every run of the job (kept in the state,
        so that ``max_training_seconds`` is one budget for a job however often it is restarted)."""
        if self._clock_start is not None:
            started, before = self._clock_start
            self.state.seconds = before + time.monotonic() - started
        return self.state.seconds

    def save_checkpoint(self) -> None:
        self.tick()
        if not self.dist.is_main:
            return
        ckpt.torch_save(self.checkpoint_file, {
            "format_version": ckpt.FORMAT_VERSION,
            "hyperparameters": asdict(self.hp),
            "model": ckpt.unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "state": asdict(self.state),
            "window": dict(self._flush_window()),
            "torch_rng": torch.get_rng_state(),
        })

    def resume(self) -> bool:
        """Carry on from ``checkpoint.pt`` when one is there (a restarted spot job): same weights,
        optimizer moments, learning rate, batch count and position in the epoch's shuffled order."""
        if not self.checkpoint_file.is_file():
            return False
        saved = ckpt.torch_load(self.checkpoint_file, "training checkpoint")
        if saved.get("format_version") != ckpt.FORMAT_VERSION:
            raise ValueError(f"{self.checkpoint_file}: unknown checkpoint format {saved.get('format_version')!r}")
        old = saved["hyperparameters"]
        changed = [k for k in architecture_names() if k in old and old[k] != getattr(self.hp, k)]
        if changed:
            raise ValueError(f"{self.checkpoint_file} was written with different architecture hyperparameters "
                             f"({', '.join(changed)}); remove the checkpoint or restore them")
        ckpt.unwrap(self.model).load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.state = TrainingState(**saved["state"])
        if self.state.stop_reason == STOPPED_BY_SIGTERM:  # written by an older version: the job is not done
            self.state.stop_reason = ""
        finished_on = self.state.stop_reason.split("=", 1)[0]
        if finished_on in BUDGETS and not budgets_reached(self.hp, self.state):
            # A finished job restarted with a larger budget (more updates, epochs or seconds) trains on from
            # its last update: one longer run, not a new one; the same limits keep it finished.
            log.info("the checkpoint's job stopped at %s; this job's budget is larger, so training goes on",
                     self.state.stop_reason)
            self.state.stop_reason = ""
        self._window.update(saved.get("window") or {})
        torch.set_rng_state(saved["torch_rng"])
        log.info("resumed from %s: %d updates done, epoch %d, batch %d of the epoch, %d checkpoints, best %s=%s",
                 self.checkpoint_file, self.state.num_updates, self.state.epoch + 1, self.state.batch_in_epoch,
                 self.state.num_checkpoints, self.hp.optimized_metric, self.state.best_metric)
        return True

    def agree_on_start(self) -> None:
        """Every rank must start from the same point: SageMaker copies the one checkpoint prefix to every host,
        so a difference means the hosts were given different checkpoints, and training on would hang or
        silently mix two runs."""
        if not self.dist.enabled:
            return
        mine = torch.tensor([self.state.num_updates, self.state.epoch, self.state.batch_in_epoch], dtype=torch.int64,
                            device=self.device)
        every = [torch.zeros_like(mine) for _ in range(self.dist.world_size)]
        torch.distributed.all_gather(every, mine)
        starts = [tuple(int(v) for v in t.tolist()) for t in every]
        if len(set(starts)) > 1:
            where = "; ".join(f"rank {r}: {u} updates (epoch {e + 1}, batch {b})" for r, (u, e, b) in enumerate(starts))
            raise ValueError(f"the ranks' checkpoints differ ({where}): every host must get the same checkpoint "
                             "prefix; remove the stale checkpoints or restore the missing ones")

    def epoch_batches(self) -> list:
        """This rank's batches of the current epoch (index arrays), the same number on every rank."""
        batches = data_io.make_batches(self.train_data, self.config, self.state.epoch)
        if not self.sharded_train:  # every rank holds all the data: the ranks take turns through its batches
            return data_io.shard(batches, self.dist.rank, self.dist.world_size)
        mine = data_io.shard(batches, self.dist.local_rank, self.dist.local_world_size)
        counts = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.dist.world_size)]
        torch.distributed.all_gather(counts, torch.tensor([len(mine)], dtype=torch.int64, device=self.device))
        per_rank = [int(c.item()) for c in counts]
        usable = min(per_rank)
        if self.dist.is_main and self.state.batch_in_epoch == 0:
            log.info("epoch %d: the ranks' shards give %s batches; each rank runs %d (the rest of a larger shard "
                     "comes round in later epochs' shuffles)", self.state.epoch + 1,
                     "/".join(map(str, per_rank)), usable)
        return mine[:usable]

    # --- evaluation ----------------------------------------------------------------------------------
    def checkpoint(self) -> bool:
        """Evaluate, print metrics, keep the best weights, save the training state. True = stop now."""
        decision = [False, False]  # improved, stop
        if self.dist.enabled:  # DDP keeps the replicas equal: every rank's log shows the same checksum
            log.info("parameter checksum at update %d: %s (%s)", self.state.num_updates,
                     parameter_checksum(ckpt.unwrap(self.model).state_dict()), self.dist.describe())
        if self.dist.is_main:
            decision = self._evaluate_and_save()
        if self.dist.enabled:
            torch.distributed.broadcast_object_list(decision, src=0)
        improved, stop = decision
        if not self.dist.is_main:
            self._count_checkpoint(improved)
        return stop

    def _count_checkpoint(self, improved: bool) -> None:
        self.state.num_checkpoints += 1
        self.state.last_checkpoint_update = self.state.num_updates
        self.state.checkpoints_without_improvement = 0 if improved else self.state.checkpoints_without_improvement + 1
        self.schedule.on_checkpoint(improved)

    def _validate(self, model: nn.Module, bleu: bool) -> dict[str, float]:
        """The validation channel's scores of `model`, as checkpoints and checkpoint averaging both judge it:
        likelihood always, BLEU of the sample when asked."""
        val = evaluate_likelihood(model, self.val_data, self.eval_batch_size, self.device, self.hp.precision)
        values = {"validation:perplexity": val["perplexity"], "validation:accuracy": val["accuracy"]}
        if bleu:
            values["validation:bleu"] = evaluate_bleu(model, self.val_data, self.bleu_indices, self.hp,
                                                      self.target_tokens, self.device, length_ratio=self.length_ratio)
        return values

    def _evaluate_and_save(self) -> list[bool]:
        model = ckpt.unwrap(self.model)
        started = time.monotonic()
        w = self._flush_window()
        values: dict[str, float] = {}
        if w["tokens"]:
            values["train:loss"] = w["loss"] / w["tokens"]
            values["train:perplexity"] = metrics.perplexity(w["nll"], w["tokens"])
            if self.hp.training_metric == "accuracy":
                values["train:accuracy"] = w["correct"] / w["tokens"]
        self._window = {"loss": 0.0, "nll": 0.0, "correct": 0, "tokens": 0}
        values.update(self._validate(model, bleu=self.bleu_indices is not None))
        metrics.emit(values)
        current = values[f"validation:{self.hp.optimized_metric}"]
        improved = metrics.is_better(self.hp.optimized_metric, current, self.state.best_metric)
        self._count_checkpoint(improved)
        if improved:
            self.state.best_metric = current
            self.state.best_checkpoint = self.state.num_checkpoints
            ckpt.save_params(self.model_dir, model)
        if self.best_params is not None:
            self.best_params.offer(self.state.num_checkpoints, current, model.state_dict())
        self.state.history.append({"checkpoint": self.state.num_checkpoints, "updates": self.state.num_updates,
                                   "epoch": self.state.epoch + 1, "learning_rate": self.schedule.current_lr,
                                   "metrics": values, "improved": improved})
        ckpt.save_metrics(self.model_dir, self.summary())
        self.save_checkpoint()
        log.info("checkpoint %d at update %d: %s=%.4g (%s; best %.4g at checkpoint %d), lr %.3g, took %.1fs",
                 self.state.num_checkpoints, self.state.num_updates, self.hp.optimized_metric, current,
                 "improved" if improved else f"{self.state.checkpoints_without_improvement} without improvement",
                 self.state.best_metric, self.state.best_checkpoint, self.schedule.current_lr,
                 time.monotonic() - started)
        stop = (self.state.checkpoints_without_improvement >= self.hp.checkpoint_threshold
                and self.state.epoch >= self.hp.min_num_epochs)
        if stop:
            self.state.stop_reason = (f"{self.hp.checkpoint_threshold} checkpoints without improvement of "
                                      f"{self.hp.optimized_metric}")
        return [improved, stop]

    def summary(self) -> dict[str, Any]:
        best = next((h for h in self.state.history if h["checkpoint"] == self.state.best_checkpoint), None)
        return {
            "optimized_metric": self.hp.optimized_metric,
            "best_checkpoint": self.state.best_checkpoint,
            "best_metric": self.state.best_metric,
            "best_metrics": best["metrics"] if best else {},
            "num_updates": self.state.num_updates,
            "epochs_completed": self.state.epoch,
            "training_seconds": round(self.state.seconds, 1),
            "stop_reason": self.state.stop_reason,
            **({"checkpoint_average": self.state.average} if self.state.average is not None else {}),
            **({"parent": self.parent} if self.parent is not None else {}),
            "history": self.state.history,
        }

    # --- the loop ------------------------------------------------------------------------------------
    def _forward_backward(self, model: nn.Module, batch: data_io.Batch) -> tuple[torch.Tensor, ...]:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.hp.precision):
            logits, targets = forward_real(model, batch)
        loss, nll, correct = token_losses(logits, targets, self.hp.label_smoothing)
        (loss / batch.num_target_tokens).backward()
        return loss, nll, correct

    def train_step(self, batch: data_io.Batch) -> None:
        step_model = self._step_model or self.model
        try:
            loss, nll, correct = self._forward_backward(step_model, batch)
        except Exception as e:
            if step_model is self.model:
                raise
            # A compiler failure must not cost the job: the same update again, uncompiled, and no more tries.
            log.warning("torch.compile failed (%s: %s); training on without it", type(e).__name__,
                        str(e).strip().splitlines()[0][:300] if str(e).strip() else "")
            self._step_model = self.model
            loss, nll, correct = self._forward_backward(self.model, batch)
        clip_gradients(self.model.parameters(), self.hp)
        self.optimizer.step()
        self.state.num_updates += 1
        self.schedule.on_batch(self.state.num_updates)
        self.state.target_tokens += batch.num_target_tokens
        # Kept on the device and read at checkpoints only: a float() here would wait for the GPU every step.
        self._step_sums.append(torch.stack([loss.detach().double(), nll.double(), correct.double()]))
        self._window["tokens"] += batch.num_target_tokens

    def _flush_window(self) -> dict[str, float]:
        """The train loss window with the device-side sums of the steps since the last read added in."""
        if self._step_sums:
            # Added one step at a time, in order: the same floats whether or not a restart came in between.
            for loss, nll, correct in torch.stack(self._step_sums).tolist():
                self._window["loss"] += loss
                self._window["nll"] += nll
                self._window["correct"] += int(correct)
            self._step_sums = []
        return self._window

    def _stops_agreed(self, stop_signal: StopSignal) -> tuple[bool, list[str]]:
        """(SIGTERM, spent budgets) as the ranks agree on them, with the clock read now: any rank's SIGTERM
        or spent time stops them all at the same update, so that none waits forever in the next
        all-reduce. Updates and epochs are the same on every rank; only the clocks read apart."""
        self.tick()
        sigterm = stop_signal.requested
        out_of_time = "max_training_seconds" in budgets_reached(self.hp, self.state)
        if self.dist.enabled:
            flags = torch.tensor([float(sigterm), float(out_of_time)], device=self.device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            sigterm, out_of_time = bool(flags[0] > 0), bool(flags[1] > 0)
        return sigterm, budgets_reached(self.hp, self.state, out_of_time)

    def _updates_since_checkpoint(self) -> int:
        return self.state.num_updates - self.state.last_checkpoint_update

    def fit(self) -> TrainingState:
        """Train to the job's own stopping criteria, from where a checkpoint left off if there is one.

        A SIGTERM saves a checkpoint and returns with ``stop_reason`` set, but the checkpoint records the
        job as unfinished, so a restarted job carries on to the same end as one never interrupted."""
        hp = self.hp
        self.model.train()
        progress = Progress(self, PROGRESS_SECONDS) if self.dist.is_main else None
        self._clock_start = (time.monotonic(), self.state.seconds)
        if self._step_model is None:
            self._step_model = compile_for_training(self.model, hp, self.device)

        with StopSignal() as stop_signal, progress or contextlib.nullcontext():
            while not self.state.stop_reason:
                _, spent = self._stops_agreed(stop_signal)  # at an epoch's end, or a restart at a spent budget
                if spent:
                    self.state.stop_reason = budget_reason(hp, spent[0])
                    break
                batches = self.epoch_batches()
                if not batches:
                    raise data_io.ChannelError("channel 'train' gives no batch on this rank: fewer batches than "
                                               f"processes ({self.dist.world_size})")
                if progress:
                    progress.num_batches = len(batches)
                if self.dist.is_main and self.state.batch_in_epoch == 0:
                    log.info("epoch %d: %s", self.state.epoch + 1, data_io.describe_batches(self.train_data, batches))
                for i in range(self.state.batch_in_epoch, len(batches)):
                    self.train_step(data_io.collate(self.train_data, batches[i]).to(self.device))
                    self.state.batch_in_epoch = i + 1
                    sigterm, spent = self._stops_agreed(stop_signal)
                    if sigterm:
                        self.save_checkpoint()  # state.stop_reason is still "": a restart carries on
                        self.state.stop_reason = STOPPED_BY_SIGTERM
                        if self.dist.is_main:
                            log.info("stopped by SIGTERM at update %d; checkpoint saved to %s: a restarted job "
                                     "resumes from it", self.state.num_updates, self.checkpoint_file)
                        return self.state
                    if (self.state.num_updates % hp.checkpoint_frequency_num_batches == 0
                            and self._timed_checkpoint(progress)):
                        break
                    if spent:  # a checkpoint changes neither the updates, the epoch nor the agreed time verdict
                        self.state.stop_reason = budget_reason(hp, spent[0])
                        break
                else:
                    self.state.epoch += 1
                    self.state.batch_in_epoch = 0
                    if self.dist.is_main:
                        log.info("epoch %d done (%d updates)", self.state.epoch, self.state.num_updates)
            if self._updates_since_checkpoint() or self.state.num_checkpoints == 0:
                self._timed_checkpoint(progress)  # the updates after the last checkpoint count too
        if self.dist.is_main and self.best_params is not None:
            self.average_best_checkpoints()
        if self.dist.is_main:
            ckpt.save_metrics(self.model_dir, self.summary())
            train_s = progress.training_seconds if progress else 0.0
            eval_s = progress.checkpoint_seconds if progress else 0.0
            log.info("training done: %s; %d updates (%d in this process), %.0f target tokens/s over %s of training "
                     "+ %s of checkpoints and validation; best %s=%.4g at checkpoint %d",
                     self.state.stop_reason, self.state.num_updates,
                     progress.updates_done if progress else 0,
                     (progress.tokens_done if progress else 0) * self.dist.world_size / max(train_s, 1e-9),
                     format_duration(train_s), format_duration(eval_s), hp.optimized_metric,
                     self.state.best_metric if self.state.best_metric is not None else math.nan,
                     self.state.best_checkpoint)
        return self.state

    def average_best_checkpoints(self) -> None:
        """Score the average of the kept best parameter sets on the validation channel and make it the model
        if it is at least as good as the best single checkpoint; both scores go to the log as metric lines
        (``average:<metric>``, ``best_checkpoint:<metric>``: names the validation regexes do not match) and to
        metrics.json. Reads everything from disk, so a job restarted after training redoes the same."""
        assert self.best_params is not None
        metric = self.hp.optimized_metric
        avg, used = self.best_params.average()
        if len(used) < 2:
            log.info("checkpoint averaging: %d checkpoint(s) kept, nothing to average", len(used))
            return
        model = ckpt.unwrap(self.model)
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(avg)
        value = self._validate(model, bleu=metric == "bleu")[f"validation:{metric}"]
        best = self.state.best_metric if self.state.best_metric is not None else math.nan
        kept = better_or_equal(metric, value, best)
        metrics.emit({f"average:{metric}": value, f"best_checkpoint:{metric}": best})
        if kept:
            ckpt.save_params(self.model_dir, model)
        model.load_state_dict(trained)
        self.state.average = {"checkpoints": used, metric: value, f"best_checkpoint_{metric}": best, "kept": kept}
        log.info("checkpoint averaging: the average of checkpoints %s has %s=%.4g, the best single one (checkpoint "
                 "%d) %.4g: %s", ", ".join(map(str, used)), metric, value, self.state.best_checkpoint, best,
                 "the average is the model" if kept else "the best single checkpoint stays the model")

    def _timed_checkpoint(self, progress: Progress | None) -> bool:
        if progress is None:
            return self.checkpoint()
        with progress.phase(f"checkpoint {self.state.num_checkpoints + 1}: validating"):
            return self.checkpoint()
