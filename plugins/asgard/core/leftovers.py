"""Reading what a sandbox left behind, as root, without trusting its shape.

A sandboxed process may leave links (to /etc/shadow, to dags/), fifos, devices and huge files where
the platform later reads. Root reads only regular files here, opened without following a link
anywhere on the way and up to a size cap; anything else is refused with a :class:`LeftoverError`
that names it. :func:`copy_left_tree` copies a whole folder out on the same terms.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from asgard.core.errors import InputError

_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1024 * 1024


class LeftoverError(InputError):
    """What a sandbox left where the platform reads is not a plain file of a sane size."""


def read_left_file(folder: Path, relative: str, *, max_bytes: int) -> bytes:
    """A regular file a sandbox left at ``folder/relative``, read without following a link anywhere on
    the way and only up to ``max_bytes``; a link, fifo, socket, device, folder or larger file is
    refused with a :class:`LeftoverError` naming it."""
    parts = PurePosixPath(relative).parts
    if not parts or any(part in ("/", ".", "..") for part in parts):
        raise ValueError(f"{relative!r} is not a relative path inside the folder")
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | _NO_FOLLOW)
    try:
        for depth, part in enumerate(parts):
            shown = "/".join(parts[: depth + 1])
            try:
                info = os.stat(part, dir_fd=directory, follow_symlinks=False)
            except FileNotFoundError:
                raise LeftoverError(f"{shown} was not left in {folder}") from None
            last = depth == len(parts) - 1
            wanted, what = (stat.S_ISREG, "file") if last else (stat.S_ISDIR, "folder")
            if not wanted(info.st_mode):
                raise LeftoverError(f"{shown} in {folder} is {_kind(info.st_mode)}, not a regular {what}: refused")
            flags = (os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY) if last else (os.O_RDONLY | os.O_DIRECTORY)
            # Checked again on what was opened: nothing may be swapped in between.
            opened = os.open(part, flags | _NO_FOLLOW, dir_fd=directory)
            os.close(directory)
            directory = opened
        info = os.fstat(directory)
        if not stat.S_ISREG(info.st_mode):
            raise LeftoverError(f"{relative} in {folder} is {_kind(info.st_mode)}, not a regular file: refused")
        if info.st_size > max_bytes:
            raise LeftoverError(f"{relative} in {folder} is {info.st_size} bytes, over the {max_bytes} byte limit")
        with os.fdopen(os.dup(directory), "rb") as stream:
            data = stream.read(max_bytes + 1)
        if len(data) > max_bytes:  # grew after the check
            raise LeftoverError(f"{relative} in {folder} is over the {max_bytes} byte limit")
        return data
    finally:
        os.close(directory)


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISLNK: "a symbolic link",
        stat.S_ISFIFO: "a fifo",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISDIR: "a folder",
        stat.S_ISREG: "a regular file",
    }
    return next((name for test, name in kinds.items() if test(mode)), "an unknown kind of file")


def copy_left_tree(source: Path, destination: Path, *, max_bytes: int) -> int:
    """Copy the folders and regular files a sandbox left in ``source`` into ``destination`` (created if
    missing; a folder the sandbox never had), following no link; a link, fifo, socket or device
    anywhere in it, or more than ``max_bytes`` in all, is refused with a :class:`LeftoverError`. The
    copies are new files of root's with plain modes (no setuid bit survives). Returns the bytes copied."""
    root = os.open(source, os.O_RDONLY | os.O_DIRECTORY | _NO_FOLLOW)
    try:
        return _copy_folder(root, source, destination, max_bytes, 0)
    finally:
        os.close(root)


def _copy_folder(directory: int, shown: Path, destination: Path, max_bytes: int, copied: int) -> int:
    destination.mkdir(mode=0o755, exist_ok=True)
    if not stat.S_ISDIR(os.lstat(destination).st_mode):
        raise LeftoverError(f"{destination} is not a folder of the platform's")
    for name in sorted(os.listdir(directory)):
        info = os.stat(name, dir_fd=directory, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NO_FOLLOW, dir_fd=directory)
            try:
                copied = _copy_folder(inner, shown / name, destination / name, max_bytes, copied)
            finally:
                os.close(inner)
            continue
        if not stat.S_ISREG(info.st_mode):
            raise LeftoverError(f"{shown / name} is {_kind(info.st_mode)}, not a regular file: refused")
        readable = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | _NO_FOLLOW, dir_fd=directory)
        with os.fdopen(readable, "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):  # swapped in after the check
                raise LeftoverError(f"{shown / name} is not a regular file: refused")
            mode = 0o755 if info.st_mode & stat.S_IXUSR else 0o644
            target = os.open(destination / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NO_FOLLOW, mode)
            with os.fdopen(target, "wb") as written:
                os.fchmod(written.fileno(), mode)  # whatever the umask made of it, and whatever was there
                while chunk := stream.read(_CHUNK):
                    copied += len(chunk)
                    if copied > max_bytes:
                        raise LeftoverError(f"{shown} holds more than {max_bytes} bytes: refused")
                    written.write(chunk)
    return copied
