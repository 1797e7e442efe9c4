"""Reading one file of a run directory, which is untrusted data: only a regular file inside the
directory (a FIFO would block the reader, a device never ends, a symbolic link may point at
either or out of the run), and never more than a stated number of bytes, refused from the
file's size before anything is read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

KIND = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
        stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link"}


class UnreadableFile(OSError):
    """A run's file that is not read: not a regular file in the run directory, or too large."""


class TooLarge(UnreadableFile):
    """A run's file larger than it may be."""


def _size(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def open_regular(path: Path, limit: int) -> int:
    """A read-only descriptor of `path`, a regular file of at most `limit` bytes in its own
    folder (a symbolic link to another file of that folder is followed), or UnreadableFile
    (an OSError: a missing file is FileNotFoundError as usual)."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    if real.parent != Path(os.path.realpath(path.parent)):
        raise UnreadableFile(f"{path} is a link out of its run directory (to {real}); a run's "
                             "files are read only inside it")
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below)
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = KIND.get(stat.S_IFMT(st.st_mode), "not a plain file")
            raise UnreadableFile(f"{path} is {kind}, not a regular file; a run's files are "
                                 "regular files, and nothing else is read")
        if st.st_size > limit:
            raise TooLarge(f"{path} holds {_size(st.st_size)}, more than the "
                                 f"{_size(limit)} a run's {path.name} may hold; not read")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of `path` under the rules of `open_regular`."""
    fd = open_regular(path, limit)
    with os.fdopen(fd, "rb", buffering=0) as f:
        chunks = [f.read(os.fstat(fd).st_size + 1)]  # one buffer of the size the file has
        got = len(chunks[0])
        while got <= limit and chunks[-1]:  # it grew since: read on, up to the limit only
            chunks.append(f.read(min(2**20, limit + 1 - got)))
            got += len(chunks[-1])
    if got > limit:
        raise TooLarge(f"{path} holds more than the {_size(limit)} a run's {Path(path).name} "
                       "may hold; not read")
    return b"".join(chunks)
