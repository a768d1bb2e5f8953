"""The one place that touches transformers internals: attention plug-in, forward, KV cache, early exit.

Nothing here forks modeling code. Tree attention enters through transformers' AttentionInterface
(`specgen.kernels.hf_attention`), the KV cache is HF's DynamicCache with layers that append in place
into a growing buffer (`ArenaLayer`) and whose entries we compact after acceptance, and the
self-draft reuses the target's modules with fewer layers.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from .kernels.hf_attention import BatchTreeContext, TreeAttentionContext, register as register_tree_attention


def attention_backend(model: Any) -> str:
    """Which implementation the tree attention runs for `model`'s device: "triton" or "torch"."""
    from .kernels._dispatch import choose

    return choose(model.device)


def use_tree_attention(model: Any) -> None:
    """Route the model's attention through specgen's tree attention (idempotent)."""
    name = register_tree_attention()
    if getattr(model.config, "_attn_implementation", None) != name:
        model.set_attn_implementation(name)


def causal_mask(n: int, device: torch.device | str) -> torch.Tensor:
    """[n, n] bool lower-triangular: a chain of n fed tokens, each seeing itself and those before."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril_()


def context_length(model: Any) -> int | None:
    """Most positions the model was built for (config.max_position_embeddings), None when unknown."""
    n = getattr(model.config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def check_prompt_fits(model: Any, prompt_len: int) -> int | None:
    """The model's context length; a one-line SpecgenError when a prompt of `prompt_len` fills it."""
    from .errors import SpecgenError

    context = context_length(model)
    if context is not None and prompt_len >= context:
        raise SpecgenError(f"the prompt has {prompt_len} tokens but the model's context holds {context}: "
                           "shorten the prompt")
    return context


def _arena_layer_class() -> type:
    """`ArenaLayer`: HF's DynamicLayer with its keys and values kept as prefix views of a buffer that
    grows geometrically, so appending n entries copies n entries rather than the whole cache.

    Why: DynamicLayer.update concatenates, which copies every committed entry of every layer on every
    forward (15% of the 135M's decode time on the CPU, a read and write of the whole cache on a GPU).
    Crops and commits (`commit_cache`, `commit_rows`) slice or write the views in place, so the buffer
    stays behind them; a layer whose tensors were replaced by something else is re-seeded from them.
    """
    global _ARENA
    if _ARENA is None:
        from transformers.cache_utils import DynamicLayer

        class ArenaLayer(DynamicLayer):
            _kbuf: torch.Tensor | None = None  # [B, Hkv, capacity, D]
            _vbuf: torch.Tensor | None = None

            def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                       **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                cur, n = self.get_seq_length(), int(key_states.shape[-2])
                if not self._owns(cur, key_states) or cur + n > self._kbuf.shape[-2]:
                    self._regrow(cur, cur + n, key_states)
                self._kbuf[..., cur:cur + n, :].copy_(key_states)
                self._vbuf[..., cur:cur + n, :].copy_(value_states)
                self.keys = self._kbuf[..., : cur + n, :]  # [B, Hkv, cur + n, D], a view
                self.values = self._vbuf[..., : cur + n, :]
                return self.keys, self.values

            def _owns(self, cur: int, new: torch.Tensor) -> bool:
                """Whether keys/values are still the buffers' prefix views (not replaced by a caller)."""
                buf = self._kbuf
                if buf is None or buf.shape[:2] != new.shape[:2] or buf.shape[-1] != new.shape[-1]:
                    return False
                return cur == 0 or (self.keys.data_ptr() == buf.data_ptr() and self.keys.stride() == buf.stride()
                                    and self.values.data_ptr() == self._vbuf.data_ptr()
                                    and self.values.stride() == self._vbuf.stride())

            def _regrow(self, cur: int, need: int, like: torch.Tensor) -> None:
                cap = max(need + 64, need * 3 // 2)  # geometric: amortized O(1) copies per entry
                shape = (*like.shape[:2], cap, like.shape[-1])
                kbuf = torch.empty(shape, dtype=like.dtype, device=like.device)
                vbuf = torch.empty(shape, dtype=like.dtype, device=like.device)
                if cur:
                    kbuf[..., :cur, :].copy_(self.keys)
                    vbuf[..., :cur, :].copy_(self.values)
                self._kbuf, self._vbuf = kbuf, vbuf

            def reset(self) -> None:
                self._kbuf = self._vbuf = None
                super().reset()

        _ARENA = ArenaLayer
    return _ARENA


_ARENA: type | None = None


def _check_layer(layer: Any) -> None:
    """Only full-attention dynamic layers (HF's or ours) can be compacted and re-batched here."""
    assert type(layer).__name__ in ("DynamicLayer", "ArenaLayer"), f"unsupported cache layer {type(layer).__name__}"


def empty_cache() -> Any:
    """An empty cache whose layers (created on first update) are `ArenaLayer`s."""
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = _arena_layer_class()
    return cache


def new_cache(model: Any) -> Any:
    """An empty HF DynamicCache for `model`; its full-attention layers are `ArenaLayer`s (sliding-window
    layers, e.g. Gemma's, stay HF's)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    arena = _arena_layer_class()
    cache.layers = [arena() if type(layer).__name__ == "DynamicLayer" else layer for layer in cache.layers]
    return cache


def cache_length(cache: Any) -> int:
    return int(cache.get_seq_length())


@dataclass
class ForwardOutput:
    """Per fed token: logits, the requested hidden states and, when asked, grounding mass."""

    logits: torch.Tensor  # [n, V] fp32
    hidden: torch.Tensor | None  # [n, H] at the requested layer
    grounding: dict[int, torch.Tensor]  # layer -> [Hq, n] attention mass on the grounding span


def _logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 logits [..., V] of final hidden states [..., H], with the model's logit soft-capping (Gemma)."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


@torch.inference_mode()
def tree_forward(model: Any, tokens: torch.Tensor, positions: torch.Tensor, cache: Any,
                 tree_mask: torch.Tensor, *, hidden_layer: int | None = None,
                 logits_for: torch.Tensor | None = None, grounding_end: int | None = None,
                 grounding_start: int = 0, grounding_layers: tuple[int, ...] | None = None) -> ForwardOutput:
    """One target forward over `tokens` [n] at `positions` [n] on top of `cache`, with `tree_mask` [n, n].

    `logits_for` [m] selects the fed positions whose logits are computed (all when None): a prefill
    needs only the last. The cache grows by n entries; the caller commits or crops them.
    """
    n = int(tokens.shape[0])
    assert positions.shape == (n,) and tree_mask.shape == (n, n), "tokens, positions, mask disagree"
    prefix_len = cache_length(cache)
    ctx = TreeAttentionContext(tree_mask=tree_mask, prefix_len=prefix_len, grounding_end=grounding_end,
                               grounding_start=grounding_start, grounding_layers=grounding_layers)
    want_all = hidden_layer is not None and hidden_layer >= 0
    out = model.get_decoder()(input_ids=tokens.view(1, n), position_ids=positions.view(1, n),
                              past_key_values=cache, use_cache=True, output_hidden_states=want_all,
                              specgen_tree=ctx)
    final = out.last_hidden_state[0]  # [n, H]
    logits = _logits(model, final if logits_for is None else final[logits_for])  # [m, V]
    hidden = None
    if hidden_layer is not None:
        hidden = final if hidden_layer < 0 else out.hidden_states[hidden_layer + 1][0]  # [n, H]
    grounding = {layer: g[0] for layer, g in ctx.grounding.items()}  # layer -> [Hq, n]
    return ForwardOutput(logits, hidden, grounding)


@torch.inference_mode()
def commit_cache(cache: Any, n_kv: int, path: list[int] | tuple[int, ...]) -> None:
    """Keep the KV entries of the accepted tree nodes `path` (indices among the fed nodes) after `n_kv`.

    The fed nodes sit at cache positions n_kv + i. A chain prefix is a crop; otherwise the accepted
    entries are moved down in place before cropping.
    """
    keep = len(path)
    contiguous = list(path) == list(range(keep))
    for layer in cache.layers:
        _check_layer(layer)
        if not contiguous:
            src = torch.tensor(path, dtype=torch.long, device=layer.keys.device) + n_kv  # [keep]
            layer.keys[..., n_kv:n_kv + keep, :] = layer.keys[..., src, :]
            layer.values[..., n_kv:n_kv + keep, :] = layer.values[..., src, :]
        layer.keys = layer.keys[..., : n_kv + keep, :]  # [B, Hkv, n_kv + keep, D]
        layer.values = layer.values[..., : n_kv + keep, :]


def repeat_cache(cache: Any, k: int) -> Any:
    """A new cache holding `cache`'s entries repeated k times along the batch ([1, ...] -> [k, ...]);
    an empty one when `cache` is empty. `cache` itself is left as it is."""
    out = empty_cache()
    for i, layer in enumerate(cache.layers):
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            out.update(layer.keys.repeat(k, 1, 1, 1), layer.values.repeat(k, 1, 1, 1), i)  # [k, Hkv, T, D]
    return out


def select_cache_row(cache: Any, row: int, length: int) -> Any:
    """A new batch-1 cache: row `row` of `cache`, its first `length` entries."""
    out = empty_cache()
    for i, layer in enumerate(cache.layers):
        _check_layer(layer)
        out.update(layer.keys[row:row + 1, :, :length].clone(), layer.values[row:row + 1, :, :length].clone(), i)
    return out


@torch.inference_mode()
def chain_hidden(model: Any, cache: Any, n_kv: int, tokens: list[int], hidden_layer: int = -1,
                 row: int = 0) -> torch.Tensor:
    """Hidden states [len(tokens), H] at `hidden_layer` of `tokens` fed as a chain after the first
    `n_kv` entries of `cache`'s batch row `row` (positions n_kv ..), leaving `cache` untouched.

    The forward runs on a new cache whose layers start as views of the prefix: DynamicLayer.update
    concatenates into new tensors, so the original entries (prefix and any tree nodes after it)
    are only read. Used by the soft gate's hidden-state signal (a token the tree did not hold).
    """
    from transformers import DynamicCache

    prefix = DynamicCache()
    for i, layer in enumerate(cache.layers):
        _check_layer(layer)
        prefix.update(layer.keys[row:row + 1, :, :n_kv], layer.values[row:row + 1, :, :n_kv], i)  # [1, Hkv, n_kv, D]
    device = model.device
    n = len(tokens)
    out = tree_forward(model, torch.tensor(tokens, dtype=torch.long, device=device),
                       torch.arange(n_kv, n_kv + n, device=device), prefix, causal_mask(n, device),
                       hidden_layer=hidden_layer, logits_for=torch.tensor([n - 1], device=device))
    assert out.hidden is not None
    return out.hidden  # [n, H]


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def crop_cache(cache: Any, length: int) -> None:
    """Drop cache entries beyond `length`."""
    excess = cache_length(cache) - length
    if excess > 0:
        cache.crop(-excess)  # transformers 5: a negative count of entries to remove


def early_exit_view(model: Any, n_layers: int) -> Any:
    """A model object sharing the target's weights that runs only its first `n_layers` layers.

    The decoder iterates `layers[: config.num_hidden_layers]`, so a shallow copy with its own config
    is enough; module dicts are copied so the target itself is untouched.
    """
    total = model.config.num_hidden_layers
    if not 1 <= n_layers < total:
        from .errors import SpecgenError

        raise SpecgenError(f"--draft-layers must be between 1 and {total - 1} for this model, got {n_layers}")
    # The view's layers are the target's modules and read the target's config, while its decoder
    # builds masks from the view's config: both must name the same attention implementation.
    use_tree_attention(model)
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = n_layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = cfg.layer_types[:n_layers]
    view = copy.copy(model)
    view.__dict__ = dict(model.__dict__)
    view._modules = dict(model._modules)
    decoder = copy.copy(model.get_decoder())
    decoder.__dict__ = dict(decoder.__dict__)
    decoder._modules = dict(decoder._modules)
    decoder.config = cfg
    view.config = cfg
    for key, mod in view._modules.items():
        if mod is model.get_decoder():
            view._modules[key] = decoder
    return view


# ---------------------------------------------------------------------------------------------
# Ragged batches: B sequences in one cache [B, Hkv, T, D]; row b's committed entries are slots
# [0, L_b), the slots after them (up to T = max L_b) are stale and masked out.
# ---------------------------------------------------------------------------------------------
def stack_caches(caches: list[Any], lengths: list[int]) -> Any:
    """One ragged batch cache from batch-1 caches holding `lengths[b]` entries each (copied)."""
    t_len = max(lengths)
    out = empty_cache()
    for i in range(len(caches[0].layers)):
        ks, vs = [], []
        for cache, n in zip(caches, lengths):
            layer = cache.layers[i]
            _check_layer(layer)
            pad = t_len - n
            ks.append(torch.nn.functional.pad(layer.keys[..., :n, :], (0, 0, 0, pad)))  # [1, Hkv, T, D]
            vs.append(torch.nn.functional.pad(layer.values[..., :n, :], (0, 0, 0, pad)))
        out.update(torch.cat(ks), torch.cat(vs), i)  # [B, Hkv, T, D]
    return out


def split_cache(cache: Any, lengths: list[int]) -> list[Any]:
    """The batch-1 caches of a ragged batch cache, row b cut to its `lengths[b]` entries."""
    return [select_cache_row(cache, b, n) for b, n in enumerate(lengths)]


@torch.inference_mode()
def batched_tree_forward(model: Any, tokens: torch.Tensor, positions: torch.Tensor, cache: Any,
                         key_mask: torch.Tensor, *, hidden_layer: int | None = None) -> ForwardOutput:
    """One forward of B padded trees: tokens, positions [B, n] on top of the ragged `cache` [B, ., T, .],
    key_mask [B, n, T + n] (`ragged_key_mask`). Logits [B, n, V], hidden [B, n, H]; the cache grows by n."""
    b, n = tokens.shape
    assert positions.shape == (b, n) and key_mask.shape == (b, n, cache_length(cache) + n), "batch shapes disagree"
    want_all = hidden_layer is not None and hidden_layer >= 0
    out = model.get_decoder()(input_ids=tokens, position_ids=positions, past_key_values=cache, use_cache=True,
                              output_hidden_states=want_all, specgen_tree=BatchTreeContext(key_mask))
    final = out.last_hidden_state  # [B, n, H]
    logits = _logits(model, final)  # [B, n, V]
    hidden = None
    if hidden_layer is not None:
        hidden = final if hidden_layer < 0 else out.hidden_states[hidden_layer + 1]  # [B, n, H]
    return ForwardOutput(logits, hidden, {})


def ragged_key_mask(lengths: list[int], t_len: int, tree_masks: list[torch.Tensor], n: int,
                    device: torch.device | str) -> torch.Tensor:
    """key_mask [B, n, t_len + n]: row b's nodes see its valid slots [0, L_b) and their tree
    ancestors (tree_masks[b] [n_b, n_b]); padding nodes (i >= n_b) see only themselves."""
    b = len(lengths)
    mask = torch.zeros(b, n, t_len + n, dtype=torch.bool, device=device)
    slots = torch.arange(t_len, device=device)  # [T]
    for row, (length, tm) in enumerate(zip(lengths, tree_masks)):
        m = tm.shape[0]
        mask[row, :m, :t_len] = slots < length
        mask[row, :m, t_len:t_len + m] = tm.to(device)
        idx = torch.arange(m, n, device=device)
        mask[row, idx, t_len + idx] = True
    return mask


@torch.inference_mode()
def commit_rows(cache: Any, t_len: int, lengths: list[int], paths: list[tuple[int, ...]]) -> list[int]:
    """Keep row b's accepted nodes `paths[b]` (fed at slots t_len + i) at slots lengths[b] ..; drop
    the rest. Returns the new lengths; the cache is cropped to their maximum."""
    new = [n + len(p) for n, p in zip(lengths, paths)]
    for layer in cache.layers:
        for row, (n, path) in enumerate(zip(lengths, paths)):
            src = torch.tensor(path, dtype=torch.long, device=layer.keys.device) + t_len  # [k]
            layer.keys[row, :, n:n + len(path)] = layer.keys[row, :, src].clone()
            layer.values[row, :, n:n + len(path)] = layer.values[row, :, src].clone()
        layer.keys = layer.keys[..., : max(new), :]  # [B, Hkv, max L, D]
        layer.values = layer.values[..., : max(new), :]
    return new
