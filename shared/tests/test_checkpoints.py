import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from paperpack.core.checkpoints import (
    LazyStateDict,
    StateDictWriter,
    _format,
    check_compatible,
    load_state_dict,
    parse_size,
    save_state_dict,
    stream_state_dicts,
)
from paperpack.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from paperpack.core.testing.contracts import assert_no_partial_output, assert_state_dicts_equal


def make_state(dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(32, 8, generator=generator).to(dtype),
        "layers.0.weight": torch.randn(8, 8, generator=generator).to(dtype),
        "layers.0.bias": torch.randn(8, generator=generator).to(dtype),
        "layers.1.weight": torch.randn(8, 8, generator=generator).to(dtype),
        "scale": torch.tensor(2.0, dtype=dtype),
        "steps": torch.arange(5),
        "flags": torch.tensor([True, False]),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["file", "folder", "sharded"])
def test_round_trip(tmp_path, dtype, layout):
    state = make_state(dtype)
    target = tmp_path / ("model.safetensors" if layout == "file" else "model")
    size = 600 if layout == "sharded" else "5GB"
    path = save_state_dict(state, target, max_shard_size=size, metadata={"source": "test"})
    assert_state_dicts_equal(load_state_dict(path), state)
    lazy = LazyStateDict(path)
    assert lazy.metadata["source"] == "test"
    assert lazy.metadata["format"] == "pt"
    if layout == "sharded":
        assert len(lazy.files) > 1
        index = json.loads((target / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(state)
        # the official reader agrees with ours, shard by shard
        for file in lazy.files:
            for key, tensor in load_file(file).items():
                assert torch.equal(tensor, state[key])
    else:
        assert len(lazy.files) == 1
        assert_state_dicts_equal(load_file(lazy.files[0]), state)


def test_reads_files_written_by_safetensors(tmp_path):
    state = make_state()
    save_file(state, tmp_path / "x.safetensors", metadata={"format": "pt"})
    assert_state_dicts_equal(load_state_dict(tmp_path / "x.safetensors"), state)


def test_model_folder_round_trip_loads_with_from_pretrained(tmp_path, tiny_lm):
    from transformers import LlamaForCausalLM

    model, _ = tiny_lm
    model.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    assert len(LazyStateDict(tmp_path / "hf").files) > 1
    state = load_state_dict(tmp_path / "hf")
    assert_state_dicts_equal(state, model.state_dict())
    out = stream_state_dicts(
        [tmp_path / "hf"], lambda key, ts: ts[0], tmp_path / "copy", max_shard_size="200KB", progress=False
    )
    assert (out / "config.json").is_file()
    assert (out / "model.safetensors.index.json").is_file()
    reloaded = LlamaForCausalLM.from_pretrained(out)
    assert_state_dicts_equal(reloaded.state_dict(), model.state_dict())


def test_keys_of_sharded_checkpoint_read_no_tensor_data(tmp_path):
    path = save_state_dict(make_state(), tmp_path / "m", max_shard_size=600)
    lazy = LazyStateDict(path)
    for file in lazy.files:  # destroy every shard: only the index may be read from now on
        file.write_bytes(b"")
    assert sorted(lazy.keys()) == sorted(make_state())
    assert len(lazy) == len(make_state()) and "scale" in lazy
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        lazy["scale"]


def test_lazy_reads_one_tensor_at_a_time(tmp_path):
    path = save_state_dict(make_state(), tmp_path / "m.safetensors")
    lazy = LazyStateDict(path)
    assert lazy.shape("embed.weight") == (32, 8) and lazy.dtype("steps") == torch.int64
    assert torch.equal(lazy["layers.1.weight"], make_state()["layers.1.weight"])
    with pytest.raises(KeyError, match="nope"):
        lazy["nope"]


def test_writer_output_holds_exactly_what_it_wrote(tmp_path):
    """Issue 15: rewriting an output kept a stale adapter_config.json (the merged folder then looked like a
    LoRA adapter) and shards of the earlier write; now the output holds this write's files only."""
    target = tmp_path / "out"
    with StateDictWriter(target, max_shard_size=300) as writer:
        for key, tensor in make_state().items():
            writer.add(key, tensor)
        (writer.staging_dir / "adapter_config.json").write_text("{}")
    assert len(LazyStateDict(target).files) > 1
    with StateDictWriter(target, overwrite=True) as writer:
        for key, tensor in make_state(seed=1).items():
            writer.add(key, tensor)
        (writer.staging_dir / "config.json").write_text("{}")
    names = sorted(p.name for p in target.iterdir())
    assert names == [".paperpack-output.json", "config.json", "model.safetensors"]
    assert_state_dicts_equal(load_state_dict(target), make_state(seed=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_save_does_not_modify_inputs_and_handles_shared_storage(tmp_path):
    weight = torch.randn(4, 4)
    state = {"a": weight, "b": weight, "t": weight.t()}  # tied and non-contiguous views
    before = {k: v.clone() for k, v in state.items()}
    save_state_dict(state, tmp_path / "tied.safetensors")
    assert_state_dicts_equal(load_state_dict(tmp_path / "tied.safetensors"), before)
    assert_state_dicts_equal(state, before)


def test_stream_averages_and_peak_is_per_tensor(tmp_path):
    inputs = [save_state_dict(make_state(seed=s), tmp_path / f"in{s}", max_shard_size=400) for s in range(3)]

    def average(key, tensors):
        assert len(tensors) == 3
        if tensors[0].is_floating_point():
            return torch.stack(tensors).mean(0)
        return tensors[0]

    out = stream_state_dicts(inputs, average, tmp_path / "avg", progress=False)
    merged = load_state_dict(out)
    expected = torch.stack([make_state(seed=s)["layers.0.weight"] for s in range(3)]).mean(0)
    assert torch.equal(merged["layers.0.weight"], expected)


def test_stream_fn_can_rename_and_drop(tmp_path):
    a = save_state_dict(make_state(), tmp_path / "a")
    out = stream_state_dicts(
        [a],
        lambda key, ts: None if key == "flags" else {f"model.{key}": ts[0]},
        tmp_path / "renamed",
        progress=False,
        copy_files_from=None,
    )
    assert set(LazyStateDict(out)) == {f"model.{k}" for k in make_state() if k != "flags"}


def test_stream_rejects_bad_fn_result_and_leaves_nothing(tmp_path):
    a = save_state_dict(make_state(), tmp_path / "a")
    with pytest.raises(CheckpointError, match="returned int"):
        stream_state_dicts([a], lambda key, ts: 3, tmp_path / "bad", progress=False)
    assert_no_partial_output(tmp_path / "bad")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("scale"), "'scale' is in .* but not in"),
        (lambda s: s.update(extra=torch.zeros(1)), "'extra' is in .* but not in"),
        (lambda s: s.update(scale=torch.zeros(2)), "'scale' has shape"),
        (lambda s: s.update(scale=torch.tensor(2.0, dtype=torch.float64)), "'scale' has dtype"),
    ],
)
def test_mismatched_inputs_name_the_key(tmp_path, change, message):
    a = save_state_dict(make_state(), tmp_path / "a")
    other = make_state()
    change(other)
    b = save_state_dict(other, tmp_path / "b")
    with pytest.raises(CheckpointError, match=message):
        stream_state_dicts([a, b], lambda key, ts: ts[0], tmp_path / "out", progress=False)
    assert_no_partial_output(tmp_path / "out")
    with pytest.raises(CheckpointError):
        check_compatible([LazyStateDict(b), LazyStateDict(a)])


@pytest.mark.parametrize("output", ["a", "a/inner", "a/model.safetensors"])
def test_output_equal_to_or_inside_an_input_is_refused(tmp_path, output):
    a = save_state_dict(make_state(), tmp_path / "a")
    before = {p.name: p.read_bytes() for p in a.iterdir()}
    sources = [a] if output == "a/inner" else [a, a / "model.safetensors"]
    for source in sources:
        with pytest.raises(CheckpointError, match="overlaps input"):
            stream_state_dicts([source], lambda key, ts: ts[0], tmp_path / output, progress=False)
    assert {p.name: p.read_bytes() for p in a.iterdir()} == before


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        LazyStateDict(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="holds no .safetensors"):
        load_state_dict(tmp_path / "empty")
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_pickle_files_are_refused_with_conversion_advice(tmp_path, name):
    torch.save({"w": torch.zeros(1)}, tmp_path / name)
    for path in (tmp_path / name, tmp_path):
        with pytest.raises(CheckpointError, match="pickle checkpoint.*save_pretrained"):
            LazyStateDict(path)


def test_missing_shard_is_named(tmp_path):
    path = save_state_dict(make_state(), tmp_path / "m", max_shard_size=600)
    shards = sorted(path.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[1].unlink()
    with pytest.raises(CheckpointNotFoundError, match=f"{shards[1].name}.*missing"):
        LazyStateDict(path)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda b: b[:5], "shorter than the 8-byte"),
        (lambda b: b[:-10], "tensor data ends at byte"),
        (lambda b: b + b"xx", "belong to no tensor"),
        (lambda b: b[:8] + b"[" + b[9:], "not JSON"),
        (lambda b: (10**12).to_bytes(8, "little") + b[8:], "header claims"),
    ],
)
def test_corrupt_or_truncated_files(tmp_path, corrupt, message):
    path = save_state_dict(make_state(), tmp_path / "m.safetensors")
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        load_state_dict(path)


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="max_shard_size"):
        parse_size("lots")
    with pytest.raises(ConfigError, match="max_shard_size"):
        parse_size(0)
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2MiB") == 2 * 2**20 and parse_size(7) == 7
    with pytest.raises(ConfigError, match="metadata"):
        save_state_dict(make_state(), tmp_path / "x.safetensors", metadata={"n": 1})
    with pytest.raises(CheckpointError, match="not a torch.Tensor"):
        save_state_dict({"a": [1, 2]}, tmp_path / "y.safetensors")
    assert_no_partial_output(tmp_path / "y.safetensors")
    with pytest.raises(CheckpointError, match="written twice"), StateDictWriter(tmp_path / "z") as writer:
        writer.add("a", torch.zeros(1))
        writer.add("a", torch.zeros(1))
    assert_no_partial_output(tmp_path / "z")


def test_ctrl_c_leaves_old_output(tmp_path):
    target = save_state_dict({"old": torch.zeros(2)}, tmp_path / "out")

    def interrupted(key, tensors):
        if key == "layers.1.weight":
            raise KeyboardInterrupt
        return tensors[0]

    source = save_state_dict(make_state(), tmp_path / "src")
    with pytest.raises(KeyboardInterrupt):
        stream_state_dicts([source], interrupted, target, progress=False, overwrite=True)
    assert list(load_state_dict(target)) == ["old"]
    assert not list(tmp_path.glob(".out.paperpack-*"))


@pytest.mark.slow
def test_killed_writer_leaves_no_output_and_inputs_untouched(tmp_path):
    """SIGKILL a process midway through a streaming write: no output, inputs intact, temp cleared later."""
    source = save_state_dict({f"w{i}": torch.full((256, 256), float(i)) for i in range(40)}, tmp_path / "src")
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    script = tmp_path / "writer.py"
    script.write_text(
        textwrap.dedent(f"""
        import time
        from paperpack.core.checkpoints import stream_state_dicts
        def slow(key, tensors):
            if key == "w5":
                print("midway", flush=True)
            time.sleep(0.05)
            return tensors[0] * 2
        stream_state_dicts([{str(source)!r}], slow, {str(tmp_path / "out")!r}, max_shard_size="300KB", progress=False)
    """)
    )
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "midway"
    time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "out").exists()
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before
    assert list(tmp_path.glob(".out.paperpack-tmp-*")), "the killed writer's staging folder should remain"
    # the next write to the same output clears what the dead writer left
    stream_state_dicts([source], lambda key, ts: ts[0], tmp_path / "out", progress=False)
    assert_state_dicts_equal(load_state_dict(tmp_path / "out"), load_state_dict(source))
    assert not list(tmp_path.glob(".out.paperpack-*"))


@pytest.mark.parametrize("max_shard_size", ["5GB", 20_000])
def test_headers_larger_than_the_reserved_room(tmp_path, max_shard_size):
    """Many small tensors give a header larger than the first reservation: the shard is rewritten once."""
    state = {
        f"model.layers.{i}.self_attn.q_proj.lora_A.default.weight": torch.full((2,), float(i))
        for i in range(600)
    }
    path = save_state_dict(state, tmp_path / "many", max_shard_size=max_shard_size)
    assert_state_dicts_equal(load_state_dict(path), state)
    for file in LazyStateDict(path).files:
        loaded = load_file(file)  # the reference reader accepts our padded headers
        assert all(torch.equal(tensor, state[key]) for key, tensor in loaded.items())
    assert not [p for p in path.iterdir() if p.name.endswith(".rewrite")]


@pytest.mark.parametrize("misaligned", [False, True])
def test_large_tensors_are_mapped_privately_unless_told_not_to(tmp_path, misaligned, monkeypatch):
    """Large aligned tensors are memory-mapped copy-on-write (writing to them never changes the file);
    misaligned ones, and every one with mmap=False, are read into memory they own."""
    big = torch.arange(2**19, dtype=torch.float32)  # 2 MiB: above the mapping threshold
    state = {"odd": torch.ones(3, dtype=torch.bool), "big": big} if misaligned else {"big": big}
    path = save_state_dict(state, tmp_path / "m.safetensors")
    mappings = []
    real_mmap = _format.mmap.mmap
    monkeypatch.setattr(_format.mmap, "mmap", lambda *a, **k: mappings.append(a) or real_mmap(*a, **k))
    loaded = LazyStateDict(path)["big"]
    assert torch.equal(loaded, big)
    assert len(mappings) == (0 if misaligned else 1)
    loaded.zero_()
    assert torch.equal(LazyStateDict(path)["big"], big)
    assert torch.equal(load_file(path)["big"], big)
    assert torch.equal(load_state_dict(path, mmap=False)["big"], big)
    assert len(mappings) == (0 if misaligned else 2)


def test_round_trip_contract(tmp_path):
    from paperpack.core.testing.contracts import check_state_dict_round_trip

    check_state_dict_round_trip(make_state(torch.bfloat16), tmp_path)

    def lossy_save(state, path, max_shard_size):
        return save_state_dict({k: v.float() for k, v in state.items()}, path, max_shard_size=max_shard_size)

    with pytest.raises(AssertionError):
        check_state_dict_round_trip(make_state(torch.bfloat16), tmp_path / "lossy", save=lossy_save)


def test_fails_cleanly_contract(tmp_path):
    from paperpack.core.testing.contracts import check_fails_cleanly

    a = save_state_dict(make_state(), tmp_path / "a")
    b = save_state_dict({"other": torch.zeros(1)}, tmp_path / "b")
    check_fails_cleanly(
        lambda: stream_state_dicts([a, b], lambda k, ts: ts[0], tmp_path / "out", progress=False),
        CheckpointError,
        "different keys",
        inputs=[a, b],
        output=tmp_path / "out",
    )

    def vandal():
        (a / "model.safetensors").write_bytes(b"")
        raise CheckpointError("boom")

    with pytest.raises(AssertionError, match="changed the file system"):
        check_fails_cleanly(vandal, CheckpointError, "boom", inputs=[a])
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        check_fails_cleanly(lambda: None, CheckpointError, "x")
