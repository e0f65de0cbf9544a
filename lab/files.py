"""Writing files whole: `atomic_write`, through which this project writes what others read (datasets' caches, the
stand-ins, checkpoints, metrics, plots, records, the demo's outputs). It imports no module of this project, so any
module, data.py included, may import it without a cycle.
"""

import os
import tempfile
from pathlib import Path


def atomic_write(path, write):
    """Create the file `path` all at once: write(f) writes into a binary file object of a temporary
    file in the same folder, which is flushed, fsynced and renamed into place (os.replace), so a
    reader or a racing process (DDP ranks) never sees a half-written file, and a crash leaves the
    old file or none. The temporary file is removed on error (a SIGKILL leaves it: the caller's
    next start sweeps it, `checkpoints.sweep_temporaries`). The file is readable by everyone
    (0o644), as a model file or a checkpoint is meant to be shared. Returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)  # the old file stays whole until this moment
        folder = os.open(path.parent, os.O_RDONLY)  # the rename itself survives a power cut only once its
        try:  # folder is on disk too
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
