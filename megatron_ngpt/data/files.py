"""Files of the data pipeline: its one error type, all-or-nothing writes, content digests.

A file that is truncated, corrupt, inconsistent or unwritable is a :class:`DataError` (a missing
one stays a FileNotFoundError) whose message is one line starting with the file the user knows
(never a temporary), so the command-line tools print it as is and exit non-zero instead of
showing a traceback.
"""

from __future__ import annotations

import hashlib
import os
import secrets


class DataError(ValueError):
    """A data file that is truncated, corrupt, inconsistent or unwritable; the message names it.
    (A ValueError, so that callers that catch bad values catch it too.)"""


def os_reason(err: OSError) -> str:
    """`No space left on device` rather than `[Errno 28] No space left on device: 'x.tmp1'`."""
    return err.strerror or str(err)


def temporary_name(path: str) -> str:
    """A name beside `path` that no other process (or node) picks at the same time."""
    return f"{path}.tmp{os.getpid()}.{secrets.token_hex(3)}"


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def write_files_atomically(contents: dict[str, bytes]) -> None:
    """Write every file or none: each goes to a temporary beside it, and all are renamed into
    place only once all are written (a full disk or a read-only folder leaves nothing behind)."""
    temporaries: dict[str, str] = {}
    target = ""
    try:
        for target, data in contents.items():
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            temporaries[target] = temporary_name(target)
            with open(temporaries[target], "xb") as stream:
                stream.write(data)
        for target, temporary in temporaries.items():
            os.replace(temporary, target)
    except BaseException as err:
        for temporary in temporaries.values():
            remove_quietly(temporary)
        if isinstance(err, OSError):
            raise DataError(f"{target}: cannot write: {os_reason(err)}") from None
        raise


def file_sha1(path: str) -> str:
    """Hex SHA-1 of a file's bytes, read in 1 MB blocks (an identity, not a security check)."""
    digest = hashlib.sha1(usedforsecurity=False)
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
