"""Auto-class registration, and checkpoints that load through remote code where the package is not installed."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from modeling_gatedgpt import GatedGPT2Config, GatedGPT2ForCausalLM, GatedGPT2ForSequenceClassification, GatedGPT2Model
from tests.helpers.models import IMAGE_DIM, tiny_config, tiny_model
from tests.helpers.remote_code import WITHOUT_THE_PACKAGE, make_offline_hub_cache, offline_hub_env


def test_auto_classes_know_the_model(tmp_path):
    config = AutoConfig.for_model("gated_gpt2", n_layer=2, n_embd=32, n_head=4)
    assert isinstance(config, GatedGPT2Config)
    assert type(AutoModelForCausalLM.from_config(tiny_config())) is GatedGPT2ForCausalLM
    assert type(AutoModel.from_config(tiny_config())) is GatedGPT2Model
    assert type(AutoModelForSequenceClassification.from_config(tiny_config())) is GatedGPT2ForSequenceClassification

    model = tiny_model(gate="hard", modulation="film", contrastive="clip")
    model.set_gate_temperature(0.375)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert {"configuration_gatedgpt.py", "modeling_gatedgpt.py", "gating.py", "layers.py"} <= files
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"}

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.gate == "hard" and reloaded.config.modulation == "film"
    assert float(reloaded.transformer.h[1].gate.temperature) == 0.375  # the annealing state is checkpointed
    base = AutoModel.from_pretrained(tmp_path)  # the base model loads from the causal-LM checkpoint
    assert torch.equal(base.h[0].crossattention.q_attn.weight, model.transformer.h[0].crossattention.q_attn.weight)


REMOTE_LOADER = WITHOUT_THE_PACKAGE + textwrap.dedent(
    """

    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    repo, inputs_file = sys.argv[1], sys.argv[2]
    inputs = load_file(inputs_file)
    config = AutoConfig.from_pretrained(repo, trust_remote_code=True)
    assert type(config).__module__.startswith("transformers_modules"), type(config).__module__
    lm = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
    for model in (lm, base):
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        args = dict(input_ids=inputs["input_ids"], image_embeds=inputs["image_embeds"])
        assert torch.equal(lm(**args).logits, inputs["logits"]), "causal LM logits differ"
        assert torch.equal(base(**args).last_hidden_state, inputs["hidden"]), "base model states differ"
        generated = lm.generate(inputs["input_ids"], image_embeds=inputs["image_embeds"], max_new_tokens=4,
                                do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4
    print("REMOTE-CODE-OK", type(config).__name__, type(lm).__name__, type(base).__name__)
    """
)


def test_checkpoint_loads_through_remote_code_without_the_package(tmp_path):
    model = tiny_model(image_encoder_layers=1, modulation="dyintra", modulation_target="image", gate="hard")
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)

    torch.manual_seed(0)
    input_ids = torch.randint(3, model.config.vocab_size, (2, 6))
    image_embeds = torch.randn(2, 3, IMAGE_DIM)
    with torch.no_grad():
        logits = model(input_ids, image_embeds=image_embeds).logits
        hidden = model.transformer(input_ids, image_embeds=image_embeds).last_hidden_state
    inputs_file = tmp_path / "inputs.safetensors"
    save_file({"input_ids": input_ids, "image_embeds": image_embeds, "logits": logits, "hidden": hidden}, inputs_file)

    hf_home = tmp_path / "hf_home"
    make_offline_hub_cache(checkpoint, hf_home, "babylm-org/gatedgpt2-tiny")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_LOADER, "babylm-org/gatedgpt2-tiny", str(inputs_file)],
        cwd=tmp_path, env=offline_hub_env(hf_home), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-CODE-OK GatedGPT2Config GatedGPT2ForCausalLM GatedGPT2Model" in result.stdout
