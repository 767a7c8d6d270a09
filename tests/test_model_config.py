"""Every layer of the model rebuilds from its config, and the task model survives a .keras file."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import keras
import numpy as np
import pytest
from tiny_llama import tiny_causal_lm

import kerasllm_widget.models
from kerasllm_widget.models.llama3_attention import Llama3Attention
from kerasllm_widget.models.llama3_backbone import Llama3Backbone
from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM
from kerasllm_widget.models.llama3_decoder import Llama3TransformerDecoder
from kerasllm_widget.models.reversible_embedding import ReversibleEmbedding
from kerasllm_widget.models.rms_normalization import RMSNormalization


@pytest.fixture(scope="module")
def model():
    # Biases on and a non-default initializer, so that leaving either out of a config shows.
    return tiny_causal_lm(seed=3, attention_bias=True, mlp_bias=True, tie_word_embeddings=False)


def layers_of(backbone) -> dict[type, keras.layers.Layer]:
    """One instance of each layer class the backbone is made of, and the backbone itself."""
    block = backbone.transformer_layers[0]
    found = {
        Llama3Backbone: backbone,
        Llama3TransformerDecoder: block,
        Llama3Attention: block.attention,
        RMSNormalization: block.attention_norm,
        ReversibleEmbedding: backbone.token_embedding,
    }
    assert all(isinstance(layer, cls) for cls, layer in found.items())
    return found


def test_every_model_layer_class_is_covered(model):
    classes = set()
    for info in pkgutil.iter_modules(kerasllm_widget.models.__path__):
        module = importlib.import_module(f"kerasllm_widget.models.{info.name}")
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, keras.layers.Layer) and value.__module__ == module.__name__:
                classes.add(value)
    # The task model has its own test below (its config holds the backbone and preprocessor).
    assert classes - {Llama3CausalLM} == set(layers_of(model.backbone))


@pytest.mark.parametrize(
    "cls",
    [
        Llama3Backbone,
        Llama3TransformerDecoder,
        Llama3Attention,
        RMSNormalization,
        ReversibleEmbedding,
    ],
    ids=lambda cls: cls.__name__,
)
def test_from_config_gives_the_same_config(model, cls):
    layer = layers_of(model.backbone)[cls]
    config = layer.get_config()
    clone = cls.from_config(config)
    assert clone.get_config() == config


def test_a_rebuilt_block_computes_what_the_original_does(model):
    block = model.backbone.transformer_layers[0]
    clone = Llama3TransformerDecoder.from_config(block.get_config())
    clone.build((None, None, model.backbone.hidden_dim))
    clone.set_weights(block.get_weights())
    x = np.random.default_rng(0).normal(size=(1, 5, model.backbone.hidden_dim)).astype("float32")
    inputs = {"positions": np.arange(5)[None], "attention_mask": np.tril(np.ones((1, 5, 5), bool))}
    np.testing.assert_allclose(
        np.asarray(clone(x, **inputs)[0]), np.asarray(block(x, **inputs)[0]), atol=1e-6
    )


def test_save_and_load_model_give_the_same_logits(model, tmp_path):
    path = tmp_path / "tiny.keras"
    keras.saving.save_model(model, path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Llama3CausalLM)
    assert loaded.backbone.get_config() == model.backbone.get_config()
    assert loaded.tokenizer.get_config() == model.tokenizer.get_config()
    ids = np.random.default_rng(1).integers(0, 320, size=(2, 12)).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones(ids.shape, bool)}
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
