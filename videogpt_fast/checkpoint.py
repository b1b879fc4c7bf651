"""Safe loading and atomic saving of checkpoints in the original (PyTorch-Lightning 1.x) layout.

Loading never unpickles arbitrary objects: ``torch.load(weights_only=True)`` with an explicit
allow-list of what Lightning 1.x checkpoints of VideoGPT really hold (``argparse.Namespace`` and
Lightning's callback classes, which only appear as dictionary keys and are mapped to inert
stand-ins). Anything else is refused with :class:`UnsafeCheckpointError`.

Pretrained names resolve in a local cache and are never downloaded: ``$VIDEOGPT_FAST_HOME``
(default ``~/.cache/videogpt_fast``), then the original's ``~/.cache/videogpt``.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import pickle
import re
import shlex
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
LIGHTNING_VERSION = "1.3.3"

#: The original's pretrained VQ-VAEs: name -> (Google Drive id, what it was trained on).
PRETRAINED_VQVAE: Dict[str, tuple] = {
    "bair_stride4x2x2": ("1iIAYJ2Qqrx5Q94s5eIXQYJgAydzvT_8L", "BAIR, 16 frames of 64x64"),
    "ucf101_stride4x4x4": ("1uuB_8WzHP_bbBmfuaIV7PK_Itl3DyHY5", "UCF-101, 16 frames of 128x128"),
    "kinetics_stride4x4x4": ("1DOvOZnFAIQmux6hG7pN_HkyJZy3lXbCB", "Kinetics-600, 16 frames of 128x128"),
    "kinetics_stride2x4x4": ("1jvtjjtrtE4cy6pl7DK_zWFEPY3RZt2pB", "Kinetics-600, 16 frames of 128x128"),
}
#: The original's pretrained priors.
PRETRAINED_VIDEOGPT: Dict[str, tuple] = {
    "bair_gpt": ("1fNTtJAgO6grEtPNrufkpbee1CfGztW-1", "BAIR, 1-frame conditional, 16 frames of 64x64"),
    "ucf101_uncond_gpt": ("1QkF_Sb2XVRgSbFT_SxQ6aZUeDFoliPQq", "UCF-101, unconditional, 16 frames of 128x128"),
}
#: The I3D network used for FVD.
PRETRAINED_I3D: Dict[str, tuple] = {
    "i3d_pretrained_400.pt": ("1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT", "I3D (Kinetics-400) for FVD"),
}


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and why (one line). Base of
    :class:`UnsafeCheckpointError`, :class:`CorruptCheckpointError` and :class:`CheckpointMismatchError`;
    a checkpoint of the wrong kind (a prior given as a VQ-VAE) raises it directly."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The checkpoint holds objects outside the allow-list; it was not loaded."""


class CorruptCheckpointError(CheckpointError):
    """The file is empty, truncated, corrupt or not a PyTorch checkpoint at all."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's hyper-parameters (``args``) do not describe its own weights (keys or shapes),
    or the model they describe cannot be built."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint (or another output file) failed, e.g. a full disk; the message names the
    path, and no partial file was left behind. ``errno`` is the underlying error's."""


# --------------------------------------------------------------------------------------------
# allow-list
# --------------------------------------------------------------------------------------------
class _LightningStandIn:
    """Inert stand-in for a Lightning class referenced by a checkpoint (as a dictionary key of
    ``callbacks``); it has no behaviour and is never called with data."""


class _AttributeDict(dict):
    """Stand-in for ``pytorch_lightning.utilities.parsing.AttributeDict`` (a plain dict)."""


_LIGHTNING_CLASSES = [
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "pytorch_lightning.callbacks.progress.ProgressBar",
]


def _allowed_globals() -> List[Any]:
    allowed: List[Any] = [argparse.Namespace]
    allowed += [(type(name.rsplit(".", 1)[1], (_LightningStandIn,), {}), name) for name in _LIGHTNING_CLASSES]
    allowed.append((_AttributeDict, "pytorch_lightning.utilities.parsing.AttributeDict"))
    return allowed


_ALLOWED_NAMES = {"argparse.Namespace", *_LIGHTNING_CLASSES, "pytorch_lightning.utilities.parsing.AttributeDict"}
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def _referenced_globals(message: str) -> List[str]:
    """Global names (``module.name``) a refused ``weights_only`` load reports; garbage names (a
    truncated pickle stops mid-name) are left out."""
    names = [n.rstrip(".") for n in re.findall(r"GLOBAL (\S+)", message)]
    return list(dict.fromkeys(n for n in names if re.fullmatch(rf"{_IDENT}(\.{_IDENT})+", n)))


def _short(e: BaseException) -> str:
    """The first sentence of an error message (torch appends advice after it)."""
    text = " ".join(str(e).split())
    text = re.split(r"(?<=\.)\s", text, maxsplit=1)[0] if text else ""
    return text.rstrip(".:") or type(e).__name__


def _unpickler_reason(e: BaseException) -> str:
    """What torch's weights-only unpickler stumbled on (e.g. 'Unsupported operand 24')."""
    m = re.search(r"WeightsUnpickler error:\s*(.+)", str(e), flags=re.S)
    lines = [l.strip() for l in (m.group(1) if m else "").splitlines() if l.strip()]
    reason = lines[0] if lines else _short(e)
    return re.split(r"\s(?:Please|Check|Re-running|You can)\b", reason)[0].rstrip(". ")


def _check_zip_crcs(path: Path) -> None:
    """CorruptCheckpointError when ``path`` is a zip checkpoint one of whose members fails its CRC-32
    (``torch.load`` does not check them, so a flipped byte would load as silently different weights).
    Legacy (non-zip) files and zips too damaged to list are left to ``torch.load``."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return
    if bad is not None:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: its member {bad} fails its CRC-32 check "
                                     "(the file was damaged after it was written)")


def safe_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` restricted to tensors, containers and the allow-list above.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnsafeCheckpointError: the file references a global outside the allow-list (named in the
            message); nothing of it was executed.
        CorruptCheckpointError: the file is empty, truncated, corrupt or not a PyTorch checkpoint.
    Both are :class:`CheckpointError` (a ``ValueError``) with a one-line message naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(f"checkpoint {path} is empty (0 bytes): not a PyTorch checkpoint")
    _check_zip_crcs(path)
    try:
        with torch.serialization.safe_globals(_allowed_globals()), warnings.catch_warnings():
            # a plain pickle (not a checkpoint) makes torch warn about its protocol before failing
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = [g for g in _referenced_globals(str(e)) if g not in _ALLOWED_NAMES]
        if not refused:
            try:
                refused = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
                           if g not in _ALLOWED_NAMES]
            except Exception:  # not a zip checkpoint (legacy format) or unreadable: nothing more to name
                refused = []
        if refused:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it references {', '.join(refused)}, outside videogpt_fast's "
                f"allow-list of checkpoint contents (tensors, containers, argparse.Namespace, Lightning's "
                f"callback keys); unpickling it could execute code, so it was not loaded") from None
        raise CorruptCheckpointError(
            f"checkpoint {path} is corrupt or not a PyTorch checkpoint (its pickle data cannot be read: "
            f"{_unpickler_reason(e)})") from None
    except (PermissionError, IsADirectoryError):
        raise
    except (EOFError, RuntimeError, KeyError, ValueError, IndexError, TypeError, AttributeError, OSError,
            UnicodeDecodeError, MemoryError, OverflowError, zipfile.BadZipFile) as e:  # OSError: EINVAL on a cut zip
        what = ("ends early (truncated)" if isinstance(e, EOFError) else "holds unreadable pickle data"
                if isinstance(e, KeyError) else f"cannot be read ({_short(e)})")
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated, corrupt or not a PyTorch checkpoint: it {what}") from None


def _write_error(path: Path, e: BaseException) -> CheckpointWriteError:
    code = getattr(e, "errno", None) or errno.EIO
    reason = os.strerror(code) if getattr(e, "errno", None) else _short(e)
    hint = "; free some space or choose another folder" if code == errno.ENOSPC else ""
    return CheckpointWriteError(code, f"could not write {path}: {reason}{hint} (nothing was written; an "
                                      f"existing file of that name is unchanged)")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`atomic_write` / :func:`link_or_copy` (left by a
    process killed while writing)."""
    return bool(re.fullmatch(r"\..+\.tmp(\.[A-Za-z0-9]+)?", name))


def atomic_write(path: PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` for a temporary file ``tmp`` in ``path``'s folder (``.STEM.*.tmp.EXT``: the
    extension still picks the format), fsync it, then rename it over ``path``: a crash or a full disk
    never leaves a partial ``path``, and the temporary file is removed on any error.

    Raises:
        CheckpointWriteError: writing failed with an ``OSError`` (a full disk, no permission); the
            message names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise (e if isinstance(e, CheckpointWriteError) else _write_error(path, e)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class _WriteRecorder:
    """File wrapper that remembers the first ``OSError`` a write raised: ``torch.save`` turns it into
    an unrelated ``inline_container`` RuntimeError, which :func:`atomic_save` replaces with it."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`: a crash never leaves a half-written checkpoint,
    and a failed write (a full disk) raises :class:`CheckpointWriteError` naming ``path``."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            recorder = _WriteRecorder(f)
            try:
                torch.save(obj, recorder)
            except RuntimeError:
                if recorder.error is not None:
                    raise recorder.error from None
                raise
    return atomic_write(path, write)


def link_or_copy(src: PathLike, dst: PathLike) -> str:
    """Make ``dst`` the same file as ``src`` without a second copy on disk: a hard link, put in place
    atomically by :func:`atomic_write`. Where the filesystem has no hard links it falls back to an
    (atomic) copy. Returns ``"hard link"`` or ``"copy"``; raises :class:`CheckpointWriteError`."""
    how: List[str] = []

    def put(tmp: str) -> None:
        os.unlink(tmp)  # os.link needs a free name
        try:
            os.link(src, tmp)
            how.append("hard link")
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK,
                               errno.ENOSYS, errno.EACCES):
                raise
            shutil.copyfile(src, tmp)
            how.append("copy")

    atomic_write(dst, put)
    return how[0]


def lightning_checkpoint(model: torch.nn.Module, *, global_step: int = 0, epoch: int = 0,
                         extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A dict in the original's Lightning 1.3 layout (``state_dict`` with the original keys,
    ``hyper_parameters['args']``, ``global_step``, ``epoch``); ``extra`` (optimiser, scheduler,
    RNG state for exact resume) goes under the key ``videogpt_fast``."""
    ckpt = {
        "epoch": int(epoch),
        "global_step": int(global_step),
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "state_dict": model.state_dict(),
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
        "hparams_name": "args",
        "hyper_parameters": {"args": as_namespace(model.args)},
    }
    if extra:
        ckpt["videogpt_fast"] = extra
    return ckpt


def save_checkpoint(path: PathLike, model: torch.nn.Module, *, global_step: int = 0, epoch: int = 0,
                    extra: Optional[Dict[str, Any]] = None) -> Path:
    """Atomically write ``model`` as an original-format checkpoint (see :func:`lightning_checkpoint`)."""
    return atomic_save(lightning_checkpoint(model, global_step=global_step, epoch=epoch, extra=extra), path)


# --------------------------------------------------------------------------------------------
# pretrained names
# --------------------------------------------------------------------------------------------
def cache_dirs() -> List[Path]:
    """Folders searched for pretrained files, in order."""
    home = os.environ.get("VIDEOGPT_FAST_HOME")
    dirs = [Path(home).expanduser() if home else Path("~/.cache/videogpt_fast").expanduser(),
            Path("~/.cache/videogpt").expanduser()]
    return list(dict.fromkeys(dirs))


_DRIVE_URL = "https://drive.google.com/uc?id="  # gdown >= 5 dropped --id; a URL works with every version


def _search_dirs(root: Optional[PathLike]) -> List[Path]:
    """``[root]`` when given, else :func:`cache_dirs`."""
    return [Path(root).expanduser()] if root is not None else cache_dirs()


def _not_cached(kind: str, fname: str, drive_id: str, dirs: List[Path], what: str = "") -> FileNotFoundError:
    target = dirs[0] / fname
    return FileNotFoundError(
        f"{kind} {fname!r}{f' ({what})' if what else ''} is not in the local cache; videogpt_fast never downloads. "
        f"Put the original's file at {target} (searched: {', '.join(str(d) for d in dirs)}); "
        f"it is the original release's Google Drive file id {drive_id}, e.g. "
        f"`mkdir -p {shlex.quote(str(dirs[0]))} && gdown {shlex.quote(_DRIVE_URL + drive_id)} "
        f"-O {shlex.quote(str(target))}`.")


def download(id: str, fname: str, root: Optional[PathLike] = None) -> str:
    """The original ``videogpt.download.download(id, fname, root)``, without the download.

    Returns the path (str) of ``root/fname`` when that file exists. ``root=None`` (the original's
    default is ``~/.cache/videogpt``) searches :func:`cache_dirs`: ``$VIDEOGPT_FAST_HOME`` (default
    ``~/.cache/videogpt_fast``), then ``~/.cache/videogpt``. ``id`` is the Google Drive file id.
    Raises FileNotFoundError naming the file, where to put it and a ``gdown`` command that fetches it.
    """
    dirs = _search_dirs(root)
    for folder in dirs:
        if (folder / fname).is_file():
            return str(folder / fname)
    raise _not_cached("file", fname, id, dirs)


def resolve_pretrained(name: str, table: Dict[str, tuple], root: Optional[PathLike] = None) -> Path:
    """Path of the cached file for pretrained ``name`` (saved as ``name`` or ``name.ckpt``) in
    ``root``, or in :func:`cache_dirs` when ``root`` is None. Raises FileNotFoundError as
    :func:`download` does."""
    dirs = _search_dirs(root)
    for folder in dirs:
        for candidate in (folder / name, folder / f"{name}.ckpt"):
            if candidate.is_file():
                return candidate
    drive_id, what = table[name]
    raise _not_cached("pretrained file", name, drive_id, dirs, what)


def _resolve(name_or_path: PathLike, table: Dict[str, tuple], root: Optional[PathLike] = None) -> Path:
    if isinstance(name_or_path, str) and name_or_path in table and not os.path.exists(name_or_path):
        return resolve_pretrained(name_or_path, table, root)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        names = ", ".join(sorted(table))
        raise FileNotFoundError(f"{name_or_path!s} is neither an existing checkpoint file nor a "
                                f"pretrained name ({names})")
    return path


def as_namespace(args: Any) -> argparse.Namespace:
    """Hyper-parameters as an ``argparse.Namespace`` (the original's constructor argument)."""
    if isinstance(args, argparse.Namespace):
        return args
    if isinstance(args, dict):
        return argparse.Namespace(**args)
    raise TypeError(f"model args must be an argparse.Namespace or a dict, got {type(args).__name__}")


def _split(ckpt: Any, path: Path):
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a model checkpoint: expected a dict with 'state_dict' "
                         f"(and 'hyper_parameters' with 'args'), got {type(ckpt).__name__}")
    hp = ckpt.get("hyper_parameters") or {}
    args = hp.get("args", ckpt.get("args"))
    if args is None:
        raise CheckpointError(f"{path} has no hyper_parameters['args']: cannot rebuild the model")
    if not isinstance(args, (argparse.Namespace, dict)) or not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{path} is not a model checkpoint: its args are a {type(args).__name__} and its "
                              f"state_dict a {type(ckpt['state_dict']).__name__}")
    return as_namespace(args), ckpt["state_dict"]


def check_fits(build: Callable[[], torch.nn.Module], state_dict: Dict[str, Any], path: PathLike) -> None:
    """Build the model ``build()`` describes on the meta device (no memory is allocated, whatever its
    size) and compare its state-dict keys and shapes with ``state_dict`` -- before the real model is
    built, so that a small file whose ``args`` say ``n_codes=2**25`` fails at once.

    Raises:
        CheckpointMismatchError: keys are missing or unexpected, a shape differs, a floating-point
            weight is stored as integers, a weight holds NaN, or ``build`` fails (the args do not
            describe a model); the message names ``path`` and the first differences.
    """
    try:
        with torch.device("meta"):
            want = build().state_dict()
    except Exception as e:  # invalid hyper-parameters: the constructor's own message
        raise CheckpointMismatchError(f"{path}: its hyper-parameters do not describe a model that can be "
                                      f"built ({type(e).__name__}: {_short(e)})") from None
    problems = [f"missing {k}" for k in want if k not in state_dict]
    problems += [f"unexpected {k}" for k in state_dict if k not in want]
    problems += [f"{k} is {tuple(getattr(state_dict[k], 'shape', ()))} in the file but "
                 f"{tuple(v.shape)} by its args" for k, v in want.items()
                 if k in state_dict and tuple(getattr(state_dict[k], "shape", ())) != tuple(v.shape)]
    problems += [f"{k} is {state_dict[k].dtype} in the file but {v.dtype} in the model" for k, v in want.items()
                 if isinstance(state_dict.get(k), torch.Tensor) and v.is_floating_point()
                 and not state_dict[k].is_floating_point()]
    problems += [f"{k} holds NaN (a diverged training?)" for k, v in state_dict.items()
                 if isinstance(v, torch.Tensor) and v.is_floating_point() and bool(torch.isnan(v).any())]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointMismatchError(f"{path}: its hyper-parameters (args) do not match its weights: {shown}")


def check_size(build: Callable[[argparse.Namespace], torch.nn.Module], args: argparse.Namespace, layers_attr: str,
               state_dict: Dict[str, Any], path: PathLike) -> None:
    """CheckpointMismatchError when ``args`` (with more than 2 repeated layers ``layers_attr``) describe
    a model with more values than ``state_dict`` holds, found without building it (see
    :func:`videogpt_fast.model_size.estimated_params`): so
    ``n_res_layers=10**6`` in a small file fails at once instead of building a million layers. Args that
    cannot build a model are left to :func:`check_fits`, which names the error."""
    from .model_size import estimated_params
    layers = getattr(args, layers_attr, None)
    if not isinstance(layers, int) or layers <= 2:  # check_fits builds it quickly, and names the differences
        return
    try:
        want = estimated_params(build, args, layers_attr)
    except Exception:  # invalid hyper-parameters: check_fits reports them
        return
    have = sum(int(v.numel()) for v in state_dict.values() if isinstance(v, torch.Tensor))
    if want > have:
        raise CheckpointMismatchError(f"{path}: its hyper-parameters (args) describe a model of {want:,} values "
                                      f"({layers_attr}={layers}), but its weights hold {have:,}")


def checkpoint_kind(state_dict: Dict[str, torch.Tensor]) -> str:
    """'videogpt' (a prior), 'vqvae', or 'unknown', from the state-dict keys."""
    if any(k.startswith("attn_stack.") for k in state_dict):
        return "videogpt"
    if "codebook.embeddings" in state_dict and any(k.startswith("encoder.") for k in state_dict):
        return "vqvae"
    return "unknown"


def _place(model: torch.nn.Module, device) -> torch.nn.Module:
    if device is not None:
        model = model.to(device)
    return model.eval()


_KINDS = {"vqvae": ("a VQ-VAE", "load_vqvae", PRETRAINED_VQVAE),
          "videogpt": ("a VideoGPT prior", "load_videogpt", PRETRAINED_VIDEOGPT)}


def _read(name_or_path: PathLike, want: str, root: Optional[PathLike] = None):
    """``(path, args, state_dict)`` of a ``want`` ("vqvae" or "videogpt") checkpoint, safely
    loaded; a checkpoint of the other kind is a clear error naming the right loader."""
    what, _, table = _KINDS[want]
    path = _resolve(name_or_path, table, root)
    args, state_dict = _split(safe_load(path), path)
    kind = checkpoint_kind(state_dict)
    if kind != want:
        raise CheckpointError(f"{path} is a {kind} checkpoint, not {what}"
                         + (f"; load it with {_KINDS[kind][1]}" if kind in _KINDS else ""))
    return path, args, state_dict


def load_vqvae(model_name: PathLike, device: Optional[Union[str, torch.device]] = None,
               root: Optional[PathLike] = None):
    """Load a VQ-VAE in eval mode, as the original ``videogpt.download.load_vqvae``.

    ``model_name``: a pretrained name (looked up in ``root``, or in :func:`cache_dirs` when None;
    never downloaded) or the path of an original (Lightning) checkpoint. ``device`` (positional as
    in the original): where to move the model; None leaves it on the CPU. Raises FileNotFoundError
    (see :func:`download`) or :class:`UnsafeCheckpointError`.
    """
    from .vqvae import VQVAE

    path, args, state_dict = _read(model_name, "vqvae", root)
    check_size(VQVAE, args, "n_res_layers", state_dict, path)
    check_fits(lambda: VQVAE(args), state_dict, path)
    model = VQVAE(args)
    model.load_state_dict(state_dict, strict=True)
    return _place(model, device)


def infer_vqvae_args(gpt_args: argparse.Namespace, state_dict: Dict[str, torch.Tensor],
                     path: Optional[PathLike] = None) -> argparse.Namespace:
    """Rebuild the VQ-VAE hyper-parameters from the ``vqvae.*`` weights a prior checkpoint holds
    and the prior's data arguments (``resolution``, ``sequence_length``). Raises
    :class:`CheckpointMismatchError` (naming ``path`` when given) when the weights lack them."""
    where = f"{path}: " if path is not None else ""
    sd = {k[len("vqvae."):]: v for k, v in state_dict.items() if k.startswith("vqvae.")}
    if "codebook.embeddings" not in sd:
        raise CheckpointMismatchError(f"{where}the prior checkpoint holds no VQ-VAE weights (vqvae.*) to rebuild "
                                      "it from")
    missing = [k for k in ("vqvae.encoder.convs.0.conv.weight", *(f"attn_stack.pos_embd.emb.d_{i}" for i in range(3)))
               if k not in state_dict] + [a for a in ("sequence_length", "resolution") if not hasattr(gpt_args, a)]
    if missing or sd["codebook.embeddings"].dim() != 2:
        raise CheckpointMismatchError(f"{where}the prior checkpoint cannot describe its VQ-VAE: it lacks {missing} "
                                      f"or its codebook is not 2-D")
    n_codes, embedding_dim = sd["codebook.embeddings"].shape
    n_res = len({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.res_stack\.(\d+)\.block\.", k))})
    latent = [int(state_dict[f"attn_stack.pos_embd.emb.d_{i}"].shape[0]) for i in range(3)]
    sizes = (gpt_args.sequence_length, gpt_args.resolution, gpt_args.resolution)
    downsample = [s // l for s, l in zip(sizes, latent)]
    return argparse.Namespace(embedding_dim=int(embedding_dim), n_codes=int(n_codes),
                              n_hiddens=int(sd["encoder.convs.0.conv.weight"].shape[0]), n_res_layers=n_res,
                              downsample=downsample, sequence_length=gpt_args.sequence_length,
                              resolution=gpt_args.resolution)


def load_videogpt(model_name: PathLike, device: Optional[Union[str, torch.device]] = None,
                  root: Optional[PathLike] = None, vqvae: Any = None):
    """Load a VideoGPT prior in eval mode, as the original ``videogpt.download.load_videogpt``.

    ``model_name``, ``device`` (positional as in the original) and ``root`` as :func:`load_vqvae`.
    ``vqvae`` (a VQVAE module, a path or a pretrained name) overrides the VQ-VAE path stored in the
    checkpoint, which is usually stale. Without it, the stored path is used when it exists;
    otherwise the VQ-VAE is rebuilt from the weights the prior checkpoint itself holds (logged).
    """
    from .gpt import VideoGPT
    from .vqvae import VQVAE

    path, args, state_dict = _read(model_name, "videogpt", root)
    if vqvae is None:
        stored = getattr(args, "vqvae", None)
        if stored and (os.path.isfile(str(stored)) or _cached(str(stored), root)):
            vqvae = load_vqvae(stored, root=root)
        else:
            log.info("VQ-VAE %r of %s not found: rebuilding it from the weights in the checkpoint", stored, path)
            vqvae = VQVAE(infer_vqvae_args(args, state_dict, path))
    elif not isinstance(vqvae, torch.nn.Module):
        vqvae = load_vqvae(vqvae, root=root)
    check_size(lambda a: VideoGPT(a, vqvae=vqvae), args, "layers", state_dict, path)
    check_fits(lambda: VideoGPT(args, vqvae=vqvae), state_dict, path)
    model = VideoGPT(args, vqvae=vqvae)
    model.load_state_dict(state_dict, strict=True)
    return _place(model, device)


def _cached(name: str, root: Optional[PathLike] = None) -> bool:
    if name not in PRETRAINED_VQVAE:
        return False
    try:
        resolve_pretrained(name, PRETRAINED_VQVAE, root)
        return True
    except FileNotFoundError:
        return False
