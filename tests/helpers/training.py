"""Tiny training runs: train.py's arguments on the tiny world, and reading what a run leaves."""

import os
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file

from gatedgpt2.data import RunFiles

ROOT = Path(__file__).resolve().parents[2]


TINY_YAML = str(ROOT / "configs" / "demo.yaml")

TINY_WORLD = dict(seed=3, train_captions=240, train_sentences=240, dev_captions=48, dev_sentences=48,
                  minimal_pairs_per_uid=8, winoground_items=16, vqa_items=16, embed_dim=32)


def tiny_train_args(world, out_dir, *extra: str) -> list[str]:
    """train.py arguments for a 2-layer, 32-wide run of a few steps on the tiny world."""
    world = str(world)
    return [
        "--model.n_layer", "2", "--model.n_embd", "32", "--model.n_head", "2", "--model.n_inner", "64",
        "--model.image_encoder_layers", "1",
        "--model.resid_pdrop", "0.0", "--model.embd_pdrop", "0.0", "--model.attn_pdrop", "0.0",
        "--text_dir", f"{world}/text/train", "--eval_text_dir", f"{world}/text/dev",
        "--caption_files", f"{world}/captions/train_captions.json",
        "--embedding_files", f"{world}/captions/train_global.npy",
        "--eval_caption_files", f"{world}/captions/dev_captions.json",
        "--eval_embedding_files", f"{world}/captions/dev_global.npy",
        "--vocab_size", "200", "--block_size", "32", "--cache_dir", f"{out_dir}/cache", "--eval_world", "false",
        "--report", "false",
        "--output_dir", f"{out_dir}/run", "--per_device_train_batch_size", "8", "--max_steps", "4",
        "--learning_rate", "3e-3", "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "true", "--dataloader_pin_memory", "false", "--seed", "0",
        "--disable_tqdm", "true", *extra,
    ]


def log_history(run_dir) -> list[dict]:
    return RunFiles(run_dir).log_history()


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(Path(run_dir) / "model.safetensors")

def run_subprocess(args, extra_env=None, timeout=300, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
