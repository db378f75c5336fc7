"""The training loop's progress lines."""

from __future__ import annotations


def test_progress_lines_come_during_validation_too_and_rates_are_per_window(caplog):
    """The task log hears from training at least every interval, whatever it is doing, and the rates
    describe the last window: an idle window reads 0, not the average since the start."""
    import logging
    import time
    from types import SimpleNamespace

    from model.distributed import DistInfo
    from model.hyperparameters import parse_hyperparameters
    from model.progress import Progress
    from model.training import TrainingState

    hp = parse_hyperparameters({"max_num_batches": "1000"})
    trainer = SimpleNamespace(state=TrainingState(), hp=hp, dist=DistInfo(),
                              schedule=SimpleNamespace(current_lr=0.0003))
    caplog.set_level(logging.INFO, logger="model.training")
    with Progress(trainer, interval=3600) as progress:
        progress.num_batches = 50
        trainer.state.num_updates, trainer.state.target_tokens, trainer.state.batch_in_epoch = 100, 5000, 10
        time.sleep(0.05)
        progress.log_line()
        assert "update 100/1000" in caplog.text and " 0.00 updates/s" not in caplog.text
        caplog.clear()
        progress.log_line()  # nothing trained since the last line
        assert " 0.00 updates/s, 0 target tokens/s" in caplog.text
        caplog.clear()
        with progress.phase("checkpoint 1: validating"):
            time.sleep(0.05)
            progress.log_line()
        assert "checkpoint 1: validating (0m00s so far; update 100)" in caplog.text
        assert progress.checkpoint_seconds >= 0.05
    caplog.clear()
    with Progress(trainer, interval=0.02):
        time.sleep(0.2)  # the thread alone must speak up
    assert caplog.text.count("target tokens/s") >= 2
