"""A Llama backbone with its language-model head, preprocessor, and text in / text out methods."""

from __future__ import annotations

from typing import Any

import keras

from kerasllm_widget.checkpoints.export import export_preset
from kerasllm_widget.checkpoints.presets import load_checkpoint
from kerasllm_widget.checkpoints.upload import check_upload, upload_preset
from kerasllm_widget.generation import api as generation_api
from kerasllm_widget.generation.registry import engine_for
from kerasllm_widget.generation.samplers import get_sampler
from kerasllm_widget.models.llama3_backbone import Llama3Backbone
from kerasllm_widget.models.llama3_causal_lm_preprocessor import Llama3CausalLMPreprocessor
from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer
from kerasllm_widget.training.defaults import compile_arguments
from kerasllm_widget.training.trainer import prepare_inputs, prepare_validation_data
from kerasllm_widget.training.turns import forget_generation_cache, model_turns

# This task model is the one module of `models` that calls up, into `generation` and `training`:
# keras_hub's API puts `generate`, `stream` and `fit` on the model, so the model delegates to the
# layers that run it. Nothing in those layers (or below) imports this module back, so no cycle
# goes through it: pyproject.toml's import-linter contracts allow exactly these imports and
# forbid any import of this module from below.


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


@keras.saving.register_keras_serializable(package="kerasllm_widget")
class Llama3CausalLM(keras.Model):
    """Llama for text generation, with keras_hub's names: `backbone`, `preprocessor`, `generate`.

    ``model(x)`` with ``x = {"token_ids": int32[B, T], "padding_mask": bool[B, T]}`` returns
    logits ``[B, T, vocabulary_size]``.

    Example:
        >>> model = Llama3CausalLM.from_preset("smollm2-135m-instruct")  # doctest: +SKIP
        >>> model.generate("Hi there!", max_new_tokens=8)  # doctest: +SKIP
    """

    def __init__(
        self, backbone: Llama3Backbone, preprocessor=None, preset_name: str = "", **kwargs
    ):
        super().__init__(dtype=backbone.dtype_policy, **kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.preset_name = preset_name
        self.build()

    def build(self, input_shape=None):
        # The backbone builds its weights in its constructor and the head reuses them: the task
        # model is ready at once (Keras' `quantize` refuses models that are not built).
        self.built = True

    def call(self, inputs):
        hidden = self.backbone(inputs)
        return self.backbone.token_embedding(hidden, reverse=True)

    def call_with_cache(self, token_ids, cache, cache_index, positions, attention_mask):
        """One prefill or decode step over a static cache: returns ``(logits, new_cache)``."""
        hidden, cache, _ = self.backbone.forward_stack(
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
    def from_preset(
        cls, preset: str, dtype=None, load_weights: bool = True, **kwargs
    ) -> Llama3CausalLM:
        """Loads backbone, tokenizer and preprocessor from one preset, converting on the fly.

        ``preset``: ``"hf://org/name[@revision]"``, a local Hugging Face folder, a ``.gguf`` file,
        or a built-in name (``"smollm2-135m-instruct"``, ``"llama-3.2-1b-instruct"``, ...).
        ``dtype``: "float32" (default), "bfloat16" or "float16".

        Example:
            >>> model = Llama3CausalLM.from_preset("hf://meta-llama/Llama-3.2-1B-Instruct",
            ...                                    dtype="bfloat16")  # doctest: +SKIP
        """
        ckpt = load_checkpoint(preset)
        try:
            # The tokenizer first: it is cheap and fails fast on a broken tokenizer file.
            tokenizer = Llama3Tokenizer.from_checkpoint(ckpt)
            backbone = Llama3Backbone.from_checkpoint(ckpt, dtype=dtype, load_weights=load_weights)
        finally:
            ckpt.close()
        preprocessor = Llama3CausalLMPreprocessor(tokenizer, **kwargs)
        return cls(backbone, preprocessor, preset_name=str(preset))

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            # The preprocessor is plain Python (tokenizer.json text included), not a Keras layer.
            "preprocessor": None if self.preprocessor is None else self.preprocessor.get_config(),
            "preset_name": self.preset_name,
        }

    @classmethod
    def from_config(cls, config):
        """Rebuilds the model (and its preprocessor) from `get_config`, as `keras.saving` does.

        Example:
            >>> clone = Llama3CausalLM.from_config(model.get_config())  # doctest: +SKIP
        """
        config = dict(config)
        backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
        preprocessor = config.pop("preprocessor", None)
        if preprocessor is not None:
            preprocessor = Llama3CausalLMPreprocessor.from_config(preprocessor)
        config.pop("dtype", None)  # the model takes its dtype policy from the backbone
        return cls(backbone, preprocessor, **config)

    # ----------------------------------------------------------------- training (Keras' trainer)
    def compile(
        self, optimizer="auto", loss="auto", *, weighted_metrics="auto", sampler=None, **kwargs
    ):
        """Keras ``compile`` with defaults for language modelling.

        ``"auto"``: AdamW (learning rate 5e-5, weight decay 0.01, none on norms and biases);
        sparse cross-entropy from logits averaged over the weighted tokens; next-token accuracy.
        ``sampler`` (as in keras_hub): the default sampler of `generate`/`stream`, a name
        (``"greedy"``, ``"top_k"``, ``"top_p"``, ``"random"``, ``"min_p"``) or a `Sampler`.

        Example:
            >>> model.compile(optimizer=keras.optimizers.AdamW(1e-4))  # doctest: +SKIP
        """
        if sampler is not None:
            self.sampler = sampler
        super().compile(**compile_arguments(optimizer, loss, weighted_metrics), **kwargs)

    def compile_from_config(self, config):
        """Re-compiles a model loaded from a ``.keras`` file with the optimizer, loss and metrics
        it was saved with (Keras skips this for models whose `compile` is overridden)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

    def _compile_if_needed(self) -> None:
        if not self.compiled:
            self.compile()

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        sample_weight=None,
        validation_data=None,
        shuffle=True,
        **kwargs,
    ):
        """Keras ``fit``, also on text: strings, conversations, or iterables of them.

        Text is preprocessed batch by batch into ``(x, labels, sample_weight)`` (loss on real
        tokens only; on the assistant's tokens for conversations). Compiles with the defaults
        if `compile` was not called.

        Example:
            >>> model.fit(["The sky is blue.", "Grass is green."], batch_size=2, epochs=3)  # doctest: +SKIP
        """
        self._compile_if_needed()
        validation_data = prepare_validation_data(self, validation_data, batch_size)
        x, y, batch_size, sample_weight = prepare_inputs(
            self, x, y, batch_size, sample_weight, shuffle=shuffle
        )
        # Chat replies wait while the weights change (see training.turns); the cache kept from
        # the last reply holds keys of the old weights, so it goes when training ends.
        with model_turns(self).training(on_end=lambda: forget_generation_cache(self)):
            return super().fit(
                x,
                y,
                batch_size=batch_size,
                epochs=epochs,
                sample_weight=sample_weight,
                validation_data=validation_data,
                shuffle=shuffle,
                **kwargs,
            )

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        """Keras ``evaluate``, also on text (see `fit`).

        Example:
            >>> model.evaluate(["The sky is blue."], return_dict=True)["loss"]  # doctest: +SKIP
        """
        self._compile_if_needed()
        x, y, batch_size, sample_weight = prepare_inputs(self, x, y, batch_size, sample_weight)
        return super().evaluate(x, y, batch_size=batch_size, sample_weight=sample_weight, **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        """Keras ``predict``, also on text: logits ``[N, T, vocabulary_size]`` of the
        preprocessed inputs (every batch padded to one length ``T``).

        Example:
            >>> model.predict(["Hello", "Hi!"]).shape  # doctest: +SKIP
            (2, 16, 128256)
        """
        x, _, batch_size, _ = prepare_inputs(self, x, None, batch_size, for_predict=True)
        return super().predict(x, batch_size=batch_size, **kwargs)

    # ----------------------------------------------------------------- saving and sharing
    def save_to_preset(self, preset_dir, dtype=None, max_shard_size="5GB") -> None:
        """Writes a Hugging Face model folder: ``config.json``, safetensors weights (sharded
        with an index when larger than ``max_shard_size``, LoRA merged in), tokenizer files
        with the chat template, and ``generation_config.json``. Both transformers'
        ``AutoModelForCausalLM.from_pretrained`` and `from_preset` load it.

        Example:
            >>> model.save_to_preset("my-llama")  # doctest: +SKIP
        """
        export_preset(
            self.backbone,
            preset_dir,
            tokenizer=self.tokenizer,
            dtype=dtype,
            max_shard_size=max_shard_size,
        )

    def upload_preset(
        self,
        uri: str,
        private: bool = False,
        commit_message: str | None = None,
        token: str | None = None,
        dtype=None,
    ) -> str:
        """Saves the model with `save_to_preset` and uploads it to ``"hf://user/repo"``.

        Returns the commit URL. Needs a token with write access (``HF_TOKEN`` or
        ``hf auth login``); the repo is created (``private`` or not) if it does not exist.

        Example:
            >>> model.upload_preset("hf://me/llama-3.2-1b-pirate", private=True)  # doctest: +SKIP
        """
        import tempfile

        check_upload(uri, token)  # fail before writing gigabytes when the upload cannot happen
        with tempfile.TemporaryDirectory(prefix="kerasllm-upload-") as folder:
            self.save_to_preset(folder, dtype=dtype)
            return upload_preset(
                uri, folder, private=private, commit_message=commit_message, token=token
            )

    # ----------------------------------------------------------------- generation (streaming engine)
    @property
    def sampler(self):
        """The default sampler of `generate`/`stream` (greedy unless `compile(sampler=...)` or an
        assignment changed it); a name (``"top_p"``) or a `Sampler` can be assigned.

        Example:
            >>> model.sampler = "top_k"  # doctest: +SKIP
        """
        return engine_for(self).sampler

    @sampler.setter
    def sampler(self, sampler) -> None:
        engine_for(self).sampler = get_sampler(sampler)

    def stream(self, prompt, **options):
        """Yields a `TokenEvent` per generated token, then one `DoneEvent` (stop reason, timings).

        ``prompt``: text, a conversation (list of ``{"role", "content"}``) or token ids.
        ``options``: ``max_new_tokens``, ``sampler``, ``temperature``, ``top_k``, ``top_p``,
        ``min_p``, ``repetition_penalty``, ``seed``, ``stop_token_ids`` (besides the
        checkpoint's), ``stop_strings``, ``top_k_alternatives``, ``cancel_event``.

        Example:
            >>> for event in model.stream("Hi there!", max_new_tokens=16):  # doctest: +SKIP
            ...     print(getattr(event, "text", ""), end="")
        """
        return generation_api.stream(self, prompt, **options)

    def generate(self, inputs, max_new_tokens=None, max_length=None, sampler=None, **options):
        """keras_hub's ``generate``: a string, a list of strings (batched) or preprocessed
        ``{"token_ids", "padding_mask"}``, continued by the model. Strings come back as the
        prompt followed by the reply (``strip_prompt=True``: the reply only); ``max_length``
        counts the prompt, ``max_new_tokens`` does not. Other options as in `stream`.

        Example:
            >>> model.generate("Hi there!", max_new_tokens=16)  # doctest: +SKIP
        """
        return generation_api.generate(
            self,
            inputs,
            max_new_tokens=max_new_tokens,
            max_length=max_length,
            sampler=sampler,
            **options,
        )
