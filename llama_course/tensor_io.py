"""Files and tensors on disk: the one atomic write every saver uses.

A checkpoint written in place and interrupted (Ctrl-C, a killed job, a full disk) leaves half a
file where the previous good one was. Writing to a temporary name in the same folder and then
renaming it with `os.replace` (atomic on POSIX and Windows) means a reader sees the old file or
the new one, never a mix; a failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """`with atomic_write(path) as tmp:` write to `tmp`; on success it replaces `path`, on any
    exception (KeyboardInterrupt included) the temporary file is removed and `path` untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
