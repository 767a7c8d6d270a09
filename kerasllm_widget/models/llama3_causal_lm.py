"""A Llama backbone with its language-model head, preprocessor, and text in / text out methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras

from kerasllm_widget.checkpoints.checkpoint import sampling_generation_config
from kerasllm_widget.checkpoints.export import DEFAULT_MAX_SHARD_SIZE, export_preset
from kerasllm_widget.checkpoints.model_card import CARD_FILE, model_card_text
from kerasllm_widget.checkpoints.presets import load_checkpoint
from kerasllm_widget.checkpoints.upload import check_upload, upload_preset
from kerasllm_widget.generation import api as generation_api
from kerasllm_widget.generation import batch_generate
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
        self,
        backbone: Llama3Backbone,
        preprocessor=None,
        preset_name: str = "",
        generation_config: dict[str, Any] | None = None,
        card: dict[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__(dtype=backbone.dtype_policy, **kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.preset_name = preset_name
        # The checkpoint's sampling defaults (generation_config.json's do_sample, temperature,
        # top_p, top_k, ...): the chat panel starts from them and save_to_preset writes them back.
        self.generation_config = sampling_generation_config(generation_config)
        # What the source checkpoint's card says (licence, ...) and its Hub repo ("base_model"):
        # the card of a model saved from this one names them.
        self.card = dict(card or {})
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

        ``preset``: ``"hf://org/name[@revision]"`` or a bare ``"org/name"`` (a Hub repo id that
        is not a local path), a local Hugging Face folder, a ``.gguf`` file, a built-in name
        (``"smollm2-135m-instruct"``, ``"llama-3.2-1b-instruct"``, ...) or one of keras_hub's
        Llama 3 preset names (``"llama3.2_instruct_1b"``, ...), read from its Hub repo.
        ``dtype``: "float32", "bfloat16", "float16", or a mixed policy ("mixed_bfloat16": float32
        variables, bfloat16 compute); None follows ``keras.config.dtype_policy()`` as keras_hub
        does (float32 unless set).

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
        # keras_hub's `from_preset(..., preprocessor=None)`: a model fed token ids only.
        if "preprocessor" in kwargs:
            preprocessor = kwargs.pop("preprocessor")
            if kwargs:
                raise TypeError(
                    f"from_preset() got preprocessor=... and preprocessor options {sorted(kwargs)}"
                    "; pass one or the other."
                )
        else:
            preprocessor = Llama3CausalLMPreprocessor(tokenizer, **kwargs)
        return cls(
            backbone,
            preprocessor,
            preset_name=str(preset),
            generation_config=ckpt.generation_config,
            card={**ckpt.card, **({"base_model": ckpt.hub_repo} if ckpt.hub_repo else {})},
        )

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            # The preprocessor is plain Python (tokenizer.json text included), not a Keras layer.
            "preprocessor": None if self.preprocessor is None else self.preprocessor.get_config(),
            "preset_name": self.preset_name,
            "generation_config": dict(self.generation_config),
            "card": dict(self.card),
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
        self, optimizer="auto", loss="auto", *, weighted_metrics="auto", sampler="top_k", **kwargs
    ):
        """Keras ``compile`` with defaults for language modelling.

        ``"auto"``: AdamW (learning rate 5e-5, weight decay 0.01, none on norms and biases);
        sparse cross-entropy from logits averaged over the weighted tokens; next-token accuracy.
        ``sampler`` (keras_hub's, and its default ``"top_k"``): the default sampler of
        `generate`/`stream`, a name (``"greedy"``, ``"top_k"``, ``"top_p"``, ``"random"``,
        ``"min_p"``), a keras_hub sampler object or config, or a `Sampler`.

        Example:
            >>> model.compile(optimizer=keras.optimizers.AdamW(1e-4))  # doctest: +SKIP
        """
        self.sampler = sampler
        super().compile(**compile_arguments(optimizer, loss, weighted_metrics), **kwargs)

    def compile_from_config(self, config):
        """Re-compiles a model loaded from a ``.keras`` file with the optimizer, loss and metrics
        it was saved with (Keras skips this for models whose `compile` is overridden)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**{"sampler": self.sampler, **config})
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

    def _compile_if_needed(self) -> None:
        # Training's own compile keeps the sampler: only the user's `compile` changes it.
        if not self.compiled:
            self.compile(sampler=self.sampler)

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
        when larger than ``max_shard_size``: gigabytes as a number, as in keras_hub, or a string
        like ``"500MB"``; LoRA merged in), tokenizer files with the chat template,
        ``generation_config.json`` (stop ids and the sampling defaults) and, unless the folder
        has one, a model card ``README.md`` (licence and base model carried from the source).
        Both transformers' ``AutoModelForCausalLM.from_pretrained`` and `from_preset` load it.

        Example:
            >>> model.save_to_preset("my-llama")  # doctest: +SKIP
        """
        self._save(preset_dir, dtype, max_shard_size)

    def _save(self, preset_dir, dtype, max_shard_size, repo_id: str | None = None) -> None:
        has_card = (Path(preset_dir) / CARD_FILE).exists()
        name = repo_id or Path(preset_dir).resolve().name
        export_preset(
            self.backbone,
            preset_dir,
            tokenizer=self.tokenizer,
            dtype=dtype,
            max_shard_size=max_shard_size,
            generation_config=self.generation_config,
            model_card=None
            if has_card
            else model_card_text(self.card, self.card.get("base_model"), name, repo_id),
        )

    def upload_preset(
        self,
        uri: str,
        private: bool = False,
        commit_message: str | None = None,
        token: str | None = None,
        dtype=None,
    ) -> str:
        """Saves the model with `save_to_preset` (model card included) and uploads it to
        ``"hf://user/repo"``.

        Returns the commit URL. Needs a token with write access (``HF_TOKEN``,
        ``hf auth login`` or ``huggingface_hub.notebook_login()``); the repo is created
        (``private`` or not) if it does not exist.

        Example:
            >>> model.upload_preset("hf://me/llama-3.2-1b-pirate", private=True)  # doctest: +SKIP
        """
        import tempfile

        repo_id, _, _ = check_upload(uri, token)  # fail before writing gigabytes
        with tempfile.TemporaryDirectory(prefix="kerasllm-upload-") as folder:
            self._save(folder, dtype, DEFAULT_MAX_SHARD_SIZE, repo_id=repo_id)
            return upload_preset(
                uri, folder, private=private, commit_message=commit_message, token=token
            )

    # ----------------------------------------------------------------- generation (streaming engine)
    @property
    def sampler(self):
        """The default sampler of `generate`/`stream`: greedy until `compile` (keras_hub's
        default ``"top_k"``, or its ``sampler=``) or an assignment changes it; a name
        (``"top_p"``), a keras_hub sampler or a `Sampler` can be assigned.

        Example:
            >>> model.sampler = "top_k"  # doctest: +SKIP
        """
        return engine_for(self).sampler

    @sampler.setter
    def sampler(self, sampler) -> None:
        engine_for(self).sampler = get_sampler(sampler)

    def stream(self, prompt, **options):
        """Yields a `TokenEvent` per generated token, then one `DoneEvent` (stop reason, the
        whole reply as ``reply``, timings). Every event's ``text`` is the new text it adds (the
        `DoneEvent`'s is empty), so printing each ``event.text`` prints the reply once.

        ``prompt``: text, a conversation (list of ``{"role", "content"}``) or token ids.
        ``options``: ``max_new_tokens``, ``sampler``, ``temperature``, ``top_k``, ``top_p``,
        ``min_p``, ``repetition_penalty``, ``seed``, ``stop_token_ids`` (as in `generate`),
        ``stop_strings``, ``top_k_alternatives``, ``cancel_event``.

        Example:
            >>> for event in model.stream("Hi there!", max_new_tokens=16):  # doctest: +SKIP
            ...     print(event.text, end="")
        """
        return generation_api.stream(self, prompt, **options)

    def generate(
        self,
        inputs,
        max_length=None,
        stop_token_ids="auto",
        strip_prompt=False,
        *,
        max_new_tokens=None,
        sampler=None,
        **options,
    ):
        """keras_hub's ``generate``: a string, a list of strings (batched) or preprocessed
        ``{"token_ids", "padding_mask"}``, continued by the model. Strings come back as the
        prompt followed by the reply (``strip_prompt=True``: the reply only).

        ``max_length`` counts the prompt too (default: the preprocessor's ``sequence_length``);
        ``stop_token_ids``: ``"auto"`` (the checkpoint's stop tokens), ``None`` (none) or the
        ids to stop on. Keyword-only extras: ``max_new_tokens`` (new tokens only), ``sampler``
        and the other options of `stream`.

        Example:
            >>> model.generate("Hi there!", max_length=64)  # doctest: +SKIP
        """
        return batch_generate.generate(
            self,
            inputs,
            max_length,
            stop_token_ids,
            strip_prompt,
            max_new_tokens=max_new_tokens,
            sampler=sampler,
            **options,
        )
