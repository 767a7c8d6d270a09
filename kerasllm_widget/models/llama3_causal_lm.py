"""A Llama backbone with its language-model head, preprocessor, and text in / text out methods."""

from __future__ import annotations

from typing import Any

import keras

from kerasllm_widget.models.llama3_backbone import Llama3Backbone


def _device_description() -> str:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        count = len(jax.devices())
        kind = getattr(device, "device_kind", device.platform)
        return f"{count}x {kind}" if count > 1 else str(kind)
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return "cpu"


class Llama3CausalLM(keras.Model):
    """Llama for text generation, with keras_hub's names: `backbone`, `preprocessor`, `generate`.

    ``model(x)`` with ``x = {"token_ids": int32[B, T], "padding_mask": bool[B, T]}`` returns
    logits ``[B, T, vocabulary_size]``.

    Example:
        >>> model = Llama3CausalLM.from_preset("smollm2-135m-instruct")  # doctest: +SKIP
        >>> model.generate("Hi there!", max_new_tokens=8)  # doctest: +SKIP
    """

    def __init__(self, backbone: Llama3Backbone, preprocessor=None, preset_name: str = "", **kwargs):
        super().__init__(dtype=backbone.dtype_policy, **kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.preset_name = preset_name

    def call(self, inputs):
        hidden = self.backbone(inputs)
        return self.backbone.token_embedding(hidden, reverse=True)

    def call_with_cache(self, token_ids, cache, cache_index, positions, attention_mask):
        """One prefill or decode step over a static cache: returns ``(logits, new_cache)``."""
        hidden, cache, _ = self.backbone.forward(
            token_ids,
            positions=positions,
            attention_mask=attention_mask,
            cache=cache,
            cache_index=cache_index,
        )
        return self.backbone.token_embedding(hidden, reverse=True), cache

    @property
    def tokenizer(self):
        return None if self.preprocessor is None else self.preprocessor.tokenizer

    @property
    def info(self) -> dict[str, Any]:
        """What the chat status line shows: model name, dtype, backend, device, context length."""
        return {
            "name": self.preset_name or self.name,
            "dtype": self.backbone.dtype_policy.name,
            "backend": keras.backend.backend(),
            "device": _device_description(),
            "context_length": int(self.backbone.max_sequence_length),
            "parameters": int(self.backbone.count_params()),
        }

    @classmethod
    def from_preset(cls, preset: str, dtype=None, load_weights: bool = True, **kwargs) -> Llama3CausalLM:
        """Loads backbone, tokenizer and preprocessor from one preset, converting on the fly.

        ``preset``: ``"hf://org/name[@revision]"``, a local Hugging Face folder, a ``.gguf`` file,
        or a built-in name (``"smollm2-135m-instruct"``, ``"llama-3.2-1b-instruct"``, ...).
        ``dtype``: "float32" (default), "bfloat16" or "float16".

        Example:
            >>> model = Llama3CausalLM.from_preset("hf://meta-llama/Llama-3.2-1B-Instruct",
            ...                                    dtype="bfloat16")  # doctest: +SKIP
        """
        from kerasllm_widget.checkpoints.convert import backbone_from_checkpoint
        from kerasllm_widget.checkpoints.presets import load_checkpoint
        from kerasllm_widget.models.llama3_causal_lm_preprocessor import Llama3CausalLMPreprocessor
        from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer

        ckpt = load_checkpoint(preset)
        try:
            # The tokenizer first: it is cheap and fails fast on a broken tokenizer file.
            tokenizer = Llama3Tokenizer.from_checkpoint(ckpt)
            backbone = backbone_from_checkpoint(ckpt, dtype=dtype, load_weights=load_weights)
        finally:
            ckpt.close()
        preprocessor = Llama3CausalLMPreprocessor(tokenizer, **kwargs)
        return cls(backbone, preprocessor, preset_name=str(preset))

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "preprocessor": None,
            "preset_name": self.preset_name,
        }
