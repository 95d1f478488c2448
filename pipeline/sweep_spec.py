"""A sweep file (`configs/sweeps/*.yaml`): the train.py config its runs start from, the budget they share, the seeds,
the evaluations, the runs and the tables; checked when it is loaded, so that a bad run is an error before hours of
others. Read by the sweep (`sweep.py`) and its tables (`sweep_tables.py`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from gatedgpt2.trainer.arguments import check_model_fields, legacy_config_fields, load_yaml, merge_configs

EVALUATIONS = ("world", "gates", "knockout", "zero_shot", "factorial", "dev_loss")


class Sweep:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        spec = yaml.safe_load(self.path.read_text()) or {}
        known = {"config", "common", "seeds", "evaluate", "work_dir", "results", "runs", "zero_shot", "metrics",
                 "tables", "comparisons", "shared_tokenizer", "factorial"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"{self.path}: unknown keys {unknown}; expected some of {sorted(known)}")
        for key in ("config", "runs", "work_dir", "results"):
            if key not in spec:
                raise ValueError(f"{self.path}: missing key {key!r}")
        self.config = self.path.parent / spec["config"]
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.path}: config {self.config} does not exist")
        self.common = spec.get("common") or {}
        self.seeds = [int(s) for s in spec.get("seeds", [0])]
        self.evaluate = list(spec.get("evaluate", ["world"]))
        bad = sorted(set(self.evaluate) - set(EVALUATIONS))
        if bad:
            raise ValueError(f"{self.path}: unknown evaluations {bad}; expected some of {list(EVALUATIONS)}")
        self.zero_shot = spec.get("zero_shot") or {}
        self.factorial = spec.get("factorial") or {}  # gate_controls' options
        unknown = sorted(set(self.factorial) - {"untrained_draws", "permutations", "resamples", "min_count"})
        if unknown:
            raise ValueError(f"{self.path}: unknown `factorial` options {unknown}; expected some of untrained_draws, "
                             f"permutations, resamples, min_count")
        if "zero_shot" in self.evaluate and "data" not in self.zero_shot:
            raise ValueError(f"{self.path}: evaluate lists zero_shot, so a `zero_shot:` mapping with `data:` is needed")
        self.work_dir, self.results = Path(spec["work_dir"]), Path(spec["results"])
        self.runs = {str(name): (overrides or {}) for name, overrides in spec["runs"].items()}
        self.metrics = spec.get("metrics")  # the table's columns; default: all
        self.tables = spec.get("tables") or {}  # {title: {runs: [...], metrics: [...]}}: one table per question
        # {title: {runs: [reference, run, ...], metrics: [...]}}: each run - the reference, paired by seed
        self.comparisons = spec.get("comparisons") or {}
        # one tokenizer for every run, trained once on the first run's data (else each run trains its own)
        self.shared_tokenizer = bool(spec.get("shared_tokenizer", False))
        for title, table in self.tables.items():
            if not isinstance(table, dict) or set(table) != {"runs", "metrics"}:
                raise ValueError(f"{self.path}: table {title!r} must be a mapping with `runs` and `metrics` lists")
            unknown_runs = sorted(set(table["runs"]) - set(self.runs))
            if unknown_runs:
                raise ValueError(f"{self.path}: table {title!r} names runs not in `runs`: {unknown_runs}")
        for title, comparison in self.comparisons.items():
            if (not isinstance(comparison, dict) or set(comparison) != {"runs", "metrics"}
                    or len(comparison["runs"]) < 2):
                raise ValueError(f"{self.path}: comparison {title!r} must be a mapping with `runs` (a reference, then "
                                 f"the runs compared with it) and `metrics`")
            unknown_runs = sorted(set(comparison["runs"]) - set(self.runs))
            if unknown_runs:
                raise ValueError(f"{self.path}: comparison {title!r} names runs not in `runs`: {unknown_runs}")
        for run in self.runs:  # a run that starts from a missing run, or a bad model field, is an error now, not
            self.ancestry(run)  # hours into the sweep
            self.train_config(run, self.seeds[0])

    def train_config(self, run: str, seed: int) -> dict:
        """The full train.py config of one (run, seed): base config, then the shared budget, then the run. String
        values may name `{seed}` and `{work_dir}`, so that a run can continue from an earlier run's checkpoint."""
        overrides = {key: value.format(seed=seed, work_dir=self.work_dir) if isinstance(value, str) else value
                     for key, value in self.runs[run].items()}
        values = merge_configs(load_yaml(self.config), legacy_config_fields(self.common, f"{self.path}: common"),
                               legacy_config_fields(overrides, f"{self.path}: run {run}"))
        check_model_fields(values.get("model", {}), f"{self.path}: run {run}")
        if self.shared_tokenizer:
            values["tokenizer_name"] = str(self.tokenizer_dir)
        # a run without results is trained again from the start: replace what an interrupted attempt left
        values.update(seed=seed, output_dir=str(self.work_dir / run / f"seed{seed}"), report=True,
                      overwrite_output_dir=True)
        return values

    def depends_on(self, run: str) -> str | None:
        """The run whose output this run starts from (`model_name_or_path` or `init_from_gpt2` under
        `{work_dir}/<run>/`), if any."""
        overrides = self.runs[run]
        start = str(overrides.get("model_name_or_path") or overrides.get("init_from_gpt2") or "")
        if not start.startswith("{work_dir}/"):
            return None
        parent = start.removeprefix("{work_dir}/").split("/")[0]
        if parent not in self.runs:
            raise ValueError(f"{self.path}: run {run!r} starts from {start!r}, but there is no run {parent!r}")
        return parent

    def ancestry(self, run: str) -> list[str]:
        """The run, the run it starts from, that run's start, and so on."""
        chain = [run]
        while parent := self.depends_on(chain[-1]):
            if parent in chain:
                raise ValueError(f"{self.path}: runs start from each other in a circle: "
                                 f"{' -> '.join([*chain, parent])}")
            chain.append(parent)
        return chain

    @property
    def tokenizer_dir(self) -> Path:
        return self.work_dir / "tokenizer"

    def result_path(self, run: str, seed: int) -> Path:
        return self.results / "runs" / run / f"seed{seed}.json"
