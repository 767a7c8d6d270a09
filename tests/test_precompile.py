"""Programs compiled ahead (`GenerationEngine.precompile`): the ones a chat's turns look up, and
never one compiled for variables the model no longer has."""

from __future__ import annotations

import threading

from tiny_llama import tiny_causal_lm, tiny_tokenizer

from kerasllm_widget.chat.chat_state import ChatState
from kerasllm_widget.generation.engine import stop_slots
from kerasllm_widget.generation.registry import engine_for
from kerasllm_widget.generation.stopping import stop_token_ids_of


def foreground(counts) -> dict:
    """Compilations a request waited for ("prefill", "decode"), not those made ahead."""
    return {k: v for k, v in counts.items() if not k.startswith("background_")}


def test_a_chat_with_more_than_eight_stop_ids_compiles_nothing_after_its_first_turn():
    # Eleven stop ids besides EOS (real checkpoints list several): programs with 16 stop slots.
    # The programs compiled ahead had 8, so every turn compiled in the foreground.
    tokenizer = tiny_tokenizer(stop_token_ids=range(300, 311))
    model = tiny_causal_lm(seed=1, tokenizer=tokenizer)
    assert stop_slots(len(stop_token_ids_of(model.tokenizer))) == 16
    chat = ChatState(model, system_prompt="You are brief.")
    engine = engine_for(model)
    options = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 6}
    chat.send("Hello!", seed=0, **options)
    engine.wait_for_precompile()  # the user reads the reply and types
    assert engine.trace_counts["background_prefill"] > 0
    warm = foreground(engine.trace_counts)
    cache_length = engine.kept_cache_length()
    chat.send("How are you?", seed=1, **options)  # a short turn: the 32-token chunk
    chat.send("Please " + "tell me more about that, " * 3, seed=2, **options)  # the 128 chunk
    assert engine.kept_cache_length() == cache_length  # the three turns in one cache
    assert foreground(engine.trace_counts) == warm


def test_a_program_compiled_for_old_variables_is_never_used():
    model = tiny_causal_lm(seed=2)
    engine = engine_for(model)
    engine.weights()  # the jitted functions for the variables of now
    jitted = engine._jit_decode
    lowering, release = threading.Event(), threading.Event()

    class HeldAtLowering:
        """The decode function, held once its compilation for the old variables has begun."""

        def lower(self, *args, **kwargs):
            lowering.set()
            assert release.wait(300)
            return jitted.lower(*args, **kwargs)

    engine._jit_decode = HeldAtLowering()  # the one way to pause the thread at that point
    thread = engine.precompile(256)
    assert lowering.wait(300)
    model.backbone.enable_lora(2)  # new variables while the old program compiles
    engine.weights()  # read by the next request: the table of programs starts again
    release.set()
    thread.join(300)
    assert not thread.is_alive()
    # The program for the old variables was dropped, not filed in the new table (a request
    # would have called it with the new, longer list of weights).
    assert engine.precompiled_cache_lengths == set()

    # Programs compiled for the new variables are filed and used.
    engine.precompile(256, background=False)
    assert engine.precompiled_cache_lengths == {256}
    before = foreground(engine.trace_counts)
    text = model.generate("Hello", max_new_tokens=4)
    assert isinstance(text, str)
    assert foreground(engine.trace_counts).get("decode", 0) == before.get("decode", 0)
