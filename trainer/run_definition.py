"""What defines a training run, saved in each checkpoint and compared when the run is resumed.

A resume continues the weights, optimizer and data order of the checkpoint; it is the same run only if the model,
the tokenizer, the training data and the way it is batched are the same. Resuming with a different batch size or
curriculum would silently change the data order, and resuming on other text would retrain the tokenizer and give
the trained embeddings' token ids other meanings. So a difference is refused by name unless the user says
`--resume_with_changes true`. The number of steps is not part of it: extending a run is resuming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

RUN_DEFINITION = "run_definition.json"
# config fields that a resume may change or that a save fills in, not the model's function
VOLATILE_CONFIG = {"transformers_version", "_name_or_path", "architectures", "auto_map", "gate_temperature_steps",
                   "torch_dtype", "dtype", "_attn_implementation_autoset"}
# the data's files are compared by name and content (`file_fingerprint`), not by folder: a run may move
DATA_FIELDS = ("image_pairing", "image_pairing_seed", "max_text_examples", "block_size", "packing", "curriculum",
               "mix_ratio")
SAMPLED = 1 << 20  # bytes read from each end of a data file for its fingerprint


def file_fingerprint(path: str | os.PathLike) -> dict:
    """The size and a SHA-256 of the first and last MiB: a changed, truncated or replaced file shows, and an
    embedding store of many GB is not read whole at every start."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(SAMPLED))
        if size > SAMPLED:
            handle.seek(max(size - SAMPLED, SAMPLED))
            digest.update(handle.read())
    return {"size": size, "sha256_ends": digest.hexdigest()}


def run_definition(model_config, tokenizer, data_args, training_args, text_files: list[Path]) -> dict:
    """{what: value} for everything a resume must keep (see the module docstring), as JSON-able values."""
    config = {k: v for k, v in model_config.to_dict().items() if k not in VOLATILE_CONFIG}
    data_files = [*text_files, *data_args.caption_files, *data_args.embedding_files]
    return {
        "model": json.loads(json.dumps(config, sort_keys=True, default=str)),
        "tokenizer": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
        "data": {name: getattr(data_args, name) for name in DATA_FIELDS},
        "data_files": {Path(f).name: file_fingerprint(f) for f in data_files},
        "batch": {"per_device_train_batch_size": training_args.per_device_train_batch_size,
                  "processes": max(training_args.world_size, 1),
                  "gradient_accumulation_steps": training_args.gradient_accumulation_steps},
        "seed": {"seed": training_args.seed, "data_seed": training_args.data_seed},
    }


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """'where: saved -> now' for every leaf that differs."""
    found = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "(absent)"), current.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return found


def check_resumed_run(checkpoint: str | os.PathLike, current: dict, allow_changes: bool) -> None:
    """Refuse to resume `checkpoint` into a run defined differently, naming each difference."""
    path = Path(checkpoint) / RUN_DEFINITION
    if not path.is_file():
        logger.warning("%s has no %s (saved by an earlier version): the resumed run cannot be checked against it.",
                       checkpoint, RUN_DEFINITION)
        return
    changed = differences(json.loads(path.read_text()), current)
    if not changed:
        return
    listed = "; ".join(changed[:12]) + (f"; and {len(changed) - 12} more" if len(changed) > 12 else "")
    if allow_changes:
        logger.warning("Resuming %s with changes (resume_with_changes): %s", checkpoint, listed)
        return
    raise ValueError(f"resume_from_checkpoint {checkpoint} was saved by a run defined differently: {listed}. A resume "
                     f"continues that run's weights, optimizer and data order; resume it as it was, train into "
                     f"another output_dir, or pass --resume_with_changes true to resume anyway.")
