"""A CLIP tokenizer built from a word list, with no files from a model hub.

Every listed word is one token (``"circle</w>"``); any other word falls apart into
character tokens, the way a real CLIP tokenizer splits a rare word into subwords. The alphabet is
printable ASCII: accents are dropped ("café" -> "cafe") and any other character outside it (an
em dash, an emoji, CJK) becomes "?", so that nothing is read as the end token and the model, and a
trace, see every word that follows.
"""

from __future__ import annotations

import json
import string
import tempfile
from itertools import pairwise
from pathlib import Path

from tokenizers import Regex, normalizers
from transformers import CLIPTokenizer

START, END = "<|startoftext|>", "<|endoftext|>"
# CLIP lower-cases its input, so upper-case letters never reach the BPE.
_CHARS = [c for c in string.printable if c.strip() and not c.isupper()]


def read_any_text(tokenizer: CLIPTokenizer) -> CLIPTokenizer:
    """Give ``tokenizer`` (in place; also returned) a normalizer that maps all text into its alphabet,
    printable ASCII: decompose (NFKD) and drop accents, collapse whitespace, lower-case, and replace
    every other character by "?". Without it such a character is the unknown token, which is the end
    token. Set at every load: transformers rebuilds CLIP's normalizer from its own defaults."""
    tokenizer.backend_tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFKD(), normalizers.Replace(Regex(r"\p{Mn}"), ""),
        normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[^ -~]"), "?"),
    ])
    return tokenizer


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Split ``word`` the way CLIP's BPE does with the merges in ``ranks``."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(pairwise(parts))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def _merges_for(words: list[str]) -> list[tuple[str, str]]:
    """Merges under which every word in ``words`` is one token (checked by simulating the BPE)."""
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        while len(parts := _bpe(word, ranks)) > 1:
            ranks[(parts[0], parts[1])] = len(ranks)
    for word in words:  # a later merge can only ever join more; never split an earlier word
        assert len(_bpe(word, ranks)) == 1, word
    return list(ranks)


def build_tokenizer(words: list[str], model_max_length: int = 77) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` in which each of ``words`` (lower case, no spaces) is a single token.

    Token ids: 0..len(chars)*2-1 are characters (alone and word-final), then merges, then the words'
    intermediate pieces, then ``<|startoftext|>`` and ``<|endoftext|>`` (also the padding token).
    """
    words = sorted({w.lower() for w in words})
    bad = [w for w in words if not w or any(c not in _CHARS for c in w)]
    if bad:
        raise ValueError(f"words must be lower-case printable ASCII without spaces; got {bad}")
    merges = _merges_for(words)
    vocab: dict[str, int] = {}
    for token in _CHARS + [c + "</w>" for c in _CHARS] + [a + b for a, b in merges] + [START, END]:
        vocab.setdefault(token, len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        tokenizer = CLIPTokenizer(
            str(vocab_file), str(merges_file), model_max_length=model_max_length,
            bos_token=START, eos_token=END, pad_token=END, unk_token=END,
        )
    return read_any_text(tokenizer)


def unknown_words(tokenizer: CLIPTokenizer, prompt: str) -> list[str]:
    """The words of ``prompt`` that are not a single token of ``tokenizer``: the model never saw them."""
    vocab = tokenizer.get_vocab()
    words = [w for w in prompt.lower().replace(",", " ").replace(".", " ").split()]
    return [w for w in words if w + "</w>" not in vocab]
