"""The tokenizer a GGUF file carries: byte-level BPE read from its metadata, and its chat format.

A GGUF file (llama.cpp, Ollama, LM Studio) has no `tokenizer.json`: the vocabulary travels as
metadata. For a byte-level BPE (`tokenizer.ggml.model = "gpt2"`, the kind SmolLM2 and Llama 3
use) the file holds

* `tokenizer.ggml.tokens`: every token, spelled in GPT-2's *byte alphabet* (each of the 256
  bytes written as one printable character: a space is `Ġ`, a newline `Ċ`);
* `tokenizer.ggml.merges`: the learned merges, best first ("Ġ t" joins `Ġ` and `t`);
* `tokenizer.ggml.token_type`: 1 normal, 3 control (`<|im_start|>`), 4 user-defined;
* `tokenizer.ggml.pre`: the name of the pre-tokenizer, the regular expressions that cut text
  into pieces before merging (merges never cross a piece boundary);
* the ids of bos / eos / pad, and `tokenizer.chat_template`, the Jinja template of the chat
  format.

Encoding = split the text at special tokens, cut the rest into pieces, write each piece's UTF-8
bytes in the byte alphabet, then apply merges: always the adjacent pair that comes first in the
merge list. Decoding maps the characters back to bytes. The chat format is built in code for the
templates recognised here (ChatML, plain Llama 3); any other template is refused by name.

Reads the metadata with `struct` alone; needs the package `regex` (Unicode classes like \\p{L},
installed with tiktoken or transformers).
"""

from __future__ import annotations

import mmap
import re
import struct
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

from .tokenizer import checked_ids

Message = Mapping[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}

# GPT-2's split: contractions, words and numbers with an optional leading space, punctuation
# runs, then whitespace (a run before a word leaves its last space to the word).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp's pre-tokenizer names -> the regexes applied one after the other (each one cuts the
# pieces the previous one left). SmolLM2 first isolates every digit, then splits like GPT-2.
PRE_TOKENIZERS = {
    "gpt2": [GPT2_SPLIT],
    "default": [GPT2_SPLIT],
    "smollm": [r"\p{N}", GPT2_SPLIT],
    "llama-bpe": [LLAMA3_SPLIT],
    "llama3": [LLAMA3_SPLIT],
    "llama-v3": [LLAMA3_SPLIT],
}
CONTROL, USER_DEFINED = 3, 4


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: printable bytes stand for themselves, the other 68 (space,
    control bytes, ...) are moved to code points 256+, so every token is a visible string."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# GGUF value types (llama.cpp's gguf.h): id -> struct format; 8 is a string, 9 an array
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}


def read_gguf_metadata(path: Union[str, Path], prefix: str = "") -> dict:
    """The key/value metadata at the head of a GGUF file (keys starting with `prefix`).

    Written out with `struct` rather than `gguf.GGUFReader`, which also maps every tensor and
    turns each of the 98,000 strings of a vocabulary into a numpy view: 7 s for SmolLM2's
    file, against 0.2 s here. tests/test_gguf_tokenizer.py checks it equals the reader.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    with open(path, "rb") as f:
        data = f.read(24)
        if data[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (it does not start with b'GGUF')")
        version, _, n_kv = struct.unpack_from("<IQQ", data, 4)
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        pos, out = 24, {}
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                for _ in range(n_kv):
                    key, pos = _read_value(buf, pos, 8)
                    (kind,), pos = struct.unpack_from("<I", buf, pos), pos + 4
                    value, pos = _read_value(buf, pos, kind)
                    if key.startswith(prefix):
                        out[key] = value
            except (struct.error, ValueError, KeyError) as e:
                raise ValueError(f"{path}: the GGUF metadata is cut short or corrupt ({e})"
                                 ) from None
    return out


def _read_value(buf, pos: int, kind: int):
    if kind in _SCALARS:
        fmt = "<" + _SCALARS[kind]
        return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
    if kind == 8:  # uint64 length, then UTF-8 bytes
        (n,) = struct.unpack_from("<Q", buf, pos)
        if pos + 8 + n > len(buf):
            raise ValueError("a string runs past the end of the file")
        return bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8"), pos + 8 + n
    if kind == 9:  # element type, uint64 count, elements
        item, n = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if item in _SCALARS:  # numbers: one unpack for all of them
            fmt = f"<{n}{_SCALARS[item]}"
            return list(struct.unpack_from(fmt, buf, pos)), pos + struct.calcsize(fmt)
        values = []
        for _ in range(n):
            value, pos = _read_value(buf, pos, item)
            values.append(value)
        return values, pos
    raise ValueError(f"unknown GGUF value type {kind}")


class GGUFTokenizer:
    """A GGUF file's own byte-level BPE tokenizer and chat format.

    >>> tok = GGUFTokenizer.from_file("SmolLM2-135M-Instruct.Q4_1.gguf")
    >>> tok.encode("Hello world")                       # [19556, 905]
    >>> tok.encode_chat([{"role": "user", "content": "Hi!"}])  # ends with the assistant's header
    """

    def __init__(self, tokens: Sequence[str], merges: Sequence[str],
                 token_types: Optional[Sequence[int]] = None, pre: str = "gpt2",
                 bos_id: Optional[int] = None, eos_id: Optional[int] = None,
                 pad_id: Optional[int] = None, chat_template: Optional[str] = None):
        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported: "
                             f"supported {sorted(PRE_TOKENIZERS)}")
        try:
            import regex  # the `re` module has no Unicode classes like \p{L}
        except ImportError:
            raise ImportError("The GGUF tokenizer needs the package regex: pip install regex"
                              ) from None
        self.tokens = list(tokens)
        self.token_to_id = {t: i for i, t in enumerate(self.tokens)}
        self.merge_ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        types = list(token_types) if token_types is not None else [1] * len(self.tokens)
        self.special_tokens = {t: i for i, t in enumerate(self.tokens)
                               if types[i] in (CONTROL, USER_DEFINED)}
        self._special_ids = set(self.special_tokens.values())
        self.pre = pre
        self.splits = [regex.compile(p) for p in PRE_TOKENIZERS[pre]]
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.chat_template = chat_template
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._bpe = lru_cache(maxsize=65536)(self._bpe_uncached)

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "GGUFTokenizer":
        """Read the tokenizer of a GGUF file (only the metadata: the weights are not loaded)."""
        f = {k[len("tokenizer."):]: v for k, v in read_gguf_metadata(path, "tokenizer.").items()}
        if "ggml.tokens" not in f:
            raise ValueError(f"{path} holds no tokenizer (no tokenizer.ggml.tokens)")
        model = f.get("ggml.model")
        if model != "gpt2":
            raise ValueError(f"{path}: tokenizer.ggml.model is {model!r}; only byte-level BPE "
                             "('gpt2': Llama 3, SmolLM2, Qwen) is supported (Llama 2's 'llama' "
                             "is SentencePiece)")
        if "ggml.merges" not in f:
            raise ValueError(f"{path}: a byte-level BPE needs tokenizer.ggml.merges")
        return cls(f["ggml.tokens"], f["ggml.merges"], f.get("ggml.token_type"),
                   pre=f.get("ggml.pre", "gpt2"), bos_id=f.get("ggml.bos_token_id"),
                   eos_id=f.get("ggml.eos_token_id"), pad_id=f.get("ggml.padding_token_id"),
                   chat_template=f.get("chat_template"))

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end an answer: eos and the end-of-turn tokens this vocabulary has."""
        ends = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<|eom_id|>")
        ids = [self.eos_id] if self.eos_id is not None else []
        return ids + [self.special_tokens[t] for t in ends
                      if t in self.special_tokens and self.special_tokens[t] not in ids]

    # ------------------------------------------------------------------ encode
    def pre_tokenize(self, text: str) -> list[str]:
        """Cut ordinary text into the pieces that BPE merges inside of."""
        pieces = [text] if text else []
        for split in self.splits:
            pieces = [p for piece in pieces for p in _split_isolated(split, piece)]
        return pieces

    def _bpe_uncached(self, piece: str) -> tuple[int, ...]:
        """One piece -> ids: start from its bytes, merge the best-ranked pair until none applies."""
        word = [self.byte_encoder[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            ranks = [self.merge_ranks.get(pair, float("inf")) for pair in zip(word, word[1:])]
            best = min(ranks)
            if best == float("inf"):
                break
            i = ranks.index(best)  # the leftmost occurrence of the best pair
            word[i:i + 2] = [word[i] + word[i + 1]]
        return tuple(self.token_to_id[t] for t in word)

    def encode(self, text: str, bos: bool = False, eos: bool = False,
               allowed_special: Union[str, Iterable[str]] = ()) -> list[int]:
        """Text -> ids. Special-token strings in `text` stay ordinary text unless they are in
        `allowed_special` ("all" allows every one), as in `Llama3Tokenizer.encode`."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        allowed = (set(self.special_tokens) if allowed_special == "all"
                   else set(allowed_special))
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]!r} is not a special token of this vocabulary")
        ids = [self.bos_id] if bos else []
        parts = [text]
        if allowed:  # longest first, so that a token is never cut by a shorter one inside it
            alternatives = "|".join(map(re.escape, sorted(allowed, key=len, reverse=True)))
            parts = re.split(f"({alternatives})", text)
        for k, part in enumerate(parts):
            if k % 2:  # re.split puts the matched separators at odd positions
                ids.append(self.special_tokens[part])
            else:
                for piece in self.pre_tokenize(part):
                    ids.extend(self._bpe(piece))
        return ids + ([self.eos_id] if eos else [])

    # ------------------------------------------------------------------ decode
    def token_bytes(self, i: int) -> bytes:
        token = self.tokens[i]
        if i in self._special_ids or not set(token) <= self.byte_decoder.keys():
            return token.encode("utf-8")
        return bytes(self.byte_decoder[c] for c in token)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text (bytes that do not form valid UTF-8 become U+FFFD)."""
        ids = checked_ids(ids, self.vocab_size)
        special = self._special_ids if skip_special_tokens else set()
        data = b"".join(self.token_bytes(i) for i in ids if i not in special)
        return data.decode("utf-8", errors="replace")

    def token_pieces(self, ids: Sequence[int]) -> list[str]:
        """How each id reads on its own (for tables)."""
        return [self.token_bytes(int(i)).decode("utf-8", errors="replace") for i in ids]

    # ------------------------------------------------------------------ chat
    def format_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The conversation as the file's chat template writes it (see `chat_format`)."""
        return chat_format(self.chat_template, self._name(self.bos_id))(
            messages, add_generation_prompt)

    def encode_chat(self, messages: Sequence[Message],
                    add_generation_prompt: bool = True) -> list[int]:
        """The conversation as ids: the model's answer is what follows them."""
        return self.encode(self.format_chat(messages, add_generation_prompt),
                           allowed_special="all")

    def _name(self, i: Optional[int]) -> str:
        return "" if i is None else self.tokens[i]

    def __repr__(self) -> str:
        return (f"GGUFTokenizer(vocab_size={self.vocab_size}, merges={len(self.merge_ranks)}, "
                f"pre={self.pre!r}, special={len(self.special_tokens)})")


def _split_isolated(pattern, text: str) -> list[str]:
    """Every match is a piece, and so is any text between matches (none is dropped)."""
    pieces, end = [], 0
    for m in pattern.finditer(text):
        if m.start() > end:
            pieces.append(text[end:m.start()])
        if m.end() > m.start():
            pieces.append(m.group())
        end = m.end()
    if end < len(text):
        pieces.append(text[end:])
    return pieces


# ---------------------------------------------------------------------------- chat templates
_NL = r"(?:\\n|\n)"  # a newline, written as an escape or as itself in the template's source
_CHATML_TURN = re.compile(r"'<\|im_start\|>'\s*\+\s*message\['role'\]\s*\+\s*'" + _NL +
                          r"'\s*\+\s*message\['content'\]\s*\+\s*'<\|im_end\|>'")
_CHATML_DEFAULT_SYSTEM = re.compile(
    r"messages\[0\]\['role'\]\s*!=\s*'system'\s*%\}\s*\{\{\s*'<\|im_start\|>system" + _NL +
    r"(.*?)<\|im_end\|>" + _NL + r"'\s*\}\}", re.S)


def chat_format(template: Optional[str], bos_token: str = ""):
    """The function `(messages, add_generation_prompt) -> str` that `template` describes.

    Recognised (instead of running Jinja): ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`,
    SmolLM2 and Qwen-style files), with the default system message the template may add, and
    Llama 3's plain header format (`<|start_header_id|>role<|end_header_id|>\\n\\n`, content
    stripped, `<|eot_id|>`). Llama 3.1+ templates (tools, dates) are refused by name.
    """
    if not template:
        raise ValueError("this GGUF file has no chat template (tokenizer.chat_template)")
    if _CHATML_TURN.search(template) and "tool" not in template:
        m = _CHATML_DEFAULT_SYSTEM.search(template)
        default_system = m.group(1).replace("\\'", "'") if m else None
        return lambda messages, gen=True: _chatml(messages, gen, default_system)
    if ("<|start_header_id|>" in template and "<|eot_id|>" in template
            and "Cutting Knowledge" not in template and "tool" not in template):
        return lambda messages, gen=True: _llama3(messages, gen, bos_token)
    head = template[:60].replace("\n", "\\n")
    raise ValueError(f"chat template not supported: {head!r}... Supported: ChatML and plain "
                     "Llama 3 headers; for any other, use transformers' apply_chat_template")


def _check_messages(messages: Sequence[Message]) -> None:
    if isinstance(messages, Mapping) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for m in messages:
        if not isinstance(m, Mapping) or not {"role", "content"} <= set(m):
            raise ValueError(f"a message is a dict with 'role' and 'content', got {m!r}")


def _chatml(messages, add_generation_prompt, default_system) -> str:
    _check_messages(messages)
    text = ""
    if default_system is not None and messages[0]["role"] != "system":
        text += f"<|im_start|>system\n{default_system}<|im_end|>\n"
    for m in messages:
        text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _llama3(messages, add_generation_prompt, bos_token) -> str:
    _check_messages(messages)
    text = bos_token
    for m in messages:
        text += f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
    if add_generation_prompt:
        text += "<|start_header_id|>assistant<|end_header_id|>\n\n"
    return text
