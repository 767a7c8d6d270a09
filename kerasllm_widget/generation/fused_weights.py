"""Inference-only weight layouts derived from the model's own variables.

A decode step at batch 1 is a chain of matrix-vector products whose cost is reading the weights.
Three layouts read them faster than the checkpoint's, so the engine derives them once (on the
device, in one jitted call) and passes them to its compiled programs beside the variables:

- ``qkv``: the query, key and value kernels side by side ``[hidden, (H + 2K) * head_dim]``,
  and ``gate_up``: the SwiGLU gate and up kernels side by side ``[hidden, 2 * intermediate]``.
  One larger product instead of three (or two) small ones.
- ``qkv`` on an accelerator: the fused query/key/value kernel and the attention output kernel,
  both transposed to ``[out, in]`` (a `TransposedAttentionKernels` pair, the decoder hands it to
  the attention layer). At one token per row XLA on a GPU compiles these products (too small
  for a GEMM) as multiply+reduce fusions; reducing along the contiguous axis reads the weights
  about twice as fast as reducing across rows (H200, Llama-3.2-1B shape: 701 -> 1,000 tok/s
  at batch 1 with the decode program's CUDA graphs).
- ``lm_head``: the tied embedding transposed once, ``[hidden, vocabulary]``. XLA on a CPU
  otherwise copies the ``[vocabulary, hidden]`` table into that layout at every step (a 113 MB
  copy per token for SmolLM2 in float32); accelerators read the transposed operand directly.
  It is only derived on a CPU without the decode kernel (`kerasllm_widget.kernels`), which reads
  the table in place.

``kernels`` (static: part of the compiled programs' signature) says whether the programs send
decode-sized products to the CPU kernel.

On a CUDA GPU with the GPU decode kernels (`kerasllm_widget.kernels.gpu`), every float product
of a layer is stored ``[out, in]`` and wrapped as a `StreamedKernel` (q/k/v, attention output,
gate/up side by side, down: the down copy is the one extra array, 537 MB for Llama-3.2-1B in
bfloat16), and the tied output projection is read in place (``streamed_lm_head``): a decode
step's products go to the kernels, a prompt's to XLA's dot on the same arrays.

The variables (checkpoint names and shapes, LoRA adapters, the unfused layers that training and
the inspectors use) are left as they are. A layer with LoRA, a bias or a quantized kernel keeps
its unfused path. Each pair of arrays costs the memory of the kernels it fuses: the engine keeps
one set, derived again only when the variables' values change (after training, for example).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import keras
from keras import ops

from kerasllm_widget.kernels import products
from kerasllm_widget.kernels.gpu import STREAMED
from kerasllm_widget.kernels.products import QuantizedKernel, StreamedKernel, plain_dense
from kerasllm_widget.models.llama3_forward import TransposedAttentionKernels

__all__ = [
    "FusedWeights",
    "TransposedAttentionKernels",
    "derive_fused_weights",
    "derive_in_scope",
    "fusion_plan",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FusedWeights:
    """Per transformer layer ``{"qkv": ..., "gate_up": ...}`` (either may be absent; ``qkv`` is
    a `TransposedAttentionKernels` on an accelerator), the output projection
    ``[hidden, vocabulary]`` or None, whether the CPU decode kernel is used, and whether the
    GPU decode kernel reads the tied output projection in place."""

    layers: tuple
    lm_head: Any
    kernels: bool = dataclasses.field(default=False, metadata={"static": True})
    streamed_lm_head: bool = dataclasses.field(default=False, metadata={"static": True})


def fusion_plan(
    model,
    on_cpu: bool | None = None,
    kernels: bool | None = None,
    gpu_kernels: bool | None = None,
) -> tuple[tuple[tuple[str, ...], ...], bool | str, bool]:
    """Which layers get fused kernels (``(("qkv", "gate_up"), ...)``; ``"qkv_t"`` for the
    transposed attention kernels of an accelerator; ``"qkv_s"``, ``"gate_up_s"``, ``"down_s"``
    for the ``[out, in]`` copies the GPU decode kernels stream), whether the transposed output
    projection is derived (``"streamed"``: the GPU kernel reads the tied table in place), and
    whether the CPU decode kernel is used (default: where it can be,
    `kerasllm_widget.kernels.products.enabled`; ``gpu_kernels`` likewise,
    `kerasllm_widget.kernels.products.gpu_enabled`).

    Example:
        >>> fusion_plan(model)[1]  # doctest: +SKIP
        True
    """
    if on_cpu is None:
        on_cpu = jax.default_backend() == "cpu"
    if kernels is None:
        kernels = on_cpu and products.enabled()
    if gpu_kernels is None:
        gpu_kernels = not on_cpu and products.gpu_enabled()
    streamed = STREAMED if gpu_kernels else frozenset()
    backbone = model.backbone
    layers = []
    int8_layers = 0
    for layer in backbone.transformer_layers:
        attention = layer.attention
        parts = []
        qkv_dense = (attention.query_dense, attention.key_dense, attention.value_dense)
        gate_up_dense = (layer.feedforward_gate_dense, layer.feedforward_intermediate_dense)
        rest = (attention.output_dense, layer.feedforward_output_dense)
        if kernels and all(plain_dense(d, "int8") for d in (*qkv_dense, *gate_up_dense, *rest)):
            # int8 [out, in] copies of all seven, multiplied in integers by the CPU kernel.
            layers.append(("q8",))
            int8_layers += 1
            continue
        if all(plain_dense(d) for d in qkv_dense):
            transposed = not on_cpu and plain_dense(attention.output_dense)
            qkv = "qkv_s" if transposed and "attention" in streamed else "qkv_t"
            parts.append(qkv if transposed else "qkv")
        if all(plain_dense(d) for d in gate_up_dense):
            parts.append("gate_up_s" if "gate_up" in streamed else "gate_up")
        if "down" in streamed and plain_dense(layer.feedforward_output_dense):
            parts.append("down_s")
        layers.append(tuple(parts))
    embedding = backbone.token_embedding
    float_table = embedding.tie_weights and getattr(embedding, "quantization_mode", None) is None
    lm_head: bool | str = bool(on_cpu and not kernels and float_table)
    if "lm_head" in streamed and float_table:
        lm_head = "streamed"
    if kernels and float_table and int8_layers == len(layers) and layers:
        # Keras leaves a tied embedding in float when it quantizes the model; the decode kernel
        # reads the output projection as int8 too (per-row scales), or it would be half the
        # bytes of every step.
        lm_head = "q8"
    return tuple(layers), lm_head, bool(kernels)


def derive_fused_weights(model, plan) -> FusedWeights:
    """The fused arrays, in the model's compute dtype, read from the current variable values.

    Pure in the variables' values: run it inside a `keras.StatelessScope` under `jax.jit` to
    derive from explicit arrays (the engine does).
    """
    layer_plans, lm_head_wanted, kernels = plan
    backbone = model.backbone
    dtype = backbone.compute_dtype

    def kernel(dense):
        return ops.cast(dense.kernel, dtype)

    def quantized(*denses):  # int8 [in, out] kernels side by side, as one [out, in] kernel
        return QuantizedKernel(
            ops.concatenate([ops.transpose(ops.convert_to_tensor(d._kernel)) for d in denses], 0),
            ops.concatenate([1.0 / ops.cast(d.kernel_scale, "float32") for d in denses], 0),
        )

    layers = []
    for layer, parts in zip(backbone.transformer_layers, layer_plans, strict=True):
        fused = {}
        attention = layer.attention
        if "q8" in parts:
            fused["qkv"] = TransposedAttentionKernels(
                quantized(attention.query_dense, attention.key_dense, attention.value_dense),
                quantized(attention.output_dense),
            )
            fused["gate_up"] = quantized(
                layer.feedforward_gate_dense, layer.feedforward_intermediate_dense
            )
            fused["down"] = quantized(layer.feedforward_output_dense)
        if {"qkv", "qkv_t", "qkv_s"} & set(parts):
            qkv = ops.concatenate(
                [
                    kernel(attention.query_dense),
                    kernel(attention.key_dense),
                    kernel(attention.value_dense),
                ],
                axis=-1,
            )
            fused["qkv"] = qkv
            if "qkv_t" in parts or "qkv_s" in parts:
                wrap = StreamedKernel if "qkv_s" in parts else (lambda array: array)
                fused["qkv"] = TransposedAttentionKernels(
                    wrap(ops.transpose(qkv)), wrap(ops.transpose(kernel(attention.output_dense)))
                )
        if "gate_up" in parts or "gate_up_s" in parts:
            gate_up = ops.concatenate(
                [
                    kernel(layer.feedforward_gate_dense),
                    kernel(layer.feedforward_intermediate_dense),
                ],
                axis=-1,
            )
            fused["gate_up"] = (
                StreamedKernel(ops.transpose(gate_up)) if "gate_up_s" in parts else gate_up
            )
        if "down_s" in parts:
            fused["down"] = StreamedKernel(ops.transpose(kernel(layer.feedforward_output_dense)))
        layers.append(fused)
    lm_head = None
    if lm_head_wanted == "q8":
        table = ops.cast(backbone.token_embedding.embeddings, "float32")
        step = ops.max(ops.abs(table), axis=1) / 127.0
        step = ops.where(step > 0, step, 1.0)
        codes = ops.cast(ops.clip(ops.round(table / step[:, None]), -127, 127), "int8")
        lm_head = QuantizedKernel(codes, step)
    elif lm_head_wanted and lm_head_wanted != "streamed":
        lm_head = ops.transpose(ops.cast(backbone.token_embedding.embeddings, dtype))
    return FusedWeights(tuple(layers), lm_head, kernels, lm_head_wanted == "streamed")


def derive_in_scope(model, variables, values, plan) -> FusedWeights:
    """`derive_fused_weights` with ``values`` standing in for ``variables``."""
    with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
        return derive_fused_weights(model, plan)
