"""A character-level tokenizer with Llama 3's special tokens.

Real Llama 3 uses a 128K-token byte-pair encoding (see `llama_course.llama3_tokenizer`); for
training from scratch on one megabyte of Shakespeare a character vocabulary is the honest
choice: 65 symbols, nothing to learn, and every loss figure compares directly with nanoGPT's
`shakespeare_char`. The special tokens keep Llama 3's names and, as in Llama 3, come *after*
the ordinary vocabulary, so character ids are the same with or without them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"  # Llama 3 itself ships no pad token; Llama 3.1 calls its one <|finetune_right_pad_id|>
SPECIAL_TOKENS = (BOS, EOS, PAD)
TOKENIZER_FILE = "char_tokenizer.json"



def checked_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
    """Ids as Python ints, refusing any outside 0..vocab_size-1 with a clear error (every
    tokenizer of the course decodes through this check)."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")
    return ids


class CharTokenizer:
    """Maps each character of a fixed alphabet to an id; specials follow the characters."""

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        if len(set(chars)) != len(chars):
            raise ValueError("chars must not repeat")
        bad = [c for c in chars if len(c) != 1]
        if bad:
            raise ValueError(f"chars must be single characters, got {bad[0]!r}")
        self.chars = chars
        self.special_tokens = list(SPECIAL_TOKENS)
        self.itos = chars + self.special_tokens  # id -> string
        self.stoi = {c: i for i, c in enumerate(chars)}  # character -> id
        self.special_ids = {s: len(chars) + i for i, s in enumerate(self.special_tokens)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The alphabet is every distinct character of `text`, sorted (nanoGPT's order)."""
        if not text:
            raise ValueError("cannot build a tokenizer from empty text")
        return cls(sorted(set(text)))

    # ------------------------------------------------------------------ ids
    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def bos_id(self) -> int:
        return self.special_ids[BOS]

    @property
    def eos_id(self) -> int:
        return self.special_ids[EOS]

    @property
    def pad_id(self) -> int:
        return self.special_ids[PAD]

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Text -> ids, optionally wrapped in <|begin_of_text|> ... <|end_of_text|>."""
        try:
            ids = [self.stoi[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in self.stoi)
            raise ValueError(
                f"character {text[pos]!r} (U+{ord(text[pos]):04X}) at position {pos} is not in "
                f"the tokenizer's vocabulary of {len(self.chars)} characters") from None
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text; special tokens appear by name unless skipped."""
        out = []
        for i in checked_ids(ids, self.vocab_size):
            if skip_special_tokens and i >= len(self.chars):
                continue
            out.append(self.itos[i])
        return "".join(out)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path) -> Path:
        """Write the vocabulary as JSON next to a checkpoint."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        data = {"type": "char", "chars": self.chars, "special_tokens": self.special_tokens}
        # UTF-8 whatever the platform's locale (the characters are stored as themselves)
        text = json.dumps(data, ensure_ascii=False, indent=1)
        (path / TOKENIZER_FILE).write_bytes(text.encode("utf-8"))
        return path / TOKENIZER_FILE

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "CharTokenizer":
        """Load the vocabulary saved with a training run (a folder or the JSON file)."""
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} in {path}: was it saved by a training run?")
        data = json.loads(file.read_bytes())  # bytes: json detects UTF-8 itself
        if data.get("type") != "char" or not isinstance(data.get("chars"), list):
            raise ValueError(f"{file} is not a character tokenizer file")
        if data.get("special_tokens", list(SPECIAL_TOKENS)) != list(SPECIAL_TOKENS):
            raise ValueError(f"{file} has special tokens {data['special_tokens']}, "
                             f"expected {list(SPECIAL_TOKENS)}")
        return cls(data["chars"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={''.join(self.chars)!r})"
