"""Checkpoints written atomically, with a checksum, and read back only when intact.

File layout: MAGIC, the SHA-256 of the payload, the payload's length (8 bytes, little
endian), then the payload (torch.save of the state dict). Writing goes to a temporary
file in the same directory, which is fsynced, renamed over the final name (atomic on
POSIX) and followed by an fsync of the directory, so at every instant the final name
holds either the previous complete checkpoint or the new one. A run keeps its newest
few checkpoints; if the newest is damaged anyway (disk fault, copy cut short), its
checksum says so and the one before it is used.
"""

import collections
import contextlib
import glob
import hashlib
import io
import os
import re
import struct

import torch

MAGIC = b"CNNKITCKPT\x00\x01"
HEADER = struct.Struct(f"<{len(MAGIC)}s32sQ")
CHECKPOINT_GLOB = "checkpoint-e*-s*.pt"
CHECKPOINT_RE = re.compile(r"checkpoint-e(\d+)-s(\d+)\.pt$")
# save_checkpoint writes to <name> + TEMPORARY_SUFFIX + <its pid> first.
TEMPORARY_SUFFIX = ".tmp-"
TEMPORARY_RE = re.compile(r"checkpoint-e\d+-s\d+\.pt\.tmp-(\d+)$")
SUPERSEDED_DIR = "superseded"  # where checkpoints another run left in a run directory go
# Schedulers' state dicts hold these besides tensors and plain containers.
SAFE_GLOBALS = [collections.Counter]


class CheckpointError(Exception):
    """A checkpoint is missing, damaged or not a cnnkit checkpoint."""


def checkpoint_name(epoch, step=0):
    """File name for the state after `epoch` full epochs and `step` batches of the next
    one; names sort in training order."""
    return f"checkpoint-e{epoch:04d}-s{step:07d}.pt"


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on this platform or file system
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state, path):
    """Write `state` (anything torch.save takes) to `path` atomically, with a checksum."""
    path = os.fspath(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = HEADER.pack(MAGIC, hashlib.sha256(payload).digest(), len(payload))
    directory = os.path.dirname(os.path.abspath(path))
    temporary = f"{path}{TEMPORARY_SUFFIX}{os.getpid()}"
    try:
        with open(temporary, "wb") as file:
            file.write(header)
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    _fsync_directory(directory)
    return path


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint written by save_checkpoint; CheckpointError if it is missing,
    truncated, fails its checksum or is not a cnnkit checkpoint."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory; pass a checkpoint file") from None
    if len(data) < HEADER.size or not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a cnnkit checkpoint (bad header)")
    _, digest, length = HEADER.unpack_from(data)
    payload = memoryview(data)[HEADER.size:]
    if len(payload) < length:
        raise CheckpointError(f"{path}: truncated checkpoint ({len(payload)} of {length} bytes)")
    if len(payload) > length:
        raise CheckpointError(f"{path}: {len(payload) - length} trailing bytes after the checkpoint's "
                              f"{length}; the file was appended to or overwritten in part")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path}: checksum mismatch, the checkpoint is corrupt")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as error:  # checksum fine, content unreadable: written by something else
        raise CheckpointError(f"{path}: unreadable checkpoint content ({error})") from None


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's, alive
        return True
    return True


def remove_stale_temporaries(directory):
    """Delete the temporary files that writers killed mid-write left in `directory` (those
    whose process is gone; a live writer's file is left alone). Returns their paths."""
    removed = []
    for path in glob.glob(os.path.join(os.fspath(directory), f"checkpoint-*{TEMPORARY_SUFFIX}*")):
        match = TEMPORARY_RE.search(path)
        if match and int(match.group(1)) != os.getpid() and not _process_exists(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            removed.append(path)
    return removed


def describe_load_error(error):
    """The first specific line of a load_state_dict error (not its generic header)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    details = [line for line in lines if not line.startswith("Error(s) in loading")]
    return (details or lines or [type(error).__name__])[0]


def list_checkpoints(directory):
    """Checkpoint files of a run directory, newest first."""
    paths = [p for p in glob.glob(os.path.join(os.fspath(directory), CHECKPOINT_GLOB))
             if CHECKPOINT_RE.search(p)]
    return sorted(paths, reverse=True)


def load_latest_checkpoint(directory, map_location="cpu", on_skip=None):
    """(path, state) of the newest intact checkpoint of a run directory.

    Damaged ones are skipped (on_skip(CheckpointError) is told of each); CheckpointError
    if there is none intact."""
    directory = os.fspath(directory)
    paths = list_checkpoints(directory)
    if not paths:
        raise CheckpointError(f"{directory}: no checkpoint found")
    errors = []
    for path in paths:
        try:
            return path, load_checkpoint(path, map_location)
        except CheckpointError as error:
            errors.append(error)
            if on_skip is not None:
                on_skip(error)
    raise CheckpointError(f"{directory}: no intact checkpoint ({errors[0]})")


def save_rotating(state, directory, epoch, step=0, keep=2):
    """Save the run's newest checkpoint, then delete all but it and the `keep` - 1 newest
    others. The one just written is kept even when others sort after it: it is the run's
    last good state whatever the directory holds."""
    path = save_checkpoint(state, os.path.join(os.fspath(directory), checkpoint_name(epoch, step)))
    others = [other for other in list_checkpoints(directory) if other != path]
    for old in others[max(keep, 1) - 1:]:
        try:
            os.unlink(old)
        except FileNotFoundError:
            pass
    return path


def checkpoints_after(directory, resume_path):
    """Checkpoints of run directory `directory` that are not the past of the run resumed
    from resume_path: those named after it when it lies in `directory` (an abandoned
    continuation, or damaged ones skipped), every one when it lies elsewhere (another
    run's). Newest first."""
    paths = list_checkpoints(directory)
    if not os.path.samefile(os.path.dirname(os.path.abspath(resume_path)), directory):
        return paths
    resume_name = os.path.basename(resume_path)
    return [path for path in paths if os.path.basename(path) > resume_name]


def _unused_name(path):
    candidate, number = path, 0
    while os.path.lexists(candidate):
        number += 1
        candidate = f"{path}.{number}"
    return candidate


def set_aside(paths, directory):
    """Move checkpoints into directory/SUPERSEDED_DIR, where neither a resume nor the
    rotation looks, without overwriting any there. Renames: atomic, nothing copied."""
    target = os.path.join(os.fspath(directory), SUPERSEDED_DIR)
    os.makedirs(target, exist_ok=True)
    moved = []
    for path in paths:
        destination = _unused_name(os.path.join(target, os.path.basename(path)))
        os.rename(path, destination)
        moved.append(destination)
    _fsync_directory(target)
    _fsync_directory(os.fspath(directory))
    return moved
