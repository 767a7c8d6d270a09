"""Off the happy path, memory: a model that generated, streamed and chatted is freed with its
last reference, and reloading a preset again and again keeps the process flat."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest

from tests.tiny_llama import tiny_causal_lm

ROOT = Path(__file__).resolve().parent.parent


def test_a_model_that_generated_streamed_and_chatted_is_freed():
    from kerasllm_widget.chat.chat_state import ChatState
    from kerasllm_widget.generation.registry import engine_for

    model = tiny_causal_lm(seed=7)
    model.generate("hello", max_new_tokens=3)
    list(model.stream("hi", max_new_tokens=3, top_k_alternatives=2))
    chat = ChatState(model)
    chat.send("hey", max_new_tokens=3)
    engine = engine_for(model)
    engine.wait_for_precompile()
    model_ref, engine_ref = weakref.ref(model), weakref.ref(engine)
    del model, chat, engine
    gc.collect()
    assert model_ref() is None
    assert engine_ref() is None


def test_a_model_shown_in_a_chat_widget_is_freed_after_close():
    from kerasllm_widget import ChatWidget
    from kerasllm_widget.generation.registry import engine_for

    model = tiny_causal_lm(seed=8)
    widget = ChatWidget(model)
    widget.send("hello").result(timeout=120)
    widget.close()
    # The next turn's programs compile in the background and hold the model until they end.
    engine_for(model).wait_for_precompile()
    model_ref = weakref.ref(model)
    del model, widget
    gc.collect()
    assert model_ref() is None


RELOADS = textwrap.dedent(
    """
    import gc, json, sys
    import psutil
    sys.path.insert(0, {root!r})
    from kerasllm_widget import Llama3CausalLM

    process = psutil.Process()
    rss = []
    for cycle in range(10):
        model = Llama3CausalLM.from_preset({folder!r})
        model.generate("hello", max_new_tokens=4)
        del model
        gc.collect()
        rss.append(process.memory_info().rss)
    print(json.dumps(rss))
    """
)


@pytest.mark.slow
def test_ten_reloads_keep_the_process_flat(tmp_path):
    import keras

    from kerasllm_widget.models.llama3_backbone import Llama3Backbone
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM
    from tests.tiny_llama import tiny_tokenizer

    # ~100 MB of float32 weights: a leak of one model per load would be 900 MB over the run.
    keras.utils.set_random_seed(0)
    backbone = Llama3Backbone(
        vocabulary_size=32768,
        num_layers=2,
        num_query_heads=8,
        num_key_value_heads=2,
        hidden_dim=512,
        intermediate_dim=1536,
        tie_word_embeddings=False,
    )
    from kerasllm_widget.models.llama3_causal_lm_preprocessor import Llama3CausalLMPreprocessor

    model = Llama3CausalLM(backbone, Llama3CausalLMPreprocessor(tiny_tokenizer()))
    folder = tmp_path / "model"
    model.save_to_preset(folder)
    weights_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert weights_bytes > 90e6
    script = tmp_path / "reloads.py"
    script.write_text(RELOADS.format(root=str(ROOT), folder=str(folder)))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rss = json.loads(result.stdout.strip().splitlines()[-1])
    # After the first cycles (compilers, caches, allocator pools warm up) the process is flat:
    # the last seven loads together add less than one model's weights.
    growth = rss[-1] - rss[2]
    assert growth < weights_bytes, [round(r / 1e6) for r in rss]
