"""Numpy-level data behind the inspector views, usable from plain code too.

Example:
    >>> from kerasllm_widget import inspect
    >>> inspect.tokens(model, "Hello").ids  # doctest: +SKIP
    array([9906], dtype=int32)
    >>> inspect.attention(model, ids, layer=0, head=0).shape  # doctest: +SKIP
    (12, 12)
"""

from kerasllm_widget.inspect.attention import AttentionMaps, attention
from kerasllm_widget.inspect.next_token import (
    NextTokenDistribution,
    SequenceScores,
    entropy,
    next_token,
    score,
)
from kerasllm_widget.inspect.preprocess import PreprocessTable, preprocess
from kerasllm_widget.inspect.quantize import QuantizedArray, dequantize, downsample_max, quantize
from kerasllm_widget.inspect.stepping import Step, StepSession
from kerasllm_widget.inspect.tokens import TokenTable, compare, tokens

__all__ = [
    "AttentionMaps",
    "NextTokenDistribution",
    "PreprocessTable",
    "QuantizedArray",
    "SequenceScores",
    "Step",
    "StepSession",
    "TokenTable",
    "attention",
    "compare",
    "dequantize",
    "downsample_max",
    "entropy",
    "next_token",
    "preprocess",
    "quantize",
    "score",
    "tokens",
]
