"""LoRA for `Llama3Backbone`: Keras ``Dense.enable_lora`` on chosen projections, adapters saved in
the PEFT layout, and merging into the base kernels.

Keras' Dense does the low-rank work itself: with LoRA on, ``dense.kernel`` is
``kernel + lora_alpha / rank * lora_kernel_a @ lora_kernel_b`` and only ``lora_kernel_a/b`` train.
This module picks the layers, freezes everything else, and moves adapters in and out of files that
Hugging Face PEFT also reads (``adapter_config.json`` + ``adapter_model.safetensors``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "enable_lora",
    "load_lora_weights",
    "lora_layers",
    "merge_lora_weights",
    "save_lora_weights",
]

# The projections keras_hub's Llama puts LoRA on by default: query and value.
DEFAULT_LORA_TARGETS = ("query", "value")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORA_H5_SUFFIX = ".lora.h5"  # keras_hub's `save_lora_weights` file name ending

# Our layer names -> (Hugging Face module name, how to reach the Dense from a decoder block).
_TARGETS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "query": ("self_attn.q_proj", lambda block: block.attention.query_dense),
    "key": ("self_attn.k_proj", lambda block: block.attention.key_dense),
    "value": ("self_attn.v_proj", lambda block: block.attention.value_dense),
    "attention_output": ("self_attn.o_proj", lambda block: block.attention.output_dense),
    "ffn_gate": ("mlp.gate_proj", lambda block: block.feedforward_gate_dense),
    "ffn_up": ("mlp.up_proj", lambda block: block.feedforward_intermediate_dense),
    "ffn_down": ("mlp.down_proj", lambda block: block.feedforward_output_dense),
}
# keras_hub's and Hugging Face's names for the same layers, so either vocabulary works.
_ALIASES = {
    "query_dense": "query",
    "q_proj": "query",
    "key_dense": "key",
    "k_proj": "key",
    "value_dense": "value",
    "v_proj": "value",
    "output_dense": "attention_output",
    "o_proj": "attention_output",
    "feedforward_gate_dense": "ffn_gate",
    "gate_proj": "ffn_gate",
    "feedforward_intermediate_dense": "ffn_up",
    "up_proj": "ffn_up",
    "feedforward_output_dense": "ffn_down",
    "down_proj": "ffn_down",
}
_PEFT_PREFIX = "base_model.model.model.layers."


def _canonical_targets(target_names: Iterable[str] | None) -> tuple[str, ...]:
    names = DEFAULT_LORA_TARGETS if target_names is None else tuple(target_names)
    if isinstance(target_names, str):
        names = (target_names,)
    out = []
    for name in names:
        key = _ALIASES.get(name, name)
        if key not in _TARGETS:
            known = ", ".join(sorted(_TARGETS))
            raise ValueError(
                f"Unknown LoRA target {name!r}. Use one of {known} (or q_proj, v_proj, ...)."
            )
        if key not in out:
            out.append(key)
    return tuple(out)


def lora_layers(backbone) -> dict[str, Any]:
    """``"transformer_layer_3/query"`` -> that Dense, for every Dense with LoRA enabled.

    Example:
        >>> sorted(lora_layers(backbone))[:1]  # doctest: +SKIP
        ['transformer_layer_0/query']
    """
    found = {}
    for i, block in enumerate(backbone.transformer_layers):
        for key, (_, get) in _TARGETS.items():
            dense = get(block)
            if dense.lora_enabled:
                found[f"transformer_layer_{i}/{key}"] = dense
    return found


def enable_lora(
    backbone,
    rank: int,
    target_layer_names: Iterable[str] | None = None,
    lora_alpha: float | None = None,
) -> list[str]:
    """Freezes the backbone and adds rank-``rank`` adapters to the target projections.

    Args:
        backbone: a built `Llama3Backbone`.
        rank: the adapters' rank (4-16 is typical).
        target_layer_names: which projections (keras_hub's keyword); default
            ``("query", "value")``. Hugging Face
            (``"q_proj"``) and keras_hub (``"query_dense"``) names work too.
        lora_alpha: scale numerator (the update is ``alpha / rank * A @ B``); default ``rank``.

    Returns the names of the adapted layers.

    Example:
        >>> enable_lora(backbone, rank=4)  # doctest: +SKIP
        ['transformer_layer_0/query', 'transformer_layer_0/value', ...]
    """
    rank = int(rank)
    if rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank}.")
    targets = _canonical_targets(target_layer_names)
    if lora_layers(backbone):
        raise ValueError("LoRA is already enabled on this backbone; it can be enabled only once.")
    # Freeze everything (embeddings and norms included), then unfreeze only what LoRA adds.
    backbone.trainable = True  # the model itself must stay trainable for its sublayers to train
    for layer in backbone.layers:
        layer.trainable = False
    names = []
    for i, block in enumerate(backbone.transformer_layers):
        for key in targets:
            dense = _TARGETS[key][1](block)
            dense.trainable = True
            dense.enable_lora(rank, lora_alpha=lora_alpha)
            if dense.bias is not None:
                dense.bias.trainable = False  # LoRA trains the adapters only, not the biases
            names.append(f"transformer_layer_{i}/{key}")
    return names


def _peft_key(layer_name: str, which: str) -> str:
    block, key = layer_name.split("/")
    index = block.rsplit("_", 1)[1]
    return f"{_PEFT_PREFIX}{index}.{_TARGETS[key][0]}.lora_{which}.weight"


def _adapters(backbone) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int, float]:
    """``{layer name: (A, B)}`` in Keras layout (float32), with the one rank and alpha."""
    import keras

    layers = lora_layers(backbone)
    if not layers:
        raise ValueError(
            "LoRA is not enabled on this backbone: call backbone.enable_lora(rank) first."
        )
    ranks = {dense.lora_rank for dense in layers.values()}
    alphas = {float(dense.lora_alpha) for dense in layers.values()}
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError("All LoRA layers must share one rank and alpha to be saved.")
    arrays = {
        name: tuple(
            keras.ops.convert_to_numpy(w).astype(np.float32)
            for w in (dense.lora_kernel_a, dense.lora_kernel_b)
        )
        for name, dense in layers.items()
    }
    return arrays, ranks.pop(), alphas.pop()


def _is_keras_file(path: str | os.PathLike) -> bool:
    return str(path).endswith(LORA_H5_SUFFIX)


def save_lora_weights(
    backbone, path: str | os.PathLike, base_model_name_or_path: str | None = None
) -> Path:
    """Writes the adapters: one ``.lora.h5`` file when ``path`` ends so (keras_hub's name and
    file form), else a PEFT LoRA folder (``adapter_config.json``, ``adapter_model.safetensors``)
    that `peft.PeftModel.from_pretrained` reads too.

    Example:
        >>> save_lora_weights(model.backbone, "my-adapter")  # doctest: +SKIP
        >>> save_lora_weights(model.backbone, "my-adapter.lora.h5")  # doctest: +SKIP
    """
    from safetensors.numpy import save_file

    arrays, rank, alpha = _adapters(backbone)
    if _is_keras_file(path):
        return _save_h5(Path(path), arrays, rank, alpha)
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (a, b) in arrays.items():
        # Keras: x @ A[in, r] @ B[r, out]; torch Linear stores [out, in], so PEFT's A is A.T.
        tensors[_peft_key(name, "A")] = np.ascontiguousarray(a.T)
        tensors[_peft_key(name, "B")] = np.ascontiguousarray(b.T)
    save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    targets = sorted({_TARGETS[name.split("/")[1]][0].split(".")[1] for name in arrays})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path,
    }
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory


def _save_h5(path: Path, arrays, rank: int, alpha: float) -> Path:
    """keras_hub's file form: ``lora/vars/rank`` and one group of ``lora_kernel_a/b`` per
    adapted layer (named here by layer, since the kernels' layouts are this model's)."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with h5py.File(partial, "w") as file:
        file["lora/vars/rank"] = rank
        file["lora/vars/lora_alpha"] = alpha
        for name, (a, b) in arrays.items():
            file[f"lora/{name}/vars/lora_kernel_a"] = a
            file[f"lora/{name}/vars/lora_kernel_b"] = b
    os.replace(partial, path)  # never a half-written adapter file under the user's name
    return path


def _load_h5(path: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int, float]:
    import h5py

    try:
        with h5py.File(path, "r") as file:
            lora = file["lora"]
            rank = int(lora["vars/rank"][()])
            alpha = float(lora["vars/lora_alpha"][()]) if "lora_alpha" in lora["vars"] else rank
            arrays = {}
            for block in lora:
                if block == "vars":
                    continue
                for key in lora[block]:
                    group = lora[f"{block}/{key}/vars"]
                    arrays[f"{block}/{key}"] = (
                        group["lora_kernel_a"][()],
                        group["lora_kernel_b"][()],
                    )
    except (OSError, KeyError) as error:
        raise ValueError(
            f"{path}: not a LoRA file written by save_lora_weights ({error})."
        ) from None
    return arrays, rank, alpha


def load_lora_weights(backbone, path: str | os.PathLike) -> list[str]:
    """Loads adapters from a ``.lora.h5`` file or a PEFT LoRA folder written by
    `save_lora_weights` (or by PEFT for q/k/v/o/MLP).

    Enables LoRA with the saved rank, alpha and targets when the backbone has none yet;
    otherwise the adapters must match the ones enabled.

    Example:
        >>> load_lora_weights(model.backbone, "my-adapter")  # doctest: +SKIP
    """
    if _is_keras_file(path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such LoRA file (write it with save_lora_weights).")
        arrays, rank, alpha = _load_h5(Path(path))
        targets = tuple(dict.fromkeys(name.split("/")[1] for name in arrays))
        return _assign(backbone, arrays, rank, alpha, targets, Path(path))
    from safetensors.numpy import load_file

    directory = Path(path)
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    for file in (config_path, weights_path):
        if not file.exists():
            raise FileNotFoundError(
                f"{file}: missing. A LoRA folder holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} "
                f"(written by save_lora_weights or PEFT); a keras_hub-style file ends in "
                f"{LORA_H5_SUFFIX}."
            )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    tensors = load_file(str(weights_path))
    targets = _canonical_targets(config.get("target_modules") or DEFAULT_LORA_TARGETS)
    rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    # PEFT may save keys with the adapter name (".lora_A.default.weight"); accept both.
    tensors = {key.replace(".default.weight", ".weight"): value for key, value in tensors.items()}
    arrays = {}
    for i in range(len(backbone.transformer_layers)):
        for key in targets:
            name = f"transformer_layer_{i}/{key}"
            a, b = tensors.get(_peft_key(name, "A")), tensors.get(_peft_key(name, "B"))
            if a is not None and b is not None:
                arrays[name] = (a.T, b.T)
    expected = {_peft_key(name, which) for name in arrays for which in "AB"}
    if set(tensors) != expected or not arrays:
        extra = sorted(set(tensors) - expected)[:3]
        raise ValueError(
            f"{weights_path}: adapters do not match this backbone's layers for targets "
            f"{list(targets)} (unexpected {extra}). Enable LoRA with the same targets or load "
            "into a backbone without LoRA."
        )
    return _assign(backbone, arrays, rank, alpha, targets, weights_path)


def _assign(backbone, arrays, rank: int, alpha: float, targets, source: Path) -> list[str]:
    """Puts saved adapters into the backbone, enabling LoRA first if it has none."""
    layers = lora_layers(backbone)
    if not layers:
        enable_lora(backbone, rank, targets, lora_alpha=alpha)
        layers = lora_layers(backbone)
    if set(arrays) != set(layers):
        missing = sorted(set(layers) - set(arrays))[:3]
        extra = sorted(set(arrays) - set(layers))[:3]
        raise ValueError(
            f"{source}: adapters do not match the LoRA layers enabled on this backbone "
            f"(missing {missing}, unexpected {extra}). Enable LoRA with the same targets or load "
            "into a backbone without LoRA."
        )
    for name, dense in layers.items():
        a, b = arrays[name]
        if a.shape != tuple(dense.lora_kernel_a.shape) or b.shape != tuple(
            dense.lora_kernel_b.shape
        ):
            raise ValueError(
                f"{source}: {name} adapters have shapes {a.shape}, {b.shape}; this backbone "
                f"expects {tuple(dense.lora_kernel_a.shape)}, {tuple(dense.lora_kernel_b.shape)} "
                "(different rank or model size)."
            )
        if not np.isclose(float(dense.lora_alpha), alpha):
            raise ValueError(f"{source}: lora_alpha {alpha} != {dense.lora_alpha} enabled here.")
    for name, dense in layers.items():  # all checked first: a refused file changes nothing
        a, b = arrays[name]
        dense.lora_kernel_a.assign(a.astype(dense.lora_kernel_a.dtype))
        dense.lora_kernel_b.assign(b.astype(dense.lora_kernel_b.dtype))
    return sorted(layers)


def merge_lora_weights(backbone) -> list[str]:
    """Folds every adapter into its base kernel and zeroes the adapter's B matrix.

    The model computes the same function afterwards, at full speed of a plain Dense update, and
    LoRA stays enabled (from zero) so training can continue. Export already writes merged
    kernels, so merging is needed only to train a second adapter on top of the first.

    Example:
        >>> merge_lora_weights(model.backbone)  # doctest: +SKIP
    """
    from keras import ops

    merged = []
    for name, dense in lora_layers(backbone).items():
        base = next(v for v in dense.variables if v.name == "kernel")
        base.assign(ops.cast(dense.kernel, base.dtype))  # `kernel` is base + alpha/r * A @ B
        dense.lora_kernel_b.assign(ops.zeros(dense.lora_kernel_b.shape, dense.lora_kernel_b.dtype))
        merged.append(name)
    return merged
