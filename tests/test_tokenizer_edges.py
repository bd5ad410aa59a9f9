"""CharTokenizer at its edges: every error message in full, the last valid id, a saved file
read back by name or by folder, a file from another tokenizer refused. Public API only."""

import json

import pytest

import llama_course as lc


def test_construction_errors():
    with pytest.raises(ValueError, match=r"^chars must not repeat$"):
        lc.CharTokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match=r"^chars must be single characters, got 'bc'$"):
        lc.CharTokenizer(["a", "bc", "de"])
    with pytest.raises(ValueError, match=r"^cannot build a tokenizer from empty text$"):
        lc.CharTokenizer.from_text("")


def test_the_last_id_decodes_and_the_next_is_refused():
    tok = lc.CharTokenizer.from_text("ab")
    assert tok.decode([tok.vocab_size - 1]) == tok.special_tokens[-1]
    with pytest.raises(ValueError, match=r"^token id 5 is outside the vocabulary \(0..4\)$"):
        tok.decode([5])


def test_saved_file_round_trips_from_a_nested_folder_and_by_file(tmp_path):
    tok = lc.CharTokenizer.from_text("héllo wörld")
    file = tok.save_pretrained(tmp_path / "a" / "b")  # parents created
    data = json.loads(file.read_text())
    assert data == {"type": "char", "chars": tok.chars, "special_tokens": tok.special_tokens}
    for where in (tmp_path / "a" / "b", file):
        again = lc.CharTokenizer.from_pretrained(where)
        assert again.chars == tok.chars and again.encode("wörld") == tok.encode("wörld")


@pytest.mark.parametrize("content, message", [
    ({"type": "bpe", "chars": ["a"]}, "is not a character tokenizer file"),
    ({"type": "char", "chars": "ab"}, "is not a character tokenizer file"),
    ({"chars": ["a"]}, "is not a character tokenizer file"),
    ({"type": "char", "chars": ["a"], "special_tokens": ["<s>"]},
     r"has special tokens \['<s>'\], expected \['<\|begin_of_text\|>', '<\|end_of_text\|>'"),
])
def test_foreign_files_are_refused(tmp_path, content, message):
    file = tmp_path / "tok.json"
    file.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=f"^{file}.* {message}" if "special" in message
                       else f"^{file} {message}$"):
        lc.CharTokenizer.from_pretrained(file)


def test_a_file_without_special_tokens_gets_the_defaults(tmp_path):
    file = tmp_path / "tok.json"
    file.write_text(json.dumps({"type": "char", "chars": ["x", "y"]}))
    assert lc.CharTokenizer.from_pretrained(file).vocab_size == 5


def test_repr_shows_the_alphabet():
    assert repr(lc.CharTokenizer.from_text("ba")) == "CharTokenizer(vocab_size=5, chars='ab')"


def test_saved_file_is_readable_utf8_one_entry_per_line(tmp_path):
    """A learner opens char_tokenizer.json: its characters appear as themselves (UTF-8 on every
    platform, no \\u escapes) and each one sits on its own line."""
    tok = lc.CharTokenizer.from_text("héllo wörld 日本")
    text = tok.save_pretrained(tmp_path).read_bytes().decode("utf-8")
    assert '"é"' in text and '"日"' in text and "\\u" not in text
    assert len(text.splitlines()) > len(tok.chars)
    assert lc.CharTokenizer.from_pretrained(tmp_path).chars == tok.chars
