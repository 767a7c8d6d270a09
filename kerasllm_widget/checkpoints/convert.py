"""Hugging Face checkpoint -> Keras model, converted on the fly.

Two plain functions, as keras_hub's converters are: one maps the config, one maps the weights. Both
touch only public attributes of the model.

The dependency points from the model to the checkpoint, never back: `Llama3Backbone.from_checkpoint`
builds itself from `backbone_kwargs_from_hf_config` and fills its weights with
`load_backbone_weights`, so this module works on the backbone it is handed and imports nothing
from `kerasllm_widget.models` (the `lint-imports` layers contract holds it to that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kerasllm_widget.checkpoints.checkpoint import ROW_BLOCK_BYTES, Checkpoint, aligned_empty
from kerasllm_widget.checkpoints.errors import (
    CheckpointFormatError,
    PresetError,
    UnsupportedModelError,
)
from kerasllm_widget.distribution import place_on_shards

SUPPORTED_MODEL_TYPES = ("llama",)
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
# Keras' mixed policies: float32 variables, 16-bit compute.
MIXED_POLICIES = ("mixed_bfloat16", "mixed_float16")


def resolve_dtype(dtype) -> str:
    """``None`` -> "float32"; names and numpy/jax dtypes -> one of `SUPPORTED_DTYPES`."""
    if dtype is None:
        return "float32"
    name = getattr(dtype, "name", None) or str(dtype)
    name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(
        name, name
    )
    if name not in SUPPORTED_DTYPES:
        raise PresetError(
            f"Unknown dtype {dtype!r}. Use one of {', '.join(repr(d) for d in SUPPORTED_DTYPES)} "
            "(or None for float32)."
        )
    return name


def resolve_dtype_policy(dtype) -> str:
    """The dtype policy a model is built with: ``None`` follows ``keras.config.dtype_policy()``
    (as keras_hub does); a storage dtype (`resolve_dtype`) or a mixed policy
    (``"mixed_bfloat16"``: float32 variables, bfloat16 compute) is taken as given.

    Example:
        >>> resolve_dtype_policy("mixed_bfloat16"), resolve_dtype_policy("bf16")
        ('mixed_bfloat16', 'bfloat16')
    """
    if dtype is None:
        import keras

        dtype = keras.config.dtype_policy()
    name = getattr(dtype, "name", None) or str(dtype)
    if name in MIXED_POLICIES:
        return name
    try:
        return resolve_dtype(name)
    except PresetError:
        allowed = ", ".join(repr(d) for d in (*SUPPORTED_DTYPES, *MIXED_POLICIES))
        raise PresetError(
            f"Unknown dtype {dtype!r}. Use one of {allowed} (or None for "
            "keras.config.dtype_policy(), float32 unless set)."
        ) from None


def backbone_kwargs_from_hf_config(config: dict[str, Any], source: str = "config.json") -> dict:
    """Maps a transformers ``config.json`` (``model_type: "llama"``) to `Llama3Backbone` kwargs.

    Example:
        >>> backbone_kwargs_from_hf_config({"model_type": "llama", "vocab_size": 10,
        ...     "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        ...     "num_attention_heads": 2})["head_dim"]
        4
    """
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{source}: model_type {model_type!r} is not supported. This package implements the "
            f"Llama family (model_type {', '.join(repr(t) for t in SUPPORTED_MODEL_TYPES)}: Llama 2, "
            "3, 3.1, 3.2, SmolLM2, TinyLlama). Pick a Llama-architecture checkpoint."
        )
    required = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
    )
    missing = [key for key in required if key not in config]
    if missing:
        raise PresetError(
            f"{source}: missing field(s) {', '.join(missing)}; the file is incomplete."
        )
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(
            f"{source}: hidden_act {act!r} is not supported (Llama uses 'silu')."
        )

    # Newer transformers write `rope_parameters` (with rope_theta inside); older ones write
    # `rope_theta` beside `rope_scaling`. Real checkpoints exist in both forms.
    rope = dict(config.get("rope_parameters") or {})
    scaling = config.get("rope_scaling") or None
    if scaling is None and rope.get("rope_type", "default") not in ("default", None):
        scaling = rope
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    if scaling is not None:
        scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
        scaling.setdefault("rope_type", scaling.get("type", "default"))
        if scaling["rope_type"] == "default":
            scaling = None

    heads = config["num_attention_heads"]
    return {
        "vocabulary_size": config["vocab_size"],
        "num_layers": config["num_hidden_layers"],
        "num_query_heads": heads,
        "num_key_value_heads": config.get("num_key_value_heads") or heads,
        "hidden_dim": config["hidden_size"],
        "intermediate_dim": config["intermediate_size"],
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "rope_max_wavelength": float(theta),
        "rope_scaling": scaling,
        "layer_norm_epsilon": float(config.get("rms_norm_eps", 1e-6)),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "attention_bias": bool(config.get("attention_bias", False)),
        "mlp_bias": bool(config.get("mlp_bias", False)),
        "max_sequence_length": int(config.get("max_position_embeddings", 8192)),
        "initializer_range": float(config.get("initializer_range", 0.02)),
    }


def ml_dtypes_name(dtype: str) -> str:
    """numpy knows "bfloat16" once `ml_dtypes` is imported; this makes the import explicit."""
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)

    return str(dtype)


def _transpose(array: np.ndarray) -> np.ndarray:
    return array.T  # torch Linear stores [out, in]; keras Dense wants [in, out]


def _same(array: np.ndarray) -> np.ndarray:
    return array


def weight_map(backbone) -> dict[str, tuple[Any, Callable[[np.ndarray], np.ndarray]]]:
    """Hugging Face tensor name -> (Keras variable, layout transform)."""
    mapping = {"model.embed_tokens.weight": (backbone.token_embedding.embeddings, _same)}
    if not backbone.tie_word_embeddings:
        mapping["lm_head.weight"] = (backbone.token_embedding.reverse_embeddings, _transpose)
    mapping["model.norm.weight"] = (backbone.layer_norm.scale, _same)
    for i, block in enumerate(backbone.transformer_layers):
        prefix = f"model.layers.{i}."
        attention = block.attention
        denses = {
            "self_attn.q_proj": attention.query_dense,
            "self_attn.k_proj": attention.key_dense,
            "self_attn.v_proj": attention.value_dense,
            "self_attn.o_proj": attention.output_dense,
            "mlp.gate_proj": block.feedforward_gate_dense,
            "mlp.up_proj": block.feedforward_intermediate_dense,
            "mlp.down_proj": block.feedforward_output_dense,
        }
        for name, dense in denses.items():
            mapping[f"{prefix}{name}.weight"] = (dense.kernel, _transpose)
            if dense.use_bias:
                mapping[f"{prefix}{name}.bias"] = (dense.bias, _same)
        mapping[f"{prefix}input_layernorm.weight"] = (block.attention_norm.scale, _same)
        mapping[f"{prefix}post_attention_layernorm.weight"] = (block.feedforward_norm.scale, _same)
    return mapping


def _expected_hf_shape(variable, transform) -> tuple[int, ...]:
    shape = tuple(variable.shape)
    return shape[::-1] if transform is _transpose else shape


def check_tensors(ckpt: Checkpoint, mapping: dict) -> None:
    """Fails before any weight is assigned when a tensor is missing or of the wrong shape."""
    for name, (variable, transform) in mapping.items():
        info = ckpt.tensor_infos.get(name)
        if info is None:
            raise CheckpointFormatError(
                f"{ckpt.source}: tensor {name!r} is missing, but the config needs it. The checkpoint "
                "is incomplete or does not match its config.json; re-download it."
            )
        expected = _expected_hf_shape(variable, transform)
        if tuple(info.shape) != expected:
            raise CheckpointFormatError(
                f"{ckpt.source}: tensor {name!r} has shape {tuple(info.shape)}, but config.json "
                f"implies {expected}. The weights do not match the config; check both files."
            )


def read_converted(
    ckpt: Checkpoint,
    name: str,
    shape: tuple[int, ...],
    dtype,
    transform,
    block_bytes: int = ROW_BLOCK_BYTES,
) -> np.ndarray:
    """One checkpoint tensor in Keras layout and ``dtype``, filled a block of rows at a time.

    ``transform`` maps the Keras-layout array to a view in Hugging Face layout (`_same`,
    `_transpose`); every block of about ``block_bytes`` is cast and written through that view, so
    the only full-size array made is the result, aligned so that JAX on CPU adopts it uncopied.

    Example:
        >>> kernel = read_converted(ckpt, "model.layers.0.mlp.up_proj.weight", (576, 1536),
        ...                         "bfloat16", _transpose)  # doctest: +SKIP
    """
    out = aligned_empty(tuple(shape), np.dtype(ml_dtypes_name(dtype)))
    hf_view = transform(out)
    for start, rows in ckpt.row_blocks(name, block_bytes):
        hf_view[start : start + len(rows)] = rows
        del rows
    return out


def _release(variable) -> None:
    """Frees a placeholder value before its replacement is made (JAX); other backends copy in place."""
    value = variable.value
    if hasattr(value, "delete") and hasattr(value, "is_deleted") and not value.is_deleted():
        value.delete()


def load_backbone_weights(
    backbone, ckpt: Checkpoint, progress: bool = True, release_placeholders: bool = False
) -> None:
    """Reads, converts and assigns every tensor, one at a time (peak memory ~ one tensor).

    With ``release_placeholders=True`` (a backbone just built to be loaded), each weight's current
    value is freed before its replacement is read, so the two never exist together; anything still
    holding the old values then holds deleted arrays, and a failed load leaves the backbone unusable.
    """
    from tqdm.auto import tqdm

    mapping = weight_map(backbone)
    mapped = {id(variable) for variable, _ in mapping.values()}
    unmapped = [weight.path for weight in backbone.weights if id(weight) not in mapped]
    if unmapped:
        raise PresetError(
            f"The backbone has weights that no checkpoint tensor fills: {unmapped[:5]}. Load the "
            "checkpoint before enabling LoRA or adding weights."
        )
    check_tensors(ckpt, mapping)
    bar = tqdm(
        total=len(mapping),
        desc=f"Loading {ckpt.name}",
        unit="tensor",
        disable=not progress,
        leave=False,
    )
    for name, (variable, transform) in mapping.items():
        if release_placeholders:
            _release(variable)
        # Cast while filling (bfloat16/float16 via ml_dtypes): no float32 copy of a 16-bit model.
        array = read_converted(ckpt, name, tuple(variable.shape), variable.dtype, transform)
        # Straight onto the variable's shards (under keras.distribution), never whole on one device.
        variable.assign(place_on_shards(variable, array))
        del array
        bar.update(1)
    bar.close()
