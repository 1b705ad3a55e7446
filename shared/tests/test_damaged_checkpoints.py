"""Damaged, hostile and unsupported checkpoints: every one gives a CheckpointError naming the file and the
problem, never another exception and never a crash (issue 15)."""

import json
import random
import signal
import struct
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import SafetensorError, safe_open

from paperpack.core.checkpoints import LazyStateDict, load_state_dict, save_state_dict
from paperpack.core.errors import CheckpointError


def raw_file(path, entries, data, metadata=None):
    """Write a safetensors file with exactly the header given (no validation, unlike safetensors' writer)."""
    header = dict(entries)
    if metadata is not None:
        header["__metadata__"] = metadata
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def reference_rejects(path):
    """Whether the safetensors library refuses the file."""
    try:
        with safe_open(path, "pt") as file:
            for key in file.keys():  # noqa: SIM118 (safe_open is not a mapping)
                file.get_tensor(key)
    except (SafetensorError, ValueError, TypeError):
        return True
    return False


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            "tensors 'a' and 'b' overlap at data byte 4",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
                "c": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            },
            "overlap",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
            },
            r"data bytes 4..8 before 'b' belong to no tensor",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
            },
            r"data bytes 0..4 before 'a' belong to no tensor",
        ),
    ],
)
def test_overlapping_or_gapped_offsets_are_refused_as_the_reference_does(tmp_path, entries, message):
    """Issue 15: these were accepted (two keys reading the same bytes, bytes belonging to no key)."""
    path = raw_file(tmp_path / "x.safetensors", entries, bytes(12))
    assert reference_rejects(path)
    with pytest.raises(CheckpointError, match=f"{path}.*{message}"):
        LazyStateDict(path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}, "shape"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4]}, "data_offsets"),
        ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "shape"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "shape"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}, "data_offsets"),
        ({"dtype": "F32", "shape": [1]}, "malformed"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "offsets 0..4 for 8 bytes"),
        ("F32", "malformed"),
    ],
)
def test_malformed_entries(tmp_path, entry, message):
    path = raw_file(tmp_path / "x.safetensors", {"a": entry}, bytes(4))
    with pytest.raises(CheckpointError, match=message):
        LazyStateDict(path)


def test_duplicate_keys_and_non_utf8_headers(tmp_path):
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    raw = f'{{"a": {entry}, "a": {entry}}}'.encode()
    path = tmp_path / "dup.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4))
    with pytest.raises(CheckpointError, match="the key 'a' appears twice"):
        LazyStateDict(path)
    raw = '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'.encode("utf-16")
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4))
    with pytest.raises(CheckpointError, match="not JSON"):
        LazyStateDict(path)


@pytest.mark.parametrize("dtype", ["F4", "F6_E2M3", "F6_E3M2", "Q7"])
def test_unsupported_dtypes_are_reported_as_unsupported_not_corrupt(tmp_path, dtype):
    """Issue 15: an F8_E8M0 file was reported as corrupt."""
    path = raw_file(
        tmp_path / "x.safetensors", {"a": {"dtype": dtype, "shape": [2], "data_offsets": [0, 1]}}, b"\0"
    )
    with pytest.raises(
        CheckpointError, match=f"{path}: tensor 'a' has dtype '{dtype}'.*does not support"
    ) as info:
        LazyStateDict(path)
    assert "corrupt" not in str(info.value)


@pytest.mark.skipif(not hasattr(torch, "float8_e8m0fnu"), reason="this torch has no float8_e8m0fnu")
def test_f8_e8m0_round_trips(tmp_path):
    scales = torch.tensor([1.0, 2.0, 0.5, 2.0**-20]).to(torch.float8_e8m0fnu)
    path = save_state_dict({"scales": scales}, tmp_path / "x.safetensors")
    header = json.loads(path.read_bytes()[8:][: struct.unpack("<Q", path.read_bytes()[:8])[0]])
    assert header["scales"]["dtype"] == "F8_E8M0"
    loaded = load_state_dict(path)["scales"]
    assert loaded.dtype == torch.float8_e8m0fnu
    assert torch.equal(loaded.view(torch.uint8), scales.view(torch.uint8))


@pytest.mark.parametrize("mmap", [True, False])
def test_a_file_truncated_after_its_header_was_read(tmp_path, mmap):
    """Issue 15: a bare ValueError (from mmap) instead of a CheckpointError."""
    path = save_state_dict({"small": torch.ones(3), "big": torch.ones(2**19)}, tmp_path / "m.safetensors")
    state = LazyStateDict(path, mmap=mmap)
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size - 100)
    with pytest.raises(CheckpointError, match=f"{path}.*the file ends at byte .*truncated since its header"):
        state["big"]
    with pytest.raises(CheckpointError, match="tensor data ends at byte"):
        LazyStateDict(path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGBUS semantics checked on Linux")
@pytest.mark.parametrize("mmap", [False, True])
def test_a_file_truncated_while_its_tensors_are_in_use(tmp_path, mmap):
    """Issue 15: a mapped tensor dies with SIGBUS when another process truncates its file. With mmap=False
    tensors own their memory and nothing happens; the default (mapped, for speed) keeps the hazard that
    the docs describe, as the safetensors library's default reader does."""
    path = save_state_dict({"big": torch.arange(2**20, dtype=torch.float32)}, tmp_path / "m.safetensors")
    script = textwrap.dedent(f"""
        import os
        from paperpack.core.checkpoints import LazyStateDict
        tensor = LazyStateDict({str(path)!r}, mmap={mmap})["big"]
        os.truncate({str(path)!r}, 0)
        print(float(tensor.sum()))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120
    )
    if mmap:
        assert result.returncode == -signal.SIGBUS, (result.returncode, result.stderr[-2000:])
    else:
        assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
        assert float(result.stdout) == float(torch.arange(2**20, dtype=torch.float32).sum())


def test_a_replaced_file_is_read_whole_from_the_version_opened(tmp_path):
    """The header and the tensors come from the same open file, so an atomic replacement meanwhile cannot
    mix the old header with the new data."""
    path = save_state_dict({"a": torch.zeros(4), "b": torch.zeros(4)}, tmp_path / "m.safetensors")
    state = LazyStateDict(path)
    save_state_dict({"b": torch.ones(8), "a": torch.ones(2)}, path, overwrite=True)
    assert torch.equal(state["a"], torch.zeros(4)) and torch.equal(state["b"], torch.zeros(4))


def test_index_naming_files_outside_the_folder_is_refused(tmp_path):
    folder = save_state_dict({"a": torch.zeros(4), "b": torch.ones(4)}, tmp_path / "m", max_shard_size=16)
    save_state_dict({"a": torch.zeros(4)}, tmp_path / "outside.safetensors")
    index = folder / "model.safetensors.index.json"
    content = json.loads(index.read_text())
    content["weight_map"]["a"] = "../outside.safetensors"
    index.write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match="a shard must be a file name in"):
        LazyStateDict(folder)
    content["metadata"] = ["not", "a", "mapping"]
    content["weight_map"]["a"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match="not a valid shard index"):
        LazyStateDict(folder)


# --- truncation and bit flips at random offsets of every input kind ---------------------------------------


def _single_file(root):
    state = {"embed": torch.randn(16, 8), "steps": torch.arange(3), "flag": torch.tensor([True, False])}
    return save_state_dict(state, root / "model.safetensors")


def _sharded_folder(root):
    state = {f"layers.{i}.weight": torch.randn(8, 8).to(torch.bfloat16) for i in range(4)}
    state["scale"] = torch.tensor(2.0)
    return save_state_dict(state, root / "sharded", max_shard_size=300)


def _lora_adapter(root):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)
    model.save_pretrained(root / "adapter")
    return root / "adapter"


INPUTS = {"single file": _single_file, "sharded folder": _sharded_folder, "LoRA adapter": _lora_adapter}


def _files(path):
    return sorted(path.iterdir()) if path.is_dir() else [path]


def _read_or_refuse(path):
    """Load every tensor; a CheckpointError is fine, anything else fails the test."""
    try:
        return load_state_dict(path)
    except CheckpointError:
        return None


@pytest.mark.parametrize("kind", list(INPUTS))
def test_truncation_and_bit_flips_at_random_offsets(tmp_path, kind):
    path = INPUTS[kind](tmp_path)
    original = load_state_dict(path)
    rng = random.Random(f"damage {kind}")
    files = [file for file in _files(path) if file.name.endswith((".safetensors", ".index.json"))]
    refused = read = 0
    for file in files:
        pristine = file.read_bytes()
        header_end = 8 + struct.unpack("<Q", pristine[:8])[0] if file.suffix == ".safetensors" else 0
        cuts = {0, 1, 7, 8, 9, header_end - 1, header_end, len(pristine) - 1}
        cuts |= {rng.randrange(len(pristine)) for _ in range(60)}
        for cut in sorted(cut for cut in cuts if 0 <= cut < len(pristine)):
            file.write_bytes(pristine[:cut])
            assert _read_or_refuse(path) is None, f"{file.name} truncated to {cut} bytes was read"
            refused += 1
        flips = [rng.randrange(len(pristine)) for _ in range(150)]
        flips += [rng.randrange(min(header_end or len(pristine), len(pristine))) for _ in range(150)]
        for offset in flips:
            damaged = bytearray(pristine)
            damaged[offset] ^= 1 << rng.randrange(8)
            file.write_bytes(bytes(damaged))
            loaded = _read_or_refuse(path)
            if loaded is None:
                refused += 1
                continue
            read += 1
            if offset >= header_end > 0:  # a flip in the tensor data: that byte differs, nothing else
                assert set(loaded) == set(original)
                changed = [key for key in original if not torch.equal(loaded[key], original[key])]
                assert len(changed) <= 1, changed
        file.write_bytes(pristine)
    assert refused and read  # both outcomes were exercised
    assert load_state_dict(path).keys() == original.keys()
