"""A ``tokenizers`` pipeline (a ``tokenizer.json``) rebuilt from a GGUF's tokenizer metadata.

GGUF stores a tokenizer as its vocabulary (``tokenizer.ggml.tokens``), merges or scores, token
types and special token ids. `hf_tokenizer` rebuilds from them the ``tokenizer.json``,
``tokenizer_config.json`` and ``generation_config.json`` a Hugging Face folder would hold: byte-level
BPE for Llama 3 and SmolLM2 (``tokenizer.ggml.model`` ``"gpt2"``), sentencepiece BPE for Llama 2
and TinyLlama (``"llama"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Set
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from .byte_level import BYTE_LEVEL_ALPHABET, BYTE_TO_UNICODE
from .errors import CheckpointFormatError, UnsupportedModelError

__all__ = ["hf_tokenizer", "sentencepiece_merges"]

# llama.cpp's token types (gguf.TokenType).
_CONTROL = 3
_USER_DEFINED = 4

# The pre-tokenizer regexes, by `tokenizer.ggml.pre`. This one is Llama 3's tokenizer.json's.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_SPLITS = {
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
}
# Files whose pre-tokenizer is GPT-2's own regex, that is, `ByteLevel(use_regex=True)`.
#
# "smollm" is here to agree with transformers, which has no entry for it. llama.cpp splits each
# digit off first; with SmolLM2's vocabulary, which holds no multi-digit tokens and no merges
# with digits, that only shows in how a run of spaces before a digit is grouped ("a  1").
_GPT2_PRE_TOKENIZERS = {"default", "gpt2", "gpt-2", "smollm"}


def _token_ids(metadata: dict[str, Any], tokens: list[str]) -> dict[str, int | None]:
    """The special token ids the file names, those outside the vocabulary dropped."""
    ids = {}
    for name, key in (
        ("bos", "tokenizer.ggml.bos_token_id"),
        ("eos", "tokenizer.ggml.eos_token_id"),
        ("unk", "tokenizer.ggml.unknown_token_id"),
        ("pad", "tokenizer.ggml.padding_token_id"),
        ("eot", "tokenizer.ggml.eot_token_id"),
        ("eom", "tokenizer.ggml.eom_token_id"),
    ):
        value = metadata.get(key)
        ids[name] = value if isinstance(value, int) and 0 <= value < len(tokens) else None
    return ids


def _merges(metadata: dict[str, Any], where: str) -> list[tuple[str, str]] | None:
    raw = metadata.get("tokenizer.ggml.merges")
    if raw is None:
        return None
    merges = []
    for index, merge in enumerate(raw):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise CheckpointFormatError(
                f"{where}: tokenizer.ggml.merges[{index}] is {merge!r}, not two tokens separated by "
                "a space. The file looks corrupt; re-download it."
            )
        merges.append((parts[0], parts[1]))
    return merges


def _byte_level_bpe(metadata: dict[str, Any], where: str) -> tuple[Tokenizer, Set[str]]:
    """GPT-2-style byte-level BPE (Llama 3, SmolLM2): the model and its pre-tokenizer."""
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    alphabet = BYTE_LEVEL_ALPHABET
    # Tokens are stored in the byte alphabet ("Ġthe"); a token with other characters is stored
    # as its text, so it is spelled in the alphabet to be reachable by BPE (as transformers does).
    vocab = {
        token
        if set(token) <= alphabet
        else "".join(BYTE_TO_UNICODE[b] for b in token.encode("utf-8")): index
        for index, token in enumerate(tokens)
    }
    merges = _merges(metadata, where)
    if merges is None:
        raise CheckpointFormatError(
            f"{where}: a byte-level BPE tokenizer (tokenizer.ggml.model 'gpt2') needs "
            "tokenizer.ggml.merges, which the file lacks. Re-download it or convert it again."
        )
    pre = metadata.get("tokenizer.ggml.pre", "default")
    split = _PRE_TOKENIZER_SPLITS.get(pre)
    if split is None and pre not in _GPT2_PRE_TOKENIZERS:
        warnings.warn(
            f"{where}: unknown tokenizer.ggml.pre {pre!r}; splitting text with GPT-2's regex, as "
            "transformers does. Token ids may differ from the original tokenizer's.",
            stacklevel=3,
        )
    model = models.BPE(
        vocab=vocab,
        merges=merges,
        dropout=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        # Llama 3's tokenizer.json and llama.cpp look a whole pre-token up in the vocabulary before
        # merging; 588 of its tokens (" Александр") are unreachable by merges alone. transformers'
        # GGUF converter leaves this off and splits those words into several tokens.
        ignore_merges=split is not None,
    )
    tokenizer = Tokenizer(model)
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer, alphabet


def sentencepiece_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges for a sentencepiece vocabulary that lists only token scores.

    Every split of a token into two tokens is a merge, ranked by the merged token's score (higher
    first), as transformers' ``generate_merges`` does when converting a sentencepiece model.

    Example:
        >>> sentencepiece_merges(["a", "b", "ab", "abb"], [0.0, 0.0, -1.0, -2.0])
        [('a', 'b'), ('ab', 'b')]
    """
    vocab = {token: index for index, token in enumerate(tokens)}
    candidates = []
    for token, score in zip(tokens, scores, strict=True):
        local = [
            (token[:cut], token[cut:], score)
            for cut in range(1, len(token))
            if token[:cut] in vocab and token[cut:] in vocab
        ]
        local.sort(key=lambda merge: (vocab[merge[0]], vocab[merge[1]]))
        candidates.extend(local)
    candidates.sort(key=lambda merge: (merge[2], len(merge[0]), len(merge[1])), reverse=True)
    return [(left, right) for left, right, _ in candidates]


def _sentencepiece_bpe(metadata: dict[str, Any], where: str) -> tuple[Tokenizer, None]:
    """Sentencepiece BPE (Llama 2, TinyLlama): "▁" for spaces, byte fallback for unknown text."""
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    merges = _merges(metadata, where)
    if merges is None:
        scores = metadata.get("tokenizer.ggml.scores")
        if scores is None or len(scores) != len(tokens):
            raise CheckpointFormatError(
                f"{where}: a sentencepiece tokenizer needs tokenizer.ggml.scores (one per token) or "
                "tokenizer.ggml.merges; the file has neither. Re-download it or convert it again."
            )
        merges = sentencepiece_merges(tokens, scores)
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, dropout=None, fuse_unk=True, byte_fallback=True)
    )
    # "first": a "▁" before the text, none after special tokens, as transformers' LlamaTokenizer.
    add_prefix = metadata.get("tokenizer.ggml.add_space_prefix", True)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if add_prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer, None


_TOKENIZER_BUILDERS: dict[
    str, Callable[[dict[str, Any], str], tuple[Tokenizer, Set[str] | None]]
] = {
    "gpt2": _byte_level_bpe,
    "llama": _sentencepiece_bpe,
}


def _default_add_bos(model: str) -> bool:
    # Files without the flag: sentencepiece vocabularies add BOS (llama.cpp and transformers agree);
    # for byte-level ones transformers adds none.
    return model == "llama"


def hf_tokenizer(
    metadata: dict[str, Any], where: str
) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """``(tokenizer.json text, tokenizer_config dict, generation_config dict)`` of a GGUF's
    tokenizer metadata; ``(None, {}, {})`` for a file without a tokenizer. ``where`` names the
    file in errors.

    Example:
        >>> tokenizer_json, tokenizer_config, _ = hf_tokenizer(metadata, "model.gguf")  # doctest: +SKIP
        >>> tokenizer_config["eos_token"]  # doctest: +SKIP
        '<|im_end|>'
    """
    model = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if model is None or model == "none" or not tokens:
        return None, {}, {}
    builder = _TOKENIZER_BUILDERS.get(model)
    if builder is None:
        raise UnsupportedModelError(
            f"{where}: tokenizer.ggml.model {model!r} is not supported; supported are "
            f"{', '.join(repr(m) for m in _TOKENIZER_BUILDERS)}."
        )
    tokenizer, alphabet = builder(metadata, where)
    ids = _token_ids(metadata, tokens)
    token_types = metadata.get("tokenizer.ggml.token_type") or []

    # Control tokens (<|im_start|>, <|eot_id|>) are matched whole in text and skipped when decoding
    # with skip_special_tokens. In a byte-level vocabulary a "control" token spelled outside the
    # byte alphabet is a llama.cpp mislabel, so it stays an ordinary token (as in transformers).
    special_ids = {
        index
        for index, (token, kind) in enumerate(zip(tokens, token_types, strict=False))
        if kind == _CONTROL and (alphabet is None or set(token) <= alphabet)
    }
    special_ids.update(ids[name] for name in ("bos", "eos", "unk", "pad") if ids[name] is not None)
    tokenizer.add_special_tokens(
        [AddedToken(tokens[index], normalized=False, special=True) for index in sorted(special_ids)]
    )
    vocab = tokenizer.get_vocab()
    user_defined = [
        AddedToken(token, normalized=False, special=False)
        for token, kind in zip(tokens, token_types, strict=False)
        if kind == _USER_DEFINED and token in vocab
    ]
    if user_defined:
        tokenizer.add_tokens(user_defined)

    def token(name: str) -> str | None:
        return tokens[ids[name]] if ids[name] is not None else None

    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", _default_add_bos(model)))
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
    add_bos = add_bos and token("bos") is not None
    add_eos = add_eos and token("eos") is not None
    single = [f"{token('bos')}:0"] * add_bos + ["$A:0"] + [f"{token('eos')}:0"] * add_eos
    pair = single + [f"{token('bos')}:1"] * add_bos + ["$B:1"] + [f"{token('eos')}:1"] * add_eos
    specials = [(token(name), ids[name]) for name, on in (("bos", add_bos), ("eos", add_eos)) if on]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join(pair), special_tokens=specials
    )

    tokenizer_config = {
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unk"),
        "pad_token": token("pad"),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "chat_template": metadata.get("tokenizer.chat_template"),
    }
    stop_ids = [ids[name] for name in ("eos", "eot", "eom") if ids[name] is not None]
    generation_config = {
        "bos_token_id": ids["bos"],
        "eos_token_id": list(dict.fromkeys(stop_ids)),
    }
    return tokenizer.to_str(), tokenizer_config, generation_config
