"""The tokens a branch of a reply starts from, as ``chat.token`` records.

A branch streams in place of the reply it branches: its first batch is its prefix (the reply's
first tokens, then the chosen or typed ones), so the panel shows the reply up to the branch point
at once and every token of the new reply can be clicked in turn. Where the panel streamed the
reply, the prefix keeps its probabilities and alternatives; other tokens are decoded from their
ids (no probabilities: the model never reported them).
"""

from __future__ import annotations

from typing import Any

from kerasllm_widget.generation.detokenizer import IncrementalDetokenizer

Record = dict[str, Any]


def prefix_records(tokenizer: Any, ids: list[int], known: list[Record] | None) -> list[Record]:
    """Records for the token ``ids`` of a branch's prefix: ``known`` (the branched reply's
    streamed records) as far as they hold the same ids, then pieces decoded from the ids.

    Example:
        >>> prefix_records(tokenizer, [9906, 1234], known=None)[0]["index"]  # doctest: +SKIP
        0
    """
    known = known or []
    same = 0
    while same < min(len(ids), len(known)) and known[same]["token_id"] == ids[same]:
        same += 1
    records = [dict(record) for record in known[:same]]
    detokenizer = IncrementalDetokenizer(tokenizer, context_ids=ids[:same])
    for index in range(same, len(ids)):
        piece = detokenizer.push(ids[index])
        records.append(
            {
                "index": index,
                "token_id": int(ids[index]),
                "text": piece,
                "logprob": None,
                "top_k": [],
            }
        )
    if len(records) > same:  # a character split over the last tokens
        records[-1]["text"] += detokenizer.flush()
    return records
