"""The one Llama forward: every way the model runs (its Keras ``call``, the engine's prefill and
decode, the inspectors, training) goes through `forward` and `logits`, so there is one place
where its arithmetic lives and one vocabulary for its insides, the hook points:

```
embed
layers.{i}.residual_in   layers.{i}.attention.probs   layers.{i}.attention.out
layers.{i}.mlp.out       layers.{i}.residual_out
final_norm.out           logits
```

A `Hooks` object says which points to capture and which to edit; an edit is a traceable
function of the value that returns its replacement, so it compiles into a jitted program like
the rest (parameters passed as arrays, an edit that only changes a number recompiles nothing).
``layers.{i}.attention.probs`` exists only when asked for: that layer then takes the
explicit-softmax attention, the others stay fused.

``layout`` carries the inference-only arrays the engine derives once (fused q/k/v and gate/up
kernels, transposed or int8 copies, a transposed output projection) and whether the native CPU
kernel runs (``layout.kernels``): one object, part of the engine's compile key. The Keras layers
never see it; without it, the forward reads the layers' own weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import keras
from keras import ops

from kerasllm_widget.kernels import cpu
from kerasllm_widget.kernels.products import QuantizedKernel, dense_product, for_rows, product
from kerasllm_widget.models.rotary_embedding import apply_rotary_tables, rotary_tables

__all__ = [
    "HOOK_POINTS",
    "Edit",
    "EditSet",
    "MASK_VALUE",
    "Hooks",
    "TransposedAttentionKernels",
    "attention_block",
    "decoder_block",
    "embed",
    "expand_hook_names",
    "forward",
    "hook_point_names",
    "logits",
]

# A large finite negative instead of -inf: a fully masked row (a left-padding query) then gets a
# harmless uniform softmax instead of NaNs that would poison the rest of the batch.
MASK_VALUE = -1e9

HOOK_POINTS = (
    "embed",
    "layers.{i}.residual_in",
    "layers.{i}.attention.probs",
    "layers.{i}.attention.out",
    "layers.{i}.mlp.out",
    "layers.{i}.residual_out",
    "final_norm.out",
    "logits",
)


def hook_point_names(num_layers: int) -> list[str]:
    """Every hook point of a model with ``num_layers`` decoder layers, in forward order.

    Example:
        >>> hook_point_names(1)
        ['embed', 'layers.0.residual_in', 'layers.0.attention.probs', 'layers.0.attention.out', 'layers.0.mlp.out', 'layers.0.residual_out', 'final_norm.out', 'logits']
    """
    names = ["embed"]
    for i in range(num_layers):
        names += [point.format(i=i) for point in HOOK_POINTS[1:6]]
    return [*names, "final_norm.out", "logits"]


def expand_hook_names(patterns: Iterable[str], num_layers: int) -> list[str]:
    """Hook point names from names or patterns with ``*`` for the layer index
    (``"layers.*.residual_out"``), in forward order; an unknown name is refused with the list.

    Example:
        >>> expand_hook_names(["logits", "layers.*.mlp.out"], 2)
        ['layers.0.mlp.out', 'layers.1.mlp.out', 'logits']
    """
    known = hook_point_names(num_layers)
    wanted: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"hook point names are strings, got {pattern!r}")
        if "*" in pattern:
            matches = {n for n in known if _matches(pattern, n)}
        else:
            matches = {pattern} & set(known)
        if not matches:
            raise ValueError(
                f"{pattern!r} is not a hook point of this model ({num_layers} layers): use "
                f"one of {', '.join(HOOK_POINTS)} with i in 0..{num_layers - 1} or '*'."
            )
        wanted |= matches
    return [n for n in known if n in wanted]


def _matches(pattern: str, name: str) -> bool:
    parts, names = pattern.split("."), name.split(".")
    return len(parts) == len(names) and all(
        p in ("*", n) for p, n in zip(parts, names, strict=True)
    )


class Edit(NamedTuple):
    """An edit whose numbers are traced: ``fn(value, params) -> value`` with ``params`` a pytree
    of arrays. The same ``fn`` with new ``params`` reuses the compiled program.

    Example:
        >>> scale = Edit(lambda value, s: value * s, 0.5)
        >>> scale.fn(2.0, scale.params)
        1.0
    """

    fn: Callable[[Any, Any], Any]
    params: Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EditSet:
    """Edits at hook points as a pytree for a jitted program: ``spec`` (static: the names and
    functions, part of the compile key) and ``params`` (traced arrays, one per edit; None for a
    plain ``fn(value)``). New params never recompile.

    Example:
        >>> edits = EditSet.of({"layers.*.mlp.out": lambda v: v * 0}, num_layers=2)
        >>> [name for name, _, _ in edits.spec]
        ['layers.0.mlp.out', 'layers.1.mlp.out']
    """

    spec: tuple = dataclasses.field(default=(), metadata={"static": True})
    params: tuple = ()

    @classmethod
    def of(cls, edits: Mapping[str, Callable | Edit] | None, num_layers: int) -> EditSet:
        """From ``{name or pattern: fn or Edit}`` (``*`` for every layer), in forward order."""
        spec, params = [], []
        for pattern, edit in (edits or {}).items():
            if isinstance(edit, Edit):
                fn, value, takes = edit.fn, edit.params, True
            elif callable(edit):
                fn, value, takes = edit, None, False
            else:
                raise TypeError(
                    f"edits[{pattern!r}] is a {type(edit).__name__}: give a function of the "
                    "value, or Edit(fn, params) for an edit whose numbers change between calls."
                )
            for name in expand_hook_names([pattern], num_layers):
                spec.append((name, fn, takes))
                params.append(value)
        return cls(tuple(spec), tuple(params))

    def hooks(self, capture: Iterable[str] = ()) -> Hooks | None:
        """The `Hooks` applying these edits (None when there are none and nothing to capture)."""
        if not self.spec and not capture:
            return None
        edits = {
            name: (fn, value) if takes else fn
            for (name, fn, takes), value in zip(self.spec, self.params, strict=True)
        }
        return Hooks(capture=capture, edits=edits)

    def __bool__(self) -> bool:
        return bool(self.spec)


class Hooks:
    """Which hook points a forward captures and which it edits.

    ``capture``: names whose values are recorded in `captured` (tracers inside a jitted
    function: return them from it). ``edits``: ``{name: fn}``, ``fn(value) -> value``, or
    ``{name: (fn, params)}``, ``fn(value, params) -> value`` with ``params`` a pytree of arrays
    (traced: a new value does not recompile).

    Example:
        >>> hooks = Hooks(capture=["layers.0.residual_out"])
        >>> hooks.wants_probabilities(0)
        False
    """

    def __init__(
        self,
        capture: Iterable[str] = (),
        edits: Mapping[str, Callable | tuple[Callable, Any]] | None = None,
    ):
        self.capture = frozenset(capture)
        self.edits = dict(edits or {})
        self.captured: dict[str, Any] = {}

    def __call__(self, name: str, value):
        edit = self.edits.get(name)
        if edit is not None:
            value = edit[0](value, edit[1]) if isinstance(edit, tuple) else edit(value)
        if name in self.capture:
            self.captured[name] = value
        return value

    def wants_probabilities(self, layer: int) -> bool:
        name = f"layers.{layer}.attention.probs"
        return name in self.capture or name in self.edits

    def __bool__(self) -> bool:
        return bool(self.capture or self.edits)


_NO_HOOKS = Hooks()


# ----------------------------------------------------------------------------- the stack


def forward(
    backbone,
    token_ids,
    *,
    positions,
    attention_mask,
    cache=None,
    cache_index=None,
    layout=None,
    hooks: Hooks | None = None,
):
    """Final hidden states ``[B, T, D]`` (after the final norm) and the new cache (None without
    one). ``attention_mask [B, T, S]``: True where query t may see key s (S is T without a
    cache, else the cache length); ``cache``: per layer ``(keys, values)`` ``[B, S, kv, hd]``,
    this call's keys written at ``cache_index``.

    Example:
        >>> hidden, _ = forward(backbone, ids, positions=pos, attention_mask=mask)  # doctest: +SKIP
    """
    hooks = hooks or _NO_HOOKS
    kernels = bool(getattr(layout, "kernels", False))
    x = hooks("embed", embed(backbone.token_embedding, token_ids, kernels))
    rope = rotary_tables(positions, backbone.inverse_frequencies)
    new_cache = [] if cache is not None else None
    for i, layer in enumerate(backbone.transformer_layers):
        x, layer_cache = decoder_block(
            layer,
            x,
            rope=rope,
            attention_mask=attention_mask,
            cache=None if cache is None else cache[i],
            cache_index=cache_index,
            fused=None if layout is None else layout.layers[i],
            kernels=kernels,
            hooks=hooks,
            index=i,
        )
        if new_cache is not None:
            new_cache.append(layer_cache)
    return hooks("final_norm.out", backbone.layer_norm(x)), new_cache


def embed(embedding, token_ids, kernels: bool = False):
    """The token embedding lookup. A 16-bit table is never widened: XLA on a CPU converts a
    bfloat16 gather's whole operand to float32, and a bit-cast to integers is hoisted out of the
    decode loop as a copy of the whole table (113 MB / 56 MB for SmolLM2, once per decode call),
    so with the CPU kernel the rows are copied by it (`cpu.take_rows`) and otherwise gathered as
    16-bit integers. Quantized or LoRA tables, and other backends, keep the layer's call."""
    if (
        keras.backend.backend() != "jax"
        or getattr(embedding, "quantization_mode", None)
        or getattr(embedding, "lora_enabled", False)
    ):
        return embedding(token_ids)
    table = ops.convert_to_tensor(embedding.embeddings)
    ids = ops.cast(token_ids, "int32")
    if kernels:
        return cpu.take_rows(table, ids).astype(embedding.compute_dtype)
    if table.dtype.itemsize != 2:
        return jax.numpy.take(table, ids, axis=0).astype(embedding.compute_dtype)
    rows = jax.numpy.take(jax.lax.bitcast_convert_type(table, jax.numpy.uint16), ids, axis=0)
    return jax.lax.bitcast_convert_type(rows, table.dtype).astype(embedding.compute_dtype)


def logits(backbone, hidden, layout=None, hooks: Hooks | None = None):
    """Float32 logits ``[..., vocabulary]`` of final hidden states: the tied embedding table (or
    the untied output projection), or the layout's own copy of it."""
    hooks = hooks or _NO_HOOKS
    embedding = backbone.token_embedding
    lm_head = getattr(layout, "lm_head", None)
    kernels = bool(getattr(layout, "kernels", False))
    if lm_head is not None:  # [hidden, vocabulary], or an int8 [vocabulary, hidden] copy
        quantized = isinstance(lm_head, QuantizedKernel)
        hidden = ops.cast(hidden, "float32" if quantized else lm_head.dtype)
        result = product(hidden, lm_head, kernels=kernels)
    elif kernels and getattr(embedding, "quantization_mode", None) is None:
        # The [vocabulary, hidden] table read in place (tied) or [hidden, vocabulary].
        tied = embedding.tie_weights
        table = embedding.embeddings if tied else embedding.reverse_embeddings
        result = product(
            ops.cast(hidden, embedding.compute_dtype), table, transposed=tied, kernels=True
        )
    else:
        result = embedding(hidden, reverse=True)
    return hooks("logits", ops.cast(result, "float32"))


# ----------------------------------------------------------------------------- one block


def decoder_block(
    layer,
    x,
    *,
    rope,
    attention_mask,
    cache=None,
    cache_index=None,
    fused=None,
    kernels: bool = False,
    hooks: Hooks | None = None,
    index: int = 0,
):
    """``h = x + attention(norm(x)); out = h + down(silu(gate(norm(h))) * up(norm(h)))`` for the
    `Llama3TransformerDecoder` ``layer``. Returns ``(out, new_cache)``."""
    hooks = hooks or _NO_HOOKS
    fused = for_rows(fused or {}, x, kernels)
    x = hooks(f"layers.{index}.residual_in", x)
    attended, cache = attention_block(
        layer.attention,
        layer.attention_norm(x),
        rope=rope,
        attention_mask=attention_mask,
        cache=cache,
        cache_index=cache_index,
        fused_qkv=fused.get("qkv"),
        kernels=kernels,
        hooks=hooks,
        index=index,
    )
    x = x + hooks(f"layers.{index}.attention.out", attended)
    h = layer.feedforward_norm(x)
    if "gate_up" in fused:
        gate_up = product(h, fused["gate_up"], kernels=kernels)
        width = layer.intermediate_dim
        gate, up = gate_up[..., :width], gate_up[..., width:]
    else:
        gate = dense_product(layer.feedforward_gate_dense, h, kernels=kernels)
        up = dense_product(layer.feedforward_intermediate_dense, h, kernels=kernels)
    hidden = ops.silu(gate) * up
    if "down" in fused:
        down = product(hidden, fused["down"], kernels=kernels)
    else:
        down = dense_product(layer.feedforward_output_dense, hidden, kernels=kernels)
    x = x + hooks(f"layers.{index}.mlp.out", down)
    return hooks(f"layers.{index}.residual_out", x), cache


class TransposedAttentionKernels(NamedTuple):
    """The fused query/key/value kernel ``[(heads + 2 * kv_heads) * head_dim, hidden]`` and the
    output kernel ``[hidden, heads * head_dim]``, both stored ``[out, in]``: float arrays, or
    int8 `QuantizedKernel` pairs (see `kerasllm_widget.generation.fused_weights`)."""

    qkv: Any
    output: Any


def attention_block(
    attention,
    x,
    *,
    rope,
    attention_mask,
    cache=None,
    cache_index=None,
    fused_qkv=None,
    kernels: bool = False,
    hooks: Hooks | None = None,
    index: int = 0,
):
    """Grouped-query self-attention with RoPE and a static key/value cache, for the
    `Llama3Attention` ``attention``. Returns ``(output, new_cache)``.

    ``fused_qkv``: the query, key and value kernels side by side ``[hidden, (H + 2K) * hd]``,
    or a `TransposedAttentionKernels` (which also stands in for the output kernel)."""
    hooks = hooks or _NO_HOOKS
    heads, kv_heads, head_dim = (
        attention.num_query_heads,
        attention.num_key_value_heads,
        attention.head_dim,
    )
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    query_width, kv_width = heads * head_dim, kv_heads * head_dim
    transposed = fused_qkv if isinstance(fused_qkv, TransposedAttentionKernels) else None
    if fused_qkv is not None:
        if transposed is not None:
            qkv = product(x, transposed.qkv, transposed=True, kernels=kernels)
        else:
            qkv = product(x, fused_qkv, kernels=kernels)
        query = qkv[..., :query_width]
        key = qkv[..., query_width : query_width + kv_width]
        value = qkv[..., query_width + kv_width :]
    else:
        query, key, value = (
            dense_product(dense, x, kernels=kernels)
            for dense in (attention.query_dense, attention.key_dense, attention.value_dense)
        )
    query = ops.reshape(query, (batch, length, heads, head_dim))
    key = ops.reshape(key, (batch, length, kv_heads, head_dim))
    value = ops.reshape(value, (batch, length, kv_heads, head_dim))
    cos, sin = rope
    query = apply_rotary_tables(query, cos, sin)
    key = apply_rotary_tables(key, cos, sin)
    if cache is not None:
        key_cache, value_cache = cache
        start = (0, cache_index, 0, 0)
        key = ops.slice_update(key_cache, start, ops.cast(key, key_cache.dtype))
        value = ops.slice_update(value_cache, start, ops.cast(value, value_cache.dtype))
        cache = (key, value)

    if hooks.wants_probabilities(index):
        probabilities = explicit_probabilities(query, key, attention_mask, kv_heads)
        probabilities = hooks(f"layers.{index}.attention.probs", probabilities)
        output = weighted_values(probabilities, value)
    elif kernels and length == 1:
        output = one_query_attention(query, key, value, attention_mask)
    else:
        output = fused_attention(query, key, value, attention_mask)
    output = ops.reshape(output, (batch, length, heads * head_dim))
    if transposed is not None:
        return product(output, transposed.output, transposed=True, kernels=kernels), cache
    return dense_product(attention.output_dense, output, kernels=kernels), cache


def explicit_probabilities(query, key, attention_mask, kv_heads: int):
    """Attention probabilities ``[B, H, T, S]`` in float32, softmax written out (the reference's
    "eager" attention), grouped so that K/V heads are never repeated; exact zeros where masked."""
    batch, length, heads, head_dim = ops.shape(query)
    groups = heads // kv_heads
    grouped = ops.reshape(query, (batch, length, kv_heads, groups, head_dim))
    scores = ops.einsum("btkgd,bskd->bkgts", grouped, key)
    scores = ops.cast(scores, "float32") * (1.0 / math.sqrt(head_dim))
    scores = ops.where(attention_mask[:, None, None, :, :], scores, MASK_VALUE)
    probabilities = ops.reshape(
        ops.softmax(scores, axis=-1), (batch, heads, length, ops.shape(key)[1])
    )
    # Exact zeros on masked keys (the finite mask value leaves ~1e-400 there otherwise).
    return ops.where(attention_mask[:, None, :, :], probabilities, 0.0)


def weighted_values(probabilities, value):
    """``probabilities [B, H, T, S]`` applied to ``value [B, S, K, hd]``: ``[B, T, H, hd]``."""
    batch, heads, length, slots = ops.shape(probabilities)
    kv_heads = ops.shape(value)[2]
    grouped = ops.reshape(probabilities, (batch, kv_heads, heads // kv_heads, length, slots))
    output = ops.einsum("bkgts,bskd->btkgd", ops.cast(grouped, value.dtype), value)
    return ops.reshape(output, (batch, length, heads, ops.shape(value)[3]))


def fused_attention(query, key, value, attention_mask):
    """``keras.ops.dot_product_attention`` (cuDNN/flash where the backend has it). XLA on a CPU
    has no float16 x float16 -> float32 dot (JAX asks for float32 accumulation), so float16
    attention runs in float32 there and the output is cast back."""
    dtype = query.dtype
    widen = (
        str(dtype) == "float16"
        and keras.backend.backend() == "jax"
        and jax.default_backend() == "cpu"
    )
    if widen:
        query, key, value = (ops.cast(t, "float32") for t in (query, key, value))
    output = ops.dot_product_attention(
        query,
        key,
        value,
        mask=attention_mask[:, None, :, :],
        scale=1.0 / math.sqrt(ops.shape(query)[-1]),
    )
    return ops.cast(output, dtype) if widen else output


def one_query_attention(query, key, value, attention_mask):
    """One query per sequence against the cache as it is laid out, in the CPU kernel
    (`kerasllm_widget.kernels.cpu.attention`). As XLA dot products the decode step transposed
    every layer's cache and made tiny library calls (about a third of a SmolLM2 step)."""
    batch, _, heads, head_dim = ops.shape(query)
    output = cpu.attention(
        ops.reshape(query, (batch, heads, head_dim)),
        key,
        value,
        attention_mask[:, 0, :],
        1.0 / math.sqrt(head_dim),
    )
    return ops.reshape(output, (batch, 1, heads, head_dim))
