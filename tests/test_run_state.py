"""Nothing a training run did is lost: the final step, a SIGTERM mid-epoch, and the same W&B run on resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from lightning.pytorch.callbacks import Callback

from guided_diffusion.commands.cli import EXIT_SIGTERM, main
from guided_diffusion.training.run_state import RUN_IDS_KEY

ROOT = Path(__file__).resolve().parents[1]
DIFFUSION_YAML = str(ROOT / "configs" / "mnist" / "diffusion.yaml")
CAPTURED: dict = {}


class MarkSteps(Callback):
    """Writes the step reached to ``step.txt`` after every batch (and slows the run, so a signal lands mid-run)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        Path("step.txt").write_text(str(trainer.global_step))
        time.sleep(0.3)


class CaptureStart(Callback):
    def on_train_start(self, trainer, pl_module):
        CAPTURED.update(step=trainer.global_step, state={k: v.clone() for k, v in pl_module.state_dict().items()})


def _config(tmp_path: Path, steps: int, every: int, logger=False, extra=()) -> str:
    callbacks = [{"class_path": "guided_diffusion.training.RunCheckpoint",
                  "init_args": {"dirpath": "ckpts", "filename": "{step:06d}", "every_n_train_steps": every,
                                "save_top_k": -1, "save_last": True}}]
    callbacks += [{"class_path": path} for path in extra]
    config = {"trainer": {"max_steps": steps, "log_every_n_steps": 1, "val_check_interval": 1000,
                          "enable_progress_bar": False, "callbacks": callbacks, "logger": logger},
              "model": {"init_args": {"network": {"model_channels": 32, "channel_mult": [1, 2],
                                                  "attention_resolutions": []}}},
              "data": {"batch_size": 4}}
    path = tmp_path / f"override-{len(list(tmp_path.glob('override-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _step(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["global_step"])


def test_a_finished_run_saves_its_final_step(workdir):
    """max_steps 5 with a checkpoint every 2 steps: Lightning alone leaves step 4 in last.ckpt."""
    main(["fit", "--config", DIFFUSION_YAML, "--config", _config(workdir, steps=5, every=2)])
    assert _step(workdir / "ckpts" / "last.ckpt") == 5
    assert sorted(p.name for p in (workdir / "ckpts").glob("step=*.ckpt")) == [
        "step=000002.ckpt", "step=000004.ckpt", "step=000005.ckpt"]
    assert _step(workdir / "ckpts" / "step=000005.ckpt") == 5


def test_sigterm_mid_epoch_saves_the_step_and_resumes_there(workdir):
    """A preempted job (SIGTERM) exits 143 with one line, leaving last.ckpt at the step it reached."""
    config = _config(workdir, steps=400, every=100, extra=["tests.test_run_state.MarkSteps"])
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen([sys.executable, "-m", "guided_diffusion", "fit", "--config", DIFFUSION_YAML,
                                "--config", config], cwd=workdir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            marker = workdir / "step.txt"
            if marker.exists() and marker.read_text().strip() and int(marker.read_text()) >= 3:
                break
            time.sleep(0.1)
        assert process.poll() is None, process.communicate()[1][-2000:]
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == EXIT_SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err, err[-2000:]
    saved = _step(workdir / "ckpts" / "last.ckpt")
    reached = int((workdir / "step.txt").read_text())
    assert 3 <= saved <= reached < 100  # the step it was at, not a multiple of every_n_train_steps
    weights = torch.load(workdir / "ckpts" / "last.ckpt", weights_only=True)["state_dict"]

    CAPTURED.clear()
    resume = _config(workdir, steps=saved + 2, every=100, extra=["tests.test_run_state.CaptureStart"])
    main(["fit", "--config", DIFFUSION_YAML, "--config", resume, "--ckpt_path", "last"])
    assert CAPTURED["step"] == saved
    assert all(torch.equal(CAPTURED["state"][k], v) for k, v in weights.items())
    assert _step(workdir / "ckpts" / "last.ckpt") == saved + 2


def test_a_resumed_run_continues_the_same_wandb_run(workdir):
    import wandb

    logger = {"class_path": "lightning.pytorch.loggers.WandbLogger",
              "init_args": {"project": "test", "save_dir": str(workdir), "offline": True}}
    main(["fit", "--config", DIFFUSION_YAML, "--config", _config(workdir, steps=2, every=2, logger=logger)])
    wandb.finish()
    first = torch.load(workdir / "ckpts" / "last.ckpt", weights_only=True)[RUN_IDS_KEY]["wandb"]
    main(["fit", "--config", DIFFUSION_YAML, "--config", _config(workdir, steps=4, every=2, logger=logger),
          "--ckpt_path", "last"])
    wandb.finish()
    checkpoint = torch.load(workdir / "ckpts" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4 and checkpoint[RUN_IDS_KEY]["wandb"] == first
    runs = sorted(p.name for p in (workdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(first) for name in runs), runs
