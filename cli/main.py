"""The `specgen` command line: thin Typer commands that build a config, call the library, render.

Every user error ends as one line on stderr and exit code 2 (Ctrl-C: 130), never a traceback.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from typer.exceptions import TyperException
from typer.core import TyperGroup

from specgen.errors import Interrupted, SpecgenError


class _Interrupt(Exception):
    """Ctrl-C carried past typer, which would turn a KeyboardInterrupt into a silent exit code 130."""


class OneLineErrors(TyperGroup):
    """A Typer group whose usage and library errors print as a single `error: ...` line."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupt(str(exc) if isinstance(exc, Interrupted) and str(exc) else "interrupted") from None

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        from specgen.cli.index import bare_ray_flag

        try:
            rv = super().main(bare_ray_flag(sys.argv[1:] if args is None else list(args)), prog_name, complete_var,
                              standalone_mode=False, **extra)
        except (_Interrupt, KeyboardInterrupt, typer.Abort) as exc:
            typer.echo(f"error: {exc if isinstance(exc, _Interrupt) else 'interrupted'}", err=True)
            sys.exit(130)
        except SpecgenError as exc:
            typer.echo(f"error: {_first_line(str(exc))}", err=True)
            sys.exit(2)
        except (typer.Exit, TyperException) as exc:
            # typer vendors click: its Exit / Abort / UsageError classes are typer's own.
            if type(exc).__name__ == "Exit":
                sys.exit(exc.exit_code)  # type: ignore[union-attr]
            if type(exc).__name__ == "Abort":
                typer.echo("error: interrupted", err=True)
                sys.exit(130)
            typer.echo(f"error: {_first_line(exc.format_message())}", err=True)  # type: ignore[union-attr]
            sys.exit(2)
        except Exception as exc:  # a bug, not bad input: still one line (exit 1); SPECGEN_DEBUG=1 re-raises
            if os.environ.get("SPECGEN_DEBUG"):
                raise
            typer.echo(f"error: internal error ({type(exc).__name__}: {_first_line(str(exc))}); "
                       "SPECGEN_DEBUG=1 shows the traceback", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _on_off(flag: str, value: str | None) -> bool | None:
    """An on|off switch's value as a bool (None: not given); anything else is a one-line error."""
    if value not in (None, "on", "off"):
        raise SpecgenError(f"{flag} must be on or off, got '{value}'")
    return None if value is None else value == "on"


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else "failed"


app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Speculative decoding for LLM generation, measured honestly.")


def read_prompt(prompt: Optional[str], prompt_file: Optional[Path]) -> str:
    """The prompt from the argument, --prompt-file, or stdin when the argument is '-'."""
    if prompt is not None and prompt_file is not None:
        raise SpecgenError("give the prompt as an argument or with --prompt-file, not both")
    if prompt_file is not None:
        try:
            text = prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecgenError(f"cannot read prompt file {prompt_file}: {getattr(exc, 'strerror', None) or exc}") from None
    elif prompt == "-":
        text = sys.stdin.read()
    elif prompt is None:
        raise SpecgenError("no prompt: give one as an argument, with --prompt-file, or '-' for stdin")
    else:
        text = prompt
    if not text.strip():
        raise SpecgenError("empty prompt")
    return text


@app.command()
def generate(
    prompt: Optional[str] = typer.Argument(None, help="The prompt; '-' reads stdin."),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="Read the prompt from a file."),
    method: str = typer.Option("pld", "--method", "-m", help="ar, pld, rest, sd, sense or specguard."),
    model: Optional[str] = typer.Option(None, "--model", help="HF id, local HF folder or .gguf (default: embedded SmolLM2-135M-Instruct)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16 or float16."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    top_k: int = typer.Option(0, "--top-k", help="Sample from the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1 = off)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for sampling."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    node_budget: int = typer.Option(16, "--node-budget", help="Most draft nodes verified per step."),
    draft_policy: str = typer.Option("adaptive", "--draft-policy", help="adaptive: skip drafting while recent drafts "
                                                                         "do not pay for their verification; always."),
    tree_sizing: str = typer.Option("cost", "--tree-sizing", help="cost: verify per step the draft nodes that pay for "
                                                                    "their forward on this machine (timed once); budget: "
                                                                    "every node up to --node-budget."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming."),
    compare: bool = typer.Option(False, "--compare", help="Then decode the same prompt with plain `ar` and report "
                                                           "the measured speedup (and whether the tokens match)."),
    calibration: str = typer.Option("stored", "--calibration", help="stored: tree sizing starts from the acceptance "
                                    "calibration the last run of this model and method left on disk, and leaves "
                                    "its own; fresh: from the prior, nothing kept."),
    max_ngram: Optional[int] = typer.Option(None, "--max-ngram", help="pld: longest n-gram matched."),
    min_ngram: Optional[int] = typer.Option(None, "--min-ngram", help="pld: shortest n-gram matched."),
    num_draft: Optional[int] = typer.Option(None, "--num-draft", help="pld/sd: draft length."),
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="sd/specguard: the draft model."),
    draft_layers: Optional[int] = typer.Option(None, "--draft-layers", help="sd: self-draft from the target's first N layers."),
    tree_width: Optional[int] = typer.Option(None, "--tree-width", help="sd: 1 = a greedy chain (default); k > 1 = a "
                                                                       "dynamic tree keeping the k best nodes per depth."),
    index: Optional[Path] = typer.Option(None, "--index", help="rest/sense: datastore folder from build-index."),
    neighbours: Optional[int] = typer.Option(None, "--neighbours", help="sense: datastore neighbours per step (default 32)."),
    min_similarity: Optional[float] = typer.Option(None, "--min-similarity", help="sense: cosine floor for a neighbour (default 0.1)."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="sense: draft only when the best candidate's evidence "
                                                                        "reaches this (default 0.25; 0 = always draft)."),
    align: Optional[str] = typer.Option(None, "--align", help="sense: exact (a datastore neighbour drafts only when the "
                                        "pending token followed it; the default) | shift (else aligned to it: a synonym "
                                        "or a few extra stored tokens)."),
    transition: Optional[str] = typer.Option(None, "--transition", help="sense: on|off: also search with the state after "
                                             "the pending token, predicted by a linear map fitted on the datastore "
                                             "(default on; needs --index)."),
    gate: Optional[str] = typer.Option(None, "--gate", help="sense: soft gate on|off (off = lossless)."),
    gate_alpha: Optional[float] = typer.Option(None, "--gate-alpha", help="sense gate: accept d if p(d) >= alpha p(argmax)."),
    gate_tau_e: Optional[float] = typer.Option(None, "--gate-tau-e", help="sense gate: embedding cosine floor."),
    gate_signal: Optional[str] = typer.Option(None, "--gate-signal", help="sense gate: equivalence by input "
                                              "'embedding' cosine or the target's 'hidden' states in context."),
    gate_tau_h: Optional[float] = typer.Option(None, "--gate-tau-h", help="sense gate: hidden-state cosine floor."),
    step_delimiter: Optional[str] = typer.Option(None, "--step-delimiter", help="specguard: step delimiter."),
    candidates: Optional[int] = typer.Option(None, "--candidates", help="specguard: draft samples per step."),
    draft_temperature: Optional[float] = typer.Option(None, "--draft-temperature", help="specguard: draft sampling temperature."),
    tau: Optional[float] = typer.Option(None, "--tau", help="specguard: acceptance threshold."),
    beta: Optional[float] = typer.Option(None, "--beta", help="specguard: confidence weight in the ensemble."),
    selector: Optional[str] = typer.Option(None, "--selector", help="specguard: overlap | embedding | numeric."),
    signals: Optional[str] = typer.Option(None, "--signals", help="specguard: both | grounding | confidence (ablations)."),
    rule: Optional[str] = typer.Option(None, "--rule", help="specguard: ensemble | and."),
    tau_confidence: Optional[float] = typer.Option(None, "--tau-confidence", help="specguard: confidence threshold (rule=and)."),
    tau_grounding: Optional[float] = typer.Option(None, "--tau-grounding", help="specguard: grounding threshold (rule=and)."),
    max_step_tokens: Optional[int] = typer.Option(None, "--max-step-tokens", help="specguard: token cap per step."),
    recompute_method: Optional[str] = typer.Option(None, "--recompute-method", help="specguard: token-level method for rejected steps."),
    preset: Optional[str] = typer.Option(None, "--preset", help="specguard: measured (default) | paper (grounding "
                                                                "higher = better, both signals must pass); sense: "
                                                                "default | shift (the defaults before --transition) | strict (the earliest: draft "
                                                                "only on strong evidence)."),
    exchange: Optional[str] = typer.Option(None, "--exchange", help="specguard: auto | tokens | text (how steps cross)."),
) -> None:
    """Generate from a prompt, streaming text as it is accepted; statistics go to stderr."""
    from specgen.config import GenerationConfig, SamplingConfig
    from specgen.decoding.policy import DraftPolicyConfig
    from specgen.decoding.sizing import TreeSizingConfig
    from specgen.generate import generate as run_generate
    from specgen.device import check_dtype_spec, resolve_device
    from specgen.models import check_model_spec, load_model
    from specgen.proposers.registry import available_methods, draft_name, make_config

    if method not in available_methods():
        raise SpecgenError(f"unknown method '{method}' (choose from {', '.join(available_methods())})")
    gate_enabled, transition_on = _on_off("--gate", gate), _on_off("--transition", transition)
    if calibration not in ("stored", "fresh"):
        raise SpecgenError(f"--calibration must be stored or fresh, got '{calibration}'")
    if neighbours is not None and method != "sense":
        raise SpecgenError(f"option --neighbours does not apply to method '{method}'")
    text = read_prompt(prompt, prompt_file)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, stop=tuple(stop or ()), node_budget=node_budget,
                           draft_policy=DraftPolicyConfig(mode=draft_policy), tree_sizing=TreeSizingConfig(mode=tree_sizing),
                           sampling=SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed))
    options = dict(max_ngram=max_ngram, min_ngram=min_ngram, num_draft=num_draft, draft_model=draft_model,
                   draft_layers=draft_layers, tree_width=tree_width, index=str(index) if index else None,
                   k=neighbours, min_similarity=min_similarity, min_score=min_score, align=align,
                   transition=transition_on, gate_enabled=gate_enabled, gate_alpha=gate_alpha, gate_tau_e=gate_tau_e,
                   gate_signal=gate_signal, gate_tau_h=gate_tau_h,
                   step_delimiter=step_delimiter, candidates=candidates, draft_temperature=draft_temperature,
                   tau=tau, beta=beta, selector=selector, signals=signals, rule=rule, tau_confidence=tau_confidence,
                   tau_grounding=tau_grounding, max_step_tokens=max_step_tokens, recompute_method=recompute_method,
                   preset=preset, exchange=exchange)
    method_config = make_config(method, options)
    resolve_device(device)  # `cuda` without CUDA: one line, before anything loads
    check_dtype_spec(dtype)
    check_model_spec(model)  # the target and any draft
    draft = draft_name(method_config, model)
    if draft is not None:
        check_model_spec(draft)
    bundle = load_model(model, dtype=dtype, device=device)
    sink = None if as_json else (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    try:
        result = run_generate(bundle, text, method=method, gen=gen, method_config=method_config, raw=raw, on_text=sink,
                              calibration=None if calibration == "fresh" else "stored")
    except KeyboardInterrupt:
        if sink is not None:  # the streamed text stays; end its line before the message
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    baseline = None
    if compare:
        baseline = run_generate(bundle, text, method="ar", gen=gen, raw=raw)
    if as_json:
        d = result.to_dict()
        if baseline is not None:
            d["compare"] = comparison(result, baseline)
        typer.echo(json.dumps(d))
        return
    sys.stdout.write("\n")
    render_stats(result.stats, None if baseline is None else comparison(result, baseline))


def comparison(result: Any, baseline: Any) -> dict[str, Any]:
    """The method against plain decoding on the same prompt, in the same process."""
    a, b = result.stats, baseline.stats
    return {"ar_tokens_per_s": b.tokens_per_s, "tokens_per_s": a.tokens_per_s,
            "speedup": a.tokens_per_s / b.tokens_per_s if b.tokens_per_s else 0.0,
            "identical_to_ar": result.token_ids == baseline.token_ids}


def render_stats(stats: Any, compare: dict[str, Any] | None = None) -> None:
    """The statistics table on stderr (and the comparison with `ar`, when one was run)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"specgen · {stats.method}", show_header=False)
    rows = [("new tokens", f"{stats.new_tokens}"), ("steps", f"{stats.steps}"),
            ("mean acceptance length", f"{stats.mean_acceptance_length:.2f}"),
            ("drafted / accepted", f"{stats.drafted} / {stats.accepted}"),
            ("draft acceptance rate", f"{stats.draft_acceptance_rate:.1%}"),
            ("steps without drafting (policy)", f"{getattr(stats, 'draft_skipped', 0)}"),
            ("wall time", f"{stats.wall_s:.2f} s (prefill {stats.prefill_s:.2f} s"
                          + (f", cost profile {stats.profile_s:.2f} s" if getattr(stats, "profile_s", 0) else "") + ")"),
            ("device", f"{getattr(stats, 'device', '') or '-'} {getattr(stats, 'dtype', '')} "
                       f"(attention: {getattr(stats, 'attention', '') or '-'}, "
                       f"linear: {getattr(stats, 'linear', '') or '-'})"),
            ("tokens/s", f"{stats.tokens_per_s:.1f}")]
    if compare is not None:
        rows.append(("ar on the same prompt", f"{compare['ar_tokens_per_s']:.1f} tokens/s, same tokens: "
                                              f"{'yes' if compare['identical_to_ar'] else 'no'}"))
        rows.append(("speedup vs ar", f"{compare['speedup']:.2f}x"))
    for k, v in rows:
        table.add_row(k, v)
    Console(stderr=True).print(table)


def _register_subcommands() -> None:
    from . import bench, index, serve

    index.register(app)
    serve.register(app)
    app.add_typer(bench.bench_app, name="bench", help="Benchmark methods side by side on real data.")


_register_subcommands()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
