"""A token embedding that can also project hidden states back onto the vocabulary."""

from __future__ import annotations

import keras
from keras import ops


class ReversibleEmbedding(keras.layers.Embedding):
    """`Embedding` whose ``reverse=True`` call gives logits over the vocabulary.

    With ``tie_weights=True`` the output projection is the transposed embedding matrix (SmolLM2,
    Llama 3.2); otherwise it has its own ``reverse_embeddings`` weight (Llama 3.1 8B and larger).

    Example:
        >>> emb = ReversibleEmbedding(10, 4)
        >>> hidden = emb(keras.ops.array([[1, 2]]))
        >>> emb(hidden, reverse=True).shape
        (1, 2, 10)
    """

    def __init__(self, input_dim: int, output_dim: int, tie_weights: bool = True, **kwargs):
        super().__init__(input_dim, output_dim, **kwargs)
        self.tie_weights = tie_weights

    def build(self, input_shape=None):
        super().build(input_shape)
        if not self.tie_weights:
            self.reverse_embeddings = self.add_weight(
                name="reverse_embeddings",
                shape=(self.output_dim, self.input_dim),
                initializer=self.embeddings_initializer,
            )

    def call(self, inputs, reverse: bool = False):
        if not reverse:
            return super().call(inputs)
        kernel = ops.transpose(self.embeddings) if self.tie_weights else self.reverse_embeddings
        return ops.matmul(inputs, ops.cast(kernel, self.compute_dtype))

    def compute_output_shape(self, input_shape, reverse: bool = False):
        if reverse:
            return (*input_shape[:-1], self.input_dim)
        return super().compute_output_shape(input_shape)

    # Keras' Embedding writes and reads only the variables it knows; the untied output projection
    # goes after them (as in keras_hub), or a .keras file of a Llama 3.1 8B-style model loses it.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.built and not self.tie_weights:
            store[str(len(store))] = self.reverse_embeddings

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.built and not self.tie_weights:
            self.reverse_embeddings.assign(store[str(len(store) - 1)])

    def get_config(self):
        return {**super().get_config(), "tie_weights": self.tie_weights}
