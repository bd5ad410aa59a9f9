"""The Llama 3 tokenizer at its edges: every error message in full, the toy BPE trainer against
a plain rewrite of its rule, long-run splitting against Meta's own splitter, the pieces of
partial UTF-8 tokens, skipping special tokens against Hugging Face `tokenizers`, and the chat
helpers' arguments. Module-level API (llama_course.llama3_tokenizer), as the main test file."""

from __future__ import annotations

import collections
import re
import sys

import pytest

from llama_course import llama3_tokenizer as l3

from test_llama3_tokenizer import CORPUS, rank_file, reference, tok  # noqa: F401  (fixtures)


# ---------------------------------------------------------------------------- references
def reference_bpe(text: str, num_merges: int) -> dict[bytes, int]:
    """train_toy_ranks' documented rule, written plainly: every occurrence of every piece kept
    in a list (no counting dicts), the most frequent adjacent pair merged left to right, ties
    to the smaller pair, a merge that spells a known token adds no rank."""
    words = [[bytes([b]) for b in piece.encode("utf-8")]
             for piece in re.findall(r" ?\S+|\s+", text)]
    vocab = [bytes([b]) for b in range(256)]
    for _ in range(num_merges):
        freq = collections.Counter((w[i], w[i + 1]) for w in words for i in range(len(w) - 1))
        if not freq:
            break
        top = max(freq.values())
        best = min(p for p, n in freq.items() if n == top)
        merged = best[0] + best[1]
        if merged not in vocab:
            vocab.append(merged)
        new_words = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words.append(out)
        words = new_words
    return {t: i for i, t in enumerate(vocab)}


@pytest.fixture(scope="module")
def meta_splitter():
    """Meta's `_split_whitespaces_or_nonwhitespaces`, from the cached reference tokenizer.py
    (the class only: the 128K-token file is not loaded)."""
    import importlib.util
    import types

    from artifacts import llama3_tokenizer_dir
    folder = llama3_tokenizer_dir()
    pkg, sub = "_meta_llama_models", "_meta_llama_models.llama3"
    for name in (pkg, sub):
        sys.modules.setdefault(name, types.ModuleType(name)).__path__ = []
    utils = sys.modules.setdefault(pkg + ".tokenizer_utils",
                                   types.ModuleType(pkg + ".tokenizer_utils"))
    if not hasattr(utils, "load_bpe_file"):
        import tiktoken.load
        utils.load_bpe_file = lambda p: tiktoken.load.load_tiktoken_bpe(str(p))
    spec = importlib.util.spec_from_file_location(sub + ".tokenizer_class", folder / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Tokenizer._split_whitespaces_or_nonwhitespaces


# ---------------------------------------------------------------------------- training, splitting
@pytest.mark.parametrize("text, merges", [
    (CORPUS, 200),
    ("low low low low lower lower newest newest newest widest widest " * 2 + "\n\n  x", 40),
])
def test_toy_ranks_follow_the_frequency_rule(text, merges):
    assert l3.train_toy_ranks(text, merges) == reference_bpe(text, merges)


@pytest.mark.parametrize("text", [
    "a" * 60_000,
    " " * 51_000 + "b" * 25_001 + "\n" * 3,
    "ab " * 10 + "x" * 25_000 + " " + "y" * 25_001,
    "",
])
def test_long_runs_split_as_metas_splitter(meta_splitter, text):
    assert list(l3._split_long_runs(text, 25_000)) == list(meta_splitter(text, 25_000))


# ---------------------------------------------------------------------------- rank files
def test_rank_file_error_messages_in_full(tmp_path):
    missing = tmp_path / "missing.model"
    want = (f"tokenizer file {missing} does not exist (on Hugging Face it is "
            "original/tokenizer.model)")
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(want)}$"):
        l3.read_rank_file(missing)
    long_line = "not base64 at all, and longer than sixty characters to show the cut " * 2
    bad = tmp_path / "bad.model"
    bad.write_text("YQ== 0\n\nYg== 1\n" + long_line + "\n")
    want = (f"{bad}, line 4: {(long_line + chr(10)).encode()[:60]!r} is not '<base64 token> "
            "<rank>': is this a tiktoken rank file? (a SentencePiece tokenizer.model is binary)")
    with pytest.raises(ValueError, match=f"^{re.escape(want)}$"):
        l3.read_rank_file(bad)
    empty = tmp_path / "empty.model"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match=f"^{re.escape(str(empty))} holds no tokens$"):
        l3.read_rank_file(empty)
    gap = tmp_path / "gap.model"
    gap.write_text("YQ== 0\nYg== 2\n")
    with pytest.raises(ValueError, match=f"^{re.escape(str(gap))}: ranks must be 0..1, "
                                         "each used once$"):
        l3.read_rank_file(gap)


def test_a_corrupt_base64_token_is_refused(tmp_path):
    path = tmp_path / "corrupt.model"
    path.write_text("YQ== 0\nY*g== 1\n")  # '*' is not base64: refused, not silently dropped
    with pytest.raises(ValueError, match="line 2"):
        l3.read_rank_file(path)


def test_unknown_variant_message():
    with pytest.raises(ValueError, match=r"^unknown special-token variant 'llama2': use "
                                         r"'llama3', 'llama3.1' or 'llama-models'$"):
        l3.special_token_names("llama2")


def test_missing_tiktoken_message_in_full(monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    with pytest.raises(ImportError, match=r'^The Llama 3 tokenizer needs the optional '
                                          r'dependency tiktoken: pip install tiktoken   '
                                          r'\(or: pip install "llama-course\[llama3\]"\)$'):
        l3._require_tiktoken()


# ---------------------------------------------------------------------------- the tokenizer
def test_names_variant_and_repr(rank_file):
    path, ranks = rank_file
    from_file = l3.Llama3Tokenizer.from_file(path, variant="llama3.1")
    assert repr(from_file) == (f"Llama3Tokenizer(vocab_size={len(ranks) + 256}, "
                               f"base_tokens={len(ranks)}, variant='llama3.1')")
    assert repr(from_file.model) == "<Encoding 'tokenizer.model'>"  # tiktoken's name: the file
    assert repr(l3.Llama3Tokenizer(ranks).model) == "<Encoding 'llama3'>"


def test_skip_special_tokens_equals_hugging_face(tok, reference):
    ids = tok.encode_dialog([{"role": "user", "content": "hear me speak"}])
    want = reference.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=True) == want
    assert "<|" not in want and "hear me speak" in want


def test_pieces_of_partial_utf8_tokens_are_replacement_characters(tok):
    ids = tok.encode("é")  # two bytes, no merge in the toy vocabulary: two byte tokens
    assert len(ids) == 2 and tok.token_pieces(ids) == ["\ufffd", "\ufffd"]
    assert tok.token_pieces([tok.bos_id, tok.eot_id]) == ["<|begin_of_text|>", "<|eot_id|>"]


def test_encode_and_chat_error_messages(tok):
    with pytest.raises(ValueError, match=r"^text must be a str, got bytes$"):
        tok.encode(b"bytes")
    listed = r"^messages must be a non-empty list of \{'role', 'content'\} dicts$"
    for bad in ([], {"role": "user", "content": "a dict, not a list of them"}):
        with pytest.raises(ValueError, match=listed):
            tok.encode_dialog(bad)
    for message in ({"role": "user", "content": 5}, {"role": 5, "content": "x"}):
        with pytest.raises(ValueError, match=r"^a message's role and content must be strings$"):
            tok.encode_dialog([message])


def test_format_dialog_without_the_generation_prompt(tok):
    messages = [{"role": "user", "content": "Speak, speak."}]
    text = tok.format_dialog(messages, add_generation_prompt=False)
    assert text == tok.decode(tok.encode_dialog(messages, add_generation_prompt=False))
    assert text.endswith("Speak, speak.<|eot_id|>")
