"""The model card of a GatedGPT2 checkpoint: YAML metadata (with a `model-index` built from `eval`'s results.json) and
a body that says what the model is, how it was trained, how it scores and how to load it."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from gatedgpt2.data.model_folder import check_model_folder
from gatedgpt2.data.run_files import RunFiles, write_atomically

from .push import FIGURES

TEMPLATE = Path(__file__).with_name("model_card_template.md")
UNNAMED_OWNER = "your-name"  # the loading snippet's owner without --repo: never the local folder's path
DATASET_NAMES = {"blimp": "BLiMP", "supplement": "BLiMP supplement", "ewok": "EWoK", "winoground": "Winoground",
                 "vqa": "VQA", "entity_tracking": "entity tracking", "wug_adj": "WUG adjective nominalization",
                 "wug_past": "WUG past tense", "comps": "COMPS", "reading": "reading"}
# the official sets whose folder names do not end in _fast / _filtered, and whether each is the fast version
OFFICIAL_SETS = {"entity_tracking": "full", "entity_tracking_fast": "fast", "wug_adj_nominalization": "full",
                 "wug_past_tense": "full", "comps": "full", "reading_data.csv": "full"}


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def variant_table(config: dict, image_shape: list | None) -> list[tuple[str, str]]:
    gate = config["gate"] if config["gate"] == "none" else f"{config['gate']}, per {config['gate_granularity']}"
    modulation = f"{config['modulation']} on {config['modulation_target']}" if config.get("modulation") else "none"
    encoder = config["image_encoder"] + (f" ({config['image_encoder_layers']} layers)"
                                         if config["image_encoder"] == "transformer" else "")
    aux = f"{config['contrastive']} (weight {config['contrastive_weight']})" if config.get("contrastive") else "none"
    layers = config.get("cross_attention_layers") or "all"
    tokens = ("one global embedding" if not image_shape or len(image_shape) == 1
              else f"{image_shape[0]} tokens (CLS + {image_shape[0] - 1} patches)")
    return [
        ("size", f"{config['n_layer']} layers x {config['n_embd']} wide, {config['n_head']} heads, context "
                 f"{config['n_positions']}, vocabulary {config['vocab_size']}"),
        ("gate", gate), ("fusion", config["fusion"]), ("modulation", modulation),
        ("channel attention", "yes" if config.get("channel_attention") else "no"),
        ("image encoder", encoder), ("image tokens", f"{tokens} of width {config['image_embed_dim']}"),
        ("cross-attention layers", str(layers)), ("auxiliary loss", aux),
    ]


def trained_on_world(data: dict) -> bool:
    """Whether the training data came from a grounded world (a folder with its world.json)."""
    first = data.get("text_dir") or (data.get("caption_files") or [None])[0]
    if not first:
        return bool(data.get("world_dir"))
    return any((folder / "world.json").is_file() for folder in Path(first).resolve().parents)


def public_name(source: str) -> str:
    """How the card names a training input: a local file or folder by its own name (a card is public; the path on
    the machine that trained is not the reader's business), anything else (a Hub id) as it is."""
    path = Path(source)
    return path.name if path.is_absolute() or path.exists() else source


def training_text(report: dict | None) -> str:
    if not report:
        return "The checkpoint carries no training report (`report/report.json`), so nothing is claimed here."
    data, model, train = report.get("data_arguments", {}), report.get("model_arguments", {}), report.get("train", {})
    if not trained_on_world(data):
        inputs = [data.get("text_dir"), *(data.get("caption_files") or [])]
        sources = ", ".join(public_name(str(s)) for s in inputs if s)
    else:
        sources = "the package's grounded world (rendered scenes and their captions)"
    lines = [f"- Data: {sources}; curriculum `{data.get('curriculum', '?')}`."]
    if model.get("model_name_or_path"):
        lines.append(f"- Started from `{public_name(model['model_name_or_path'])}`"
                     + (f", LoRA rank {model['lora_r']}" if model.get("lora_r") else "") + ".")
    if model.get("init_from_gpt2"):
        lines.append(f"- Text stream initialised from GPT-2 (`{public_name(model['init_from_gpt2'])}`).")
    if train:
        lines.append(training_line(train))
    if report.get("parameters"):
        lines.append(f"- {report['parameters'] / 1e6:.2f} M parameters.")
    return "\n".join(lines)


def training_line(train: dict) -> str:
    """Steps, time and loss of the whole run, over all its sessions when it was resumed."""
    runtime = train.get("train_runtime")
    spent = f"{runtime:.0f} s of training" if runtime is not None else "a training time its checkpoint did not record"
    resumed = f", resumed at step {train['resumed_from_step']}" if train.get("resumed_from_step") else ""
    loss = f"training loss {train.get('train_loss', float('nan')):.3f} averaged over the run"
    if "final_train_loss" in train:
        loss += f", {train['final_train_loss']:.3f} over its last logged steps"
    return (f"- {train.get('global_step', '?')} steps ({train.get('epoch', '?')} epochs) in {spent}{resumed}; "
            f"{loss}.")


def dataset_id(task: str, folder: str) -> tuple[str, str]:
    """(type, name) of an evaluation set: the official BabyLM folders keep their names; others (the grounded world's
    held-out sets) say so."""
    name = DATASET_NAMES.get(task, task)
    if folder.endswith(("_fast", "_filtered")):
        return f"babylm/{folder}", f"{name} ({folder.rsplit('_', 1)[1]})"
    if folder in OFFICIAL_SETS:
        return f"babylm/{folder.removesuffix('.csv')}", f"{name} ({OFFICIAL_SETS[folder]})"
    return f"gatedgpt2/grounded-world-{task}", f"grounded world, {name}-style"


def headline_scores(result: dict) -> list[tuple[str, str, float, int]]:
    """(metric type, metric name, value, decimals) of a task's result: reading has two scores, the WUG tasks a
    correlation, the others an accuracy."""
    if "eye_tracking" in result:
        return [("r_squared_gain", "eye-tracking R^2 gain, %", result["eye_tracking"], 2),
                ("r_squared_gain", "self-paced reading R^2 gain, %", result["self_paced_reading"], 2)]
    if result.get("metric") == "spearman":
        return [("spearmanr", "spearman", result["score"], 3)]
    return [("accuracy", result.get("metric", "accuracy"), result.get("score", result.get("accuracy")), 2)]


def eval_results(results: list[dict]) -> list[EvalResult]:
    """One model-index entry per task, score and vision setting (the "no vision" runs as the dataset config)."""
    entries = []
    for run in results:
        for task, result in run["tasks"].items():
            dataset_type, dataset_name = dataset_id(task, result["dataset"])
            for metric_type, metric_name, value, decimals in headline_scores(result):
                entries.append(EvalResult(
                    task_type="zero-shot-classification", task_name="BabyLM zero-shot",
                    dataset_type=dataset_type, dataset_name=dataset_name,
                    dataset_config=None if run.get("vision", True) else "no vision",
                    metric_type=metric_type, metric_name=metric_name, metric_value=round(value, decimals),
                ))
    return entries


def eval_table(results: list[dict]) -> str:
    if not results:
        return ""
    lines = ["| task | data | vision | items | score | metric |", "| --- | --- | --- | ---: | ---: | --- |"]
    for run in results:
        for task, result in run["tasks"].items():
            vision = "yes" if run.get("vision", True) or task not in ("winoground", "vqa") else "no vision"
            for _, metric_name, value, decimals in headline_scores(result):
                lines.append(f"| {dataset_id(task, result['dataset'])[1]} | {result['dataset']} | {vision} | "
                             f"{result['items']} | {value:.{decimals}f} | {metric_name} |")
    return "\n".join(lines)


def write_card(model_dir: str | Path, results: list[str | Path] = (), figures: list[str | Path] = (),
               repo_id: str | None = None, license: str = "apache-2.0", datasets: list[str] = (),
               revision: str | None = None) -> Path:
    """Render README.md into `model_dir`. `results`: eval's results.json files; `figures`: PNGs (or folders of them),
    copied into `figures/`; the training report's figures are taken when present."""
    model_dir = check_model_folder(model_dir, load_weights=True)
    config = _read_json(model_dir / "config.json")
    if config is None:
        raise FileNotFoundError(f"{model_dir} has no config.json: it is not a saved checkpoint.")
    for written in (model_dir / "README.md", model_dir / FIGURES):
        if written.is_symlink():
            raise ValueError(f"{written} is a symbolic link (to {written.resolve()}); the card is written only into "
                             f"the model folder itself, never through a link: remove the link first")
    if config.get("model_type") != "gated_gpt2":
        raise ValueError(f"{model_dir}/config.json has model_type {config.get('model_type')!r}, not 'gated_gpt2'.")
    run = RunFiles(model_dir)
    report = _read_json(run.report)
    runs = [json.loads(Path(r).read_text()) for r in results]
    for path, run in zip(results, runs):
        if "tasks" not in run:
            raise ValueError(f"{path}: not an eval results.json (no 'tasks').")

    pngs = [p for f in [*figures, *([run.report_dir] if report else [])]
            for p in (sorted(Path(f).glob("*.png")) if Path(f).is_dir() else [Path(f)])]
    shown = []
    for png in pngs:
        (model_dir / FIGURES).mkdir(exist_ok=True)
        target = model_dir / FIGURES / png.name
        if png.resolve() != target.resolve():
            if target.is_symlink():
                raise ValueError(f"{target} is a symbolic link; the card's figures are written only into the "
                                 f"model folder itself, never through a link")
            write_atomically(target, png.read_bytes())
        shown.append((f"{FIGURES}/{png.name}", png.stem.replace("_", " ")))

    data = (report or {}).get("data_arguments", {})
    image_shape = (report or {}).get("image_shape")
    init = (report or {}).get("model_arguments", {}).get("init_from_gpt2")
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag="text-generation", license=license,
        tags=["babylm", "custom_code", "gatedgpt2", "vision-language", "token-wise-gating"],
        # `base_model` is a Hub id: a GPT-2 from a local folder has none to give
        datasets=list(datasets) or None, base_model=init if init and public_name(init) == init else None,
        model_name=repo_id or model_dir.name, eval_results=eval_results(runs) or None,
    )
    card = ModelCard.from_template(
        card_data, template_path=str(TEMPLATE),
        model_name=repo_id or model_dir.name, repo_id=repo_id or f"{UNNAMED_OWNER}/{model_dir.name}",
        revision=revision,
        variant=variant_table(config, image_shape), training=training_text(report),
        eval_table=eval_table(runs), has_no_vision=any(not r.get("vision", True) for r in runs),
        figures=shown, babylm=True, has_processor=(model_dir / "processor_config.json").is_file(),
        example_text="there is a red square ." if trained_on_world(data) else "The cat sat on the mat.",
        image_shape=", ".join(str(d) for d in (image_shape or [config["image_embed_dim"]])),
        image_note=("CLS + patch tokens" if image_shape and len(image_shape) == 2 else "one global embedding")
        + f" of width {config['image_embed_dim']}, as in training",
    )
    path = model_dir / "README.md"
    write_atomically(path, str(card))
    return path
