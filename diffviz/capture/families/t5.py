"""Words from T5 tokens, and one prompt's words matched across text encoders.

A T5 tokenizer may mark a word's first piece with SentencePiece's ``"▁"`` ("▁circle", or "▁" followed by
character pieces for a word it does not know), or split on whitespace first and mark nothing. So diffviz
asks the tokenizer's own decoder: a piece starts a word when decoding it after the piece before puts
whitespace between them. Each punctuation piece is a word of its own (CLIP splits punctuation off a word
the same way, so SD3's CLIP and T5 readings of a prompt give the same words). ``</s>`` and ``<pad>``
belong to no word.
"""

from __future__ import annotations

import difflib
import string

import torch

from ...traces import Token
from .base import PromptTokens

_PUNCTUATION = set(string.punctuation)


def starts_word(tokenizer, previous: int, piece: int) -> bool:
    """Whether token ``piece`` begins a new word after token ``previous``: the decoder puts whitespace
    between them (SentencePiece's "▁", a whitespace pre-tokenizer's join, byte-level BPE's "Ġ")."""
    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    return text([previous, piece]) != text([previous]) + text([piece]) or text([piece])[:1].isspace()


def read(tokenizer, row: list[int], offset: int = 0,
         encoder: str = "t5") -> tuple[str, list[str], list[Token], list[int]]:
    """(prompt, words, tokens, special) of one T5 input-id row: ``tokens[i]`` is key position ``offset + i``;
    ``special`` the key position of the first ``</s>``."""
    pieces = tokenizer.convert_ids_to_tokens(row)
    end = tokenizer.eos_token_id
    n = row.index(end) if end in row else len(row)
    specials = set(tokenizer.all_special_ids)
    word_ids: list[list[int]] = []
    tokens: list[Token] = []
    previous, previous_punct = None, True
    for i, (piece, tid) in enumerate(zip(pieces, row, strict=True)):
        word = None
        if i < n and tid not in specials:
            text = tokenizer.decode([tid], clean_up_tokenization_spaces=False).strip()
            punct = bool(text) and all(c in _PUNCTUATION for c in text)
            if punct or previous_punct or previous is None or starts_word(tokenizer, previous, tid):
                word_ids.append([])
            word_ids[-1].append(tid)
            word, previous, previous_punct = len(word_ids) - 1, tid, punct
        tokens.append(Token(offset + i, piece, word, encoder))
    words = [tokenizer.decode(ids, clean_up_tokenization_spaces=False).strip() for ids in word_ids]
    prompt = tokenizer.decode(row[:n], skip_special_tokens=True)
    return prompt, words, tokens, [offset + n] if n < len(row) else []


def align(words: list[str], other: list[str]) -> list[int | None]:
    """For each word of ``other`` (the same text as ``words``, split by another tokenizer), the index of
    the word of ``words`` holding its first character, compared without case; None where none does."""
    def chars(ws: list[str]) -> tuple[str, list[int]]:
        text, owner = "", []
        for i, w in enumerate(ws):
            text += w.lower()
            owner += [i] * len(w)
        return text, owner

    a, a_owner = chars(words)
    b, _ = chars(other)
    where: dict[int, int] = {}  # char of b -> char of a
    for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            where[block.b + k] = block.a + k
    out: list[int | None] = []
    start = 0
    for w in other:
        hit = next((where[c] for c in range(start, start + len(w)) if c in where), None)
        out.append(None if hit is None else a_owner[hit])
        start += len(w)
    return out


class OneT5:
    """Mixin for the families whose one text encoder is T5 (``pipe.text_encoder``, ``pipe.tokenizer``):
    PixArt, Wan, CogVideoX. The prompt is the first encoder call's row, the negative prompt the next's."""

    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.pipe.text_encoder]

    def read_prompt(self, ids: list[list[torch.Tensor]], prompt: int) -> PromptTokens:
        tok = self.pipe.tokenizer
        text, words, tokens, special = read(tok, first_row(ids[0], prompt))
        negative = read(tok, first_row(ids[0][1:], prompt))[0] if len(ids[0]) > 1 else None
        return PromptTokens(text, negative, words, tokens, special=special)


def first_row(calls: list[torch.Tensor], prompt: int) -> list[int]:
    """The input-id row of prompt number ``prompt`` in the first call of an encoder (the prompt batch)."""
    ids = calls[0]
    return ids[min(prompt, ids.shape[0] - 1)].tolist()
