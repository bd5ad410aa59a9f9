"""The real Llama 3 tokenizer: tiktoken byte-level BPE, Llama 3's special tokens, chat format.

Llama 3 replaced Llama 2's 32K SentencePiece vocabulary with a 128K byte-pair encoding run by
OpenAI's `tiktoken` library. The checkpoint's `tokenizer.model` (in `original/` on Hugging
Face) is a plain-text *rank file*: one line per token, the token's bytes in base64, a space,
and its rank. The rank is both the token id and the merge priority: encoding splits the text
into pieces with a regular expression (so merges never cross a word/number/punctuation
boundary), turns each piece into bytes, then repeatedly merges the adjacent pair whose joined
bytes have the lowest rank.

After the 128,000 ordinary tokens come 256 special tokens (ids 128000-128255):
`<|begin_of_text|>`, `<|end_of_text|>`, the chat headers `<|start_header_id|>` /
`<|end_header_id|>`, `<|eot_id|>` (end of turn) and reserved placeholders. Their ids are the
same in every Llama 3.x release; Llama 3.1 gave names to a few reserved slots
(`<|finetune_right_pad_id|>`, `<|eom_id|>`, `<|python_tag|>`), which changes only how those
ids print.

`tiktoken` is an optional dependency (`pip install "llama-course[llama3]"`).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence, Union

from .tokenizer import checked_ids

# Llama 3's pre-tokenizer: contractions ('s 't 're 've 'm 'll 'd, any case), words with an
# optional leading non-letter, numbers in groups of at most three digits, punctuation runs
# (with an optional leading space), newlines, and whitespace.
PAT_STR = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

NUM_SPECIAL_TOKENS = 256
BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"  # end of turn: where an assistant's answer stops

# tiktoken panics on very long inputs; split them first (limits from Meta's reference code)
_MAX_CHARS = 400_000
_MAX_RUN = 25_000  # longest run of only-whitespace or only-non-whitespace per call


def special_token_names(variant: str = "llama3") -> list[str]:
    """The 256 special tokens in id order (id = number of ordinary tokens + position).

    "llama3": Meta's Llama 3 tokenizer (meta-llama/llama3): the named tokens at positions
    0, 1, 6, 7 and 9, every other slot `<|reserved_special_token_N|>` numbered 0..250 in order.
    "llama3.1": Llama 3.1, 3.2 and 3.3 as their Hugging Face tokenizer names them: slots 4, 8
    and 10 become `<|finetune_right_pad_id|>`, `<|eom_id|>` and `<|python_tag|>`, and the
    reserved numbering runs 0..247.
    "llama-models": the names in Meta's current reference code (the `llama-models` package,
    shared by Llama 3.1-3.3): as "llama3.1", plus `<|step_id|>` (slot 5) and `<|image|>`
    (slot 11, the vision models); the reserved numbering runs 0..245.
    """
    if variant == "llama3":
        named = {0: BEGIN_OF_TEXT, 1: END_OF_TEXT, 6: START_HEADER, 7: END_HEADER, 9: EOT}
    elif variant == "llama3.1":
        named = {0: BEGIN_OF_TEXT, 1: END_OF_TEXT, 4: "<|finetune_right_pad_id|>",
                 6: START_HEADER, 7: END_HEADER, 8: "<|eom_id|>", 9: EOT,
                 10: "<|python_tag|>"}
    elif variant == "llama-models":
        named = {0: BEGIN_OF_TEXT, 1: END_OF_TEXT, 4: "<|finetune_right_pad_id|>",
                 5: "<|step_id|>", 6: START_HEADER, 7: END_HEADER, 8: "<|eom_id|>", 9: EOT,
                 10: "<|python_tag|>", 11: "<|image|>"}
    else:
        raise ValueError(f"unknown special-token variant {variant!r}: use 'llama3', "
                         "'llama3.1' or 'llama-models'")
    names, reserved = [], 0
    for slot in range(NUM_SPECIAL_TOKENS):
        if slot in named:
            names.append(named[slot])
        else:
            names.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return names


# ---------------------------------------------------------------------------- rank files
def read_rank_file(path: Union[str, Path]) -> dict[bytes, int]:
    """Parse a tiktoken rank file (`tokenizer.model`): base64 token, space, rank, per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist (on Hugging Face it is "
                                "original/tokenizer.model)")
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise ValueError(f"{path}, line {lineno}: {line[:60]!r} is not "
                                 "'<base64 token> <rank>': is this a tiktoken rank file? "
                                 "(a SentencePiece tokenizer.model is binary)") from None
    if not ranks:
        raise ValueError(f"{path} holds no tokens")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks must be 0..{len(ranks) - 1}, each used once")
    return ranks


def write_rank_file(ranks: Mapping[bytes, int], path: Union[str, Path]) -> Path:
    """Write `ranks` in the tiktoken format that Llama 3's tokenizer.model uses."""
    path = Path(path)
    lines = [f"{base64.b64encode(tok).decode('ascii')} {rank}\n"
             for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    path.write_text("".join(lines), encoding="ascii")
    return path


def train_toy_ranks(text: str, num_merges: int) -> dict[bytes, int]:
    """A toy byte-level BPE vocabulary: the 256 bytes, then up to `num_merges` learned merges.

    For demos and tests only (Llama 3's 128K ranks were learned on trillions of tokens).
    The text is cut into words that keep their leading space (as Llama's pattern does for
    ordinary words) and whitespace runs; each step merges the most frequent adjacent pair
    (ties broken by the smaller pair of byte strings, so the result is deterministic). A merge
    that spells a token already in the vocabulary adds no new rank.
    """
    ranks = {bytes([b]): b for b in range(256)}
    words: dict[tuple[bytes, ...], int] = {}
    for piece in re.findall(r" ?\S+|\s+", text):  # " word" pieces, whitespace runs
        key = tuple(bytes([b]) for b in piece.encode("utf-8"))
        words[key] = words.get(key, 0) + 1
    for _ in range(num_merges):
        counts: dict[tuple[bytes, bytes], int] = {}
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                counts[pair] = counts.get(pair, 0) + n
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merged = best[0] + best[1]
        if merged not in ranks:  # two merge paths can spell the same bytes
            ranks[merged] = len(ranks)
        new_words: dict[tuple[bytes, ...], int] = {}
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + n
        words = new_words
    return ranks


# ---------------------------------------------------------------------------- the tokenizer
def _require_tiktoken():
    try:
        import tiktoken
    except ImportError:
        raise ImportError(
            "The Llama 3 tokenizer needs the optional dependency tiktoken: "
            "pip install tiktoken   (or: pip install \"llama-course[llama3]\")") from None
    return tiktoken


Message = Mapping[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


class Llama3Tokenizer:
    """Llama 3's tokenizer: `from_file("original/tokenizer.model")`, `encode`, `decode`, chat.

    >>> tok = Llama3Tokenizer.from_file("Llama-3.2-1B/original/tokenizer.model")
    >>> tok.encode("Hello world", bos=True)       # [128000, 9906, 1917]
    >>> tok.encode_dialog([{"role": "user", "content": "Hi!"}])   # ends with the assistant header
    """

    pat_str = PAT_STR

    def __init__(self, mergeable_ranks: Mapping[bytes, int], variant: str = "llama3",
                 name: str = "llama3"):
        tiktoken = _require_tiktoken()
        self.mergeable_ranks = dict(mergeable_ranks)
        self.num_base_tokens = len(self.mergeable_ranks)
        self.variant = variant
        self.special_tokens: dict[str, int] = {
            tok: self.num_base_tokens + i for i, tok in enumerate(special_token_names(variant))}
        self.model = tiktoken.Encoding(name=name, pat_str=self.pat_str,
                                       mergeable_ranks=self.mergeable_ranks,
                                       special_tokens=self.special_tokens)
        self._id_to_special = {i: t for t, i in self.special_tokens.items()}

    @classmethod
    def from_file(cls, path: Union[str, Path], variant: str = "llama3") -> "Llama3Tokenizer":
        """Load a tiktoken rank file, e.g. a Llama 3.x checkpoint's original/tokenizer.model.

        `variant` chooses the names of the special tokens ("llama3" or "llama3.1"); the ids of
        the ones that matter (begin/end of text, headers, eot) are the same in both.
        """
        _require_tiktoken()  # fail on the missing dependency before parsing 128K lines
        path = Path(path)
        if path.is_dir():
            for candidate in (path / "tokenizer.model", path / "original" / "tokenizer.model"):
                if candidate.is_file():
                    path = candidate
                    break
        return cls(read_rank_file(path), variant=variant, name=path.name)

    # ------------------------------------------------------------------ ids
    @property
    def vocab_size(self) -> int:
        """Ordinary tokens + 256 special tokens (128,256 for Llama 3)."""
        return self.num_base_tokens + len(self.special_tokens)

    @property
    def bos_id(self) -> int:
        return self.special_tokens[BEGIN_OF_TEXT]

    @property
    def eos_id(self) -> int:
        return self.special_tokens[END_OF_TEXT]

    @property
    def eot_id(self) -> int:
        return self.special_tokens[EOT]

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end a generation: end of text, end of turn (and end of message in 3.1)."""
        ids = [self.eos_id, self.eot_id]
        if "<|eom_id|>" in self.special_tokens:
            ids.append(self.special_tokens["<|eom_id|>"])
        return ids

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, bos: bool = False, eos: bool = False,
               allowed_special: Union[str, Iterable[str]] = ()) -> list[int]:
        """Text -> ids, optionally framed by <|begin_of_text|> ... <|end_of_text|>.

        Special-token strings inside `text` are encoded as ordinary text (so user input can't
        inject a header), unless listed in `allowed_special` ("all" allows every one).
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        allowed = "all" if allowed_special == "all" else set(allowed_special)
        ids: list[int] = []
        for i in range(0, len(text), _MAX_CHARS):
            for chunk in _split_long_runs(text[i:i + _MAX_CHARS], _MAX_RUN):
                ids.extend(self.model.encode(chunk, allowed_special=allowed,
                                             disallowed_special=()))
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text (bytes that do not form valid UTF-8 become U+FFFD)."""
        ids = checked_ids(ids, self.vocab_size)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._id_to_special]
        return self.model.decode(ids)

    def token_pieces(self, ids: Sequence[int]) -> list[str]:
        """How each id reads on its own (for tables): bytes decoded with replacement."""
        return [self._id_to_special.get(int(i)) or
                self.model.decode_single_token_bytes(int(i)).decode("utf-8", errors="replace")
                for i in ids]

    # ------------------------------------------------------------------ chat format
    def encode_header(self, role: str) -> list[int]:
        """<|start_header_id|>role<|end_header_id|> followed by a blank line."""
        return ([self.special_tokens[START_HEADER]] + self.encode(role)
                + [self.special_tokens[END_HEADER]] + self.encode("\n\n"))

    def encode_message(self, message: Message) -> list[int]:
        """One turn: its header, the stripped content, then <|eot_id|>."""
        _check_message(message)
        return (self.encode_header(message["role"]) + self.encode(message["content"].strip())
                + [self.eot_id])

    def encode_dialog(self, messages: Sequence[Message],
                      add_generation_prompt: bool = True) -> list[int]:
        """A whole conversation as Llama 3 Instruct models were trained to read it.

        <|begin_of_text|>, each message, and (by default) an open assistant header, so the
        model's continuation is the assistant's answer; it ends the answer with <|eot_id|>.
        """
        if isinstance(messages, Mapping) or not messages:
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        ids = [self.bos_id]
        for m in messages:
            ids += self.encode_message(m)
        if add_generation_prompt:
            ids += self.encode_header("assistant")
        return ids

    def format_dialog(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The same conversation as text (what `decode(encode_dialog(...))` gives)."""
        return self.decode(self.encode_dialog(messages, add_generation_prompt))

    def __repr__(self) -> str:
        return (f"Llama3Tokenizer(vocab_size={self.vocab_size}, "
                f"base_tokens={self.num_base_tokens}, variant={self.variant!r})")


def _check_message(message: Message) -> None:
    if not isinstance(message, Mapping) or not {"role", "content"} <= set(message):
        raise ValueError(f"a message is a dict with 'role' and 'content', got {message!r}")
    if not isinstance(message["role"], str) or not isinstance(message["content"], str):
        raise ValueError("a message's role and content must be strings")


def _split_long_runs(s: str, max_run: int) -> Iterator[str]:
    """Cut `s` so that no piece holds more than `max_run` consecutive whitespace or
    consecutive non-whitespace characters (tiktoken's regex engine can overflow its stack on
    such runs). Short texts come back whole."""
    start, run, prev_space = 0, 0, None
    for i, ch in enumerate(s):
        is_space = ch.isspace()
        if is_space == prev_space:
            run += 1
            if run > max_run:
                yield s[start:i]
                start, run = i, 1
        else:
            run, prev_space = 1, is_space
    yield s[start:]

