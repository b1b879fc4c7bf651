"""``videogpt-fast``: train, demo, sample, continue, reconstruct, encode and fvd.

    videogpt-fast demo                                   # tiny models on synthetic videos, CPU
    videogpt-fast train vqvae --data_path bair.hdf5 ...  # or torchrun ... -m videogpt_fast.train
    videogpt-fast sample --ckpt bair_gpt --n 8 --output samples.mp4
    videogpt-fast sample --ckpt bair_gpt --n 4 --frames 48 --output long.mp4
    videogpt-fast continue --ckpt bair_gpt --video clip.mp4 --frames 48 --output continued.mp4
    videogpt-fast reconstruct --vqvae bair_stride4x2x2 clip.mp4 --output recon.mp4
    videogpt-fast encode --vqvae vq.ckpt videos/ --output codes.pt
    videogpt-fast fvd --real real_videos/ --fake fake_videos/ --i3d i3d_pretrained_400.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from .argtypes import DefaultsHelpFormatter, check_output_path, device_name, nonneg_int, positive_int, seed_int
from .backends import BackendUnavailableError

from .data.video_reader import VIDEO_EXTS, read_video, video_files  # the one video listing and reader (data/)
from .long_video import DECODE_MODES
from .sample import HANDOVERS, default_handover
from .utils import as_namespace
#: what ``--output`` of sample / reconstruct (a video grid) and encode (codes) may end with
GRID_EXTS = (".mp4", ".gif")
CODE_EXTS = (".pt", ".npz")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _device(flag: str) -> torch.device:
    if flag == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(flag)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {flag}: CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {flag}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _clip(path: str, sequence_length: int, resolution: int, start: int = 0,
          why: str = "sequence_length") -> torch.Tensor:
    """(C, T, H, W) in [-0.5, 0.5]: ``sequence_length`` frames of ``path`` preprocessed as in training.
    A shorter video is a ``ValueError`` naming the file and ``why`` that many frames are needed."""
    from .data.preprocess import preprocess

    frames = read_video(path, sequence_length, start)
    if len(frames) < sequence_length:
        raise ValueError(f"{path!r} has {len(frames)} frames from frame {start}; need {sequence_length} ({why})")
    return preprocess(torch.from_numpy(frames), resolution)


def _save_grid(video: torch.Tensor, out: Path, fps: int, nrow: Optional[int] = None) -> None:
    """A (B, C, T, H, W) batch in [0, 1] as one grid video at ``out``, written to a temporary file in
    the same folder and renamed (a full disk never leaves a partial video)."""
    from .checkpoint import atomic_write
    from .utils import make_video_grid, write_video

    grid = make_video_grid(video, nrow)
    atomic_write(out, lambda tmp: write_video(grid, tmp, fps=fps))
    print("saved videos to", out)


# ----------------------------------------------------------------------------------------------
# subcommands
# ----------------------------------------------------------------------------------------------
def cmd_sample(a: argparse.Namespace) -> int:
    """Sample ``--n`` videos from a prior checkpoint (or pretrained name) into an MP4/GIF grid."""
    from .checkpoint import load_videogpt

    out = check_output_path(a.output, GRID_EXTS)  # before any model work: samples are never lost
    device = _device(a.device)
    gpt = load_videogpt(a.ckpt, vqvae=a.vqvae, device=device)
    _check_video_fits(gpt, a.n, a.frames, device)
    torch.manual_seed(a.seed)
    batch = None
    if gpt.use_frame_cond or gpt.args.class_cond:
        # conditional prior: frames / labels of random test clips (seeded by --seed), as
        # scripts/sample_videogpt.py takes the first batch of its shuffled test loader
        from .data import open_datasets
        args = as_namespace(gpt.args, copy=True)
        if a.data_path:
            args.data_path = a.data_path
        if not getattr(args, "data_path", None):
            raise ValueError("this prior is conditional (frames or class): give --data_path for the conditioning videos")
        _, test = open_datasets(args)
        if gpt.args.class_cond:
            from .data import require_labels
            require_labels(test)
        if len(test) < a.n:
            raise ValueError(f"the test split of {args.data_path!r} has {len(test)} clips, fewer than --n {a.n}")
        picked = torch.randperm(len(test), generator=torch.Generator().manual_seed(a.seed))[:a.n].tolist()
        items = [test[i] for i in picked]
        batch = {"video": torch.stack([it["video"] for it in items]).to(device)}
        said = f"conditioning on test clips {picked} of {args.data_path}"
        if gpt.args.class_cond:
            batch["label"] = torch.tensor([it["label"] for it in items], device=device)
            classes = getattr(test, "classes", None)
            said += " with labels " + str([classes[i] if classes else i for i in batch["label"].tolist()])
        print(said, flush=True)
    T = int(gpt.shape[0])
    if a.context_frames is not None and not a.context_frames < T:
        raise ValueError(f"--context_frames {a.context_frames}: must be in [0, {T - 1}] "
                         f"(the prior has T={T} latent frames)")
    latent_frames = _latent_frames(gpt, a.frames)
    with torch.no_grad():
        samples = gpt.sample(a.n, batch, progress=not a.no_progress, latent_frames=latent_frames,
                             context_frames=a.context_frames, decode=a.decode, handover=a.handover)
    _save_grid(samples[:, :, :a.frames].cpu(), out, fps=a.fps)
    return 0


def _latent_frames(gpt, frames: Optional[int]) -> int:
    """Latent frames to sample for ``frames`` video frames: the prior's T at least (shorter videos
    are cut from a full window), else ceil(frames / temporal downsample)."""
    T, ds = int(gpt.shape[0]), int(gpt.vqvae.downsample[0])
    return T if frames is None else max(T, -(-frames // ds))


def _check_video_fits(gpt, n: int, frames: Optional[int], device: torch.device) -> None:
    """ValueError when ``n`` videos of ``frames`` frames, as the float32 pixels the VQ-VAE decodes
    them to, exceed ``device``'s memory: a huge ``--frames`` is refused before any sampling (it
    sampled for hours, or hung listing its windows, before the allocation failed)."""
    from .model_size import memory_bytes
    resolution = getattr(gpt.args, "resolution", None) or gpt.vqvae.args.resolution
    length = _latent_frames(gpt, frames) * int(gpt.vqvae.downsample[0])
    pixels = n * 3 * length * int(resolution) ** 2
    total = memory_bytes(str(device))
    if total is not None and pixels * 4 > total:
        raise ValueError(f"--n {n} --frames {frames or length}: {n} video(s) of {length} frames at "
                         f"{resolution}x{resolution} need "
                         f"{pixels * 4 / 2**30:.1f} GiB as float32 pixels, more than the {total / 2**30:.1f} GiB "
                         "of memory of this device; lower --frames or --n")


def cmd_continue(a: argparse.Namespace) -> int:
    """Continue a video file past its first frames with a prior: encode the first
    ``context_frames`` latent frames' worth of the clip (as the start of a clip,
    :func:`videogpt_fast.sample.encode_context`), sample the rest by sliding windows
    (:func:`videogpt_fast.sample.sample_codes` with ``prefix``), decode ``--frames`` frames."""
    from .checkpoint import load_videogpt
    from .long_video import decode_latents
    from .sample import encode_context

    out = check_output_path(a.output, GRID_EXTS)
    if not Path(a.video).is_file():
        raise ValueError(f"--video {a.video}: no such file")
    device = _device(a.device)
    gpt = load_videogpt(a.ckpt, vqvae=a.vqvae, device=device)
    _check_video_fits(gpt, a.n, a.frames, device)
    T, ds = int(gpt.shape[0]), int(gpt.vqvae.downsample[0])
    context = T // 2 if a.context_frames is None else a.context_frames
    if not 0 < context < T:
        raise ValueError(f"--context_frames {context}: must be in [1, {T - 1}] (the prior has T={T} latent frames)")
    if bool(gpt.args.class_cond) != (a.label is not None):
        raise ValueError("this prior is class-conditional: give --label" if gpt.args.class_cond else
                         "--label: this prior is not class-conditional")
    given = context * ds  # frames of the clip the prior continues from
    if a.frames <= given:
        raise ValueError(f"--frames {a.frames}: must exceed the {given} frames taken from the clip "
                         f"({context} latent frames x temporal downsample {ds})")
    n_cond = int(gpt.args.n_cond_frames) if gpt.use_frame_cond else 0
    resolution = getattr(gpt.args, "resolution", None) or gpt.vqvae.args.resolution
    why = (f"the prior's {n_cond} conditioning frames" if n_cond > given else
           f"--context_frames {context} x temporal downsample {ds}")
    x = _clip(a.video, max(given, n_cond), resolution, a.start, why).unsqueeze(0).to(device)
    torch.manual_seed(a.seed)
    with torch.no_grad():
        prefix = encode_context(gpt.vqvae, x[:, :, :given], T).expand(a.n, -1, -1, -1)  # as a clip's start
        batch = None
        if gpt.use_frame_cond or gpt.args.class_cond:  # the clip's first frames condition a frame prior
            batch = {"video": x.expand(a.n, -1, -1, -1, -1)}
            if gpt.args.class_cond:
                batch["label"] = torch.full((a.n,), a.label, device=device)
        handover = a.handover or default_handover(gpt.vqvae)
        codes = gpt.sample_codes(a.n, batch, progress=not a.no_progress, latent_frames=_latent_frames(gpt, a.frames),
                                 context_frames=context, prefix=prefix, handover=handover)
        video = decode_latents(gpt.vqvae, codes, a.decode, window=T, context_frames=context,
                               handover=handover)[:, :, :a.frames]
    _save_grid(video.cpu(), out, fps=a.fps)
    print(f"continued the first {given} frames of {a.video} to {a.frames} frames")
    return 0


def _vqvae_and_clip_size(a: argparse.Namespace):
    """(device, VQ-VAE from --vqvae, clip length, resolution): --sequence_length/--resolution, or
    the VQ-VAE's own."""
    from .checkpoint import load_vqvae
    device = _device(a.device)
    vqvae = load_vqvae(a.vqvae, device=device)
    return device, vqvae, a.sequence_length or vqvae.args.sequence_length, a.resolution or vqvae.args.resolution


def cmd_reconstruct(a: argparse.Namespace) -> int:
    """Encode and decode one video file; writes the original and its reconstruction side by side."""
    out = check_output_path(a.output, GRID_EXTS)
    device, vqvae, seq, res = _vqvae_and_clip_size(a)
    x = _clip(a.video, seq, res, a.start).unsqueeze(0).to(device)
    with torch.no_grad():
        recon = vqvae.decode(vqvae.encode(x)).clamp(-0.5, 0.5)
    mse = torch.mean((recon - x) ** 2).item()
    pair = torch.cat([x, recon], dim=-1) + 0.5
    _save_grid(pair.cpu(), out, fps=a.fps)
    print(f"reconstruction MSE {mse:.5f} (videos in [-0.5, 0.5]); left: input, right: reconstruction")
    return 0


def cmd_encode(a: argparse.Namespace) -> int:
    """Encode videos into VQ-VAE codes; ``.pt`` (torch) or ``.npz`` (NumPy) with codes and file names."""
    out = check_output_path(a.output, CODE_EXTS)
    files = video_files(a.inputs)
    if not files:
        raise ValueError(f"no video files ({', '.join(VIDEO_EXTS)}) in {a.inputs}")
    device, vqvae, seq, res = _vqvae_and_clip_size(a)
    from tqdm.auto import tqdm
    codes: List[torch.Tensor] = []
    kept: List[str] = []
    skipped: List[str] = []  # unreadable or too short: skipped and counted, as training skips them
    for i in tqdm(range(0, len(files), a.batch_size), desc="encode", unit="batch", disable=a.no_progress):
        clips = []
        for f in files[i:i + a.batch_size]:
            try:
                clips.append(_clip(f, seq, res))
            except ValueError as e:  # ClipReadError (corrupt file) or fewer than sequence_length frames
                print(f"videogpt-fast encode: skipped {e}", file=sys.stderr)
                skipped.append(f)
                continue
            kept.append(f)
        if clips:
            with torch.no_grad():
                codes.append(vqvae.encode(torch.stack(clips).to(device)).cpu())
    if not codes:
        raise ValueError(f"none of the {len(files)} video files could be encoded (each was unreadable or shorter "
                         f"than sequence_length={seq}; see above)")
    all_codes = torch.cat(codes)
    from .checkpoint import atomic_save, atomic_write
    record = {"codes": all_codes, "files": kept, "skipped": skipped, "vqvae": str(a.vqvae), "sequence_length": seq,
              "resolution": res}
    if out.suffix.lower() == ".npz":  # the same keys as .pt, plus the latent shape
        atomic_write(out, lambda tmp: np.savez(tmp, **{k: np.asarray(v) for k, v in record.items()},
                                               latent_shape=np.array(all_codes.shape[1:])))
    else:
        atomic_save(record, out)
    print(f"encoded {len(kept)} videos into codes {tuple(all_codes.shape)} -> {out}"
          + (f"; skipped {len(skipped)} unreadable or too short (listed under 'skipped')" if skipped else ""))
    return 0


def _load_folder(folder: str, n_frames: int, resolution: Optional[int]) -> np.ndarray:
    files = video_files([folder])
    if len(files) < 2:
        raise ValueError(f"FVD needs at least 2 videos per set; {folder!r} has {len(files)}")
    videos = []
    for f in files:
        v = read_video(f, n_frames)
        if len(v) < n_frames:
            raise ValueError(f"{f!r} has {len(v)} frames; --sequence_length is {n_frames}")
        if resolution:
            from .data.preprocess import preprocess
            v = ((preprocess(torch.from_numpy(v), resolution) + 0.5).clamp(0, 1).permute(1, 2, 3, 0).numpy()
                 * 255).round().astype(np.uint8)
        videos.append(v)
    shapes = {v.shape for v in videos}
    if len(shapes) > 1:
        raise ValueError(f"videos in {folder!r} differ in size {sorted(shapes)}: pass --resolution to resize them")
    return np.stack(videos)


def cmd_fvd(a: argparse.Namespace) -> int:
    """Frechet Video Distance between two folders of videos (I3D weights from a local file)."""
    from .fvd import frechet_distance, get_fvd_logits, load_i3d_pretrained

    device = _device(a.device)
    i3d = load_i3d_pretrained(a.i3d, device=device)
    real = _load_folder(a.real, a.sequence_length, a.resolution)
    fake = _load_folder(a.fake, a.sequence_length, a.resolution)
    real_logits = get_fvd_logits(real, i3d=i3d, device=device, bs=a.batch_size)
    fake_logits = get_fvd_logits(fake, i3d=i3d, device=device, bs=a.batch_size)
    fvd = frechet_distance(fake_logits, real_logits).item()
    print(f"FVD {fvd:.3f} ({len(real)} real, {len(fake)} generated videos of {a.sequence_length} frames)")
    return 0


# ----------------------------------------------------------------------------------------------
def _subcommand(sub, name: str, summary: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose one-line ``summary`` is both its line in ``videogpt-fast -h`` and the
    description atop its own ``-h``."""
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".", **kwargs)


def _long_video_flags(p: argparse.ArgumentParser, continuing: bool = False) -> None:
    """--frames (sample only), --context_frames and --decode of sample and continue (issue 16)."""
    if not continuing:
        p.add_argument("--frames", type=positive_int, default=None,
                       help="frames per video (default: the prior's length); more slides the prior's window "
                            "along time")
    p.add_argument("--context_frames", type=nonneg_int if not continuing else positive_int, default=None,
                   help="latent frames each window keeps from the previous one"
                        + (" and that are encoded from the clip" if continuing else "")
                        + " (default: half the prior's latent frames)")
    p.add_argument("--decode", choices=DECODE_MODES, default="windows",
                   help="VQ-VAE decode of long latents: in windows of the trained length cross-faded at the seams "
                        "(better on the demo's data), or in one pass")
    p.add_argument("--handover", choices=HANDOVERS, default=None,
                   help="how a window gets the frames it shares with the previous one: reencode, decoded and "
                        "re-encoded as the start of a clip (the default for the original's VQ-VAE, whose codes carry "
                        "their position in the clip), or codes, the previous window's codes copied (the default for "
                        "a VQ-VAE trained with --temporal_padding replicate)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videogpt-fast", description=__doc__.split("\n\n")[0].replace("``", ""),
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{train,demo,sample,continue,reconstruct,encode,fvd}")
    sub.required = True
    # train and demo forward their arguments to their own parsers (so `-h` shows their flags)
    sub.add_parser("train", add_help=False, help="train the VQ-VAE or the prior (train vqvae -h, train gpt -h)")
    sub.add_parser("demo", add_help=False, help="train tiny models on synthetic videos on CPU and write videos")
    defaults = DefaultsHelpFormatter
    grid = f"{' or '.join(GRID_EXTS)}; written to a temporary file in the same folder, then renamed"

    p = _subcommand(sub, "sample", "sample videos from a VideoGPT checkpoint into an MP4/GIF grid",
                       formatter_class=defaults)
    p.add_argument("--ckpt", required=True, help="prior checkpoint path or pretrained name (bair_gpt, ...)")
    p.add_argument("--vqvae", default=None, help="VQ-VAE checkpoint/name overriding the one the prior stores")
    p.add_argument("--n", type=positive_int, default=8, help="number of videos")
    p.add_argument("--output", default="samples.mp4", help=grid)
    p.add_argument("--data_path", default=None, help="conditioning videos for conditional priors: --n random "
                   "clips of its test split, drawn with --seed (default: the prior's own data_path)")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed of the sampling and of the conditioning clips")
    p.add_argument("--fps", type=positive_int, default=5, help="frames per second of the output video")
    p.add_argument("--device", type=device_name, default="auto",
                   help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--no_progress", action="store_true", help="no tqdm bar over the sampled positions")
    _long_video_flags(p)
    p.set_defaults(func=cmd_sample)

    p = _subcommand(sub, "continue", "continue a video file past its first frames with a VideoGPT prior",
                    formatter_class=defaults)
    p.add_argument("--ckpt", required=True, help="prior checkpoint path or pretrained name (bair_gpt, ...)")
    p.add_argument("--video", required=True, help="video file whose first frames are continued (and, for a "
                                                   "frame-conditional prior, give the conditioning frames)")
    p.add_argument("--frames", type=positive_int, required=True, help="frames of the output video (the clip's "
                   "first context_frames x temporal-downsample frames, reconstructed, then the continuation)")
    p.add_argument("--vqvae", default=None, help="VQ-VAE checkpoint/name overriding the one the prior stores")
    p.add_argument("--n", type=positive_int, default=1, help="continuations of the clip (one grid)")
    p.add_argument("--label", type=nonneg_int, default=None, help="class label, for a class-conditional prior")
    p.add_argument("--start", type=nonneg_int, default=0, help="first frame of the clip")
    p.add_argument("--output", default="continuation.mp4", help=grid)
    p.add_argument("--seed", type=seed_int, default=0, help="random seed of the sampling")
    p.add_argument("--fps", type=positive_int, default=5, help="frames per second of the output video")
    p.add_argument("--device", type=device_name, default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--no_progress", action="store_true", help="no tqdm bar over the sampled positions")
    _long_video_flags(p, continuing=True)
    p.set_defaults(func=cmd_continue)

    p = _subcommand(sub, "reconstruct", "encode+decode a video with a VQ-VAE, side by side with the input",
                       formatter_class=defaults)
    p.add_argument("video", help="input video file")
    p.add_argument("--vqvae", required=True, help="VQ-VAE checkpoint path or pretrained name")
    p.add_argument("--output", default="reconstruction.mp4", help=grid)
    p.add_argument("--sequence_length", type=positive_int, default=None, help="frames (default: the VQ-VAE's)")
    p.add_argument("--resolution", type=positive_int, default=None, help="default: the VQ-VAE's")
    p.add_argument("--start", type=nonneg_int, default=0, help="first frame")
    p.add_argument("--fps", type=positive_int, default=5, help="frames per second of the output video")
    p.add_argument("--device", type=device_name, default="auto",
                   help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_reconstruct)

    p = _subcommand(sub, "encode", "encode videos (files or folders) into VQ-VAE codes, one clip per video (its first frames)", formatter_class=defaults)
    p.add_argument("inputs", nargs="+", help="video files or folders (searched recursively)")
    p.add_argument("--vqvae", required=True, help="VQ-VAE checkpoint path or pretrained name")
    p.add_argument("--output", default="codes.pt", help=".pt (torch.save dict) or .npz; written to a temporary "
                                                        "file in the same folder, then renamed")
    p.add_argument("--sequence_length", type=positive_int, default=None,
                   help="frames encoded from the start of each video; a shorter video is an error "
                        "(default: the VQ-VAE's)")
    p.add_argument("--resolution", type=positive_int, default=None, help="default: the VQ-VAE's")
    p.add_argument("--batch_size", type=positive_int, default=8, help="videos per forward pass")
    p.add_argument("--device", type=device_name, default="auto",
                   help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--no_progress", action="store_true", help="no tqdm bar")
    p.set_defaults(func=cmd_encode)

    p = _subcommand(sub, "fvd", "Frechet Video Distance between a folder of real and one of generated videos",
                       formatter_class=defaults)
    p.add_argument("--real", required=True, help="folder of real videos")
    p.add_argument("--fake", required=True, help="folder of generated videos")
    p.add_argument("--i3d", default=None, help="i3d_pretrained_400.pt file or its folder (default: the local "
                                               "cache; never downloaded)")
    p.add_argument("--sequence_length", type=positive_int, default=16, help="frames per video (the paper: 16)")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help="resize+crop every video to this size first")
    p.add_argument("--batch_size", type=positive_int, default=10, help="videos per I3D forward pass")
    p.add_argument("--device", type=device_name, default="auto",
                   help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_fvd)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from . import train
        return train.main(argv[1:])
    if argv and argv[0] == "demo":
        from . import demo
        return demo.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    # CheckpointError is a ValueError, CheckpointWriteError an OSError; BackendUnavailableError (a
    # RuntimeError) is a backend set in VIDEOGPT_FAST_BACKEND that cannot run here
    except (ValueError, OSError, BackendUnavailableError) as e:
        print(f"videogpt-fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        from .model_size import report_out_of_memory
        return report_out_of_memory(e, f"videogpt-fast {args.command}")


if __name__ == "__main__":
    raise SystemExit(main())
