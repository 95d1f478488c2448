"""Every shipped YAML parses into the three argument dataclasses and builds a valid GatedGPT2Config; the accelerate
configs load with accelerate's own config class and wrap the block class the model declares unsplittable."""

from pathlib import Path

import pytest
import yaml

from gatedgpt2.trainer.arguments import parse_args
from modeling_gatedgpt import GatedGPT2Config, GatedGPT2PreTrainedModel, ImageKind

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PAPER_VARIANTS = [
    "base", "gate_soft_per_token", "gate_hard_per_feature", "gate_hard_per_token", "gate_none", "film_on_text",
    "film_on_cross_attn", "film_on_image", "dyintra_on_text", "dyintra_on_cross_attn", "dyintra_on_image",
    "channel_attention", "mlp_encoder", "no_encoder", "with_clip", "with_lcg", "mixed_uniform", "mixed_non_uniform",
]


@pytest.mark.parametrize("name", [*PAPER_VARIANTS, "demo", "babylm_text"])
def test_every_config_parses_and_builds_a_model_config(name):
    model_args, data_args, training_args = parse_args([str(CONFIGS / f"{name}.yaml")])
    config = GatedGPT2Config(**model_args.config_overrides())  # validates every variant value
    if name in PAPER_VARIANTS:  # the paper's recipe
        assert (config.n_layer, config.n_embd, config.n_head, data_args.block_size) == (8, 768, 8, 128)
        assert training_args.per_device_train_batch_size == 64 and training_args.learning_rate == 5e-5
        assert training_args.num_train_epochs == 10 and training_args.max_grad_norm == 1.0
        assert training_args.weight_decay == 0.01 and training_args.lr_scheduler_type == "cosine"


def test_variant_configs_differ_from_base_only_in_what_names_them():
    base = GatedGPT2Config(**parse_args([str(CONFIGS / "base.yaml")])[0].config_overrides())
    expected = {"gate_none": {"gate": "none"}, "film_on_image": {"modulation": "film", "modulation_target": "image"},
                "gate_hard_per_token": {"gate": "hard", "gate_granularity": "token"}, "no_encoder": {
                    "image_encoder": "linear"}, "with_lcg": {"contrastive": "lcg"}}
    for name, changes in expected.items():
        variant = GatedGPT2Config(**parse_args([str(CONFIGS / f"{name}.yaml")])[0].config_overrides())
        differing = {k for k in changes if getattr(variant, k) != getattr(base, k)}
        assert differing == set(changes), name
    assert parse_args([str(CONFIGS / "mixed_uniform.yaml")])[1].curriculum == "mixed_uniform"


def test_command_line_overrides_yaml_and_unknown_keys_are_errors(tmp_path):
    model_args, data_args, training_args = parse_args([str(CONFIGS / "base.yaml"), "--model.gate", "hard",
                                                       "--learning_rate", "1e-4", "--block_size", "64"])
    assert (model_args.model["gate"], training_args.learning_rate, data_args.block_size) == ("hard", 1e-4, 64)
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: " + str(CONFIGS / "base.yaml") + "\ngates: hard\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown keys \['gates'\]"):
        parse_args([str(bad)])


def test_a_loop_of_base_configs_is_an_error_naming_it(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\ngate: hard\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match=r"a.yaml: the `base:` configs form a loop: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        parse_args([str(tmp_path / "a.yaml")])


def test_the_image_kind_is_one_of_its_values_from_the_command_line_or_a_yaml(tmp_path, capsys):
    assert parse_args([str(CONFIGS / "demo.yaml")])[1].image_kind is ImageKind.CLS_PATCHES
    with pytest.raises(SystemExit):
        parse_args([str(CONFIGS / "base.yaml"), "--image_tokens", "patches"])
    assert "invalid choice: 'patches' (choose from 'global', 'cls_patches')" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: " + str(CONFIGS / "base.yaml") + "\nimage_tokens: patches\n")
    with pytest.raises(ValueError, match=r"`image_tokens` must be one of \['global', 'cls_patches'\].*got 'patches'"):
        parse_args([str(bad)])


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2", "cpu_ddp"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import ClusterConfig

    path = CONFIGS / "accelerate" / f"{name}.yaml"
    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 2
    if name == "fsdp":
        wrapped = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
        assert wrapped in GatedGPT2PreTrainedModel._no_split_modules
    if name == "deepspeed_zero2":
        assert config.deepspeed_config["zero_stage"] == 2
    if name != "cpu_ddp":
        assert config.mixed_precision == "bf16"
    assert yaml.safe_load(path.read_text())["distributed_type"] == config.distributed_type.value


@pytest.mark.parametrize("name", PAPER_VARIANTS)
def test_every_paper_config_builds_the_papers_model_file_with_its_recipe(name):
    """configs/paper/<name>.yaml: the paper_code preset and the variant's fields, none of them overridden by the
    GPT-2-architecture base config it takes data and optimiser from; the authors' warm-up and batch size."""
    from modeling_gatedgpt.configuration_gatedgpt import PAPER_VARIANTS as FIELDS
    from modeling_gatedgpt.configuration_gatedgpt import PRESETS

    model_args, data_args, training_args = parse_args([str(CONFIGS / "paper" / f"{name}.yaml")])
    variant = model_args.variant
    assert model_args.preset == "paper_code" and variant == (name if name in FIELDS else "base")
    config = GatedGPT2Config.from_preset(model_args.preset, variant, **model_args.config_overrides())
    expected = {**PRESETS["paper_code"], **FIELDS[variant]}
    if expected.pop("first_cross_attention_layer", None):
        expected["cross_attention_layers"] = list(range(1, 8))
    assert {field: getattr(config, field) for field in expected} == expected
    assert (config.n_layer, config.n_embd, config.n_head, config.n_inner, config.image_encoder_layers) == (
        8, 768, 8, 3072, 5)
    warmup, batch = {"with_clip": (6000, 128), "with_lcg": (60000, 128), "mixed_uniform": (7000, 64)}.get(
        name, (12000, 64))
    assert (training_args.warmup_steps, training_args.per_device_train_batch_size) == (warmup, batch)
    assert data_args.curriculum == (name if name.startswith("mixed") else "alternating")
    assert training_args.output_dir == f"outputs/paper/{name}"
    if config.gate == "hard":
        assert model_args.model["gate_temperature_steps"] == 0.8 and config.gate_temperature_clock == "image_batches"


def test_every_config_field_is_settable_from_the_yaml_and_the_command_line(tmp_path):
    """`model:` reaches any GatedGPT2Config field, here two that ModelArguments never listed, and the command line
    overrides the YAML field by field; the config's own check judges the values."""
    from gatedgpt2.trainer.arguments import CONFIG_FIELDS, LEGACY_CONFIG_KEYS, ModelArguments

    assert {"layer_norm_epsilon", "contrastive_temperature"} <= CONFIG_FIELDS - set(LEGACY_CONFIG_KEYS)
    assert not {f for f in ModelArguments.__dataclass_fields__ if f != "model"} & CONFIG_FIELDS  # one surface
    config = tmp_path / "run.yaml"
    config.write_text(f"base: {CONFIGS / 'base.yaml'}\nmodel:\n  layer_norm_epsilon: 1.0e-6\n  gate: hard\n")
    model_args, _, training_args = parse_args([
        str(config), "--model", "{contrastive_temperature: 0.05}", "--model.gate=none", "--output_dir", "model",
        "--model.cross_attention_layers", "[0, 2]", "--model.channel_attention"])
    assert training_args.output_dir == "model"  # a value that reads "model" is not the --model flag
    assert model_args.model == {**parse_args([str(CONFIGS / "base.yaml")])[0].model, "layer_norm_epsilon": 1e-6,
                                "gate": "none", "contrastive_temperature": 0.05, "cross_attention_layers": [0, 2],
                                "channel_attention": True}
    built = GatedGPT2Config.from_preset("default", **model_args.config_overrides())
    assert (built.layer_norm_epsilon, built.contrastive_temperature, built.cross_attention_layers) == (1e-6, 0.05,
                                                                                                        [0, 2])
    with pytest.raises(ValueError, match=r"`gate` must be one of \['soft', 'hard', 'none'\], got 'hrd'"):
        GatedGPT2Config.from_preset("default", **parse_args([str(config), "--model.gate", "hrd"])[0].config_overrides())
    assert GatedGPT2Config.from_preset("gpt2").to_dict() == GatedGPT2Config.from_preset("default").to_dict()


@pytest.mark.parametrize("where,error", [
    ("model:\n  gaet: hard\n", r"model\.gaet is not a GatedGPT2Config field \(did you mean model\.gate\?\)"),
    ("model:\n  n_positions: 64\n", r"model\.n_positions is set by the run from block_size"),
    ("model: hard\n", r"`model` must be a mapping of GatedGPT2Config fields to values, got str 'hard'"),
])
def test_a_bad_model_mapping_names_the_file_and_the_field(tmp_path, where, error):
    config = tmp_path / "bad.yaml"
    config.write_text(where)
    with pytest.raises(ValueError, match=r"bad\.yaml: " + error):
        parse_args([str(config)])
    with pytest.raises(ValueError, match=r"command line: model\.gaet is not a GatedGPT2Config field"):
        parse_args([str(CONFIGS / "demo.yaml"), "--model.gaet", "hard"])
    with pytest.raises(ValueError, match=r"--model: expected a YAML mapping of config fields, .* got 'hard'"):
        parse_args([str(CONFIGS / "demo.yaml"), "--model", "hard"])


def test_old_top_level_config_fields_still_work_and_say_how_to_write_them(tmp_path, caplog):
    old = tmp_path / "old.yaml"
    old.write_text(f"base: {CONFIGS / 'demo.yaml'}\ngate: hard\ndropout: 0.1\ncross_attention_layers: '0,2'\n")
    with caplog.at_level("WARNING"):
        model_args = parse_args([str(old), "--n_layer", "3", "--gate_straight_through", "false"])[0]
    names = ("gate", "resid_pdrop", "embd_pdrop", "attn_pdrop", "cross_attention_layers", "n_layer",
             "gate_straight_through")
    assert {k: model_args.model[k] for k in names} == {
        "gate": "hard", "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1, "cross_attention_layers": [0, 2],
        "n_layer": 3, "gate_straight_through": False}
    assert "old.yaml: `gate` is a model config field; write it as `model: {gate: hard}`" in caplog.text
    assert "command line: `--n_layer` is a model config field; write it as `--model.n_layer 3`" in caplog.text
