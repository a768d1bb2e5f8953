"""`run_bench`: every method on the same prompts in one run, `ar` included, records per turn.

Protocol (DESIGN.md section 6): greedy by default, batch 1, warm-up before timing, the same model
and prompts for every method, `ar` measured in the same run. Questions are the outer loop and
methods the inner one, so slow drift of a shared machine's load hits every method alike.

With an output folder, each finished (method, question) is appended to `records.jsonl` as soon as
it completes, and a rerun with the same settings skips it (resume). The generate function is
injectable (`generate_fn`) so the runner can be tested without a model.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..decoding.policy import DraftPolicyConfig
from ..decoding.sizing import sizing_config
from ..errors import Interrupted, SpecgenError
from ..device import check_device_spec, check_dtype_spec, resolve_device
from ..validate import check_fields, in_range, input_path, output_dir
from .humaneval import check_completion
from .metrics import embedding_cosine, rouge_l
from .records import RecordStore, run_settings
from .suites import Question, gsm8k_answer, load_suite, normalise_number

# `sd` is not in the default run: on the embedded SmolLM2-135M the early-exit self-draft accepts
# almost nothing (about 1 token in 70 at a quarter of the layers) while costing ~8x a plain step,
# so it would take most of the run's minutes; name it with --methods to measure it.
DEFAULT_METHODS = ("ar", "pld", "rest", "sense")
INDEX_METHODS = ("rest", "sense")  # methods that read a datastore
INDEX_REQUIRED = ("rest",)  # ... and cannot run without one (sense falls back to the live context)
INDEX_FIELDS = ("index", "index_path", "index_dir")
# Named variants: a bench label run as a base method with preset options (a --method-config section
# under the label's name adds to or overrides them). They put the lossy settings beside the
# lossless ones in one run: SENSE's soft gate, SpecGuard's single-signal ablations (issue 5).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "sense-gate": ("sense", {"gate_enabled": True}),
    "sense-gate-hidden": ("sense", {"gate_enabled": True, "gate_signal": "hidden"}),
    "sense-focused": ("sense", {"preset": "focused"}),
    "sense-strict": ("sense", {"preset": "strict"}),
    "sense-shift": ("sense", {"preset": "shift"}),
    "specguard-conf": ("specguard", {"signals": "confidence"}),
    "specguard-ground": ("specguard", {"signals": "grounding"}),
    "specguard-paper": ("specguard", {"preset": "paper"}),
}
WARMUP_MAX_TOKENS = 16

Record = dict[str, Any]
GenerateFn = Callable[..., Any]  # (target, prompt_ids, *, method, gen, method_config, draft) -> GenerationResult
PeerFn = Callable[..., Any]  # (bundle, name, prompt_ids, max_new_tokens, stop=...) -> peers.PeerResult
ProgressFn = Callable[[int, int, str], None]  # (done, total, what is running now)


@dataclass(frozen=True)
class BenchConfig:
    """Everything one benchmark run depends on; `methods=None` = the defaults that can run."""

    suite: str = "spec-bench"
    methods: tuple[str, ...] | None = None
    limit: int | None = 1
    model: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    max_new_tokens: int = 64
    peers: bool = False
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    index: str | None = None
    out_dir: str | None = None  # resumable records + issue-6 layout
    warmup: int = 1
    seed: int = 0
    temperature: float = 0.0
    turns: int = 1  # 1 = first turn only (v1); 2+ = multi-turn, the answer to turn 1 carried into turn 2
    budgets: tuple[int, ...] = ()  # node-budget sweep for the drafting methods
    draft_policy: str = "adaptive"  # decoding/policy.py: adaptive | always
    tree_sizing: str = "cost"  # decoding/sizing.py: cost | budget
    sizing_options: Mapping[str, Any] = field(default_factory=dict)  # TreeSizingConfig fields (--sizing-option)

    def __post_init__(self) -> None:
        from ..config import MAX_NEW_TOKENS, MAX_NODE_BUDGET, SamplingConfig

        check_fields(self)
        if self.methods is not None and not self.methods:
            raise SpecgenError("--methods must name at least one method")
        if self.limit is not None:
            in_range("limit", self.limit, 1, 1_000_000)
        in_range("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        in_range("warmup", self.warmup, 0, 100)
        in_range("turns", self.turns, 1, 100)
        for b in self.budgets:
            in_range("budgets", b, 1, MAX_NODE_BUDGET)
        # The sampling, policy and sizing configs the run will build: their checks, now.
        SamplingConfig(temperature=self.temperature, seed=self.seed)
        check_device_spec(self.device)
        check_dtype_spec(self.dtype)
        DraftPolicyConfig(mode=self.draft_policy)
        sizing_config(self.tree_sizing, self.sizing_options)
        if self.index is not None:
            input_path("index", self.index, "dir")
        if self.out_dir is not None:
            output_dir("out", self.out_dir)

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the stored records."""
        return {"suite": self.suite, "model": self.model, "dtype": self.dtype, "device": self.device,
                "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "seed": self.seed, "turns": self.turns, "draft_policy": self.draft_policy,
                "tree_sizing": self.tree_sizing, **({"sizing_options": dict(self.sizing_options)} if self.sizing_options else {})}


@dataclass(frozen=True)
class MethodRun:
    """One column of the benchmark: a method (or peer) with its config and tree budget."""

    label: str
    method: str
    config: Any = None
    budget: int | None = None
    peer: bool = False
    lossless: bool = True


@dataclass
class BenchResult:
    """Records of the run (resumed ones included), the metrics, notes, environment."""

    config: BenchConfig
    runs: list[MethodRun]
    records: list[Record]
    metrics: dict[str, Any]
    notes: list[str]
    environment: dict[str, Any]
    model_name: str


def plan_methods(config: BenchConfig) -> tuple[list[MethodRun], list[str]]:
    """Resolve names to runs: `ar` first, configs from `method_options`, unusable defaults skipped."""
    from ..proposers.registry import available_methods, get_method, make_config

    notes: list[str] = []
    explicit = config.methods is not None
    names = list(dict.fromkeys(["ar", *(config.methods or DEFAULT_METHODS)]))
    known = set(available_methods()) | set(VARIANTS)
    unknown_opts = set(config.method_options) - set(names) - {VARIANTS[n][0] for n in names if n in VARIANTS}
    if unknown_opts:
        raise SpecgenError(f"method config has sections for methods not run: {', '.join(sorted(unknown_opts))}")
    runs: list[MethodRun] = []
    for name in names:
        if name not in known:
            if explicit:
                get_method(name)  # raises the one-line "unknown method" error
            notes.append(f"skipped {name}: not available in this build")
            continue
        base, preset = VARIANTS.get(name, (name, {}))
        options = {**_flatten(config.method_options.get(base, {})), **preset,
                   **(_flatten(config.method_options.get(name, {})) if name != base else {})}
        spec = get_method(base)
        fields = {f.name for f in dataclasses.fields(spec.config_cls)}
        key = next((k for k in INDEX_FIELDS if k in fields), None)
        if key is not None and options.get(key) is None and config.index is not None:
            options[key] = config.index
        if base in INDEX_METHODS and key is None:
            notes.append(f"{name}: its config has no index field, so --index was not passed to it")
        elif base in INDEX_METHODS and options.get(key) is None:
            if base in INDEX_REQUIRED:
                notes.append(f"skipped {name}: needs a datastore (--index DIR, built with `specgen build-index`)")
                continue
            notes.append(f"{name} runs on the live context only (no --index)")
        cfg = make_config(base, options)
        lossless = spec.is_lossless(cfg)
        if name == "ar" or not config.budgets:
            runs.append(MethodRun(name, base, cfg, None, False, lossless))
        else:
            runs += [MethodRun(f"{name}@{b}", base, cfg, b, False, lossless) for b in config.budgets]
    if config.peers:
        from .peers import PEERS

        if config.temperature != 0.0:
            raise SpecgenError("--peers runs HF generate greedy: use --temperature 0 with --peers")
        runs += [MethodRun(p, p, None, None, True, True) for p in PEERS]
        from ..catalog import DEFAULT_MODEL, family_draft
        from ..config import DraftModelConfig
        from .peers import ASSISTED

        family = family_draft(config.model or DEFAULT_MODEL)
        if family is not None:
            runs.append(MethodRun(ASSISTED, ASSISTED, DraftModelConfig(draft_model=family), None, True, True))
        else:
            notes.append(f"no {ASSISTED} peer: the catalog names no draft model for this target")
    return runs, notes


def _flatten(options: Mapping[str, Any]) -> dict[str, Any]:
    """Method-config keys for make_config: a nested mapping `gate: {enabled: true}` -> `gate_enabled`."""
    flat: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, Mapping):
            flat.update({f"{k}_{sub}": sv for sub, sv in v.items()})
        else:
            flat[k] = v
    return flat


def chat_ids(tokenizer: Any, question: Question, answers: list[str], turn: int) -> list[int]:
    """Prompt ids of `turn`: the question's turns up to it, with this method's earlier answers between."""
    from ..generate import encode_prompt

    if question.code_prompt is not None and not getattr(tokenizer, "chat_template", None):
        return encode_prompt(tokenizer, question.code_prompt, raw=True)  # a base model completes the code
    if turn == 0 or question.raw:
        return encode_prompt(tokenizer, question.turns[0], raw=question.raw)
    if not getattr(tokenizer, "chat_template", None):
        text = "\n\n".join(p for pair in zip(question.turns[:turn], answers) for p in pair) + "\n\n" + question.turns[turn]
        return encode_prompt(tokenizer, text, raw=True)
    messages: list[dict[str, str]] = []
    for i in range(turn):
        messages += [{"role": "user", "content": question.turns[i]}, {"role": "assistant", "content": answers[i]}]
    messages.append({"role": "user", "content": question.turns[turn]})
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def question_stop(tokenizer: Any, question: Question) -> tuple[str, ...]:
    """Stop strings of `question`: HumanEval's end-of-body strings apply only to plain code completion."""
    if question.code_prompt is not None and getattr(tokenizer, "chat_template", None):
        return ()
    return question.stop


def task_quality(question: Question, text: str, turn: int) -> dict[str, Any]:
    """GSM8K correctness and HumanEval pass (first turn only); None where they do not apply."""
    out: dict[str, Any] = {"correct": None, "passed": None}
    if turn == 0 and question.reference is not None:
        got = gsm8k_answer(text)
        if got is None:
            nums = [normalise_number(m) for m in text.replace(",", "").split()]
            got = next((n for n in reversed(nums) if n is not None), None)
        out["correct"] = got == normalise_number(question.reference)
    if turn == 0 and question.test is not None and question.entry_point is not None:
        out["passed"] = check_completion(question.source_prompt, text, question.test, question.entry_point).passed
    return out


def make_record(run: MethodRun, question: Question, turn: int, result: Any, model_name: str) -> Record:
    """The record of one turn from a GenerationResult (ours) or a PeerResult (peers)."""
    base = {"method": run.label, "base_method": run.method, "budget": run.budget, "peer": run.peer,
            "lossless": run.lossless, "question_id": question.question_id, "category": question.category,
            "subcategory": question.subcategory, "turn": turn, "model_id": model_name}
    if run.peer:
        n = len(result.token_ids)
        base.update(new_tokens=n, wall_time=result.wall_s, steps=result.steps, accept_lengths=None, drafted=None,
                    accepted=None, position_drafted=[], position_accepted=[], prefill_s=None, propose_s=None,
                    verify_s=None, accept_s=None, token_ids=list(result.token_ids), text=result.text,
                    finish_reason=result.finish_reason)
    else:
        s = result.stats
        base.update(new_tokens=s.new_tokens, wall_time=s.wall_s, steps=s.steps, accept_lengths=list(s.accept_lengths),
                    drafted=s.drafted, accepted=s.accepted, position_drafted=list(s.position_drafted),
                    position_accepted=list(s.position_accepted), prefill_s=s.prefill_s, propose_s=s.propose_s,
                    verify_s=s.verify_s, accept_s=s.accept_s, draft_skipped=getattr(s, "draft_skipped", 0),
                    step_overhead_s=[round(x, 6) for x in getattr(s, "step_overhead_s", [])],
                    token_ids=list(result.token_ids), text=result.text, finish_reason=result.finish_reason)
        sg = (getattr(result, "extra", None) or {}).get("specguard")
        if sg is not None:  # step-level detail without the per-step texts
            base["specguard"] = {k: sg[k] for k in ("accepted_steps", "recomputed_steps", "draft_s", "target_s",
                                                    "recompute_forwards") if k in sg}
    base["tokens_per_s"] = base["new_tokens"] / base["wall_time"] if base["wall_time"] > 0 else 0.0
    base.update(task_quality(question, base["text"], turn))
    return base


def _mark_vs_ar(rec: Record, ar: Record | None, model: Any = None) -> None:
    rec["identical_to_ar"] = None if ar is None else rec["token_ids"] == ar["token_ids"]
    rec["exact_match_ar"] = None if ar is None else rec["text"].strip() == ar["text"].strip()
    rec["rouge_l_ar"] = None if ar is None else rouge_l(rec["text"], ar["text"])  # a lossy method's quality
    rec["embed_cos_ar"] = None if ar is None or model is None else embedding_cosine(model, rec["token_ids"], ar["token_ids"])


def _default_generate(target: Any, prompt_ids: list[int], **kw: Any) -> Any:
    from ..generate import generate

    return generate(target, prompt_ids, **kw)


def run_bench(config: BenchConfig, progress: ProgressFn | None = None, *, bundle: Any = None,
              generate_fn: GenerateFn | None = None, peer_fn: PeerFn | None = None,
              questions: list[Question] | None = None) -> BenchResult:
    """Run the benchmark of `config`; `progress(done, total, label)` after each (method, question).

    `bundle` (a loaded ModelBundle), `generate_fn`, `peer_fn` and `questions` replace what the
    config would load: tests inject fakes through them.
    """
    from ..config import GenerationConfig, SamplingConfig
    from .report import environment
    from .metrics import summarize

    progress = progress or (lambda *_: None)
    questions = questions if questions is not None else load_suite(config.suite, config.limit)
    runs, notes = plan_methods(config)
    if bundle is None:  # every model the run names is checked before the first one loads
        from ..models import check_model_spec

        resolve_device(config.device)  # `cuda` without CUDA: one line, before anything loads or is written
        from ..proposers.registry import draft_name

        drafts = [draft_name(r.config, config.model) for r in runs]
        for spec in dict.fromkeys([config.model, *(d for d in drafts if d is not None)]):
            check_model_spec(spec)  # None = the embedded default
    store = RecordStore(config.out_dir, config.fingerprint())
    settings = {r.label: run_settings(r.method, r.config, r.budget) for r in runs}
    if bundle is None:
        import torch

        from ..models import load_model

        torch.manual_seed(config.seed)
        bundle = load_model(config.model, config.dtype, config.device)
    if hasattr(bundle, "identity"):
        store.bind("model_identity", bundle.identity())
    random.seed(config.seed)
    generate_fn = generate_fn or _default_generate
    if peer_fn is None:
        from .peers import run_peer as peer_fn  # type: ignore[assignment]
    sampling = SamplingConfig(temperature=config.temperature, seed=config.seed)
    policy = DraftPolicyConfig(mode=config.draft_policy)
    sizing = sizing_config(config.tree_sizing, config.sizing_options)
    drafts = preload_drafts(bundle, runs)
    model_name = getattr(bundle, "name", str(config.model))

    def call(run: MethodRun, ids: list[int], max_new: int, stop: tuple[str, ...] = ()) -> Any:
        if run.peer:
            assistant = drafts.get(run.label)
            return peer_fn(bundle, run.method, ids, max_new, stop=stop, **({"assistant": assistant} if assistant else {}))
        gen = GenerationConfig(max_new_tokens=max_new, sampling=sampling, stop=stop, draft_policy=policy, tree_sizing=sizing,
                               **({"node_budget": run.budget} if run.budget else {}))
        return generate_fn(bundle, ids, method=run.method, gen=gen, method_config=run.config,
                           draft=drafts.get(run.label))

    total = len(runs) * len(questions)
    todo = [(r, q) for q in questions for r in runs if store.get(r.label, q.question_id, settings[r.label]) is None]
    if todo and config.warmup:
        progress(0, total, "warm-up")
        ids = chat_ids(bundle.tokenizer, todo[0][1], [], 0)
        for run in runs:
            for _ in range(config.warmup):
                call(run, ids, min(config.max_new_tokens, WARMUP_MAX_TOKENS))
    done = 0
    try:
        for q in questions:
            ar_group = store.get("ar", q.question_id)
            for run in runs:
                progress(done, total, f"{run.label} · {q.category} · {q.question_id}")
                group = store.get(run.label, q.question_id, settings[run.label])
                if group is None:
                    group, answers = [], []
                    for turn in range(min(config.turns, len(q.turns))):
                        ids = chat_ids(bundle.tokenizer, q, answers, turn)
                        rec = make_record(run, q, turn, call(run, ids, config.max_new_tokens, question_stop(bundle.tokenizer, q)), model_name)
                        ar_rec = rec if run.label == "ar" else (ar_group[turn] if ar_group and turn < len(ar_group) else None)
                        _mark_vs_ar(rec, ar_rec, getattr(bundle, "model", None))
                        group.append(rec)
                        answers.append(rec["text"])
                    store.add(run.label, q.question_id, group, settings[run.label])
                if run.label == "ar":
                    ar_group = group
                done += 1
                progress(done, total, f"{run.label} · {q.category} · {q.question_id}")
    except KeyboardInterrupt:
        kept = "; the finished ones are kept in --out (the same command resumes)" if config.out_dir else ""
        raise Interrupted(f"interrupted after {done} of {total} runs{kept}") from None
    records = [rec for q in questions for r in runs for rec in (store.get(r.label, q.question_id) or [])]
    env = environment(config.seed)
    if getattr(bundle, "model", None) is not None:  # what the run actually used
        from .. import adapter
        from ..linear import linear_backend

        env.update(device=str(bundle.model.device), dtype=str(bundle.model.dtype).removeprefix("torch."),
                   attention=adapter.attention_backend(bundle.model), linear=linear_backend(bundle.model))
    return BenchResult(config, runs, records, summarize(records), notes, env, model_name)


def preload_drafts(bundle: Any, runs: list[MethodRun]) -> dict[str, Any]:
    """Load each separate draft model once (a `draft_model` in a method config), keyed by run label."""
    from ..proposers.registry import draft_name, get_method

    drafts: dict[str, Any] = {}
    loaded: dict[str, Any] = {}
    for run in runs:
        name = draft_name(run.config, getattr(bundle, "name", ""))
        if name and hasattr(bundle, "model"):
            from ..models import load_like

            if name not in loaded:
                loaded[name] = load_like(name, bundle)
                # a step-level method's steps may cross as text: only token-level drafts must share the vocabulary
                same_vocab = run.peer or get_method(run.method).draft_vocab
                if same_vocab and loaded[name].tokenizer.get_vocab() != bundle.tokenizer.get_vocab():
                    raise SpecgenError(f"draft model {name}: its tokenizer differs from the target's")
            drafts[run.label] = loaded[name]
    return drafts
