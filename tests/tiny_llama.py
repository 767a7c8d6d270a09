"""A tiny Llama with a tiny tokenizer, for tests of training, LoRA, export and distribution.

The tokenizer is a byte-level BPE trained here on a few sentences (deterministic, well under a
second) with Llama 3's special tokens, so conversations render with the Llama 3 chat template and
the model's vocabulary stays small enough for fast CPU training.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
CORPUS = [
    "The sky is blue and the grass is green.",
    "A cat sat on the mat while the dog slept.",
    "Keras runs on JAX, PyTorch and TensorFlow.",
    "Llama models predict the next token from the previous ones.",
    "Fine-tuning with LoRA trains small adapters and freezes the rest.",
    "system user assistant You are a helpful assistant. Hello! Hi there, how can I help?",
    "What is the capital of France? Paris is the capital of France.",
    "Arrr, I be a pirate and I answer like one, matey!",
]
# Divisible by 8, so every weight splits evenly over up to 8 devices.
TINY_BACKBONE = dict(
    num_layers=2,
    num_query_heads=8,
    num_key_value_heads=2,
    hidden_dim=64,
    intermediate_dim=128,
    head_dim=8,
    rope_max_wavelength=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    layer_norm_epsilon=1e-5,
    tie_word_embeddings=True,
    initializer_range=0.2,
    max_sequence_length=131072,
)
VOCABULARY_SIZE = 384


def tiny_tokenizer(chat_template: str | None = None, stop_token_ids=()):
    """A `Llama3Tokenizer` over a 300-odd token byte-level BPE (BOS, EOS <|eot_id|>), with
    ``stop_token_ids`` besides EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCABULARY_SIZE - 64,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    return Llama3Tokenizer(
        backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        chat_template=chat_template,
        stop_token_ids=stop_token_ids,
    )


def tiny_causal_lm(
    seed: int = 0, sequence_length: int = 64, dtype=None, tokenizer=None, **overrides
):
    """A random `Llama3CausalLM` with ``tokenizer`` (default `tiny_tokenizer`) and a
    preprocessor; ``overrides`` change the backbone's arguments."""
    import keras

    from kerasllm_widget.models.llama3_backbone import Llama3Backbone
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM
    from kerasllm_widget.models.llama3_causal_lm_preprocessor import Llama3CausalLMPreprocessor

    keras.utils.set_random_seed(seed)
    tokenizer = tokenizer or tiny_tokenizer()
    backbone = Llama3Backbone(
        vocabulary_size=VOCABULARY_SIZE, **{**TINY_BACKBONE, **overrides}, dtype=dtype
    )
    preprocessor = Llama3CausalLMPreprocessor(tokenizer, sequence_length=sequence_length)
    return Llama3CausalLM(backbone, preprocessor)
