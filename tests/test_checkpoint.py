"""Checkpoints: checksum, atomic replacement under a crash, fallback to the last good one."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from cnnkit.train import checkpoint as ckpt


def _state(value=1.0):
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, value)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2, 4])
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "epoch": 3,
            "tag": value}


def test_round_trip(tmp_path):
    state = _state()
    path = ckpt.save_checkpoint(state, tmp_path / "a.pt")
    loaded = ckpt.load_checkpoint(path)
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])
    assert loaded["scheduler"]["milestones"] == state["scheduler"]["milestones"]
    assert loaded["epoch"] == 3
    assert os.listdir(tmp_path) == ["a.pt"]  # no temporary left behind


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:-10], "truncated"),
    (lambda data: data[:-100] + bytes([data[-100] ^ 1]) + data[-99:], "checksum mismatch"),
    (lambda data: b"PK" + data[2:], "not a cnnkit checkpoint"),
    (lambda data: b"", "not a cnnkit checkpoint"),
])
def test_damage_is_detected(tmp_path, damage, message):
    path = ckpt.save_checkpoint(_state(), tmp_path / "a.pt")
    with open(path, "rb") as file:
        data = file.read()
    with open(path, "wb") as file:
        file.write(damage(data))
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.load_checkpoint(path)


def test_missing(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        ckpt.load_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint found"):
        ckpt.load_latest_checkpoint(tmp_path)


def test_rotation_keeps_the_newest(tmp_path):
    for epoch in range(1, 5):
        ckpt.save_rotating(_state(epoch), tmp_path, epoch, keep=2)
    names = sorted(os.listdir(tmp_path))
    assert names == [ckpt.checkpoint_name(3), ckpt.checkpoint_name(4)]
    assert ckpt.checkpoint_name(2, 10) > ckpt.checkpoint_name(2, 9) > ckpt.checkpoint_name(1, 99)


def test_rotation_never_deletes_the_checkpoint_just_written(tmp_path):
    for epoch in (8, 9):  # another run's, later in name order
        ckpt.save_rotating(_state(float(epoch)), tmp_path, epoch)
    path = ckpt.save_rotating(_state(3.0), tmp_path, 3, keep=2)
    assert ckpt.load_checkpoint(path)["tag"] == 3.0
    assert ckpt.list_checkpoints(tmp_path) == [str(tmp_path / ckpt.checkpoint_name(9)), path]


def _names(paths):
    return [os.path.basename(path) for path in paths]


def test_checkpoints_after_a_resume_point(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for epoch in range(1, 5):
        ckpt.save_checkpoint(_state(), run / ckpt.checkpoint_name(epoch))
    resume = str(run / ckpt.checkpoint_name(2))
    assert _names(ckpt.checkpoints_after(run, resume)) == [ckpt.checkpoint_name(4),
                                                          ckpt.checkpoint_name(3)]
    # The same directory by another spelling of its path.
    assert len(ckpt.checkpoints_after(run, str(tmp_path / "." / "run" / "x" / ".." /
                                               ckpt.checkpoint_name(2)))) == 2
    # A file from elsewhere: none of the directory's checkpoints belong to its run.
    elsewhere = ckpt.save_checkpoint(_state(), tmp_path / ckpt.checkpoint_name(9))
    assert len(ckpt.checkpoints_after(run, elsewhere)) == 4


def test_set_aside_moves_without_overwriting(tmp_path):
    name = ckpt.checkpoint_name(5)
    for tag in (1.0, 2.0):
        ckpt.save_checkpoint(_state(tag), tmp_path / name)
        moved = ckpt.set_aside([str(tmp_path / name)], tmp_path)
        assert ckpt.list_checkpoints(tmp_path) == []
    aside = tmp_path / ckpt.SUPERSEDED_DIR
    assert sorted(os.listdir(aside)) == [name, name + ".1"]
    assert ckpt.load_checkpoint(moved[0])["tag"] == 2.0
    assert ckpt.load_checkpoint(aside / name)["tag"] == 1.0


def test_corrupt_latest_falls_back_to_previous(tmp_path):
    ckpt.save_rotating(_state(1.0), tmp_path, 1)
    newest = ckpt.save_rotating(_state(2.0), tmp_path, 2)
    with open(newest, "r+b") as file:
        file.seek(-5, os.SEEK_END)
        file.write(b"\x00\x01\x02\x03\x04")
    skipped = []
    path, state = ckpt.load_latest_checkpoint(tmp_path, on_skip=skipped.append)
    assert path.endswith(ckpt.checkpoint_name(1))
    assert state["tag"] == 1.0
    assert len(skipped) == 1 and "checksum mismatch" in str(skipped[0])


def test_crash_during_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "a.pt"
    ckpt.save_checkpoint(_state(1.0), path)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)  # dies after writing, before the rename
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(_state(2.0), path)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["tag"] == 1.0
    assert os.listdir(tmp_path) == ["a.pt"]


KILL_LOOP = textwrap.dedent("""
    import sys, torch
    from cnnkit.train.checkpoint import save_rotating
    directory = sys.argv[1]
    # 8 MB: each save takes a while, so kills land mid-write.
    payload = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0))
    for epoch in range(1, 10_000):
        save_rotating({"epoch": epoch, "payload": payload + epoch}, directory, epoch)
        print(epoch, flush=True)
""")


@pytest.mark.slow
def test_sigkill_at_any_instant_leaves_an_intact_checkpoint(tmp_path):
    # A real crash: kill -9 a process saving checkpoints in a loop, at several moments.
    payload = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0))
    for attempt, delay in enumerate((0.3, 0.55, 0.8)):
        directory = tmp_path / str(attempt)
        directory.mkdir()
        process = subprocess.Popen([sys.executable, "-c", KILL_LOOP, str(directory)],
                                   stdout=subprocess.PIPE, text=True)
        first = process.stdout.readline()  # one checkpoint is complete
        assert first.strip() == "1"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        path, state = ckpt.load_latest_checkpoint(directory)
        assert os.path.basename(path) == ckpt.checkpoint_name(state["epoch"])
        assert torch.equal(state["payload"], payload + state["epoch"])
        # What a kill can leave besides checkpoints is a temporary, never a partial final file.
        assert all(ckpt.CHECKPOINT_RE.search(name) or ".pt.tmp-" in name
                   for name in os.listdir(directory))


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    ckpt.save_checkpoint(_state(1.0), tmp_path / ckpt.checkpoint_name(1))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{ckpt.checkpoint_name(2)}{ckpt.TEMPORARY_SUFFIX}{dead.pid}"
    live = tmp_path / f"{ckpt.checkpoint_name(2)}{ckpt.TEMPORARY_SUFFIX}{os.getppid()}"  # a writer still running
    other = tmp_path / "notes.tmp-1"
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    assert ckpt.remove_stale_temporaries(tmp_path) == [str(stale)]
    assert sorted(os.listdir(tmp_path)) == sorted([ckpt.checkpoint_name(1), live.name, other.name])


def test_trailing_bytes_are_not_called_truncation(tmp_path):
    path = ckpt.save_checkpoint(_state(1.0), tmp_path / "a.pt")
    with open(path, "ab") as file:
        file.write(b"extra")
    with pytest.raises(ckpt.CheckpointError, match="5 trailing bytes") as error:
        ckpt.load_checkpoint(path)
    assert "truncated" not in str(error.value)
