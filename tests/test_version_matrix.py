"""Checkpoints saved here load and compute the same under every transformers release our users have.

A checkpoint (with its tokenizer), a sequence classifier made from it, and one with a tiny attached DINOv2 tower (with
its processor) are saved in the locked environment. For each release in MATRIX, a cached client environment
(tests/helpers/client_envs.py: torch, that transformers, its tokenizers, safetensors, pillow; not this package) loads
them through the Auto classes and their remote code from an offline Hub cache, in a subprocess that cannot import this
package, and must reproduce the locked environment: logits within 1e-5, the same greedy tokens with and without the
cache, the same token ids and pixel values. docs/versions.md's table lists the same releases.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import Dinov2Config, Dinov2Model

from gatedgpt2.data import train_tokenizer
from modeling_gatedgpt import GatedGPT2ForSequenceClassification, GatedGPT2Processor
from tests.helpers.client_envs import MATRIX, client_python, locked_version, run_client_script
from tests.helpers.models import IMAGE_DIM, VISION, tiny_model
from tests.helpers.remote_code import make_offline_hub_cache

TEXTS = ["a red circle left of a blue cube", "the cat sat", "unseen wörds 12"]
MAX_NEW_TOKENS = 6


CLIENT = textwrap.dedent(
    """
    import json
    import numpy as np
    import torch
    import transformers
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoProcessor, AutoTokenizer)

    repo, tower_repo, classifier_repo, inputs_file, out_file = sys.argv[1:]
    inputs, texts = load_file(inputs_file), json.loads(open(inputs_file + ".json").read())
    out = {}

    config = AutoConfig.from_pretrained(repo, trust_remote_code=True)
    lm = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True, attn_implementation="eager").eval()
    base = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=False)  # plain files: no code, no prompt
    for thing in (config, lm, base):
        assert type(thing).__module__.startswith("transformers_modules"), type(thing).__module__
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    out["ids"], out["mask"] = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        args = dict(input_ids=inputs["input_ids"], image_embeds=inputs["image_embeds"])
        result = lm(**args, labels=inputs["input_ids"], output_gates=True, output_attentions=True)
        out["logits"], out["loss"] = result.logits, result.loss
        out["gates"] = torch.stack(result.gates)
        out["cross_attentions"] = torch.stack(result.cross_attentions)
        out["hidden"] = base(**args).last_hidden_state
        out["padded_logits"] = lm(batch["input_ids"], attention_mask=batch["attention_mask"],
                                  image_embeds=inputs["image_embeds"][:1].expand(len(texts), -1, -1)).logits
        for use_cache in (True, False):
            out[f"generated_cache_{use_cache}"] = lm.generate(
                inputs["input_ids"][:1], image_embeds=inputs["image_embeds"][:1], max_new_tokens=%(new)d,
                do_sample=False, use_cache=use_cache, pad_token_id=config.pad_token_id)

    classifier = AutoModelForSequenceClassification.from_pretrained(classifier_repo, trust_remote_code=True).eval()
    assert type(classifier).__module__.startswith("transformers_modules"), type(classifier).__module__
    with torch.no_grad():
        scored = classifier(batch["input_ids"], attention_mask=batch["attention_mask"], labels=torch.tensor([0, 2, 1]))
        out["class_logits"], out["class_loss"] = scored.logits, scored.loss

    processor = AutoProcessor.from_pretrained(tower_repo, trust_remote_code=True)
    tower_lm = AutoModelForCausalLM.from_pretrained(tower_repo, trust_remote_code=True).eval()
    images = [Image.fromarray(image) for image in inputs["images"].numpy()]
    pixels = processor(text=texts[:2], images=images, return_tensors="pt", padding=True)
    out["pixel_values"] = pixels["pixel_values"]
    with torch.no_grad():
        out["tower_logits"] = tower_lm(pixels["input_ids"], attention_mask=pixels["attention_mask"],
                                       pixel_values=pixels["pixel_values"]).logits
        for use_cache in (True, False):
            out[f"tower_generated_cache_{use_cache}"] = tower_lm.generate(
                pixels["input_ids"][:1, :4], pixel_values=pixels["pixel_values"][:1], max_new_tokens=%(new)d,
                do_sample=False, use_cache=use_cache, pad_token_id=config.pad_token_id)
    # training with gradient checkpointing (each release has its own way of switching it on)
    tower_lm.train()
    tower_lm.gradient_checkpointing_enable()
    loss = tower_lm(pixels["input_ids"], pixel_values=pixels["pixel_values"], labels=pixels["input_ids"]).loss
    loss.backward()
    out["checkpointed_loss"] = loss.detach()
    out["checkpointed_grad"] = tower_lm.transformer.h[0].crossattention.c_attn.weight.grad
    save_file({k: v.contiguous() for k, v in out.items()}, out_file)
    print("CLIENT-OK", transformers.__version__, type(processor).__name__, type(tokenizer).__name__)
    """
) % {"new": MAX_NEW_TOKENS}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The two checkpoints in an offline Hub cache, the inputs, and what the locked environment computes."""
    root = tmp_path_factory.mktemp("matrix")
    tokenizer = train_tokenizer(TEXTS * 10, vocab_size=200, model_max_length=64)
    model = tiny_model(vocab_size=len(tokenizer), n_positions=64, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       modulation="film", channel_attention=True, gate="hard")
    model.save_pretrained(root / "plain")
    tokenizer.save_pretrained(root / "plain")

    torch.manual_seed(3)
    classifier = GatedGPT2ForSequenceClassification.from_pretrained(root / "plain", num_labels=3)
    classifier.save_pretrained(root / "classifier")
    tokenizer.save_pretrained(root / "classifier")

    torch.manual_seed(1)
    tower_model = tiny_model(seed=1, vocab_size=len(tokenizer), n_positions=64, pad_token_id=tokenizer.pad_token_id)
    tower_model.attach_vision_tower(Dinov2Model(Dinov2Config(**VISION)).eval(), "cls_patches")
    tower_model.save_pretrained(root / "tower")
    GatedGPT2Processor.for_vision_tower(tokenizer, tower_model.config.vision_config).save_pretrained(root / "tower")

    hf_home = root / "hf_home"
    make_offline_hub_cache(root / "plain", hf_home, "babylm-org/gatedgpt2-plain")
    make_offline_hub_cache(root / "tower", hf_home, "babylm-org/gatedgpt2-tower")
    make_offline_hub_cache(root / "classifier", hf_home, "babylm-org/gatedgpt2-classifier")

    generator = torch.Generator().manual_seed(2)
    inputs = {
        "input_ids": torch.randint(3, len(tokenizer), (2, 7), generator=generator),
        "image_embeds": torch.randn(2, 3, IMAGE_DIM, generator=generator),
        "images": torch.randint(0, 256, (2, 40, 36, 3), generator=generator, dtype=torch.uint8),
    }
    inputs_file = root / "inputs.safetensors"
    save_file(inputs, inputs_file)
    Path(f"{inputs_file}.json").write_text(json.dumps(TEXTS))

    reference = root / "reference.safetensors"
    run_client(Path(sys.executable), hf_home, inputs_file, reference, allow_package=True)
    return hf_home, inputs_file, load_file(reference)


def run_client(python: Path, hf_home: Path, inputs_file: Path, out_file: Path, allow_package: bool = False) -> str:
    repos = ["babylm-org/gatedgpt2-plain", "babylm-org/gatedgpt2-tower", "babylm-org/gatedgpt2-classifier"]
    stdout = run_client_script(python, hf_home, CLIENT, [*repos, str(inputs_file), str(out_file)], out_file.parent,
                               allow_package)
    assert "CLIENT-OK" in stdout, stdout
    return stdout


def test_the_reference_run_is_the_locked_release(saved):
    _, _, reference = saved
    if not os.environ.get("GATEDGPT2_CANARY"):  # `make canary` runs this suite on the newest release instead
        assert transformers.__version__ == locked_version("transformers")
    assert torch.equal(reference["generated_cache_True"], reference["generated_cache_False"])
    assert torch.equal(reference["tower_generated_cache_True"], reference["tower_generated_cache_False"])
    assert reference["generated_cache_True"].shape[1] == 7 + MAX_NEW_TOKENS


@pytest.mark.parametrize("version, extra", MATRIX, ids=[version for version, _ in MATRIX])
def test_a_client_release_loads_and_computes_the_same(saved, version, extra, tmp_path):
    hf_home, inputs_file, reference = saved
    out_file = tmp_path / "client.safetensors"
    stdout = run_client(client_python(version, extra), hf_home, inputs_file, out_file)
    assert f"CLIENT-OK {version} GatedGPT2Processor" in stdout
    client = load_file(out_file)

    assert set(client) == set(reference)
    for name in ("ids", "mask", "generated_cache_True", "generated_cache_False", "tower_generated_cache_True",
                 "tower_generated_cache_False"):
        assert torch.equal(client[name], reference[name]), f"{name} differ under transformers {version}"
    assert torch.equal(client["generated_cache_True"], client["generated_cache_False"])
    for name in ("logits", "loss", "gates", "cross_attentions", "hidden", "padded_logits", "pixel_values",
                 "tower_logits", "checkpointed_loss", "checkpointed_grad", "class_logits", "class_loss"):
        difference = (client[name] - reference[name]).abs().max().item()
        assert difference <= 1e-5, f"{name} differ by {difference:.2e} under transformers {version}"


def test_the_versions_table_lists_exactly_the_tested_releases():
    page = (Path(__file__).parents[1] / "docs" / "versions.md").read_text()
    section = page.split("# Supported versions", 1)[1].split("\n\n", 2)[2]
    rows = re.findall(r"^\| (\d+\.\d+\.\d+) \| (\S+) \|", section.split("\n\n", 1)[0], re.MULTILINE)
    assert [version for version, _ in rows] == [version for version, _ in MATRIX]
    for (version, tokenizers), (_, extra) in zip(rows, MATRIX):
        pinned = [p.split("==")[1] for p in extra if p.startswith("tokenizers==")]
        if version == locked_version("transformers"):
            pinned = [locked_version("tokenizers")]
        assert [tokenizers] == pinned or (not pinned and tokenizers == "newest"), (version, tokenizers)


INIT_CLIENT = textwrap.dedent(
    """
    import json
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spreads = {}
    for initialization in ("normal", "gpt2", "paper_code"):
        config = AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True, n_embd=64, n_inner=256,
                                            initialization=initialization)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
        block = model.transformer.h[0]
        for name, tensor in [("wte", model.transformer.wte.weight), ("attn.c_attn", block.attn.c_attn.weight),
                             ("attn.c_proj", block.attn.c_proj.weight), ("mlp.c_fc", block.mlp.c_fc.weight),
                             ("mlp.c_proj", block.mlp.c_proj.weight), ("mlp.c_fc.bias", block.mlp.c_fc.bias),
                             ("attn.c_attn.bias", block.attn.c_attn.bias)]:
            spreads[f"{initialization} {name}"] = float(tensor.detach().std())
    print("INIT", json.dumps(spreads))
    """
)


def new_model_spreads(python: Path, hf_home: Path, cwd: Path, allow_package: bool = False) -> dict[str, float]:
    stdout = run_client_script(python, hf_home, INIT_CLIENT, ["babylm-org/gatedgpt2-plain"], cwd, allow_package)
    return json.loads(stdout.split("INIT ", 1)[1])


def test_a_new_model_is_initialised_alike_under_every_release(saved, tmp_path):
    """Its code, run by each release, initialises a new model alike (transformers 5 skips custom code's modules
    without parameters of their own, which once left GPT-2's scaled residual init to 4.x alone): the spread of
    each kind of weight within 10% of the locked release's, which is N(0, 0.02), GPT-2's, or PyTorch's."""
    hf_home, _, _ = saved
    reference = new_model_spreads(Path(sys.executable), hf_home, tmp_path, allow_package=True)
    n_layer, width = 2, 64
    normal = {f"normal {name}": 0.02 for name in ("wte", "attn.c_attn", "mlp.c_fc", "attn.c_proj", "mlp.c_proj")}
    expected = {**normal, "normal mlp.c_fc.bias": 0.0, "normal attn.c_attn.bias": 0.0,
                "gpt2 wte": 0.02, "gpt2 attn.c_attn": 0.02, "gpt2 mlp.c_fc": 0.02,
                "gpt2 attn.c_proj": 0.02 / (2 * n_layer) ** 0.5, "gpt2 mlp.c_proj": 0.02 / (2 * n_layer) ** 0.5,
                "gpt2 mlp.c_fc.bias": 0.0, "gpt2 attn.c_attn.bias": 0.0, "paper_code wte": 1.0,
                "paper_code attn.c_attn": (6 / (4 * width)) ** 0.5 / 3 ** 0.5,  # uniform(-b, b) has sd b / sqrt(3)
                "paper_code attn.c_proj": 1 / (3 * width) ** 0.5, "paper_code mlp.c_fc": 1 / (3 * width) ** 0.5,
                "paper_code mlp.c_proj": 1 / (3 * 256) ** 0.5, "paper_code mlp.c_fc.bias": 1 / (3 * width) ** 0.5,
                "paper_code attn.c_attn.bias": 0.0}
    assert reference == pytest.approx(expected, rel=0.1, abs=1e-6)
    for version, extra in MATRIX:
        client = new_model_spreads(client_python(version, extra), hf_home, tmp_path)
        assert client == pytest.approx(reference, rel=0.1, abs=1e-6), version
