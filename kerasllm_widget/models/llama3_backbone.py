"""The Llama transformer stack: token embedding, decoder blocks, final norm."""

from __future__ import annotations

import jax
import keras
import numpy as np
from keras import ops

from kerasllm_widget.checkpoints.checkpoint import Checkpoint
from kerasllm_widget.checkpoints.convert import (
    backbone_kwargs_from_hf_config,
    load_backbone_weights,
    resolve_dtype_policy,
)
from kerasllm_widget.checkpoints.export import export_preset
from kerasllm_widget.checkpoints.presets import load_checkpoint
from kerasllm_widget.distribution import llama3_layout_map
from kerasllm_widget.models import llama3_lora
from kerasllm_widget.models.llama3_decoder import Llama3TransformerDecoder
from kerasllm_widget.models.llama3_forward import Hooks, forward
from kerasllm_widget.models.placeholder_initializer import PlaceholderInitializer
from kerasllm_widget.models.reversible_embedding import ReversibleEmbedding
from kerasllm_widget.models.rms_normalization import RMSNormalization
from kerasllm_widget.models.rotary_embedding import rope_inverse_frequencies


def _is_concrete(x) -> bool:
    """Whether ``x`` holds values that can be read now (not a tracer or symbolic tensor)."""
    if isinstance(x, (np.ndarray, list, tuple)):
        return True
    if keras.backend.backend() == "jax":
        return not isinstance(x, jax.core.Tracer)
    return not isinstance(x, keras.KerasTensor)


def causal_attention_mask(padding_mask):
    """``[B, T] bool -> [B, T, T] bool``: query t sees real keys s <= t."""
    length = ops.shape(padding_mask)[1]
    causal = ops.arange(length)[:, None] >= ops.arange(length)[None, :]
    return ops.logical_and(causal[None], ops.cast(padding_mask, "bool")[:, None, :])


def positions_from_padding_mask(padding_mask):
    """RoPE positions counting real tokens only, so left- and right-padded batches both work."""
    counts = ops.cumsum(ops.cast(padding_mask, "int32"), axis=1) - 1
    return ops.maximum(counts, 0)


@keras.saving.register_keras_serializable(package="kerasllm_widget")
class Llama3Backbone(keras.Model):
    """Llama 2/3/3.1/3.2, SmolLM2 and TinyLlama: every Hugging Face ``model_type: "llama"``.

    ``backbone({"token_ids": int[B, T], "padding_mask": bool[B, T]})`` returns the final hidden
    states ``[B, T, hidden_dim]``, as keras_hub's backbones do.

    Example:
        >>> import numpy as np
        >>> backbone = Llama3Backbone(vocabulary_size=32, num_layers=2, num_query_heads=4,
        ...     num_key_value_heads=2, hidden_dim=16, intermediate_dim=32)
        >>> x = {"token_ids": np.array([[1, 2, 3]]), "padding_mask": np.array([[1, 1, 1]], bool)}
        >>> backbone(x).shape
        (1, 3, 16)

    ``placeholder_weights=True`` leaves the weights unwritten for a checkpoint to fill (as
    `from_preset` does); such a backbone must be loaded before it is used.
    """

    def __init__(
        self,
        vocabulary_size: int,
        num_layers: int,
        num_query_heads: int,
        hidden_dim: int,
        intermediate_dim: int,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        rope_max_wavelength: float = 10000.0,
        rope_scaling: dict | None = None,
        layer_norm_epsilon: float = 1e-5,
        tie_word_embeddings: bool = False,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        max_sequence_length: int = 8192,
        initializer_range: float = 0.02,
        dtype=None,
        placeholder_weights: bool = False,
        **kwargs,
    ):
        super().__init__(dtype=dtype, **kwargs)
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads or num_query_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.head_dim = head_dim or hidden_dim // num_query_heads
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling = dict(rope_scaling) if rope_scaling else None
        self.layer_norm_epsilon = layer_norm_epsilon
        self.tie_word_embeddings = tie_word_embeddings
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.max_sequence_length = max_sequence_length
        self.initializer_range = initializer_range
        if num_query_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_query_heads ({num_query_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads})."
            )

        # placeholder_weights: a checkpoint is about to overwrite every weight, so the projections
        # and embeddings get memory that is neither written nor (on JAX's CPU) even touched;
        # random normals for every weight take longer than reading the checkpoint.
        if placeholder_weights:
            initializer = PlaceholderInitializer()
        elif initializer_range > 0:
            initializer = keras.initializers.RandomNormal(stddev=initializer_range)
        else:
            initializer = keras.initializers.Zeros()
        policy = self.dtype_policy
        self.inverse_frequencies = rope_inverse_frequencies(
            self.head_dim, rope_max_wavelength, self.rope_scaling
        )
        self.token_embedding = ReversibleEmbedding(
            vocabulary_size,
            hidden_dim,
            tie_weights=tie_word_embeddings,
            embeddings_initializer=initializer,
            dtype=policy,
            name="token_embedding",
        )
        self.transformer_layers = [
            Llama3TransformerDecoder(
                hidden_dim=hidden_dim,
                intermediate_dim=intermediate_dim,
                num_query_heads=num_query_heads,
                num_key_value_heads=self.num_key_value_heads,
                head_dim=self.head_dim,
                inverse_frequencies=self.inverse_frequencies,
                layer_norm_epsilon=layer_norm_epsilon,
                attention_bias=attention_bias,
                mlp_bias=mlp_bias,
                kernel_initializer=initializer,
                dtype=policy,
                name=f"transformer_layer_{i}",
            )
            for i in range(num_layers)
        ]
        self.layer_norm = RMSNormalization(
            layer_norm_epsilon, dtype=policy, name="sequence_output_layernorm"
        )
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        hidden_shape = (None, None, self.hidden_dim)
        self.token_embedding.build((None, None))
        for layer in self.transformer_layers:
            layer.build(hidden_shape)
        self.layer_norm.build(hidden_shape)
        self.built = True

    def call(self, inputs):
        token_ids, padding_mask = self.check_inputs(inputs)
        hidden, _, _ = self.forward_stack(token_ids, padding_mask=padding_mask)
        return hidden

    def check_inputs(self, inputs):
        """``(token_ids, padding_mask)`` of ``inputs``, refused with the fix when they are not
        ``{"token_ids": int[B, T], "padding_mask": bool[B, T]}`` or, when the ids are concrete
        (not traced), hold an id outside the vocabulary (XLA would clamp it, or give NaN)."""
        if not isinstance(inputs, dict) or "token_ids" not in inputs:
            kind = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(
                f"The model takes {{'token_ids': [batch, length], 'padding_mask': [batch, "
                f"length]}}, got {kind}: make it with model.preprocessor(['some text'])[0]."
            )
        token_ids = inputs["token_ids"]
        padding_mask = inputs.get("padding_mask")
        shape = tuple(token_ids.shape)
        if len(shape) != 2:
            raise ValueError(
                f"token_ids has shape {shape}; the model takes a batch [batch, length]. "
                "Preprocess a list (model.preprocessor(['Hello'])) or add the batch axis "
                "(x['token_ids'][None])."
            )
        if not _is_concrete(token_ids):  # traced (jit, fit): shapes checked, values unknown
            return token_ids, padding_mask
        ids = keras.ops.convert_to_numpy(token_ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocabulary_size):
            bad = ids[(ids < 0) | (ids >= self.vocabulary_size)].reshape(-1)[0]
            raise ValueError(
                f"token_ids holds {int(bad)}, outside the vocabulary: ids run from 0 to "
                f"{self.vocabulary_size - 1}. Check the tokenizer matches this model."
            )
        return token_ids, padding_mask

    def forward_stack(
        self,
        token_ids,
        padding_mask=None,
        positions=None,
        attention_mask=None,
        cache=None,
        cache_index=None,
        attention_layers=(),
    ):
        """The whole stack (`llama3_forward.forward` over this backbone's weights), with the
        knobs generation and inspection need.

        Args:
            token_ids: ``[B, T]`` ints.
            padding_mask: ``[B, T]`` bool; gives positions and the causal mask when those are None.
            positions: ``[B, T]`` RoPE positions.
            attention_mask: ``[B, T, S]`` bool (S = cache length when a cache is given).
            cache: a list of ``(keys, values)`` per layer from `init_cache`, or None.
            cache_index: where these T tokens are written into the cache.
            attention_layers: indices of the layers whose attention probabilities to return; those
                layers take the explicit-softmax path, the others stay fused.

        Returns:
            ``(hidden [B, T, hidden_dim], new_cache or None, {layer: probabilities [B, H, T, S]})``.
        """
        if padding_mask is None:
            padding_mask = ops.ones(ops.shape(token_ids), dtype="bool")
        if positions is None:
            positions = positions_from_padding_mask(padding_mask)
        if attention_mask is None:
            attention_mask = causal_attention_mask(padding_mask)
        names = [f"layers.{i}.attention.probs" for i in attention_layers]
        hooks = Hooks(capture=names)
        hidden, new_cache = forward(
            self,
            token_ids,
            positions=positions,
            attention_mask=attention_mask,
            cache=cache,
            cache_index=cache_index,
            hooks=hooks,
        )
        probabilities = {
            i: hooks.captured[name] for i, name in zip(attention_layers, names, strict=True)
        }
        return hidden, new_cache, probabilities

    def init_cache(self, batch_size: int, length: int, dtype=None):
        """Zeroed key/value cache: a list of ``(keys, values)`` ``[B, length, kv_heads, head_dim]``."""
        shape = (batch_size, length, self.num_key_value_heads, self.head_dim)
        dtype = dtype or self.compute_dtype
        return [(ops.zeros(shape, dtype), ops.zeros(shape, dtype)) for _ in range(self.num_layers)]

    @classmethod
    def from_preset(cls, preset: str, dtype=None, load_weights: bool = True) -> Llama3Backbone:
        """Builds the backbone described by a preset and loads its weights.

        ``preset`` is ``"hf://org/name[@revision]"``, a local Hugging Face folder, a ``.gguf``
        file, or a built-in name such as ``"smollm2-135m-instruct"``.

        Example:
            >>> backbone = Llama3Backbone.from_preset("smollm2-135m-instruct")  # doctest: +SKIP
        """
        ckpt = load_checkpoint(preset)
        try:
            return cls.from_checkpoint(ckpt, dtype=dtype, load_weights=load_weights)
        finally:
            ckpt.close()

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, dtype=None, load_weights: bool = True, progress: bool = True
    ) -> Llama3Backbone:
        """Builds the backbone a `Checkpoint` describes and loads its weights into it.

        The model runs the checkpoint package's two converters (config, then weights) on itself:
        `kerasllm_widget.checkpoints` never imports a model class, so the dependency points one
        way, models -> checkpoints (keras_hub's converters are likewise handed what they fill).

        Example:
            >>> backbone = Llama3Backbone.from_checkpoint(load_checkpoint("smollm2-135m-instruct"))  # doctest: +SKIP
        """
        dtype = resolve_dtype_policy(dtype)
        config = backbone_kwargs_from_hf_config(
            checkpoint.config, source=f"{checkpoint.source}/config.json"
        )
        # Every weight is overwritten: no random numbers, no zeros, no memory until it is filled.
        backbone = cls(**config, dtype=dtype, placeholder_weights=load_weights)
        if load_weights:
            load_backbone_weights(
                backbone, checkpoint, progress=progress, release_placeholders=True
            )
        return backbone

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_query_heads": self.num_query_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "head_dim": self.head_dim,
            "rope_max_wavelength": self.rope_max_wavelength,
            "rope_scaling": self.rope_scaling,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "max_sequence_length": self.max_sequence_length,
            "initializer_range": self.initializer_range,
        }

    # ----------------------------------------------------------------- LoRA, distribution, export
    def enable_lora(
        self,
        rank: int,
        target_layer_names=None,
        lora_alpha: float | None = None,
        *,
        target_names=None,
    ) -> list[str]:
        """Freezes every weight and adds rank-``rank`` LoRA adapters (Keras ``Dense.enable_lora``)
        to the query and value projections, or to ``target_layer_names`` (keras_hub's keyword;
        ``target_names`` is the same).

        Example:
            >>> backbone.enable_lora(4)  # doctest: +SKIP
            >>> [w.path for w in backbone.trainable_weights][:1]  # doctest: +SKIP
            ['llama3_backbone/transformer_layer_0/attention/query/lora_kernel_a']
        """
        if target_names is not None and target_layer_names is not None:
            raise TypeError(
                "enable_lora() got both target_layer_names and target_names (the same "
                f"setting): {target_layer_names!r}, {target_names!r}. Pass one."
            )
        targets = target_layer_names if target_layer_names is not None else target_names
        return llama3_lora.enable_lora(self, rank, targets, lora_alpha=lora_alpha)

    def save_lora_weights(self, filepath) -> None:
        """Writes the LoRA adapters: one file when ``filepath`` ends in ``.lora.h5`` (keras_hub's
        name), else a PEFT folder (``adapter_config.json``, ``adapter_model.safetensors``).

        Example:
            >>> backbone.save_lora_weights("my-adapter.lora.h5")  # doctest: +SKIP
        """
        llama3_lora.save_lora_weights(self, filepath)

    def load_lora_weights(self, filepath) -> None:
        """Loads adapters saved by `save_lora_weights` (a ``.lora.h5`` file or a PEFT folder),
        enabling LoRA first if needed.

        Example:
            >>> backbone.load_lora_weights("my-adapter.lora.h5")  # doctest: +SKIP
        """
        llama3_lora.load_lora_weights(self, filepath)

    def merge_lora_weights(self) -> None:
        """Folds the adapters into the base kernels (same outputs; LoRA restarts from zero).

        Example:
            >>> backbone.merge_lora_weights()  # doctest: +SKIP
        """
        llama3_lora.merge_lora_weights(self)

    @staticmethod
    def get_layout_map(
        device_mesh,
        model_parallel_dim_name: str = "model",
        data_parallel_dim_name: str | None = "batch",
        shard_weights_over_batch: bool = False,
    ):
        """A `keras.distribution.LayoutMap` sharding this model over a ("batch", "model") mesh:
        weights split over "model" (and sliced over "batch" too with
        ``shard_weights_over_batch=True``, FSDP-style), the batch over "batch".

        Example:
            >>> mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"),
            ...                                      keras.distribution.list_devices())  # doctest: +SKIP
            >>> distribution = keras.distribution.ModelParallel(
            ...     layout_map=Llama3Backbone.get_layout_map(mesh), batch_dim_name="batch")  # doctest: +SKIP
        """
        return llama3_layout_map(
            device_mesh, model_parallel_dim_name, data_parallel_dim_name, shard_weights_over_batch
        )

    def save_to_preset(self, preset_dir, dtype=None, max_shard_size="5GB") -> None:
        """Writes ``config.json`` and safetensors weights in Hugging Face layout (LoRA merged).

        Example:
            >>> backbone.save_to_preset("my-backbone")  # doctest: +SKIP
        """
        export_preset(self, preset_dir, dtype=dtype, max_shard_size=max_shard_size)
