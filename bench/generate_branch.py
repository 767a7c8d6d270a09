"""The branch row of bench/generate.py: time to first token of a branch at token 200 of a reply
against a fresh prompt of the same length (SmolLM2, float32, CPU, greedy).

A branch reuses the kept cache up to its branch point (`generation/kept_cache.py`), so it
prefills only its new tokens; a fresh prompt prefills all of them. Each is measured once warm
(its programs compiled by the first runs, the background compiles done before each request),
and the fresh prompts share no prefix with what the cache holds.

    python bench/generate.py --branch
"""

from __future__ import annotations

BRANCH_AT = 200
REQUEST = "Count from 1 to 300, separated by commas."


def worker_branch(gguf: str, story: str) -> dict:
    """Runs in its own process (see generate.py's `spawn`); returns the figures as a dict."""
    from kerasllm_widget.chat.chat_state import ChatState
    from kerasllm_widget.generation.api import make_sampler, stream_ids
    from kerasllm_widget.generation.events import DoneEvent
    from kerasllm_widget.generation.registry import engine_for
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    model = Llama3CausalLM.from_preset(gguf, dtype="float32")
    greedy = {"temperature": 0.0}

    engine = engine_for(model)

    compiles: dict[str, int] = {}

    def done_of(events, name: str = "") -> DoneEvent:
        # As a person reads a reply before the next request: background compiles finish first.
        engine.wait_for_precompile()
        before = sum(v for k, v in engine.trace_counts.items() if not k.startswith("background_"))
        done = [e for e in events if isinstance(e, DoneEvent)][-1]
        after = sum(v for k, v in engine.trace_counts.items() if not k.startswith("background_"))
        compiles[name] = after - before  # the last run's, for a measured one
        return done

    chat = ChatState(model)
    reply = done_of(chat.stream(REQUEST, max_new_tokens=BRANCH_AT + 10, **greedy))
    if len(reply.token_ids) <= BRANCH_AT:
        return {"error": f"the reply stopped after {len(reply.token_ids)} tokens"}
    message = chat.messages[-1]["id"]
    other = reply.token_ids[BRANCH_AT - 1]  # any token but the one the model chose
    branches = [
        done_of(chat.branch(message, BRANCH_AT, other, max_new_tokens=8, **greedy), "branch")
        for _ in range(3)  # the first compiles the programs a branch needs
    ]
    length = branches[-1].prompt_tokens

    story_ids = [int(t) for t in model.tokenizer.tokenize(story * (length // 20 + 2))]
    fresh = [
        # Shifted by one token each time: no prefix in common with the kept cache.
        done_of(
            stream_ids(
                model,
                story_ids[shift : shift + length],
                max_new_tokens=8,
                sampler=make_sampler(engine.sampler, **greedy),  # the chat's programs
                min_cache_length=chat.cache_length,
            ),
            "fresh",
        )
        for shift in range(3)
    ]
    branch, cold = branches[-1], fresh[-1]
    return {
        "prompt_tokens": length,
        "branch_ttft_s": branch.time_to_first_token_s,
        "branch_prefilled": branch.prefilled_tokens,
        "fresh_ttft_s": cold.time_to_first_token_s,
        "fresh_prefilled": cold.prefilled_tokens,
        "compiles": compiles,
    }


def branch_line(result: dict) -> str:
    """The row as generate.py prints it."""
    if "error" in result:
        return f"branch at token {BRANCH_AT}: {result['error']}"
    ratio = result["fresh_ttft_s"] / max(result["branch_ttft_s"], 1e-9)
    return (
        f"time to first token, {result['prompt_tokens']} tokens of context (float32, greedy): "
        f"branch at token {BRANCH_AT} of a reply {result['branch_ttft_s'] * 1e3:.0f} ms "
        f"({result['branch_prefilled']} tokens prefilled) vs fresh prompt "
        f"{result['fresh_ttft_s'] * 1e3:.0f} ms ({result['fresh_prefilled']} prefilled): "
        f"{ratio:.1f}x faster (compilations while measured: {result['compiles']})"
    )
