"""The one writer policy: every file the toolkit writes is checked first and written atomically.

:func:`check_output` checks an output path before anything is computed (a refusal costs
nothing); :func:`prepare_output` applies the policy once the models have loaded (an existing
output is refused unless ``overwrite``, which removes it, so nothing of the old one can mix
with the new). Files go through :func:`atomic_write` (a temporary sibling, then a rename:
never half-written) and :func:`save_image`; folders through :func:`atomic_directory`;
:func:`safe_output_path` keeps a given file name inside its folder. Written files and folders
get the modes a plain write would (:func:`normalise_modes`). A refusal raises
:class:`~instantportrait.errors.InputError` with one line. :mod:`instantportrait.io`, the
input gate, re-exports these names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

from .errors import InputError


def safe_output_path(out_dir: str | os.PathLike, filename: str, *, overwrite: bool = False) -> Path:
    """``out_dir/filename``, refusing names that leave ``out_dir`` and existing files.

    The file name is reduced to its last component, so ``../x.png`` or an absolute path can
    never write outside the chosen folder.
    """
    base = Path(out_dir).resolve()
    leaf = Path(str(filename).replace("\\", "/")).name
    if leaf in ("", ".", ".."):
        raise InputError(f"{filename!r}: not a valid output file name")
    target = (base / leaf).resolve()
    if target.parent != base:
        raise InputError(f"{filename!r}: output would leave {base}")
    if target.exists() and not overwrite:
        raise InputError(f"{target}: already exists (pass --overwrite to replace it)")
    return target


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write a file through a temporary sibling, then rename it into place.

    ``write`` receives the temporary path. On any error the temporary file is removed and the
    destination is untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 & ~umask).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save a PIL image atomically; the format follows the suffix (PNG when none)."""
    dest = Path(path)
    fmt = Image.registered_extensions().get(dest.suffix.lower(), "PNG")
    return atomic_write(dest, lambda tmp: image.save(tmp, format=fmt))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling and move it into place when the block succeeds.

    With ``overwrite`` an existing folder is replaced (after the new one is complete);
    without it an existing folder raises :class:`InputError`.
    """
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise InputError(f"{dest}: already exists (pass --overwrite to replace it)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        # mkdtemp creates 0700, and some writers inside (diffusers' save_pretrained) create
        # owner-only files: give everything the mode a plain mkdir / open() would.
        normalise_modes(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def normalise_modes(root: str | os.PathLike) -> None:
    """Give ``root`` and everything below it the modes a plain write would: folders
    ``0o777 & ~umask``, files ``0o666 & ~umask`` (``0o777 & ~umask`` if any execute bit is
    set). Symbolic links are left alone."""
    mask = _umask()
    dir_mode, file_mode, exec_mode = 0o777 & ~mask, 0o666 & ~mask, 0o777 & ~mask
    top = Path(root)
    os.chmod(top, dir_mode)
    for folder, dirs, files in os.walk(top):
        for name in dirs:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, dir_mode)
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            executable = os.stat(path).st_mode & 0o111
            os.chmod(path, exec_mode if executable else file_mode)


def _umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _first_file_ancestor(path: Path) -> Path | None:
    for parent in (path, *path.parents):
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_path(path: str | os.PathLike, *, kind: str = "dir") -> Path:
    """Check that ``path`` can be written as a ``kind`` (``"dir"`` or ``"file"``) output:
    not below a file, not a file where a folder is wanted nor the reverse. Existing outputs
    are not judged here (see :func:`prepare_output`); nothing is created."""
    if kind not in ("dir", "file"):
        raise ValueError(f"kind must be 'dir' or 'file', got {kind!r}")
    p = Path(path)
    blocker = _first_file_ancestor(p.parent)
    if blocker is not None:
        raise InputError(f"{p}: cannot write below {blocker}, which is a file")
    if p.exists() or p.is_symlink():
        if kind == "dir" and not p.is_dir():
            raise InputError(f"{p}: is a file, but an output folder is wanted")
        if kind == "file" and p.is_dir():
            raise InputError(f"{p}: is a folder, but an output file is wanted")
    return p


def check_output(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    kind: str = "dir",
    allow_existing_empty: bool = True,
    flag: str = "--overwrite",
) -> Path:
    """The writer policy's checks alone: :func:`prepare_output` without removing anything.

    For commands that load models before they write: check early (a refusal costs nothing),
    load, then call :func:`prepare_output`, so a model that fails to load leaves an existing
    output in place even with ``overwrite``. Returns the checked path.
    """
    p = check_output_path(path, kind=kind)
    if not overwrite and _occupied(p, allow_existing_empty):
        raise InputError(f"{p}: already exists (pass {flag} to replace it)")
    return p


def _occupied(p: Path, allow_existing_empty: bool) -> bool:
    """Whether an output at ``p`` would replace something (an empty folder may not count)."""
    if not (p.exists() or p.is_symlink()):
        return False
    return not (allow_existing_empty and p.is_dir() and not any(p.iterdir()))


def prepare_output(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    kind: str = "dir",
    allow_existing_empty: bool = True,
    create: bool = False,
    flag: str = "--overwrite",
) -> Path:
    """The one writer policy: check an output path before anything is computed or written.

    ``kind`` is ``"dir"`` (an output folder) or ``"file"``. An output whose path lies below an
    existing file, a folder given where a file is wanted (or the reverse), and an existing
    non-empty output without ``overwrite`` each raise :class:`InputError` with one line. With
    ``overwrite`` an existing output is removed here, so nothing of the old one can mix with
    the new. Nothing is created unless ``create`` is true (then the folder is made).
    Call it after the inputs have been validated and before the first write (after the
    models have loaded: :func:`check_output` checks earlier without removing).
    """
    p = check_output(
        path, overwrite=overwrite, kind=kind, allow_existing_empty=allow_existing_empty, flag=flag
    )
    if _occupied(p, allow_existing_empty):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    if create and kind == "dir":
        p.mkdir(parents=True, exist_ok=True)
    return p
