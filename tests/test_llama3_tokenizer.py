"""The Llama 3 tokenizer on a small rank file written here, against Hugging Face `tokenizers`.

The reference BPE is Hugging Face's Rust `tokenizers` library, built from the same rank file
by transformers' TikTokenConverter with Llama 3's split pattern spelled out below (as it
appears in Meta's llama3 tokenizer.py): a different engine than tiktoken, which the package
uses. Special-token ids are checked against the ids the released Llama 3 models use.
"""

from __future__ import annotations

import base64
import sys

import pytest

from llama_course import llama3_tokenizer as l3

import tiktoken  # noqa: F401  (the optional dependency: a test extra, never skipped)

# Meta's pattern, written out here independently of the package's constant
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\n"
          "Resolved. resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy "
          "to the people.\n") * 3 + "In 2024 there were 1234567 tokens; they're here, I'M sure. "

TEXTS = [
    "First Citizen: Before we proceed any further, hear me speak.",
    "You're sure? THEY'LL know... I'd say 1234567 + 89 = 1234656!",
    "  leading spaces,\ttabs\n\n\nand   runs   of  spaces  ",
    "héllo wörld — naïve café, 日本語のテキスト, emoji 🦙🦙",
    "",
]


@pytest.fixture(scope="module")
def rank_file(tmp_path_factory):
    """256 single bytes, then merges learned from CORPUS, written line by line here."""
    ranks = l3.train_toy_ranks(CORPUS, 150)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    with open(path, "w") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(base64.b64encode(token).decode() + " " + str(rank) + "\n")
    return path, ranks


@pytest.fixture(scope="module")
def tok(rank_file):
    return l3.Llama3Tokenizer.from_file(rank_file[0])


@pytest.fixture(scope="module")
def reference(rank_file, tmp_path_factory):
    import tokenizers  # noqa: F401
    import transformers.convert_slow_tokenizer as conv
    mp = pytest.MonkeyPatch()
    mp.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's loader would otherwise cache by path
    try:
        hf = conv.TikTokenConverter(vocab_file=str(rank_file[0]), pattern=LLAMA3_PATTERN,
                                    extra_special_tokens=l3.special_token_names()).converted()
    finally:
        mp.undo()
    return hf


def test_pattern_is_llama3s():
    assert l3.PAT_STR == LLAMA3_PATTERN


def test_toy_ranks_are_a_valid_bpe(rank_file):
    _, ranks = rank_file
    assert 256 + 100 < len(ranks) <= 256 + 150  # a merge that re-spells a token adds none
    assert sorted(ranks.values()) == list(range(len(ranks)))
    for token, rank in ranks.items():  # every merged token joins two earlier tokens
        if len(token) > 1:
            assert any(token[:i] in ranks and token[i:] in ranks and
                       max(ranks[token[:i]], ranks[token[i:]]) < rank
                       for i in range(1, len(token))), token
    assert l3.train_toy_ranks(CORPUS, 150) == ranks  # deterministic


@pytest.mark.parametrize("text", TEXTS)
def test_encoding_equals_hugging_face_tokenizers(tok, reference, text):
    ids = tok.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) or not text  # merges were used


def test_numbers_split_in_groups_of_three(tok):
    pieces = tok.token_pieces(tok.encode(" 1234567"))
    digits = [p for p in pieces if p.strip()]
    assert "".join(digits).strip() == "1234567"
    # a group never crosses the 3-digit boundaries 123|456|7 of Llama 3's pattern
    joined, bounds = "", set()
    for p in pieces:
        joined += p
        bounds.add(len(joined.strip()))
    assert {3, 6} <= bounds


def test_special_tokens_llama3(tok, rank_file):
    n = len(rank_file[1])
    s = tok.special_tokens
    assert len(s) == 256 and sorted(s.values()) == list(range(n, n + 256))
    assert tok.vocab_size == n + 256
    assert (tok.bos_id, tok.eos_id, tok.eot_id) == (n, n + 1, n + 9)
    assert s["<|start_header_id|>"] == n + 6 and s["<|end_header_id|>"] == n + 7
    assert [s[f"<|reserved_special_token_{i}|>"] for i in (0, 3, 4, 5, 250)] == [
        n + 2, n + 5, n + 8, n + 10, n + 255]


@pytest.mark.parametrize("variant,expected", [
    # ids in the released models (128,000 ordinary tokens)
    ("llama3", {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001,
                "<|reserved_special_token_2|>": 128004, "<|start_header_id|>": 128006,
                "<|end_header_id|>": 128007, "<|reserved_special_token_4|>": 128008,
                "<|eot_id|>": 128009, "<|reserved_special_token_250|>": 128255}),
    ("llama3.1", {"<|begin_of_text|>": 128000, "<|finetune_right_pad_id|>": 128004,
                  "<|reserved_special_token_2|>": 128005, "<|start_header_id|>": 128006,
                  "<|eom_id|>": 128008, "<|eot_id|>": 128009, "<|python_tag|>": 128010,
                  "<|reserved_special_token_3|>": 128011,
                  "<|reserved_special_token_247|>": 128255}),
])
def test_special_token_ids_of_the_released_models(variant, expected):
    names = l3.special_token_names(variant)
    ids = {name: 128000 + i for i, name in enumerate(names)}
    assert len(names) == len(set(names)) == 256
    assert {k: ids[k] for k in expected} == expected


def test_bos_eos_and_special_text(tok, reference):
    ids = tok.encode("Hi there", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "<|begin_of_text|>Hi there<|end_of_text|>"
    assert tok.decode(ids, skip_special_tokens=True) == "Hi there"
    # special-token text typed by a user stays ordinary text unless explicitly allowed
    plain = tok.encode("<|eot_id|>")
    assert tok.eot_id not in plain and tok.decode(plain) == "<|eot_id|>"
    allowed = tok.encode("a<|eot_id|>b", allowed_special="all")
    assert allowed == reference.encode("a<|eot_id|>b", add_special_tokens=False).ids
    assert tok.eot_id in allowed


def test_chat_format(tok):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "  Speak, speak.\n"}]
    expected_text = ("<|begin_of_text|>"
                     "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                     "<|start_header_id|>user<|end_header_id|>\n\nSpeak, speak.<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok.encode_dialog(messages)
    assert ids == tok.encode(expected_text, allowed_special="all")
    assert tok.format_dialog(messages) == expected_text
    assert ids.count(tok.special_tokens["<|start_header_id|>"]) == 3
    assert ids.count(tok.eot_id) == 2 and ids[0] == tok.bos_id
    closed = tok.encode_dialog(messages, add_generation_prompt=False)
    assert closed == ids[: len(closed)] and closed[-1] == tok.eot_id
    assert tok.eot_id in tok.stop_ids and tok.eos_id in tok.stop_ids


def test_chat_format_equals_transformers_chat_template(tok, reference):
    import transformers
    # the template Meta's Llama 3 Instruct models ship, in Jinja (as on the Hugging Face Hub)
    template = ("{% for message in messages %}{% set content = '<|start_header_id|>' + "
                "message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + "
                "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
                "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=reference,
                                              bos_token="<|begin_of_text|>",
                                              chat_template=template)
    messages = [{"role": "system", "content": "You are a poet."},
                {"role": "user", "content": "Speak of the people, 1234 times."},
                {"role": "assistant", "content": "All: resolved, resolved."},
                {"role": "user", "content": "Again?"}]
    ref = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ref = ref["input_ids"] if isinstance(ref, dict) or hasattr(ref, "keys") else ref
    assert tok.encode_dialog(messages) == list(ref)


def test_long_runs_are_split_and_round_trip(tok):
    text = "a" * 26_000 + " " * 30_000 + "b"
    pieces = list(l3._split_long_runs(text, 25_000))
    assert "".join(pieces) == text and len(pieces) == 3

    def longest_run(s):
        best = run = 0
        for i, ch in enumerate(s):
            run = run + 1 if i and ch.isspace() == s[i - 1].isspace() else 1
            best = max(best, run)
        return best
    assert [longest_run(p) for p in pieces] == [25_000, 25_000, 5_000]
    assert tok.decode(tok.encode(text[:30_000] + "b")) == text[:30_000] + "b"
    short = "First Citizen: hear me"
    assert list(l3._split_long_runs(short, 25_000)) == [short]


def test_rank_file_io_and_errors(tmp_path, rank_file):
    path, ranks = rank_file
    assert l3.read_rank_file(path) == ranks
    again = l3.write_rank_file(ranks, tmp_path / "copy.model")
    assert again.read_bytes() == path.read_bytes()
    # from_file also accepts a checkpoint folder holding original/tokenizer.model
    (tmp_path / "ckpt" / "original").mkdir(parents=True)
    l3.write_rank_file(ranks, tmp_path / "ckpt" / "original" / "tokenizer.model")
    assert l3.Llama3Tokenizer.from_file(tmp_path / "ckpt").vocab_size == len(ranks) + 256
    with pytest.raises(FileNotFoundError, match="original/tokenizer.model"):
        l3.read_rank_file(tmp_path / "missing.model")
    (tmp_path / "sp.model").write_bytes(b"\x0a\x0b\x00\xffbinary sentencepiece")
    with pytest.raises(ValueError, match="tiktoken rank file"):
        l3.read_rank_file(tmp_path / "sp.model")
    (tmp_path / "gap.model").write_text("YQ== 0\nYg== 2\n")
    with pytest.raises(ValueError, match="ranks must be"):
        l3.read_rank_file(tmp_path / "gap.model")


def test_decode_errors(tok):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="role"):
        tok.encode_dialog([{"content": "no role"}])
    with pytest.raises(ValueError, match="variant"):
        l3.special_token_names("llama2")


def test_missing_tiktoken_gives_a_clear_message(rank_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # makes `import tiktoken` fail
    with pytest.raises(ImportError, match="pip install tiktoken"):
        l3.Llama3Tokenizer.from_file(rank_file[0])


# ---------------------------------------------------------------------------- the real files
# Meta's real tokenizer.model against Meta's reference code, both from Meta's `llama-models`
# wheel (tests/artifacts.py: fetched once; under CI=true a missing file fails, never skips).
REAL_TEXTS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.",
    "In 2024 there were 1234567 tokens; pi=3.14159 and 1,000,000.00 dollars.",
    "You're sure? THEY'LL know... I'd say so!",
    "def f(x):\n    return {'a': x ** 2}  # comment\n\ttabs\r\n",
    "héllo wörld — naïve café, Ærøskøbing, Straße, Ελληνικά, Русский текст, हिन्दी",
    "中文文本测试，你好世界。日本語のテキスト、한국어 텍스트",
    "emoji 🦙🦙 👍🏽 ❤️ 🇫🇷",
    "  leading\n\n\n   runs   of\t\tspaces  \n \u00a0 end   ",
    "",
]


def _import_from_wheel(module: str):
    """Import `module` from Meta's llama-models wheel (a zip on sys.path, nothing installed)."""
    import importlib
    from artifacts import llama_models_wheel
    wheel = str(llama_models_wheel())
    if wheel not in sys.path:
        sys.path.append(wheel)  # appended: an installed llama_models, if any, would win
    return importlib.import_module(module)


@pytest.fixture(scope="module")
def meta():
    """Meta's reference Tokenizer, loaded from the cached tokenizer.py next to tokenizer.model.

    Its one relative import (`..tokenizer_utils.load_bpe_file`) gets a stand-in package whose
    loader is tiktoken's own reader of the same file format.
    """
    import importlib.util
    import types

    import tiktoken.load
    from artifacts import llama3_tokenizer_dir
    folder = llama3_tokenizer_dir()
    pkg, sub = "_meta_llama_models", "_meta_llama_models.llama3"
    for name in (pkg, sub):
        sys.modules.setdefault(name, types.ModuleType(name)).__path__ = []
    utils = types.ModuleType(pkg + ".tokenizer_utils")
    utils.load_bpe_file = lambda p: tiktoken.load.load_tiktoken_bpe(str(p))
    sys.modules[utils.__name__] = utils
    spec = importlib.util.spec_from_file_location(sub + ".tokenizer", folder / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Tokenizer(folder / "tokenizer.model")


@pytest.fixture(scope="module")
def real():
    from artifacts import llama3_tokenizer_dir
    return l3.Llama3Tokenizer.from_file(llama3_tokenizer_dir(), variant="llama-models")


def test_real_vocabulary_and_special_tokens_equal_metas(real, meta):
    assert real.vocab_size == meta.n_words == 128256 and real.num_base_tokens == 128000
    assert real.special_tokens == meta.special_tokens  # all 256 names and ids
    assert (real.bos_id, real.eos_id, real.eot_id) == (meta.bos_id, meta.eos_id, meta.eot_id)
    assert sorted(real.stop_ids) == sorted(meta.stop_tokens)
    # the ids that matter are the same under every variant's names
    for variant in ("llama3", "llama3.1"):
        names = l3.special_token_names(variant)
        for tok in ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eot_id|>"):
            assert 128000 + names.index(tok) == meta.special_tokens[tok]


@pytest.mark.parametrize("text", REAL_TEXTS)
def test_real_encoding_equals_metas(real, meta, text):
    ids = real.encode(text, bos=True, eos=True)
    assert ids == meta.encode(text, bos=True, eos=True)
    assert real.decode(ids) == meta.decode(ids)
    assert real.decode(ids, skip_special_tokens=True) == text
    assert len(ids) - 2 < len(text.encode("utf-8")) or not text  # the real merges were used


def test_real_special_tokens_and_long_text_equal_metas(real, meta):
    text = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|python_tag|>x"
    assert real.encode(text, allowed_special="all") == meta.encode(
        text, bos=False, eos=False, allowed_special="all")
    assert real.encode(text) == meta.encode(text, bos=False, eos=False)  # typed: plain text
    long = "word " * 30_000 + "a" * 30_000 + " " * 26_000 + "end"  # split before tiktoken
    assert real.encode(long) == meta.encode(long, bos=False, eos=False)


def test_real_pieces_show_llama3s_split(real):
    pieces = real.token_pieces(real.encode(" Hello world 1234567"))
    assert pieces == [" Hello", " world", " ", "123", "456", "7"]


def test_real_chat_format_equals_metas_chat_format(real, meta):
    datatypes = _import_from_wheel("llama_models.datatypes")
    chat_format = _import_from_wheel("llama_models.llama3.chat_format")
    reference = chat_format.ChatFormat(meta)
    messages = [{"role": "system", "content": "You are a poet."},
                {"role": "user", "content": "Speak of the people, 1234 times. 你好 🦙"},
                {"role": "assistant", "content": "All: resolved, resolved."},
                {"role": "user", "content": "Again?"}]
    raw = [datatypes.RawMessage(role=m["role"], content=m["content"]) for m in messages]
    assert real.encode_dialog(messages) == reference.encode_dialog_prompt(raw).tokens
    # Meta's code keeps surrounding whitespace; ours strips it, as the Hub's template does
    padded = [{"role": "user", "content": "  Again?\n"}]
    raw = [datatypes.RawMessage(role="user", content="Again?")]
    assert real.encode_dialog(padded) == reference.encode_dialog_prompt(raw).tokens
