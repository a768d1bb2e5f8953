"""`specgen bench`: thin wrapper over `specgen.bench` (parse -> BenchConfig -> run_bench -> render).

`specgen bench` with no option runs Spec-Bench, one question per category, `ar,pld,sd` (plus
`rest,sense` when an index is given) with 64 new tokens. Subcommands: `compare A B` (deltas of two
summaries) and `kernels` (the kernel micro-benchmark). A SpecgenError propagates to the main
group, which prints it as one line and exits 2.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from specgen.errors import SpecgenError
from specgen.fileio import atomic_write_text
from specgen.validate import in_range, input_path, output_dir, output_file

bench_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                        help="Benchmark methods on Spec-Bench, MT-bench, HumanEval, GSM8K or a JSONL (DESIGN.md section 6).")


def _csv(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise SpecgenError("empty list")
    return items


def _budgets(value: str | None, flag: str = "--budgets") -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _csv(value) or ())
    except ValueError:
        raise SpecgenError(f"{flag} takes integers like 4,8,16, got '{value}'") from None


def sizing_options(items: list[str] | None) -> dict[str, Any]:
    """`--sizing-option KEY=VALUE` (repeatable): tree sizing config fields, values read as YAML scalars."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecgenError(f"--sizing-option takes KEY=VALUE (e.g. prior_depth=flat), got '{item}'")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            raise SpecgenError(f"--sizing-option {key}: cannot read the value '{value}'") from None
    return out


def read_method_config(path: Path | None) -> dict[str, dict[str, Any]]:
    """`--method-config FILE`: YAML or JSON, one mapping per method of config field names."""
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecgenError(f"cannot read method config {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError: one line, no traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecgenError(f"method config {path}: {first}") from None
    data = data or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) or v is None for v in data.values()):
        raise SpecgenError(f"method config {path}: expected one mapping per method, e.g. 'pld: {{num_draft: 8}}'")
    return {str(k): dict(v or {}) for k, v in data.items()}


@bench_app.callback()
def bench(
    ctx: typer.Context,
    suite: str = typer.Option("spec-bench", "--suite", help="spec-bench | mt-bench | humaneval | gsm8k | path to a JSONL "
                                                            "with 'turns', 'prompt' or 'question'."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated methods (default: ar,pld,rest,sense, "
                                                                 "those usable here); ar is always added. Variants: "
                                                                 "sense-gate (soft gate on), sense-gate-hidden, sense-strict "
                                                                 "(the earlier sense defaults), specguard-conf, specguard-ground."),
    limit: Optional[int] = typer.Option(1, "--limit", help="Questions per category (0 = all)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Target model (default: the embedded SmolLM2-135M-Instruct)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available) | cpu | cuda | cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="New tokens per turn."),
    peers: bool = typer.Option(False, "--peers", help="Also run HF transformers generate: plain, prompt lookup, early exit."),
    method_config: Optional[Path] = typer.Option(None, "--method-config", help="YAML/JSON: one section per method, keys = config fields."),
    index: Optional[str] = typer.Option(None, "--index", help="Datastore folder for rest/sense (`specgen build-index`)."),
    out: Optional[Path] = typer.Option(None, "--out", help="X.json: one JSON of all records; a folder: Spec-Bench JSONL, "
                                                          "summary.json, plots (and resume: finished prompts are skipped)."),
    warmup: int = typer.Option(1, "--warmup", help="Warm-up generations per method before timing."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (the protocol's default)."),
    turns: int = typer.Option(1, "--turns", help="Turns per question: 1 = first only; 2 = multi-turn (answer 1 carried into turn 2)."),
    budgets: Optional[str] = typer.Option(None, "--budgets", help="Tree node-budget sweep for drafting methods, e.g. 4,8,16."),
    per_category: bool = typer.Option(True, "--per-category/--overall-only", help="Print a table per category."),
    draft_policy: str = typer.Option("adaptive", "--draft-policy", help="adaptive | always (see `generate --help`)."),
    tree_sizing: str = typer.Option("cost", "--tree-sizing", help="cost | budget (see `generate --help`)."),
    sizing_option: Optional[list[str]] = typer.Option(None, "--sizing-option", help="KEY=VALUE, repeatable: a "
                                                      "TreeSizingConfig field (e.g. prior_depth=flat, pad_forwards=false)."),
    verifier: bool = typer.Option(False, "--verifier", help="GSM8K only: AUROC of SpecGuard's signals for corrupted "
                                                           "vs gold reasoning steps, instead of a decoding run."),
    concurrency: Optional[str] = typer.Option(None, "--concurrency", help="e.g. 1,2,4,8: the server under that many "
                                                                          "concurrent clients per method (tokens/s, latency)."),
    repeats: int = typer.Option(1, "--repeats", help="--concurrency: rounds per method and level (the method "
                                                     "order alternating; the speedup is the median ratio)."),
    shared_calibration: bool = typer.Option(True, "--shared-calibration/--per-request-calibration",
                                            help="--concurrency: the server's tree-sizing calibration (see "
                                                 "`serve --help`)."),
    compare_generate: bool = typer.Option(False, "--compare-generate", help="--concurrency: at 1 client, also decode "
                                          "each wave's prompts with `generate` (no server) for its speedup."),
    interleave: bool = typer.Option(True, "--interleave/--wave-by-wave", help="--concurrency: at 1 client, the "
                                    "methods' requests alternate prompt by prompt (less drift inside a ratio)."),
    generate_calibration: str = typer.Option("shared", "--generate-calibration", help="--compare-generate: shared "
                                             "(one acceptance calibration per method across generate calls, as "
                                             "`specgen generate` keeps on disk) or fresh (each call from the prior)."),
    split: str = typer.Option("eval", "--split", help="--suite paraphrase: tune | eval | all (pairs decoded; the "
                                                      "datastore holds the answers to that split's originals)."),
    pairs_path: Optional[Path] = typer.Option(None, "--pairs", help="--suite paraphrase: your own pairs JSONL "
                                                                    "(original, paraphrase[, id, category, split])."),
) -> None:
    """Run the benchmark (when no subcommand is given)."""
    if ctx.invoked_subcommand is not None:
        return
    if out is not None:  # checked before anything loads; nothing is created yet
        (output_file if str(out).endswith(".json") else output_dir)("out", out)
    if verifier:
        _verifier(suite, limit or None, model, dtype, seed, read_method_config(method_config), out)
        return
    if concurrency is not None:
        from specgen.cli.bench_served import served

        served(suite, limit or None, model, dtype, device, _csv(methods) or ("ar", "pld", "sense"),
               _budgets(concurrency, "--concurrency"), max_new_tokens, read_method_config(method_config), index, out,
               shared_calibration, repeats, compare_generate, interleave, generate_calibration)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from specgen.bench.report import result_tables, write_outputs
    from specgen.bench.runner import BenchConfig, run_bench

    out_dir = str(out) if out is not None and not str(out).endswith(".json") else None
    console = Console(stderr=True)
    bundle = questions = None
    if suite == "paraphrase":  # the datastore is the target's answers to the originals: built (once) first
        from specgen.bench.paraphrase import ensure_datastore, load_pairs, paraphrase_questions, split_pairs
        from specgen.models import check_model_spec, load_model

        pairs = split_pairs(load_pairs(pairs_path), split)
        if not pairs:
            raise SpecgenError(f"--suite paraphrase: no pairs in split '{split}'")
        BenchConfig(suite=suite, methods=_csv(methods), limit=limit or None, model=model, dtype=dtype, device=device,
                    max_new_tokens=max_new_tokens, index=index, out_dir=out_dir, method_options=read_method_config(method_config))
        check_model_spec(model)
        bundle = load_model(model, dtype=dtype, device=device)
        with console.status("paraphrase datastore") as status:
            index = index or str(ensure_datastore(bundle, pairs, progress=lambda what: status.update(what)))
        questions = paraphrase_questions(pairs, limit or None)
        methods = methods or "ar,pld,rest,sense,sense-gate"
        suite = f"paraphrase:{split}" + ("" if pairs_path is None else f":{pairs_path}")
    config = BenchConfig(suite=suite, methods=_csv(methods), limit=limit or None, model=model, dtype=dtype, device=device,
                         max_new_tokens=max_new_tokens, peers=peers, method_options=read_method_config(method_config),
                         index=index, out_dir=out_dir, warmup=warmup, seed=seed, temperature=temperature, turns=turns,
                         budgets=_budgets(budgets), draft_policy=draft_policy,
                         tree_sizing=tree_sizing, sizing_options=sizing_options(sizing_option))
    with Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("loading", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        result = run_bench(config, progress=progress, bundle=bundle, questions=questions)
    stdout = Console()
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    for table in result_tables(result.metrics, per_category=per_category):
        stdout.print(table)
    if out is not None:
        for path in write_outputs(result, out):
            console.print(f"wrote {path}")


def _verifier(suite: str, limit: int | None, model: str | None, dtype: str, seed: int,
              options: dict[str, dict[str, Any]], out: Path | None) -> None:
    from rich.console import Console

    from specgen.bench.report import verifier_table
    from specgen.bench.verifier import run_verifier_bench
    from specgen.proposers.registry import make_config

    unknown = set(options) - {"specguard"}
    if unknown:
        raise SpecgenError(f"--verifier reads only a 'specguard' section of --method-config, got {', '.join(sorted(unknown))}")
    cfg = make_config("specguard", options.get("specguard", {}))
    console = Console(stderr=True)
    with console.status("scoring gold and corrupted GSM8K steps"):
        study = run_verifier_bench(suite, limit, model=model, dtype=dtype, seed=seed, config=cfg)
    Console().print(verifier_table(study))
    if out is not None:
        path = out if str(out).endswith(".json") else out / "verifier.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(study, indent=1) + "\n")
        console.print(f"wrote {path}")


@bench_app.command("self-corpus")
def self_corpus(
    out: Path = typer.Option(..., "--output", "-o", help="JSONL corpus to write (then: specgen build-index FILE)."),
    suite: str = typer.Option("spec-bench", "--suite", help="spec-bench | mt-bench | humaneval | gsm8k | a JSONL path."),
    skip: int = typer.Option(5, "--skip", help="Questions per category left out (those `bench --limit SKIP` evaluates)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Answers per category (default: all the rest)."),
    method: str = typer.Option("pld", "--method", help="Lossless method that writes the answers."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Target model (default: the embedded SmolLM2-135M-Instruct)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="New tokens per answer."),
) -> None:
    """Write the target's own answers to held-out suite questions: an in-domain datastore corpus."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from specgen.bench.selfcorpus import write_self_corpus
    from specgen.proposers.registry import get_method

    if not get_method(method).lossless:
        raise SpecgenError(f"self-corpus writes the target's own answers: use a lossless method, not '{method}'")
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]self-corpus"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("answers", total=None)
        info = write_self_corpus(suite, out, skip=skip, limit=limit, method=method, model=model,
                                 max_new_tokens=max_new_tokens,
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"wrote {info['path']}: {info['questions']} answers, {info['answer_tokens']} tokens")


@bench_app.command("replay")
def replay(
    suite: str = typer.Option("spec-bench", "--suite", help="spec-bench | mt-bench | humaneval | gsm8k | a JSONL path."),
    limit: int = typer.Option(3, "--limit", help="Questions per category."),
    methods: str = typer.Option("pld,rest,sense", "--methods", help="Lossless token-level methods to replay."),
    index: Optional[str] = typer.Option(None, "--index", help="Datastore folder for rest/sense."),
    budgets: str = typer.Option("4,16", "--budgets", help="Node budgets to replay, e.g. 2,4,8,16."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="New tokens per recorded answer."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Target model (default: the embedded SmolLM2-135M-Instruct)."),
    draft_policy: str = typer.Option("adaptive", "--draft-policy", help="adaptive | always."),
    method_config: Optional[Path] = typer.Option(None, "--method-config", help="YAML/JSON options per method (as for bench)."),
    traces_path: Optional[Path] = typer.Option(None, "--traces", help="Cache the recorded answers here: reused when "
                                               "model, suite, limit and length match, else recorded and written."),
    split: str = typer.Option("tune", "--split", help="--suite paraphrase: tune (default: tune here, report on eval "
                                                      "with `bench`) | eval | all."),
    pairs_path: Optional[Path] = typer.Option(None, "--pairs", help="--suite paraphrase: your own pairs JSONL."),
) -> None:
    """Offline tau of lossless drafters on the target's recorded greedy answers (no timing: see `bench`)."""
    from rich.console import Console
    from rich.table import Table

    from specgen.bench.replay import (ceiling_table, read_traces, record_questions, record_suite, replay_methods, replay_plan,
                                      save_traces, traces_for)
    from specgen.decoding.policy import DraftPolicyConfig
    from specgen.models import load_model

    from specgen.config import MAX_NEW_TOKENS, MAX_NODE_BUDGET

    in_range("limit", limit, 1, 1_000_000)
    in_range("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
    if index is not None:
        input_path("index", index, "dir")
    budget_list = _budgets(budgets) or (16,)
    for b in budget_list:
        in_range("budgets", b, 1, MAX_NODE_BUDGET)
    stored = None
    if traces_path is not None:
        output_file("traces", traces_path)
        stored = read_traces(traces_path)
    policy = DraftPolicyConfig(mode=draft_policy)
    pairs = None
    if suite == "paraphrase":
        from specgen.bench.paraphrase import ensure_datastore, load_pairs, paraphrase_questions, split_pairs

        pairs = split_pairs(load_pairs(pairs_path), split)
        if not pairs:
            raise SpecgenError(f"--suite paraphrase: no pairs in split '{split}'")
    console = Console(stderr=True)
    bundle = None
    if pairs is not None and index is None:  # the datastore of the split's originals: resolved before planning
        bundle = load_model(model)
        with console.status("paraphrase datastore") as status:
            index = str(ensure_datastore(bundle, pairs, progress=lambda what: status.update(what)))
    chosen = replay_plan(_csv(methods) or (), index, read_method_config(method_config))
    if bundle is None:
        bundle = load_model(model)
    key = {"model": bundle.identity(), "suite": suite if pairs is None else f"paraphrase:{split}:{pairs_path}",
           "limit": limit, "max_new_tokens": max_new_tokens}
    traces = traces_for(stored, key)
    if traces is None:
        with console.status("recording greedy answers"):
            traces = (record_suite(bundle, suite, limit, max_new_tokens) if pairs is None else
                      record_questions(bundle, paraphrase_questions(pairs, limit), max_new_tokens))
        if traces_path is not None:
            save_traces(traces_path, traces, key)
    results = replay_methods(bundle, traces, chosen, budget_list, policy)
    cats = [c for c in next(iter(results.values())) if c != "overall"] + ["overall"] if results else []
    table = Table(title=f"replayed tau ({len(traces)} answers, {sum(len(t.output_ids) for t in traces)} tokens)")
    table.add_column("method@budget")
    for c in cats:
        table.add_column(c, justify="right")
    table.add_column("nodes/step", justify="right")
    table.add_column("plan ms/step", justify="right")
    for label, per_cat in results.items():
        o = per_cat["overall"]
        table.add_row(label, *(f"{per_cat[c].tau:.2f}" for c in cats), f"{o.drafted / max(1, o.steps):.1f}",
                      f"{1000 * o.plan_s / max(1, o.steps):.2f}")
    # The most any retriever over this datastore and the live context could reach (one path per step).
    for label, ceiling in ceiling_table(traces, index, budget_list).items():
        table.add_row(label, *(f"{ceiling.get(c, 0.0):.2f}" for c in cats), "-", "-")
    Console().print(table)


@bench_app.command("cost")
def cost(model: Optional[str] = typer.Option(None, "--model", "-m", help="Target model (default: the embedded SmolLM2-135M-Instruct)."),
         dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16."),
         device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
         sizes: str = typer.Option("1,2,4,8,16,32", "--sizes", help="Fed tokens per forward, starting at 1."),
         prefix: int = typer.Option(256, "--prefix", help="Tokens already in the KV cache."),
         reps: int = typer.Option(3, "--reps", help="Timings per size after a warm-up (the fastest counts)."),
         json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the curve as JSON here.")) -> None:
    """Verification cost curve: one forward over n tokens relative to one token, on this machine."""
    from rich.console import Console
    from rich.table import Table

    from specgen.bench.costcurve import cost_curve
    from specgen.device import check_dtype_spec, resolve_device
    from specgen.models import check_model_spec, load_model

    size_list = _budgets(sizes, "--sizes")
    if not size_list or size_list[0] != 1 or list(size_list) != sorted(set(size_list)):
        raise SpecgenError("--sizes must be increasing numbers starting at 1, e.g. 1,2,4,8")
    for n in size_list:
        in_range("sizes", n, 1, 4096)
    in_range("prefix", prefix, 1, 1_000_000)
    in_range("reps", reps, 1, 100)
    if json_out is not None:
        output_file("json", json_out)
    resolve_device(device)
    check_dtype_spec(dtype)
    check_model_spec(model)
    curve = cost_curve(load_model(model, dtype=dtype, device=device), tuple(size_list), prefix, reps)
    table = Table(title=f"{curve.model} on {curve.device}, {curve.dtype} ({curve.linear} linears), "
                        f"{curve.threads} threads, after {curve.prefix} tokens")
    table.add_column("fed tokens", justify="right")
    table.add_column("ms", justify="right")
    table.add_column("relative to 1", justify="right")
    for n, s, r in zip(curve.sizes, curve.seconds, curve.relative):
        table.add_row(str(n), f"{s * 1000:.1f}", f"{r:.2f}")
    Console().print(table)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(curve.to_dict(), indent=1) + "\n")


@bench_app.command("compare")
def compare(a: Path = typer.Argument(..., help="summary.json, a --out X.json, or an --out folder."),
            b: Path = typer.Argument(..., help="The same, for the run to compare with A.")) -> None:
    """Per-method deltas (B - A) of two benchmark summaries."""
    from rich.console import Console

    from specgen.bench.report import compare_table, load_summary

    Console().print(compare_table(load_summary(a), load_summary(b), str(a), str(b)))


@bench_app.command("kernels")
def kernels(device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
            json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows as JSON here.")) -> None:
    """Kernel micro-benchmark: Triton kernels vs torch references vs the usual baselines."""
    from rich.console import Console

    from specgen.bench.kernels import render_kernel_bench, run_kernel_bench

    result = run_kernel_bench(device)
    Console().print(render_kernel_bench(result))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result, indent=1, default=str) + "\n")
