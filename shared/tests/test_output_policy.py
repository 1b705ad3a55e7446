"""The output policy (paperpack.core.files.check_output) and the writers that follow it."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from paperpack.core import files
from paperpack.core.checkpoints import load_state_dict, save_state_dict, stream_state_dicts
from paperpack.core.errors import CheckpointError, OutputExistsError, PaperpackError
from paperpack.core.files import (
    OUTPUT_KEY,
    OUTPUT_MARKER,
    atomic_folder,
    atomic_write_text,
    check_output,
    output_command,
)


def snapshot(folder):
    """Every file under ``folder`` with its bytes, to check that nothing changed."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def write_output(target, command, **names):
    with atomic_folder(target, command=command) as folder:
        for name, text in names.items():
            (folder / name).write_text(text)
    return target


def test_output_exists_error_is_a_file_exists_error():
    assert issubclass(OutputExistsError, FileExistsError) and issubclass(OutputExistsError, PaperpackError)


def test_new_path_and_empty_folder_are_allowed_and_nothing_is_created(tmp_path):
    assert check_output(tmp_path / "a" / "b", command="x") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checking has no side effect
    (tmp_path / "empty").mkdir()
    write_output(tmp_path / "empty", "x", w="1")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == [OUTPUT_MARKER, "w"]
    marker = json.loads((tmp_path / "empty" / OUTPUT_MARKER).read_text())
    assert marker == {"command": "x", "files": ["w"]}


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_folder_is_never_written(tmp_path, overwrite):
    """Issue 13/15: merge and `sewa average` wrote into an existing folder and deleted the user's
    fisher_stats.safetensors there."""
    folder = tmp_path / "mine"
    folder.mkdir()
    save_file({"f": torch.ones(2)}, folder / "fisher_stats.safetensors")
    (folder / "adapter_config.json").write_text("{}")
    before = snapshot(folder)
    with pytest.raises(
        OutputExistsError, match="--output .*mine.* not empty and that paperpack did not write"
    ):
        check_output(folder, command="r-tsvm merge", overwrite=overwrite)
    with pytest.raises(OutputExistsError, match="output .*paperpack did not write"):
        save_state_dict({"w": torch.zeros(2)}, folder, overwrite=overwrite)
    source = save_state_dict({"w": torch.zeros(2)}, tmp_path / "src")
    with pytest.raises(OutputExistsError):
        stream_state_dicts([source], lambda k, ts: ts[0], folder, progress=False, overwrite=overwrite)
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "src"]


def test_an_earlier_output_is_replaced_only_with_overwrite(tmp_path):
    target = write_output(tmp_path / "out", "sewa average", old="1")
    with pytest.raises(OutputExistsError, match=r"--output .* already exists .*pass --overwrite"):
        check_output(target, command="sewa average")
    with pytest.raises(OutputExistsError, match=r"output .* pass overwrite=True"):
        check_output(target, command="sewa average", flag="output")
    with pytest.raises(OutputExistsError, match="holds an output of `sewa average`, not of `r-tsvm merge`"):
        check_output(target, command="r-tsvm merge", overwrite=True)
    with atomic_folder(target, command="sewa average", overwrite=True) as folder:
        (folder / "new").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "new"]
    assert output_command(target) == "sewa average"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_files_added_to_an_earlier_output_are_not_deleted(tmp_path):
    target = write_output(tmp_path / "out", "r-tsvm merge", w="1")
    (target / "fisher_stats.safetensors").write_text("the user's")
    with pytest.raises(OutputExistsError, match="also fisher_stats.safetensors, which it did not write"):
        check_output(target, command="r-tsvm merge", overwrite=True)
    assert (target / "fisher_stats.safetensors").read_text() == "the user's"


def test_a_damaged_marker_is_not_ours(tmp_path):
    target = write_output(tmp_path / "out", "x", w="1")
    (target / OUTPUT_MARKER).write_text("{not json")
    with pytest.raises(OutputExistsError, match="paperpack did not write"):
        check_output(target, command="x", overwrite=True)


def test_file_where_a_folder_is_wanted_and_the_reverse(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x").write_text("x")
    with pytest.raises(OutputExistsError, match="--out-dir .*file.* is a file; a new or empty folder"):
        check_output(tmp_path / "file", command="x", overwrite=True, flag="--out-dir")
    with pytest.raises(OutputExistsError, match="is a folder; a file is wanted"):
        check_output(tmp_path / "folder", command="x", overwrite=True, file=True)
    with pytest.raises(OutputExistsError, match="is a file, not a folder"):
        check_output(tmp_path / "file" / "inner", command="x")
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(OutputExistsError, match="is a folder; a file is wanted"):
        save_state_dict({"w": torch.zeros(1)}, tmp_path / "folder.safetensors")


def test_symbolic_links_are_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OutputExistsError, match="symbolic link"):
        check_output(tmp_path / "link", command="x")


def test_single_file_outputs(tmp_path):
    """A .safetensors output is ours when its __metadata__ names the command; a user's file is never
    replaced, even with overwrite (`r-tsvm statistics` replaced one, issue 13)."""
    mine = tmp_path / "stats.safetensors"
    save_file({"f": torch.ones(2)}, mine, metadata={"format": "pt"})
    before = mine.read_bytes()
    with pytest.raises(OutputExistsError, match=r"already exists; pass --overwrite"):
        check_output(mine, command="r-tsvm statistics", file=True)
    with pytest.raises(OutputExistsError, match="not an earlier output .*paperpack did not write"):
        check_output(mine, command="r-tsvm statistics", file=True, overwrite=True)
    with pytest.raises(OutputExistsError, match="paperpack did not write"):
        save_state_dict({"w": torch.zeros(1)}, mine, overwrite=True)
    assert mine.read_bytes() == before

    ours = save_state_dict({"w": torch.zeros(1)}, tmp_path / "ours.safetensors", command="r-tsvm statistics")
    assert output_command(ours) == "r-tsvm statistics"
    with pytest.raises(OutputExistsError, match="already exists; pass overwrite=True"):
        save_state_dict({"w": torch.ones(1)}, ours, command="r-tsvm statistics")
    with pytest.raises(OutputExistsError, match="is an output of `r-tsvm statistics`"):
        save_state_dict({"w": torch.ones(1)}, ours, command="sewa average", overwrite=True)
    save_state_dict({"w": torch.ones(1)}, ours, command="r-tsvm statistics", overwrite=True)
    assert load_state_dict(ours)["w"].item() == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.safetensors", "stats.safetensors"]


def test_json_and_other_file_outputs(tmp_path):
    results = atomic_write_text(tmp_path / "results.json", json.dumps({OUTPUT_KEY: "ma-osma run", "x": 1}))
    assert output_command(results) == "ma-osma run"
    assert check_output(results, command="ma-osma run", file=True, overwrite=True) == results
    other = atomic_write_text(tmp_path / "other.json", json.dumps({"x": 1}))
    with pytest.raises(OutputExistsError, match="paperpack did not write it"):
        check_output(other, command="ma-osma run", file=True, overwrite=True)
    plot = atomic_write_text(tmp_path / "plot.png", "png")
    with pytest.raises(OutputExistsError, match="a .png file carries no paperpack marker"):
        check_output(plot, command="x", file=True, overwrite=True)
    for garbage in (b"", b"\xff" * 20, (10**12).to_bytes(8, "little")):
        (tmp_path / "bad.safetensors").write_bytes(garbage)
        assert output_command(tmp_path / "bad.safetensors") is None


def test_overlap_with_an_input_stays_a_checkpoint_error(tmp_path):
    source = save_state_dict({"w": torch.zeros(2)}, tmp_path / "src")
    for output in (source, source / "inner", tmp_path):
        with pytest.raises(CheckpointError, match="--output .* overlaps input"):
            check_output(output, command="x", inputs=[source], overwrite=True)


def test_output_checked_again_before_the_move(tmp_path):
    """Something created at the output while the command ran is not overwritten."""
    target = tmp_path / "out"
    with pytest.raises(OutputExistsError, match="paperpack did not write"), atomic_folder(target) as folder:
        (folder / "w").write_text("new")
        target.mkdir()
        (target / "theirs").write_text("keep")
    assert snapshot(target) == {"theirs": b"keep"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_fallback_swap(tmp_path, monkeypatch):
    """Without renameat2 (not Linux, or a filesystem without it) the swap takes two renames; an old output
    left aside by a process killed between them is put back by the next check."""
    monkeypatch.setattr(files, "_renameat2", None)
    target = write_output(tmp_path / "out", "x", old="1")
    with atomic_folder(target, command="x", overwrite=True) as folder:
        (folder / "new").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # a writer killed between its two renames: the old output aside, none in place
    target.rename(tmp_path / f".out.paperpack-old-{_dead_pid()}-abcd1234")
    with pytest.raises(OutputExistsError, match="already exists"):
        check_output(target, command="x")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "new"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux only")
def test_linux_swaps_folders_in_one_exchange(tmp_path, monkeypatch):
    assert files._renameat2 is not None
    calls = []
    real = files._rename
    monkeypatch.setattr(files, "_rename", lambda *args: calls.append(args[2]) or real(*args))
    monkeypatch.setattr(files.os, "rename", lambda *a: pytest.fail("a plain rename was used"))
    target = tmp_path / "out"
    write_output(target, "x", old="1")
    with atomic_folder(target, command="x", overwrite=True) as folder:
        (folder / "new").write_text("2")
    assert calls == [files._RENAME_NOREPLACE, files._RENAME_EXCHANGE]
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("layout", ["file", "sharded"])
def test_everything_is_flushed_before_the_move_and_the_folder_after(tmp_path, monkeypatch, layout):
    """Issue 15: no fsync anywhere. Every shard, the index and the marker are fsynced before the rename that
    publishes them, and the parent folder after it."""
    events = []
    real_fsync, real_rename, real_replace = os.fsync, files._rename, os.replace
    target = tmp_path / ("m.safetensors" if layout == "file" else "m")
    old = save_state_dict({"old": torch.zeros(1)}, target, max_shard_size=300)

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def moved(*args):
        events.append(("move", os.fspath(args[1])))
        return real_rename(*args) if len(args) == 3 else real_replace(*args)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files, "_rename", moved)
    monkeypatch.setattr(files.os, "replace", moved)
    state = {f"w{i}": torch.full((40,), float(i)) for i in range(6)}
    save_state_dict(state, old, max_shard_size=300, overwrite=True)
    moves = [i for i, event in enumerate(events) if event == ("move", os.fspath(target))]
    assert len(moves) == 1, events
    before = {inode for _, inode in events[: moves[0]]}
    written = list(target.rglob("*")) if target.is_dir() else [target]
    if layout == "sharded":
        assert {p.name for p in written} >= {"model.safetensors.index.json", OUTPUT_MARKER}
        assert len(written) > 3
        assert target.stat().st_ino in before
    assert all(path.stat().st_ino in before for path in written)
    assert ("fsync", tmp_path.stat().st_ino) in events[moves[0] + 1 :]
    assert set(load_state_dict(target)) == set(state)
