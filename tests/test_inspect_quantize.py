"""The transport codes of attention maps: 8/16 bits with a scale and a gamma."""

from __future__ import annotations

import numpy as np
import pytest

from kerasllm_widget.inspect import dequantize, downsample_max, quantize


def random_attention(length=64, seed=0):
    logits = np.random.default_rng(seed).normal(size=(length, length)) * 3
    logits[:, 0] += 4  # an attention sink, as real models have
    logits = np.where(np.tril(np.ones((length, length), bool)), logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("bits, gamma", [(8, 1.0), (8, 0.5), (16, 1.0), (16, 0.5)])
def test_round_trip_error_is_within_half_a_step(bits, gamma):
    values = random_attention()
    q = quantize(values, bits=bits, gamma=gamma)
    assert q.codes.dtype == (np.uint8 if bits == 8 else np.uint16)
    levels = 2**bits - 1
    decoded = dequantize(q)
    # Half a step in the gamma-compressed domain, mapped back through the inverse gamma.
    compressed = (values / q.scale) ** gamma
    upper = np.minimum(compressed + 0.5 / levels, 1.0) ** (1 / gamma) * q.scale
    lower = np.maximum(compressed - 0.5 / levels, 0.0) ** (1 / gamma) * q.scale
    assert np.all(decoded <= upper + 1e-6) and np.all(decoded >= lower - 1e-6)
    assert q.scale == pytest.approx(values.max())
    assert decoded.max() == pytest.approx(values.max(), rel=1e-6)


def test_square_root_code_keeps_small_probabilities_that_a_linear_code_loses():
    values = random_attention(length=256)
    small = (values > 1e-4) & (values < 1e-3)
    assert small.sum() > 100
    linear = dequantize(quantize(values, bits=8, gamma=1.0))
    rooted = dequantize(quantize(values, bits=8, gamma=0.5))
    assert (linear[small] == 0).mean() > 0.5  # most of them vanish in a linear 8-bit code
    assert (rooted[small] > 0).all()


def test_zeros_stay_exactly_zero_and_masks_survive():
    values = random_attention()
    decoded = dequantize(quantize(values))
    assert (decoded[np.triu_indices(64, 1)] == 0).all()
    q = quantize(np.zeros((3, 3)))
    assert q.scale == 0.0 and (dequantize(q) == 0).all()


def test_header_and_buffer_are_what_a_browser_reads():
    q = quantize(np.array([[0.0, 1.0], [0.25, 0.5]]), bits=16, gamma=1.0)
    header = q.header()
    assert header == {"dtype": "uint16", "shape": [2, 2], "scale": 1.0, "gamma": 1.0}
    raw = bytes(q.buffer())
    assert len(raw) == 8
    assert np.frombuffer(raw, dtype="<u2").tolist() == [0, 65535, 16384, 32768]


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="bits"):
        quantize(np.ones(3), bits=4)
    with pytest.raises(ValueError, match="non-negative"):
        quantize(np.array([-0.1, 0.5]))
    with pytest.raises(ValueError, match="gamma"):
        quantize(np.ones(3), gamma=0)


def test_downsample_max_keeps_a_one_pixel_line():
    matrix = np.zeros((100, 100), np.float32)
    matrix[np.arange(1, 100), np.arange(99)] = 0.9  # "look one token back"
    small = downsample_max(matrix, 10)
    assert small.shape == (10, 10)
    assert (np.diag(small) == 0.9).all()
    assert downsample_max(matrix, 200) is matrix  # nothing to shrink
    assert downsample_max(np.ones((2, 5, 7, 7)), 3).shape == (2, 5, 3, 3)


def test_per_row_scales_let_a_weak_head_use_every_code():
    strong, weak = random_attention(seed=1), random_attention(seed=2) * 0.01
    q = quantize(np.stack([strong, weak]), bits=8, per_row=True)
    assert np.allclose(q.scale, [strong.max(), weak.max()])
    assert q.codes[1].max() == 255  # the weak head is not squashed into the lowest codes
    decoded = dequantize(q)
    assert np.abs(decoded[1] - weak).max() < 0.01 * weak.max()
    assert q.header()["scale"] == pytest.approx([strong.max(), weak.max()])
