"""Shared test helpers: the reference parity fixture and the OpenAI key lists.

The parity fixture (``fixtures/adm_parity_small.pt``, produced by OpenAI guided-diffusion at commit
22e0df8, float32, CPU) does not store weights; they are re-derived here from each key's name:
``torch.randn(shape, generator=Generator().manual_seed(crc32(key))) * std`` with
``std = 1 / sqrt(prod(shape[1:]))`` for tensors of two or more dims and ``0.1`` for 1-d tensors.
Use :func:`reference_state_dict` to load them into any network (denoiser or classifier) and
:func:`parity_fixture` for the inputs and reference outputs (diffusion and guidance tests too).
"""
from __future__ import annotations

import functools
import math
import re
import struct
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PARITY_FIXTURE = FIXTURES / "adm_parity_small.pt"
OPENAI_KEYS = FIXTURES / "openai_keys"
IMPROVED_KEYS = FIXTURES / "improved_diffusion_keys"
IMPROVED_PARITY_FIXTURE = FIXTURES / "improved_parity_small.pt"


@functools.lru_cache(maxsize=1)
def _load_parity_fixture() -> dict:
    return torch.load(PARITY_FIXTURE, map_location="cpu", weights_only=False)


def parity_fixture() -> dict:
    """The reference outputs: ``inputs``, ``cases[name]``, ``classifier``, ``diffusion_buffers``, ``readme``.

    Cached; do not modify the returned tensors in place.
    """
    return _load_parity_fixture()


def reference_tensor(name: str, shape: Sequence[int]) -> torch.Tensor:
    """The deterministic weight the fixture used for the state-dict entry ``name``."""
    shape = tuple(int(s) for s in shape)
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    std = 1.0 / math.sqrt(math.prod(shape[1:])) if len(shape) >= 2 else 0.1
    return torch.randn(shape, generator=generator) * std


def reference_state_dict(keys: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """All fixture weights for a ``{key: shape}`` mapping (e.g. ``parity_fixture()["cases"][c]["keys"]``)."""
    return {name: reference_tensor(name, shape) for name, shape in keys.items()}


def openai_key_list(config_name: str, directory: Path = OPENAI_KEYS
                    ) -> tuple[dict[str, str], dict[str, tuple[tuple[int, ...], int]]]:
    """Parse ``fixtures/openai_keys/keys_<config_name>.txt`` (or the same format in ``directory``).

    Returns ``(header, keys)``: header has ``class``, ``flags``, ``tensors``, ``elements``; keys maps
    each state-dict key to ``(shape, numel)`` in file order.
    """
    header: dict[str, str] = {}
    keys: dict[str, tuple[tuple[int, ...], int]] = {}
    for line in (directory / f"keys_{config_name}.txt").read_text().splitlines():
        if line.startswith("# flags:"):
            header["flags"] = line.split(":", 1)[1].strip()
        elif match := re.match(r"# (\w+)\s+config=(\S+)", line):
            header["class"], header["config"] = match.groups()
        elif match := re.match(r"# (\d+) tensors, (\d+) (?:elements|parameters)", line):
            header["tensors"], header["elements"] = match.groups()
        elif line.startswith("#"):
            continue
        elif line.strip():
            name, shape, numel = line.split("\t")
            keys[name] = (tuple(int(s) for s in re.findall(r"\d+", shape)), int(numel))
    return header, keys


def openai_key_configs() -> list[str]:
    """Names of all released configurations with a key list (``64_cond``, ``128_classifier``, ...)."""
    return sorted(p.stem[len("keys_"):] for p in OPENAI_KEYS.glob("keys_*.txt"))


def wandb_records(run_dir: Path):
    """The records of an offline W&B run (its ``.wandb`` file: LevelDB log format, protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block, pos, buffer = next(run_dir.glob("*.wandb")).read_bytes(), 32768, 7, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        buffer = data if kind in (1, 2) else buffer + data
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buffer)
            yield record


def wandb_run(run_dir: Path) -> dict:
    """What an offline W&B run holds: ``config`` and ``summary`` (key -> value), ``history`` keys and
    ``artifacts`` (name -> {"type", "metadata" (dict), "files" (paths in the artifact)})."""
    import json

    contents: dict = {"config": {}, "summary": {}, "history": set(), "artifacts": {}}
    key = lambda item: item.key or "/".join(item.nested_key)  # noqa: E731
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind in ("config", "run"):  # wandb.init(config=...) arrives with the run record
            updates = record.config.update if kind == "config" else record.run.config.update
            contents["config"].update({key(item): json.loads(item.value_json) for item in updates})
        elif kind == "summary":
            contents["summary"].update({key(item): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "history":
            contents["history"] |= {key(item) for item in record.history.item}
        elif kind == "artifact":
            artifact = record.artifact
            contents["artifacts"][artifact.name] = {
                "type": artifact.type, "metadata": json.loads(artifact.metadata or "{}"),
                "files": sorted(entry.path for entry in artifact.manifest.contents)}
    return contents


def rescore(reference: str, samples: str) -> dict:
    """FID / sFID / precision / recall of ``samples`` against ``reference`` by ``gd evaluate`` (MNIST features, no
    cache), and the fraction the MNIST CNN recognises as their ``arr_1`` label: an independent recomputation of
    what ``gd sweep`` / ``gd demo`` report."""
    import numpy as np

    from guided_diffusion.evaluation import build_feature_extractor, evaluate, extract_features, iter_image_batches

    metrics = evaluate(str(reference), str(samples), features="mnist", reference_cache="none",
                       progress=False)["metrics"]
    logits = extract_features(build_feature_extractor("mnist"), iter_image_batches(samples, 64))["logits"]
    with np.load(samples) as data:
        metrics["accuracy"] = float((logits.argmax(1) == data["arr_1"]).mean())
    return metrics
