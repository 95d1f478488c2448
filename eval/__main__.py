"""`python -m gatedgpt2.eval <command>`: the evaluation tools on a saved checkpoint (a folder or a Hub id)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gatedgpt2.data import ImageEmbeddings, WorldFiles, iter_text_lines, load_caption_shards, read_captions, text_files
from gatedgpt2.data.model_folder import check_local_model
from modeling_gatedgpt import ImageKind

from .babylm.tasks import ALL_TASKS, EWOK_PASSWORD, SUITES
from .checkpoint import load_checkpoint


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a batch size, a count of seeds, pairs, epochs...). Zero or a negative
    value would score nothing and report it as a result."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (0 turns something off)."""
    return _int_at_least(text, 0)


def positive_int_list(text: str) -> list[int]:
    """An argparse type: a comma list of integers >= 1 (e.g. --shots 4,16)."""
    return [positive_int(item) for item in text.split(",")]


def zero_shot_command(args: argparse.Namespace) -> None:
    from .babylm.zero_shot import results_table, write_pipeline_tree, zero_shot

    model, tokenizer = load_checkpoint(args.model, args.revision, args.device, args.trust_remote_code)
    if args.tasks.strip() in ("fast", "full") and args.fast != (args.tasks.strip() == "fast"):
        if args.tasks.strip() == "full":
            raise ValueError("--tasks full is the full suite; it takes no --fast.")
        args.fast = True  # the fast suite is scored on the fast sets
    results = zero_shot(model, tokenizer, args.data, args.tasks, fast=args.fast, images=args.images,
                        no_image=args.no_image, batch_size=args.batch_size, out_dir=args.out,
                        ewok_password=args.ewok_password, model_name=args.model)
    print(results_table(results), end="")
    print(f"Results: {Path(args.out) / 'results.json'}")
    if args.results_dir:
        write_pipeline_tree(results, args.results_dir, args.model, args.revision_name or args.revision)
        revision = args.revision_name or args.revision or "main"
        print(f"Pipeline results tree: {args.results_dir / Path(args.model).stem / revision}")


def babylm_command(args: argparse.Namespace) -> None:
    from .babylm.submission import score_run

    score_run(args.run, args.data, args.results_dir, args.model_name, args.cdi_words, args.cdi_table, args.batch_size)
    model_dir = args.results_dir / Path(args.model_name or args.run.resolve().name).stem
    print((model_dir / "summary.md").read_text(), end="")
    print(f"Results tree: {model_dir}; learning curves: {model_dir / 'learning_curves.png'}")


def finetune_command(args: argparse.Namespace) -> None:
    import tempfile

    from transformers import AutoTokenizer

    from .babylm.finetune import GLUE_TASKS, finetune_task, write_finetune_results

    tasks = [t.strip() for t in args.tasks.split(",")]
    unknown = [t for t in tasks if t not in GLUE_TASKS]
    if unknown:
        raise ValueError(f"--tasks: unknown task(s) {unknown}; choose from {', '.join(GLUE_TASKS)}.")
    check_local_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model, revision=args.revision)
    revision = args.revision_name or args.revision or "main"
    for task in tasks:
        with tempfile.TemporaryDirectory(prefix=f"finetune-{task}-") as scratch:
            result = finetune_task(args.model, tokenizer, task, args.data, Path(scratch), args.learning_rate,
                                   args.epochs, args.batch_size, args.seed, args.max_length, args.revision,
                                   args.trust_remote_code)
        folder = args.results_dir / Path(args.model).stem / revision / "finetune" / task
        write_finetune_results(result, task, folder)
        print(f"{task}: " + ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items()) + f" -> {folder}")


def gates_command(args: argparse.Namespace) -> None:
    from .interpret.gates import Norms, gate_analysis, word_frequencies

    world = WorldFiles(args.captions) if args.captions.is_dir() else None
    caption_file = world.captions("dev") if world else args.captions
    if args.embeddings is None and not world:
        raise ValueError("--embeddings is needed with a captions file (the image embeddings aligned with it).")
    embeddings = args.embeddings or world.caption_images("dev", args.image_tokens)
    captions, store = load_caption_shards([caption_file], [embeddings])
    corpus = args.frequency_corpus or ([world.text_dir("train"), world.captions("train")] if world else [])
    frequencies = None
    if corpus:
        lines = [line for path in corpus for line in (iter_text_lines(text_files(path)) if path.is_dir()
                                                      else read_captions(path) if path.suffix in (".json", ".jsonl")
                                                      else path.read_text(encoding="utf-8").splitlines())]
        frequencies = word_frequencies(lines)
    model, tokenizer = load_checkpoint(args.model, args.revision, args.device, args.trust_remote_code)
    summary = gate_analysis(model, tokenizer, captions, store, args.out, [Norms.load(n) for n in args.norms],
                            frequencies, min_count=args.min_count, batch_size=args.batch_size)
    pooled = summary["by_layer"]["pooled"]["pos"]
    if pooled["kruskal_wallis"]:
        print(f"Kruskal-Wallis across POS (pooled), per occurrence: H = {pooled['kruskal_wallis']['H']:.2f}, "
              f"p = {pooled['kruskal_wallis']['p']:.3g}, epsilon^2 = {pooled['kruskal_wallis']['epsilon_squared']:.3f}")
    by_type = summary["by_layer"]["pooled"]["pos_by_word_type"]["kruskal_wallis"]
    if by_type:
        print(f"  per word type: H = {by_type['H']:.2f}, p = {by_type['p']:.3g}, n = {by_type['n']} types, "
              f"epsilon^2 = {by_type['epsilon_squared']:.3f}")
    null = summary["by_layer"]["pooled"]["pos_within_word_type_null"]
    if null:
        print(f"  against each word's gates shuffled among its occurrences: percentile {null['percentile']:.1f}, "
              f"p = {null['p']:.3g} ({null['permutations']} permutations)")
    for pos, group in sorted(pooled["groups"].items(), key=lambda kv: kv[1]["mean"]):
        print(f"  {pos:6s} n={group['n']:6d} mean gate {group['mean']:.3f}")
    print(f"Report: {args.out / 'gates.json'}")
    if args.untrained_draws:
        controls(model, tokenizer, captions, store, world, args)


def controls(model, tokenizer, captions, store, world: WorldFiles | None, args: argparse.Namespace) -> None:
    """The gate next to the image's benefit to the next word, against an untrained gate and a within-word shuffle:
    by word class and cell with a factorial world's labels, else by content / function word (each word type's most
    frequent spaCy POS in gates.csv, punctuation stripped)."""
    import csv
    import string
    from collections import Counter, defaultdict

    from gatedgpt2.data.factorial_world import cell, cell_name

    from .interpret.gate_controls import gate_controls, write_report
    from .interpret.gates import CONTENT_POS, FUNCTION_POS

    def depicted(word: str) -> bool:
        return bool(cell(word) and cell(word)[1])

    dependent = None
    if world and world.caption_cells("dev").is_file():
        groupings, dependent = {"class": lambda w: (cell(w) or (None,))[0], "cell": cell_name}, depicted
    else:
        tags = defaultdict(Counter)
        with open(args.out / "gates.csv", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                tags[row["word"]][row["pos"]] += 1
        majority = {word: counts.most_common(1)[0][0] for word, counts in tags.items()}

        def word_class(word: str) -> str | None:
            tag = majority.get(word.strip(string.punctuation))
            return "content" if tag in CONTENT_POS else "function" if tag in FUNCTION_POS else None
        groupings = {"class": word_class}
    reports = gate_controls(model, tokenizer, captions, store, groupings, dependent, args.untrained_draws,
                            batch_size=args.batch_size)
    for grouping, report in reports.items():
        path = write_report(report, args.out / "controls" / grouping)
        effect = report["class_effect"]
        if effect["epsilon_squared"] is not None:
            print(f"Gate by {grouping}: epsilon^2 = {effect['epsilon_squared']:.3f}, percentile "
                  f"{effect['untrained']['percentile']:.0f} among {args.untrained_draws} untrained gates")
        for name, entry in report["classes"].items():
            rho = entry["next_word_rho"]
            line = f"  {name}: n={entry['n']}"
            if rho["rho"] is not None:
                line += (f", rho(1 - gate, next word's image benefit) = {rho['rho']:.3f} "
                         f"[{rho['ci95'][0]:.3f}, {rho['ci95'][1]:.3f}]")
            gap = entry.get("within_word_gap")
            if gap and gap["gap"] is not None:
                line += (f", within-word gap (before depicted - not) = {gap['gap']:+.3f} "
                         f"[{gap['ci95'][0]:+.3f}, {gap['ci95'][1]:+.3f}], percentile "
                         f"{gap['untrained']['percentile']:.0f} (untrained) / "
                         f"{gap['shuffled_within_words']['percentile']:.0f} (shuffled)")
            print(line)
        print(f"Report: {path}")


def narrow_gate_command(args: argparse.Namespace) -> None:
    from .interpret.narrow_gate import knockout_markdown, narrow_gate_report

    model, tokenizer = load_checkpoint(args.model, args.revision, args.device, args.trust_remote_code)
    images = ImageEmbeddings.load(args.images or WorldFiles.task_images(args.data, ImageKind.CLS_PATCHES))
    layers = [int(i) for i in args.layers.split(",")] if args.layers else None
    report = narrow_gate_report(model, tokenizer, args.data, images, args.out, args.random_k, args.seeds,
                                args.max_pairs, args.batch_size, layers)
    print(knockout_markdown(report["knockout"]), end="")
    print(f"Report: {args.out / 'narrow_gate.json'}")


def fewshot_command(args: argparse.Namespace) -> None:
    import json

    import numpy as np

    from .interpret.fewshot import class_text_features, fewshot, world_dataset, write

    if args.features is not None:
        if args.labels is None or args.class_names is None:
            raise ValueError("--features needs --labels (.npy of class indices) and --class-names (a JSON list).")
        features, labels = np.load(args.features), np.load(args.labels)
        class_names = json.loads(args.class_names.read_text())
    else:
        features, labels, class_names = world_dataset(args.per_class, seed=0)
    if args.text_features is not None:
        text_features = np.load(args.text_features)
    else:
        model, tokenizer = load_checkpoint(args.text_model, device="cpu", trust_remote_code=args.trust_remote_code)
        text_features = class_text_features(model, tokenizer, class_names, args.template)
    results = fewshot(features, labels, text_features, args.shots, args.seeds, args.k, args.epochs)
    write(results, args.out, classes=class_names, k=args.k, seeds=args.seeds,
          data=str(args.features or "grounded world"), text_encoder=str(args.text_features or args.text_model))
    for n, result in results.items():
        print(f"{n:3d}-shot  " + "   ".join(f"{name} {r['mean']:.1f} +- {r['std']:.1f}" for name, r in result.items()))
    print(f"Results: {args.out / 'fewshot.json'}")


def attach_vision_tower_command(args: argparse.Namespace) -> None:
    """A checkpoint the official pipeline can feed images to: the model with its DINOv2 tower, and a processor."""
    from transformers import AutoModel

    from modeling_gatedgpt import GatedGPT2Processor

    model, tokenizer = load_checkpoint(args.model, args.revision, "cpu", args.trust_remote_code)
    model.attach_vision_tower(AutoModel.from_pretrained(args.vision_tower), args.vision_feature)
    model.save_pretrained(args.out)
    GatedGPT2Processor.for_vision_tower(tokenizer, model.config.vision_config).save_pretrained(args.out)
    print(f"Saved {args.out}: model with a frozen {type(model.transformer.vision_tower).__name__} tower + processor")


def add_trust_remote_code(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true", default=None,
                        help="run the checkpoint's own code even if this package did not write it (a checkpoint of "
                             "this package is trusted without it; see gatedgpt2.eval.checkpoint)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gatedgpt2.eval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, run, batch_size: int | None = 64) -> argparse.ArgumentParser:
        """A sub-command on one checkpoint, with the arguments they all share."""
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--model", required=True, help="checkpoint folder or Hub id")
        sub.add_argument("--revision", help="a Hub revision, e.g. chck_10M")
        add_trust_remote_code(sub)
        sub.add_argument("--out", required=True, type=Path)
        if batch_size is not None:
            sub.add_argument("--batch-size", type=positive_int, default=batch_size)
            sub.add_argument("--device", help="default: cuda when available, else cpu")
        sub.set_defaults(handler=run)
        return sub

    zs = command("zero-shot", "BabyLM zero-shot tasks, scored as the 2025 pipeline scores them", zero_shot_command)
    zs.add_argument("--data", required=True, type=Path,
                    help="the official evaluation_data/ folder, or a flat folder with one sub-folder per task "
                         "(the grounded world's eval/)")
    zs.add_argument("--tasks", default="blimp,supplement,ewok",
                    help=f"comma-separated subset of {','.join(ALL_TASKS)}, or fast / full: the pipeline's fast "
                         f"suite ({','.join(SUITES['fast'])}) or full one ({','.join(SUITES['full'])}) (default: "
                         f"blimp,supplement,ewok)")
    zs.add_argument("--fast", action="store_true", help="the fast_eval sets (BLiMP, supplement, EWoK, entity tracking)")
    zs.add_argument("--results-dir", type=Path,
                    help="also write the predictions in the pipeline's results tree under this folder "
                         "(<model>/<revision>/zero_shot/causal/<task>/<dataset>/predictions.json), for its "
                         "collate_preds.sh")
    zs.add_argument("--revision-name",
                    help="the revision's folder in --results-dir (default: --revision, else main)")
    zs.add_argument("--no-image", action="store_true", help="score Winoground / VQA without images")
    zs.add_argument("--images", type=Path, help="image embeddings: an .npy with image_ids.json, or a datasets folder")
    zs.add_argument("--ewok-password", default=EWOK_PASSWORD, help="password of the distributed EWoK zip")

    babylm = commands.add_parser("babylm", help="a BabyLM 2025 submission's zero-shot scoring of a training run: "
                                 "every revisions/chck_* on the fast suite, the final model on the full one, AoA "
                                 "surprisals; skips what is already scored")
    babylm.set_defaults(handler=babylm_command)
    babylm.add_argument("--batch-size", type=positive_int, default=64)
    babylm.add_argument("--run", required=True, type=Path, help="the training run's output folder")
    babylm.add_argument("--data", required=True, type=Path, help="the official evaluation_data/ folder")
    babylm.add_argument("--results-dir", required=True, type=Path, help="the pipeline's results/ folder")
    babylm.add_argument("--model-name", help="the model's folder in the results tree (default: the run's name)")
    babylm.add_argument("--cdi-words", type=Path,
                        help="the AoA word file (full_eval/aoa/cdi_childes.json): score every revision on it")
    babylm.add_argument("--cdi-table", type=Path,
                        help="the children's CDI proportions (a CSV with word and months 16-30): report the AoA "
                             "curve fitness")

    tune = commands.add_parser("finetune", help="(Super)GLUE fine-tuning with GatedGPT2ForSequenceClassification and "
                               "the HF Trainer, written where the BabyLM pipeline's finetune writes")
    tune.set_defaults(handler=finetune_command)
    tune.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    tune.add_argument("--revision", help="a Hub revision")
    add_trust_remote_code(tune)
    tune.add_argument("--data", required=True, type=Path, help="evaluation_data/ or its glue_filtered/ folder")
    tune.add_argument("--results-dir", required=True, type=Path, help="the pipeline's results/ folder")
    tune.add_argument("--revision-name", help="the revision's folder in --results-dir (default: --revision, else main)")
    tune.add_argument("--tasks", default="boolq,mnli,mrpc,multirc,qqp,rte,wsc", help="comma-separated GLUE tasks")
    tune.add_argument("--learning-rate", type=float, default=3e-5)
    tune.add_argument("--epochs", type=positive_int, help="default: 10, and 30 for WSC (eval_finetuning.sh)")
    tune.add_argument("--batch-size", type=positive_int, help="default: 32, and 16 for BoolQ / MultiRC")
    tune.add_argument("--seed", type=int, default=42)
    tune.add_argument("--max-length", type=positive_int, default=512, help="inputs are truncated to this many tokens")

    gates = command("gates", "gate values by part of speech, concreteness and frequency", gates_command, 32)
    gates.add_argument("--captions", required=True, type=Path,
                       help="a captions file (JSON list or JSONL), or a grounded-world folder (its dev captions)")
    gates.add_argument("--embeddings", type=Path, help="the captions' image embeddings (.npy, row-aligned)")
    gates.add_argument("--image-tokens", choices=[k.value for k in ImageKind], default=ImageKind.GLOBAL.value,
                       help="with a world folder: which of its embeddings the model reads")
    gates.add_argument("--norms", action="append", default=[],
                       help="a norms TSV, as PATH or PATH:WORD_COLUMN:VALUE_COLUMN (default columns Word, Conc.M: "
                            "Brysbaert concreteness); repeatable, the first is used in the regression")
    gates.add_argument("--frequency-corpus", type=Path, action="append",
                       help="training text (a folder of *.train, a text file or a captions file) for word frequencies; "
                            "repeatable (default with a world folder: its training text and captions)")
    gates.add_argument("--min-count", type=positive_int, default=5, help="occurrences a POS needs to enter the tests")
    gates.add_argument("--untrained-draws", type=non_negative_int, default=20,
                       help="fresh gates drawn for the untrained null of the next-word analysis (controls/); 0 "
                            "skips it")

    gate = command("narrow-gate", "attention profile, modality gap, knockout and activation patching",
                   narrow_gate_command)
    gate.add_argument("--data", required=True, type=Path,
                      help="a folder with winoground/ and vqa/ tasks (the grounded world's eval/)")
    gate.add_argument("--images", type=Path, help="CLS + patch token embeddings (default: DATA/images/cls_patches.npy)")
    gate.add_argument("--random-k", type=positive_int, default=1, help="patches knocked out in the random control")
    gate.add_argument("--seeds", type=positive_int, default=3, help="random draws of the control")
    gate.add_argument("--max-pairs", type=positive_int, default=200, help="VQA pairs for activation patching")
    gate.add_argument("--layers", help="comma list of the cross-attention layers to knock out (default: all)")

    few = commands.add_parser("fewshot", help="N-shot linear probes on raw vs top-k-fusion-enhanced image features")
    few.add_argument("--features", type=Path, help="image features .npy (N, D); default: the grounded world's")
    few.add_argument("--labels", type=Path, help="class index per row .npy (N,)")
    few.add_argument("--class-names", type=Path, help="JSON list of the class names")
    few.add_argument("--text-features", type=Path, help="class text features .npy (C, D_text), instead of a model")
    add_trust_remote_code(few)
    few.add_argument("--text-model", default="outputs/demo", help="GatedGPT2 checkpoint whose text stream encodes "
                     "the class names (default: outputs/demo)")
    few.add_argument("--template", default="{}", help="prompt around each class name, e.g. 'a photo of a {}'")
    few.add_argument("--shots", type=positive_int_list, default=[4, 16], help="support images per class, a comma list")
    few.add_argument("--seeds", type=positive_int, default=5)
    few.add_argument("--k", type=positive_int, default=3, help="text features each image feature reads")
    few.add_argument("--epochs", type=positive_int, default=20)
    few.add_argument("--per-class", type=positive_int, default=40, help="world images per class")
    few.add_argument("--out", required=True, type=Path)
    few.set_defaults(handler=fewshot_command)

    tower = command("attach-vision-tower", "save a copy of a checkpoint with its DINOv2 tower, so that it takes "
                    "pixel_values", attach_vision_tower_command, batch_size=None)
    tower.add_argument("--vision-tower", required=True,
                       help="the DINOv2 whose embeddings the model was trained on (folder or Hub id)")
    tower.add_argument("--vision-feature", choices=[k.vision_feature for k in ImageKind],
                       default=ImageKind.GLOBAL.vision_feature,
                       help="the CLS token (a global embedding) or CLS + patch tokens, as in training")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
