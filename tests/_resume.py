"""Shared by the resume tests: train a config straight through, and again cut at a step and resumed."""

import pytest

from recon.train.trainer import Trainer


def straight_and_resumed(cfg, tmp_path, cut: int):
    """-> (the trainer that ran ``cfg`` straight through, the one stopped after step ``cut`` and resumed)."""
    straight = Trainer(cfg, tmp_path / "a")
    straight.train()

    def stop(step, trainer):
        if step == cut:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first = Trainer(cfg, tmp_path / "b", hooks=[stop])
        first.train()
    first.save()
    resumed = Trainer(cfg, tmp_path / "b", resume=True)
    resumed.train()
    return straight, resumed
