"""Attention probabilities from the inspection path against the reference implementation.

The reference is transformers' eager attention (`attn_implementation="eager"`,
`output_attentions=True`), which writes out the softmax exactly as our explicit path does.
"""

from __future__ import annotations

import numpy as np
import pytest
from inspect_support import eager_attention, smollm2_model

from kerasllm_widget.checkpoints.presets import load_checkpoint
from kerasllm_widget.inspect import AttentionMaps, attention
from kerasllm_widget.models.llama3_backbone import Llama3Backbone

# Float32 probabilities after a layer's residual: XLA and torch sum in different orders, and that
# order depends on the CPU's vector width (the largest difference at layer 1 was 1.07e-5 on an
# AVX-512 machine, under 1e-5 on an AVX2 one).
TOLERANCE = 2e-5


def reference_attentions(model, token_ids, padding_mask=None):
    import torch

    mask = None if padding_mask is None else torch.tensor(np.asarray(padding_mask, dtype=np.int64))
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(np.asarray(token_ids, dtype=np.int64)),
            attention_mask=mask,
            output_attentions=True,
        )
    return [a.numpy() for a in out.attentions]


def eager_reference(*args, **kwargs):
    import torch
    from transformers import AutoModelForCausalLM

    # `torch_dtype`, not `dtype` (transformers 4.56+): the fast tests also run with the lowest
    # transformers the declared minimums resolve to (`make test-minimum`).
    return AutoModelForCausalLM.from_pretrained(
        *args, attn_implementation="eager", torch_dtype=torch.float32, **kwargs
    ).eval()


def assert_is_attention(probabilities, padding_mask):
    """Rows of real queries sum to one; keys a query may not see (future or padding) are zero."""
    length = probabilities.shape[-1]
    causal = np.tril(np.ones((length, length), bool))
    allowed = causal[None] & padding_mask[:, None, :]  # [B, T, S]
    real_rows = padding_mask  # [B, T]
    sums = probabilities.sum(-1)  # [B, H, T]
    assert np.abs(sums.transpose(0, 2, 1)[real_rows] - 1.0).max() < 1e-5
    assert (probabilities.transpose(0, 2, 3, 1)[~allowed] == 0.0).all()


@pytest.fixture(scope="module")
def tiny(random_llama32_checkpoint):
    backbone = Llama3Backbone.from_checkpoint(
        load_checkpoint(str(random_llama32_checkpoint)), progress=False
    )
    return backbone, eager_reference(random_llama32_checkpoint)


@pytest.mark.reference
def test_random_llama32_attention_matches_reference_on_a_padded_batch(tiny):
    backbone, reference = tiny
    rng = np.random.default_rng(0)
    token_ids = rng.integers(0, 512, size=(2, 90))
    padding_mask = np.ones((2, 90), bool)
    padding_mask[1, 61:] = False  # the second row is right-padded
    token_ids[1, 61:] = 0
    expected = reference_attentions(reference, token_ids, padding_mask)
    maps = AttentionMaps(backbone, token_ids, padding_mask)
    for layer, reference_layer in enumerate(expected):
        actual = maps.layer(layer)
        assert actual.shape == reference_layer.shape == (2, 8, 90, 90)
        # Padded query rows are undefined in both implementations; real rows must agree.
        real = padding_mask[:, None, :, None] & np.ones_like(actual, bool)
        assert np.abs(actual[real] - reference_layer[real]).max() < TOLERANCE, layer
        assert_is_attention(actual, padding_mask)
        # Not a degenerate comparison: the heads do not all attend uniformly.
        assert actual[0].max(-1).mean() > 0.2


SMOLLM2_TEXT = (
    "<|im_start|>user\nWhat does the attention of a language model show?<|im_end|>\n"
    "<|im_start|>assistant\nIt shows which earlier tokens each token looks at. 🤗"
)


@pytest.fixture(scope="module")
def smollm2_run(smollm2_reference):
    import torch

    reference, tokenizer = smollm2_reference
    token_ids = np.asarray([tokenizer(SMOLLM2_TEXT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad(), eager_attention(reference):
        out = reference(
            input_ids=torch.tensor(token_ids), output_attentions=True, output_hidden_states=True
        )
    expected = [a.numpy() for a in out.attentions]
    hidden_inputs = [h.numpy() for h in out.hidden_states]  # [i] is the input of block i
    return smollm2_model().backbone, token_ids, expected, hidden_inputs


@pytest.mark.reference
def test_smollm2_attention_path_matches_reference_layer_by_layer(smollm2_run):
    """Each block's attention from the same residual stream the reference block received."""
    from kerasllm_widget.inspect._layer_runner import runner_for
    from kerasllm_widget.models.llama3_backbone import (
        causal_attention_mask,
        positions_from_padding_mask,
    )

    backbone, token_ids, expected, hidden_inputs = smollm2_run
    mask = np.ones(token_ids.shape, bool)
    positions, attention_mask = positions_from_padding_mask(mask), causal_attention_mask(mask)
    runner = runner_for(backbone)
    assert len(expected) == backbone.num_layers == 30
    for layer, reference_layer in enumerate(expected):
        actual = runner.probabilities(layer, hidden_inputs[layer], positions, attention_mask)
        assert np.abs(actual - reference_layer).max() < TOLERANCE, layer
        assert_is_attention(actual, mask)


@pytest.mark.reference
def test_smollm2_attention_matches_reference_end_to_end(smollm2_run):
    """Through our own residual stream. SmolLM2's stream reaches values of 2.5e4, where float32
    steps are 2e-3; two correct implementations drift apart by a few such steps (different
    summation orders), which moves a few probabilities of the deeper layers by ~1e-5."""
    backbone, token_ids, expected, _ = smollm2_run
    maps = AttentionMaps(backbone, token_ids)
    errors = [float(np.abs(maps.layer(i) - ref).max()) for i, ref in enumerate(expected)]
    assert errors[0] < 2e-6  # no drift before the first block
    assert np.median(errors) < TOLERANCE
    assert max(errors) < 5 * TOLERANCE
    single = attention(backbone, token_ids[0], layer=7, head=3)
    assert np.abs(single - expected[7][0, 3]).max() < TOLERANCE
    mean = attention(backbone, token_ids[0], layer=7, head="mean")
    assert np.abs(mean - expected[7][0].mean(0)).max() < TOLERANCE


def test_attention_maps_views_and_errors(tiny):
    backbone, _ = tiny
    token_ids = np.random.default_rng(1).integers(0, 512, size=70)
    maps = AttentionMaps(backbone, token_ids, max_cached_layers=1)
    whole = maps.layer(1)
    assert whole.shape == (8, 70, 70) and whole.dtype == np.float32
    assert np.array_equal(maps.head(1, 5), whole[5])
    assert np.allclose(maps.head(1, "mean"), whole.mean(0))
    assert np.array_equal(maps.query_row(1, 69, head=2), whole[2, 69])
    assert np.array_equal(maps.layer(-1), whole)  # negative layers count from the end
    with pytest.raises(IndexError, match="layer 2"):
        maps.layer(2)
    with pytest.raises(IndexError, match="head 8"):
        maps.head(0, 8)
    with pytest.raises(ValueError, match="T > 0"):
        AttentionMaps(backbone, np.zeros((0,), np.int32))


def test_attention_does_not_depend_on_the_padded_bucket(tiny):
    """Lengths are padded to a bucket for compilation; the real rows must not see the padding."""
    backbone, _ = tiny
    token_ids = np.random.default_rng(2).integers(0, 512, size=65)  # just past the 64 bucket
    long_run = attention(backbone, token_ids, layer=1)
    short_run = attention(backbone, token_ids[:40], layer=1)
    assert long_run.shape == (8, 65, 65)
    assert np.abs(long_run[:, :40, :40] - short_run).max() < 1e-6


def test_thumbnails_keep_sharp_lines(tiny):
    backbone, _ = tiny
    token_ids = np.random.default_rng(3).integers(0, 512, size=100)
    maps = AttentionMaps(backbone, token_ids)
    thumbs = maps.thumbnails(0, size=16)
    assert thumbs.shape == (8, 15, 15)  # 100 tokens in blocks of 7
    assert np.allclose(thumbs.max(axis=(-2, -1)), maps.layer(0).max(axis=(-2, -1)))


def test_chunked_blocks_match_the_whole_block(tiny):
    """Blocks run their queries in chunks against the keys up to each chunk's end; the residual
    stream must be the model's own block output."""
    from kerasllm_widget.inspect._compiled import InspectionPass
    from kerasllm_widget.inspect._layer_runner import CHUNK
    from kerasllm_widget.models.llama3_backbone import (
        causal_attention_mask,
        positions_from_padding_mask,
    )

    backbone, _ = tiny
    length = 2 * CHUNK + 90  # three chunks, the last one padded
    token_ids = np.random.default_rng(4).integers(0, 512, size=(1, length))
    run = InspectionPass(backbone, token_ids, np.ones((1, length), bool))
    mask = np.ones((1, length), bool)
    x = backbone.token_embedding(token_ids)
    for index, layer in enumerate(backbone.transformer_layers):
        x = layer(
            x,
            positions=positions_from_padding_mask(mask),
            attention_mask=causal_attention_mask(mask),
        )[0]
        chunked = np.asarray(run.layer_input(index + 1))[:, :length]
        assert np.abs(chunked - np.asarray(x)).max() < 1e-4 * max(1.0, float(np.abs(x).max())), (
            index
        )


def test_quantized_heads_are_the_explicit_path_in_8_bits(tiny):
    from kerasllm_widget.inspect import dequantize

    backbone, _ = tiny
    token_ids = np.random.default_rng(5).integers(0, 512, size=300)
    maps = AttentionMaps(backbone, token_ids)
    for layer in range(2):
        whole = maps.layer(layer)
        for head in (0, 5, -1, "mean"):
            expected = whole.mean(0) if head == "mean" else whole[head]
            quantized = maps.quantized(layer, head)
            assert quantized.codes.dtype == np.uint8 and quantized.codes.shape == (300, 300)
            assert abs(quantized.scale - expected.max()) < 1e-6
            # Within one code step in the square-root domain, as `quantize` promises.
            step = 1.0 / 255
            assert (
                np.abs(
                    np.sqrt(dequantize(quantized) / quantized.scale)
                    - np.sqrt(expected / expected.max())
                ).max()
                < step
            )
    with pytest.raises(IndexError, match="head 8"):
        maps.quantized(0, 8)


def test_thumbnails_are_the_block_maxima_of_every_head(tiny):
    from kerasllm_widget.inspect import downsample_max

    backbone, _ = tiny
    token_ids = np.random.default_rng(6).integers(0, 512, size=300)
    maps = AttentionMaps(backbone, token_ids)
    for size in (44, 400):
        thumbs = maps.thumbnails(1, size=size)
        expected = downsample_max(maps.layer(1), size)
        assert thumbs.shape == expected.shape
        assert np.abs(thumbs - expected).max() < 1e-6


def test_a_grown_sequence_reuses_the_forward_pass_of_its_prefix(tiny):
    backbone, _ = tiny
    rng = np.random.default_rng(7)
    before = rng.integers(0, 512, size=600)
    after = np.concatenate([before, rng.integers(0, 512, size=150)])
    first = AttentionMaps(backbone, before)
    while first.prepare_next_layer():
        pass
    grown = AttentionMaps(backbone, after, previous=first)
    fresh = AttentionMaps(backbone, after)
    assert grown.reused_tokens == 600 and fresh.reused_tokens == 0
    for layer in range(2):
        assert np.abs(grown.layer(layer) - fresh.layer(layer)).max() < 1e-5, layer
    assert np.abs(grown._pass.logits() - fresh._pass.logits()).max() < 1e-3
    # A sequence that differs early shares nothing a chunk could skip.
    changed = after.copy()
    changed[10] = (changed[10] + 1) % 512
    assert AttentionMaps(backbone, changed, previous=first).reused_tokens == 0


def test_warming_up_a_length_compiles_once_per_bucket(tiny):
    backbone, _ = tiny
    rng = np.random.default_rng(8)
    first = AttentionMaps(backbone, rng.integers(0, 512, size=1100))
    steps = 0
    while first.warm_up():  # one program per call: the head average, one head, a block
        steps += 1
    assert steps == 3
    assert first.prepared_layers == 2  # the block ran (and compiled) too
    # Another text padded to the same bucket finds the programs compiled.
    assert AttentionMaps(backbone, rng.integers(0, 512, size=1030)).warm_up() is False


def test_an_overview_is_the_full_map_pooled_by_block_maxima(tiny):
    from kerasllm_widget.inspect import block_max, dequantize

    backbone, _ = tiny
    token_ids = np.random.default_rng(9).integers(0, 512, size=700)
    maps = AttentionMaps(backbone, token_ids)
    whole = maps.layer(1)
    for head in (2, "mean"):
        full = maps.quantized(1, head)
        view = maps.overview(1, head, cells=128)
        # 700 tokens pad to 768: blocks of 6 tokens, 117 cells a side (the last of 4 tokens).
        assert view.block == 6 and view.codes.codes.shape == (117, 117)
        assert view.codes.scale == full.scale
        np.testing.assert_array_equal(view.codes.codes, block_max(full.codes, 6))
        np.testing.assert_array_equal(view.row_max, full.codes.max(axis=1))
        # The same as pooling the float map with numpy, then decoding: within one code step.
        expected = block_max(whole.mean(0) if head == "mean" else whole[head], 6)
        step = 1.0 / 255
        decoded = np.sqrt(dequantize(view.codes) / view.codes.scale)
        assert np.abs(decoded - np.sqrt(expected / expected.max())).max() < step
        # A zoomed region is the full map's codes there, on the whole map's scale.
        region = maps.region(1, head, rows=(300, 420), cols=(10, 400))
        np.testing.assert_array_equal(region.codes, full.codes[300:420, 10:400])
        assert region.scale == full.scale
    # Short maps are sent whole.
    short = maps.overview(0, 0, cells=768)
    assert short.block == 1
    np.testing.assert_array_equal(short.codes.codes, maps.quantized(0, 0).codes)
    with pytest.raises(ValueError, match="not inside"):
        maps.region(1, 0, rows=(0, 701), cols=(0, 10))


def test_preparing_stops_once_every_layer_has_its_input(tiny):
    backbone, _ = tiny
    maps = AttentionMaps(backbone, np.arange(40) % 512)
    steps = 0
    while maps.prepare_next_layer():
        steps += 1
    # Two layers: the embeddings, then block 0 (layer 1's input); the last block's output
    # feeds no map and is not run.
    assert steps == 2 and maps.prepared_layers == 2 and maps._pass.computed_blocks == 1
