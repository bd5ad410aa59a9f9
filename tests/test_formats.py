"""Checkpoint formats as units: the registry, and one source of truth in the course's folders.

A folder `save_pretrained` writes holds config.json (what transformers reads) and
llama_course.json (the exact ModelArgs). Edit config.json, as a Hugging Face user does, and the
edit must count: config.json wins for every field it has, so the folder gives the same model in
transformers and here; llama_course.json fills in only what config.json cannot say.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

import llama_course as lc
from llama_course import checkpoint, formats

import transformers  # the independent reference
transformers.logging.set_verbosity_error()

ARGS = lc.ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=68, multiple_of=32,
                    ffn_dim_multiplier=None, rope_theta=10000.0, max_batch_size=5,
                    max_seq_len=64, tie_word_embeddings=True)
TOKENS = torch.randint(0, 68, (2, 64), generator=torch.Generator().manual_seed(0))


def saved_model(folder):
    torch.manual_seed(0)
    model = lc.Transformer(ARGS)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    return model


def edit_config(folder, **changes):
    file = folder / "config.json"
    cfg = json.loads(file.read_text())
    cfg.update(changes)
    file.write_text(json.dumps(cfg, indent=2))


def logits(model, tokens):
    with torch.no_grad():
        out = model(tokens)
    return out if isinstance(out, torch.Tensor) else out.logits


def test_registry_detects_each_format(tmp_path):
    assert list(formats.FORMATS) == ["llama_course", "hf", "meta", "gguf"]
    for unit in formats.FORMATS.values():
        assert callable(unit.detect) and callable(unit.read) and callable(unit.files)
    model = saved_model(tmp_path / "course")
    assert lc.detect_format(tmp_path / "course") == "llama_course"
    (tmp_path / "course" / "llama_course.json").unlink()
    assert lc.detect_format(tmp_path / "course") == "hf"
    checkpoint.save_meta(model, tmp_path / "meta")
    assert lc.detect_format(tmp_path / "meta") == "meta"
    assert checkpoint.checkpoint_files(tmp_path / "meta") == ["params.json", "consolidated.00.pth"]


def test_unedited_folder_gives_back_the_exact_args(tmp_path):
    saved_model(tmp_path)
    assert checkpoint.read_model_args(tmp_path) == ARGS  # max_batch_size, multiple_of, ...


def test_edited_rope_theta_in_config_json_wins(tmp_path):
    saved_model(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    edit_config(tmp_path, rope_theta=500.0,
                rope_parameters={**cfg["rope_parameters"], "rope_theta": 500.0})
    model = lc.Transformer.from_pretrained(tmp_path)
    assert model.params.rope_theta == 500.0
    assert model.params.max_batch_size == 5  # what only llama_course.json says is kept
    # the folder is one model, whichever library reads it
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    torch.testing.assert_close(logits(model, TOKENS), logits(hf, TOKENS), atol=1e-5, rtol=1e-5)
    unedited = lc.Transformer(ARGS)
    unedited.load_state_dict(model.state_dict())
    assert (logits(unedited, TOKENS) - logits(hf, TOKENS)).abs().max() > 1e-2  # it mattered
    # with both spellings present, rope_parameters is what transformers 5 reads: so do we
    edit_config(tmp_path, rope_theta=20.0)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path)
    assert checkpoint.read_model_args(tmp_path).rope_theta == hf.config.rope_parameters[
        "rope_theta"] == 500.0


def test_edited_hidden_size_fails_naming_the_tensor_and_both_shapes(tmp_path):
    saved_model(tmp_path)
    edit_config(tmp_path, hidden_size=48, head_dim=12)
    assert checkpoint.read_model_args(tmp_path).dim == 48
    with pytest.raises(ValueError) as e:
        lc.Transformer.from_pretrained(tmp_path)
    msg = str(e.value)
    assert re.search(r"model\.(embed_tokens|layers\.\d+\.\w+\.\w+)\.weight", msg), msg
    assert "[68, 32]" in msg and "[68, 48]" in msg or "[32]" in msg and "[48]" in msg, msg


def test_edited_context_and_ffn_width_win_too(tmp_path):
    saved_model(tmp_path)
    edit_config(tmp_path, max_position_embeddings=128)
    args = checkpoint.read_model_args(tmp_path)
    assert args.max_seq_len == 128 and args.max_batch_size == 5
    assert args.multiple_of == 32 and args.hidden_dim is None  # the FFN spelling is untouched
    edit_config(tmp_path, intermediate_size=100)
    assert checkpoint.read_model_args(tmp_path).ffn_hidden_dim == 100


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    from llama_course.tensor_io import write_safetensors
    from safetensors.torch import load_file

    good = {"a": ((2, 3), torch.float32, lambda: torch.ones(2, 3))}
    write_safetensors(tmp_path / "w.safetensors", good)

    def fail():
        raise KeyboardInterrupt  # Ctrl-C in the middle of a save

    bad = {"a": ((2, 3), torch.float32, lambda: torch.zeros(2, 3)),
           "b": ((4,), torch.float32, fail)}
    with pytest.raises(KeyboardInterrupt):
        write_safetensors(tmp_path / "w.safetensors", bad)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    assert torch.equal(load_file(tmp_path / "w.safetensors")["a"], torch.ones(2, 3))
