"""GGUFTokenizer on the real SmolLM2-135M-Instruct GGUF file, against transformers' GGUF tokenizer.

The reference is `AutoTokenizer.from_pretrained(folder, gguf_file=name)`: transformers builds
a Hugging Face `tokenizers` BPE from the same metadata with its own code (Rust merges, its own
byte-level pre-tokenizer), so equal ids on real text say that our reading of the metadata, our
pre-tokenizer and our merge loop are right. The file comes from tests/artifacts.py (fetched
once; under CI=true a missing file fails the test, it is never skipped).
"""

from __future__ import annotations

import sys

import pytest

import llama_course as lc
from llama_course import gguf_tokenizer as gt

from artifacts import smollm2_gguf

TEXTS = {
    "shakespeare": None,  # filled from lc.load_tiny_shakespeare()
    "code": 'def f(x: int) -> int:\n    """Square."""\n    return x ** 2  # {x!r}\n\tpass\r\n',
    "numbers": "In 2024 there were 1,234,567.89 tokens; pi=3.14159, 1e-9, 007 and -42%.",
    "accents": "héllo wörld — naïve café, Ærøskøbing, Straße, Ελληνικά, Русский",
    "emoji": "emoji 🦙🦙 👍🏽 ❤️ 🇫🇷",
    "chinese": "中文文本测试，你好世界。日本語のテキスト、한국어",
    "whitespace": "  leading\n\n\n   runs   of\t\tspaces  \n \u00a0 end   ",
    "contractions": "you're I'M they'LL we'd it's",
    "empty": "",
}


@pytest.fixture(scope="module")
def path():
    return smollm2_gguf()


@pytest.fixture(scope="module")
def tok(path):
    return gt.GGUFTokenizer.from_file(path)


@pytest.fixture(scope="module")
def hf(path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _text(name):
    return lc.load_tiny_shakespeare()[:4000] if name == "shakespeare" else TEXTS[name]


def test_metadata(tok, hf):
    assert tok.vocab_size == 49152 == len(hf)
    assert len(tok.merge_ranks) == 48900 and tok.pre == "smollm"
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (
        hf.convert_tokens_to_ids(hf.bos_token), hf.eos_token_id, hf.pad_token_id) == (1, 2, 2)
    assert sorted(tok.special_tokens.values()) == list(range(17))  # <|endoftext|> ... <empty_output>
    assert set(tok.special_tokens) == {t.content for t in hf.added_tokens_decoder.values()}
    assert tok.stop_ids == [2, 0]  # <|im_end|>, then <|endoftext|>


def test_byte_alphabet_is_gpt2s():
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    assert gt.bytes_to_unicode() == bytes_to_unicode()
    assert gt.bytes_to_unicode()[ord(" ")] == "Ġ" and gt.bytes_to_unicode()[ord("\n")] == "Ċ"


@pytest.mark.parametrize("name", list(TEXTS))
def test_encode_equals_transformers(tok, hf, name):
    text = _text(name)
    ids = tok.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text == hf.decode(ids)
    assert len(ids) < len(text.encode("utf-8")) or not text  # merges were used


def test_special_tokens_in_text(tok, hf):
    text = "<|im_start|>user\nHi<|im_end|><|endoftext|><jupyter_code>x"
    ids = tok.encode(text, allowed_special="all")
    assert ids == hf.encode(text, add_special_tokens=False)
    assert ids[0] == 1 and 2 in ids and 0 in ids
    # not allowed: typed by a user, they stay ordinary text (no header injection)
    plain = tok.encode(text)
    assert not set(plain) & set(range(17)) and tok.decode(plain) == text
    assert plain == hf.encode(text, add_special_tokens=False, split_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=True) == "user\nHix"
    assert tok.encode("a", bos=True, eos=True) == [1, tok.encode("a")[0], 2]
    with pytest.raises(ValueError, match="not a special token"):
        tok.encode("x", allowed_special={"<|eot_id|>"})


def test_digits_are_single_tokens(tok):
    pieces = tok.token_pieces(tok.encode(" 1234567"))
    assert pieces == [" ", *"1234567"]  # SmolLM2 splits every digit (Llama 3: groups of three)
    # digits are cut out first, then GPT-2's split runs on what is left (llama.cpp's "smollm")
    assert tok.pre_tokenize("a  5b") == ["a", "  ", "5", "b"]


WHITESPACE_BEFORE_DIGITS = ["x   12", "\n\n1. First\n\n2. Second", "total:\t\t42", "a  5b"]


@pytest.mark.parametrize("text", WHITESPACE_BEFORE_DIGITS)
def test_whitespace_before_digits_follows_llama_cpp(tok, hf, text):
    """transformers' GGUF tokenizer has no entry for the pre-tokenizer "smollm" and falls back
    to GPT-2's split: "x   12" gives ["x", "ĠĠ", "Ġ", "1", "2"] there, where llama.cpp (regexes
    "\\p{N}" then GPT-2's, llama-vocab.cpp) gives ["x", "ĠĠĠ", "1", "2"]. The reference here is
    transformers' tokenizer with that pre-tokenizer put back (tokenizers' Digits + ByteLevel)."""
    import copy
    from tokenizers import pre_tokenizers
    backend = copy.deepcopy(hf.backend_tokenizer)
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    ids = tok.encode(text)
    assert ids == backend.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a poet."},
     {"role": "user", "content": "Speak of the people, 1234 times."},
     {"role": "assistant", "content": "All: resolved, resolved."},
     {"role": "user", "content": "  Again?\n"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_prompt_equals_apply_chat_template(tok, hf, messages):
    ref = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ref = ref["input_ids"] if hasattr(ref, "keys") else ref
    assert tok.encode_chat(messages) == list(ref)
    text = hf.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert tok.format_chat(messages, add_generation_prompt=False) == text
    if messages[0]["role"] != "system":  # the template's default system message
        assert "named SmolLM, trained by Hugging Face" in text


def test_llama3_chat_template_equals_llama3_tokenizer():
    template = ("{% for message in messages %}{% set content = '<|start_header_id|>' + "
                "message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + "
                "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
                "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
    fmt = gt.chat_format(template, "<|begin_of_text|>")
    messages = CONVERSATIONS[1]
    tok = lc.Llama3Tokenizer({bytes([b]): b for b in range(256)})  # the format needs no merges
    assert fmt(messages) == tok.format_dialog(messages)
    assert fmt(messages, False) == tok.format_dialog(messages, add_generation_prompt=False)


def test_bpe_applies_merges_in_rank_order():
    tokens = ["a", "b", "c", "ab", "bc"]
    first_ab = gt.GGUFTokenizer(tokens, ["a b", "b c"])
    first_bc = gt.GGUFTokenizer(tokens, ["b c", "a b"])
    assert first_ab.encode("abc") == [3, 2] and first_bc.encode("abc") == [0, 4]
    assert first_ab.decode([3, 2]) == "abc"


def test_errors(tok, path, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        gt.GGUFTokenizer.from_file(tmp_path / "missing.gguf")
    (tmp_path / "x.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ValueError, match="not a GGUF file"):
        gt.GGUFTokenizer.from_file(tmp_path / "x.safetensors")
    (tmp_path / "cut.gguf").write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(ValueError, match="cut.gguf.*cut short"):
        gt.GGUFTokenizer.from_file(tmp_path / "cut.gguf")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([49152])
    with pytest.raises(ValueError, match="'bloom'"):
        gt.GGUFTokenizer(["a"], [], pre="bloom")
    with pytest.raises(ValueError, match="chat template not supported.*Cutting"):
        gt.chat_format("{{- bos_token }}\nCutting Knowledge Date: December 2023 {% for m %}")
    with pytest.raises(ValueError, match="no chat template"):
        gt.chat_format(None)
    with pytest.raises(ValueError, match="'role' and 'content'"):
        tok.encode_chat([{"content": "no role"}])


def test_sentencepiece_gguf_is_refused_by_name(tmp_path):
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(tmp_path / "llama2.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    with pytest.raises(ValueError, match="'llama'.*SentencePiece"):
        gt.GGUFTokenizer.from_file(tmp_path / "llama2.gguf")


def test_metadata_reader_equals_gguf_packages(path):
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(path))
    ours = gt.read_gguf_metadata(path)
    assert ours.keys() == {k for k in reader.fields if not k.startswith("GGUF.")}
    for key, value in ours.items():
        assert value == pytest.approx(reader.fields[key].contents()), key
    assert gt.read_gguf_metadata(path, "tokenizer.").keys() == {
        k for k in ours if k.startswith("tokenizer.")}


def test_missing_regex_package_gives_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "regex", None)  # makes `import regex` fail
    with pytest.raises(ImportError, match="pip install regex"):
        gt.GGUFTokenizer(["a"], [])
