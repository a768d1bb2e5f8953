"""Benchmark output: rich tables, the `--out` files (Spec-Bench JSONL, summary.json, PNG plots), compare.

Library code never prints: table builders return rich renderables for the CLI to print.
`--out X.json` writes one JSON (environment, metrics, every record); `--out DIR` writes the
issue-6 layout:

    DIR/run.json, DIR/records.jsonl        (the runner's resume state)
    DIR/model_answer/<method>.jsonl        Spec-Bench answer files, one line per question
    DIR/summary.json                       environment, config, notes, metrics per method/category
    DIR/plots/speedup.png, accept_lengths.png, budget_sweep.png (with a budget sweep)
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from ..errors import SpecgenError
from ..fileio import atomic_write_text
from .metrics import OVERALL, compare_summaries

Record = dict[str, Any]


def environment(seed: int | None = None) -> dict[str, Any]:
    """Where the numbers come from: machine, CPU/GPU, library versions, seed, git commit, date."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"machine": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "transformers": transformers.__version__, "seed": seed,
            "git_commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _fmt(v: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def metrics_table(metrics: dict[str, Any], category: str, title: str | None = None) -> Any:
    """One rich Table: a row per method for `category` (or "overall")."""
    from rich.table import Table

    table = Table(title=title or category, title_justify="left",
                  caption="tau: tokens/step (bonus incl.); accept: drafted tokens accepted; speedup: mean tok/s / ar's; "
                          "=ar: token-identical to ar; em: same text as ar; rouge-l: ROUGE-L F1 vs ar; "
                          "cos: cosine of the target's mean-pooled embeddings of the answer and ar's; "
                          "answer acc: numeric answers right (GSM8K, math); "
                          "p/v/o: propose/verify/other share of time")
    for col in ("method", "n", "tau", "accept", "tok/s", "speedup", "=ar", "quality", "p/v/o time"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for method, cats in metrics.items():
        m = cats.get(category)
        if m is None:
            continue
        quality = [f"answer acc {m['gsm8k_accuracy']:.0%}"] if m.get("gsm8k_accuracy") is not None else []
        quality += [f"pass@1 {m['pass_at_1']:.0%}"] if m.get("pass_at_1") is not None else []
        if m.get("exact_match_ar") is not None and method != "ar":
            quality.append(f"em {m['exact_match_ar']:.0%}")
            if m.get("rouge_l_ar") is not None and m["exact_match_ar"] < 1.0:
                quality.append(f"rouge-l {m['rouge_l_ar']:.2f}")
            if m.get("embed_cos_ar") is not None and m["exact_match_ar"] < 1.0:
                quality.append(f"cos {m['embed_cos_ar']:.3f}")
        if m.get("recomputed_step_fraction") is not None:
            quality.append(f"recomputed {m['recomputed_step_fraction']:.0%}")
        split = m.get("time_split") or {}
        split_s = (f"{split['propose']:.0%}/{split['verify']:.0%}/{1 - split['propose'] - split['verify']:.0%}"
                   if split and split.get("propose") is not None else "-")
        table.add_row(method, str(m["n"]), _fmt(m["tau"]), _fmt(m["draft_acceptance_rate"], ".0%"),
                      _fmt(m["tokens_per_s"], ".1f"), _fmt(m["speedup"], ".2f", "x"), _fmt(m["identical_to_ar"], ".0%"),
                      " ".join(quality) or "-", split_s)
    return table


def result_tables(metrics: dict[str, Any], per_category: bool = True) -> list[Any]:
    """Tables per category (when asked) then overall."""
    cats: list[str] = []
    for table in metrics.values():
        cats += [c for c in table if c != OVERALL and c not in cats]
    tables = [metrics_table(metrics, c) for c in cats] if per_category and len(cats) > 1 else []
    return tables + [metrics_table(metrics, OVERALL, "overall")]


def verifier_table(study: dict[str, Any]) -> Any:
    """The verifier study's AUROC per signal (0.5 = chance), with the sample it rests on."""
    from rich.table import Table

    from .verifier import SIGNAL_LABELS

    table = Table(title=f"SpecGuard verifier on GSM8K: {study['problems']} problems, {study['pairs']} gold/corrupted "
                        f"step pairs, {study.get('model')}",
                  caption="AUROC for telling gold steps (positive) from corrupted twins; 0.5 = chance")
    for col in ("signal", "AUROC", "gold beats twin"):
        table.add_column(col, justify="left" if col == "signal" else "right")
    for key, value in study["auroc"].items():
        win = study["twin_win_rate"].get(key)
        table.add_row(SIGNAL_LABELS.get(key, key), f"{value:.3f}", "" if win is None else f"{win:.0%}")
    table.add_row("accept rate (configured rule)", f"gold {study['accept_rate_gold']:.0%}",
                  f"corrupted {study['accept_rate_corrupted']:.0%}")
    return table


def summary_dict(result: Any) -> dict[str, Any]:
    """The summary.json object of a BenchResult."""
    cfg = dataclasses.asdict(result.config)
    cfg["method_options"] = {k: dict(v) for k, v in result.config.method_options.items()}
    return {"environment": result.environment, "model": result.model_name, "config": cfg, "notes": result.notes,
            "methods": [{"label": r.label, "method": r.method, "budget": r.budget, "peer": r.peer, "lossless": r.lossless,
                         "config": dataclasses.asdict(r.config) if dataclasses.is_dataclass(r.config) else None}
                        for r in result.runs],
            "speedup_convention": "mean tokens/s of the method / mean tokens/s of ar on the same prompts, same run",
            "metrics": result.metrics}


def write_json(result: Any, path: str | os.PathLike[str]) -> Path:
    """One JSON: the summary plus every record."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = summary_dict(result)
    data["records"] = result.records
    atomic_write_text(out, json.dumps(data, indent=1) + "\n")
    return out


def spec_bench_rows(records: list[Record]) -> list[dict[str, Any]]:
    """Spec-Bench answer lines of one method's records, one per question, turns in order."""
    rows: dict[str, dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: r["turn"]):
        row = rows.setdefault(str(r["question_id"]), {
            "question_id": r["question_id"], "category": r["category"], "model_id": r.get("model_id"),
            "choices": [{"index": 0, "turns": [], "new_tokens": [], "wall_time": [], "accept_lengths": []}]})
        ch = row["choices"][0]
        ch["turns"].append(r["text"])
        ch["new_tokens"].append(r["new_tokens"])
        ch["wall_time"].append(r["wall_time"])
        ch["accept_lengths"] += list(r.get("accept_lengths") or [])
    return list(rows.values())


def read_spec_bench_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a Spec-Bench answer file back."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_out_dir(result: Any, out_dir: str | os.PathLike[str]) -> list[Path]:
    """The issue-6 layout in `out_dir` (see the module docstring); returns the files written."""
    out = Path(out_dir)
    (out / "model_answer").mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    by_method: dict[str, list[Record]] = {}
    for r in result.records:
        by_method.setdefault(r["method"], []).append(r)
    for method, recs in by_method.items():
        path = out / "model_answer" / f"{method}.jsonl"
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in spec_bench_rows(recs)))
        written.append(path)
    summary = out / "summary.json"
    atomic_write_text(summary, json.dumps(summary_dict(result), indent=1) + "\n")
    written.append(summary)
    written += write_plots(result.metrics, result.records, out / "plots")
    return written


def write_outputs(result: Any, out: str | os.PathLike[str]) -> list[Path]:
    """`--out`: a `.json` path gets one JSON, anything else is a folder with the issue-6 layout."""
    return [write_json(result, out)] if str(out).endswith(".json") else write_out_dir(result, out)


def load_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A summary.json, a `--out X.json` file, or a folder holding summary.json."""
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecgenError(f"cannot read {p}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise SpecgenError(f"{p}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or "metrics" not in data:
        raise SpecgenError(f"{p}: not a bench summary (no 'metrics')")
    return data


def compare_table(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> Any:
    """Rich table of per-method overall values of two summaries and their deltas (B - A)."""
    from rich.table import Table

    table = Table(title=f"{name_a} -> {name_b} (overall)", title_justify="left")
    table.add_column("method")
    for col in ("tau", "tok/s", "speedup", "accept", "=ar"):
        table.add_column(col, justify="right")
    specs = {"tau": ".2f", "tokens_per_s": ".1f", "speedup": ".2f", "draft_acceptance_rate": ".2f", "identical_to_ar": ".2f"}
    for row in compare_summaries(a, b):
        cells = []
        for key, spec in specs.items():
            va, vb, d = row[key]
            cells.append(f"{_fmt(va, spec)} -> {_fmt(vb, spec)} ({'-' if d is None else format(d, '+' + spec)})")
        table.add_row(row["method"], *cells)
    return table


def _savefig(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(metrics: dict[str, Any], records: list[Record], folder: str | os.PathLike[str]) -> list[Path]:
    """PNG plots (matplotlib Agg): speedup per category per method, acceptance-length histogram,
    and tokens/s against tree budget when the run swept budgets (`pld@4`, `pld@8`, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(folder)
    written: list[Path] = []
    methods = [m for m in metrics if m != "ar"] or list(metrics)
    cats: list[str] = []
    for table in metrics.values():
        cats += [c for c in table if c not in cats and c != OVERALL]
    cats.append(OVERALL)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.9 * len(cats)), 4.0))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        vals = [(metrics[m].get(c) or {}).get("speedup") or 0.0 for c in cats]
        ax.bar([x + i * width for x in range(len(cats))], vals, width, label=m)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks([x + width * (len(methods) - 1) / 2 for x in range(len(cats))], cats, rotation=30, ha="right")
    ax.set_ylabel("speedup vs ar (ratio of mean tokens/s)")
    ax.set_title("Speedup per category")
    ax.legend(fontsize="small")
    written.append(_savefig(fig, out / "speedup.png"))

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for m in metrics:
        lengths = [a for r in records if r["method"] == m for a in (r.get("accept_lengths") or [])]
        if lengths:
            ax.hist(lengths, bins=range(1, max(lengths) + 2), alpha=0.5, label=m, align="left")
    ax.set_xlabel("tokens per step (acceptance length, bonus included)")
    ax.set_ylabel("steps")
    ax.set_title("Acceptance length histogram")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    written.append(_savefig(fig, out / "accept_lengths.png"))

    sweeps: dict[str, list[tuple[int, float]]] = {}
    for label, table in metrics.items():
        if "@" in label and label.rsplit("@", 1)[1].isdigit() and table[OVERALL].get("tokens_per_s") is not None:
            base, budget = label.rsplit("@", 1)
            sweeps.setdefault(base, []).append((int(budget), table[OVERALL]["tokens_per_s"]))
    if sweeps:
        fig, ax = plt.subplots(figsize=(6.0, 4.0))
        for base, points in sweeps.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=base)
        ar_tps = (metrics.get("ar") or {}).get(OVERALL, {}).get("tokens_per_s")
        if ar_tps:
            ax.axhline(ar_tps, color="black", linewidth=0.8, linestyle="--", label="ar")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tree node budget")
        ax.set_ylabel("tokens/s (mean over prompts)")
        ax.set_title("Tokens/s vs tree budget")
        ax.legend(fontsize="small")
        written.append(_savefig(fig, out / "budget_sweep.png"))
    return written
