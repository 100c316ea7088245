"""The training loop: data, optimizer groups, schedules, losses, eval, checkpoints, logging, progress bar.

One flat loop; the method-specific pieces (scene construction, densification) are plain functions/objects.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import torch

from recon.data.dataset import SceneData
from recon.evaluate import alpha_is_mask, evaluate_split
from recon.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from recon.train.config import METHODS, save_config, validate
from recon.train.init import scene_extent
from recon.train.method import build_method

CKPT_KEEP = 2


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped training after a checkpoint was written; ``signum`` says which."""

    def __init__(self, name: str, signum: int):
        super().__init__(name)
        self.signum = signum


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says where the last good checkpoint is."""


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; a named device must exist (ValueError otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this torch build sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {name!r}")
    return device


def default_run_dir(method: str, data: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("outputs") / f"{method}-{Path(data).resolve().name}-{stamp}"


def method_name(cfg) -> str:
    """The method name (``recon train <name>``) of a training config."""
    for name, klass in METHODS.items():
        if type(cfg) is klass:
            return name
    raise TypeError(f"not a training config: {type(cfg).__name__}")


def load_data(cfg) -> SceneData:
    """Load the dataset named by the config (resolving the sample scene)."""
    from recon.data.load import load_dataset

    path = resolve_data_path(cfg.data)
    background = None if cfg.background == "auto" else cfg.background
    return load_dataset(path, format=cfg.data_format, downscale=cfg.downscale, test_every=cfg.test_every,
                        skip_missing_images=cfg.skip_missing_images, background=background,
                        distortion=cfg.distortion)


def resolve_data_path(path: Path) -> Path:
    """``data/sample`` (the default) means the embedded sample scene wherever recon is installed."""
    from recon.data.sample import SAMPLE_SCENE_DIR, ensure_sample_scene

    if Path(path) == Path("data/sample") and not Path(path).is_dir():
        return ensure_sample_scene()
    if Path(path).resolve() == SAMPLE_SCENE_DIR.resolve():
        return ensure_sample_scene()
    return Path(path)


class Trainer:
    """The one training loop (DESIGN.md section 6): trains the method its config names and writes the run
    directory. The loop owns data, data order, random states, checkpoints, signals, logging and evaluation; the
    method (:class:`recon.train.method.Method`, ``self.method``) supplies scene, optimizer, step and exports.
    """

    def __init__(self, cfg, run_dir: Path, resume: bool = False,
                 hooks: list[Callable[[int, Trainer], None]] | None = None):
        validate(cfg)
        self.method_name = method_name(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.hooks = hooks or []
        ckpt = latest_checkpoint(self.run_dir)
        if resume and ckpt is None:
            raise FileNotFoundError(f"no checkpoint to resume from in {self.run_dir / 'checkpoints'}")
        if not resume and ckpt is not None:
            raise ValueError(f"run directory {self.run_dir} already holds checkpoints; continue it with "
                             f"`recon train --resume {self.run_dir}` or choose a new --output")
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.data = load_data(cfg)
        self.train_images = self.data.train.images.to(self.device)
        self.train_cams = self.data.train.cameras.to(self.device)
        self.extent = scene_extent(self.data.train.cameras)
        self.eval_background = torch.tensor(self.data.background, dtype=torch.float32, device=self.device)
        self.mask = alpha_is_mask(cfg.alpha_mode, self.data.format)
        self.method = build_method(self.method_name, self)
        self.settings = self.method.render_settings()
        self.step = 0
        self.train_seconds = 0.0
        self._order: list[int] = []
        state = None
        if ckpt is not None:
            state = load_checkpoint(ckpt)
            missing = sorted(({"scene", "step", "train_seconds", "generator", "order", "torch_rng"}
                              | self.method.state_keys) - set(state))
            if missing:
                raise ValueError(f"{ckpt}: not a complete recon {self.method_name} checkpoint (missing {missing})")
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.method.setup(state, source=str(ckpt))
        if state is not None:
            self.step = int(state["step"])
            self.train_seconds = float(state["train_seconds"])
            self.generator.set_state(state["generator"])
            self._order = [int(i) for i in state["order"]]
            torch.set_rng_state(state["torch_rng"])
            if torch.cuda.is_available() and state.get("cuda_rng"):
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            print(f"recon: resumed {self.run_dir} from {ckpt.name} (step {self.step})")
        self._stop_signal: int | None = None

    # --- checkpoints -----------------------------------------------------------------------------------
    def save(self) -> Path:
        """Write a checkpoint holding everything a resumed run needs to continue exactly as an uninterrupted one
        (parameters, Adam moments, densification statistics, data order and random states)."""
        self.check_finite()
        path = self.run_dir / "checkpoints" / f"step-{self.step:07d}.pt"
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        save_checkpoint(path, {**self.method.state(), "step": self.step, "train_seconds": self.train_seconds,
                               "generator": self.generator.get_state(), "order": list(self._order),
                               "torch_rng": torch.get_rng_state(), "cuda_rng": cuda_rng})
        for old in sorted(path.parent.glob("step-*.pt"))[:-CKPT_KEEP]:
            old.unlink()
        return path

    def check_finite(self) -> None:
        """Raise TrainingError (never checkpoint) when a parameter holds NaN/Inf."""
        for name, p in self.method.parameters().items():
            if not torch.isfinite(p.detach().sum()):
                last = latest_checkpoint(self.run_dir)
                raise TrainingError(f"parameter '{name}' became NaN/Inf at step {self.step}; training stopped. "
                                    f"Last good checkpoint: {last or 'none written yet'} (unchanged). "
                                    "Lower the learning rates or check the data for NaNs.")

    def check_loss(self, loss: torch.Tensor) -> None:
        """Raise TrainingError (naming the last good checkpoint) when the loss is NaN/Inf."""
        if not torch.isfinite(loss):
            last = latest_checkpoint(self.run_dir)
            raise TrainingError(f"loss became {loss.item()} at step {self.step}; training stopped. "
                                f"Last good checkpoint: {last or 'none written yet'} (unchanged). "
                                "Lower the learning rates or check the data for NaNs.")

    def _on_signal(self, signum, frame) -> None:
        # The first signal asks for a clean stop at the end of the step; a second one acts as usual.
        self._stop_signal = signum
        signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)

    # --- one step ----------------------------------------------------------------------------------------
    def next_index(self) -> int:
        """The next training view; the order is a permutation per epoch, drawn from the checkpointed generator."""
        if not self._order:
            self._order = torch.randperm(len(self.data.train), generator=self.generator).tolist()
        return self._order.pop()

    def train_step(self) -> dict:
        """Advance the step counter and run the method's optimization step."""
        self.step += 1
        return self.method.step()

    @property
    def scene(self):
        """The method's current scene (what evaluation renders)."""
        return self.method.eval_scene()

    # --- the loop ----------------------------------------------------------------------------------------
    def train(self) -> dict:
        """Run to ``max_steps``, evaluate, export; returns the eval summary. Resumable at any checkpoint."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.run_dir / "config.yaml", self.method_name, cfg)
        # Signal handlers can only be installed from the main thread (not from a notebook or viewer thread).
        in_main = threading.current_thread() is threading.main_thread()
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
        _truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        bar = _progress(cfg, self.step)
        log = (self.run_dir / "metrics.jsonl").open("a")
        try:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                stats = self.train_step()
                self.train_seconds += time.perf_counter() - t0
                if bar is not None:
                    bar.update(1)
                    if self.step % 10 == 0:
                        bar.set_postfix(loss=f"{stats['loss']:.4f}", psnr=f"{stats['psnr']:.2f}",
                                        N=next(iter(self.method.size_stats().values())))
                if self.step % cfg.log_every == 0:
                    log.write(json.dumps({"step": self.step, **stats, **self.method.size_stats(),
                                          "train_seconds": round(self.train_seconds, 3)}) + "\n")
                    log.flush()
                for hook in self.hooks:
                    hook(self.step, self)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                    summary = self.evaluate(save_renders=False)
                    log.write(json.dumps({"step": self.step, "eval_psnr": summary["psnr"],
                                          "eval_ssim": summary["ssim"],
                                          "train_seconds": round(self.train_seconds, 3)}) + "\n")
                    log.flush()
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
                if self._stop_signal is not None:
                    path = self.save()
                    name = signal.Signals(self._stop_signal).name
                    print(f"\nrecon: {name} at step {self.step}; checkpoint {path}. "
                          f"Resume with: recon train --resume {self.run_dir}", file=sys.stderr)
                    raise TrainingInterrupted(name, self._stop_signal)
        finally:
            if bar is not None:
                bar.close()
            log.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
        if latest_checkpoint(self.run_dir) is None or not latest_checkpoint(self.run_dir).name.endswith(
                f"{self.step:07d}.pt"):
            self.save()
        summary = self.evaluate(save_renders=True)
        summary["export"] = str(self.method.export())
        return summary

    @torch.no_grad()
    def evaluate(self, save_renders: bool) -> dict:
        """PSNR/SSIM on the test split (sRGB, over the evaluation background); writes eval.json."""
        renders = self.run_dir / "renders" / "test" if save_renders else None
        summary = evaluate_split(self.method.eval_scene(), self.data.test, self.eval_background, self.settings, renders,
                                 mask=self.mask)
        summary.update(**self.method.size_stats(), train_seconds=round(self.train_seconds, 3), step=self.step)
        self.method.evaluate_extra(summary, final=save_renders)
        if save_renders:
            from recon.train.checkpoint import atomic_write_text

            atomic_write_text(self.run_dir / "eval.json", json.dumps(summary, indent=1))
        return summary


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a run resumes from), so steps never repeat."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    keep = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(keep) != len(lines):
        from recon.fileio import atomic_write_text

        atomic_write_text(path, "".join(line + "\n" for line in keep))


def _progress(cfg, start: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.max_steps, initial=start, desc="train", dynamic_ncols=True, mininterval=0.5)
