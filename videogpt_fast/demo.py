"""``videogpt-fast demo``: train a tiny VQ-VAE and prior on synthetic moving shapes, on CPU, in minutes.

It runs the same :class:`videogpt_fast.train.Trainer` as ``videogpt-fast train`` on in-memory
:class:`videogpt_fast.data.synthetic.MovingShapesDataset` videos (8 frames of 32x32), then writes into
``--output``: ``reconstructions.mp4/.gif`` (held-out videos, original left, reconstruction right),
``samples.mp4/.gif`` (videos drawn from the prior), ``losses.png`` and the two runs' checkpoints and
metrics (``vqvae/`` and ``gpt/``).

With ``--frames N`` (more than the trained 8) it also samples ``long_samples.mp4/.gif`` of N frames by
sliding the prior's window along time (issue 16) and prints two checks (:func:`long_video_report`):
whether the long samples stay coherent (the shape's area per window against the training videos', and
how much its area and colour change from frame to frame and from the first window; ``--handover`` picks
how windows hand their shared frames over, ``--context_frames`` how many latent frames they share)
and how one-pass and windowed VQ-VAE decoding reconstruct real N-frame clips.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from . import train
from .argtypes import DefaultsHelpFormatter, positive_float, positive_int
from .run_dir import OutputLock, check_fresh_output
from .data.synthetic import MovingShapesDataset
from .sample import HANDOVERS, default_handover
from .vqvae import TEMPORAL_PADDINGS

SEQUENCE_LENGTH, RESOLUTION = 8, 32
VQVAE_FLAGS = ["--embedding_dim", "32", "--n_codes", "128", "--n_hiddens", "32", "--n_res_layers", "1",
               "--downsample", "2", "4", "4", "--batch_size", "8"]
#: the prior's latent frames (its window when sampling long videos): the clip length over the temporal downsample
LATENT_FRAMES = SEQUENCE_LENGTH // int(VQVAE_FLAGS[VQVAE_FLAGS.index("--downsample") + 1])
GPT_FLAGS = ["--hidden_dim", "96", "--heads", "2", "--layers", "2", "--dropout", "0.1", "--attn_dropout", "0.1",
             "--batch_size", "8"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="videogpt-fast demo", description=__doc__.split("\n\n")[0].replace("``", ""),
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--output", default="./demo_output",
                   help="folder for videos, plot and checkpoints; must be new or empty (a second demo into the "
                        "same folder is refused, not mixed with the first)")
    p.add_argument("--steps", type=positive_int, default=600,
                   help="VQ-VAE training steps (the bar shows the rate; try 100 for a quick look)")
    p.add_argument("--gpt_steps", type=positive_int, default=None, help="prior training steps (default: 2.5 x --steps)")
    p.add_argument("--n_videos", type=positive_int, default=512, help="synthetic training videos")
    p.add_argument("--n_samples", type=positive_int, default=8, help="videos to sample from the prior")
    p.add_argument("--lr", type=positive_float, default=1e-3,
                   help="learning rate of both stages (higher than the original's 3e-4: the demo is short)")
    p.add_argument("--frames", type=positive_int, default=None,
                   help=f"also sample long videos of this many frames (> {SEQUENCE_LENGTH}, the trained length) and "
                        "report their coherence")
    p.add_argument("--temporal_padding", choices=TEMPORAL_PADDINGS, default="zeros",
                   help="how the VQ-VAE's convolutions pad time: zeros (the original's) or replicate (time-agnostic "
                        "codes: with --frames, long samples hand windows over as codes and keep their shape; README "
                        "'Longer videos')")
    p.add_argument("--handover", choices=HANDOVERS, default=None,
                   help="with --frames: how a window gets the frames it shares with the previous one (default: "
                        "codes with --temporal_padding replicate, else reencode; see videogpt-fast sample --help)")
    p.add_argument("--context_frames", type=int, default=None,
                   help=f"with --frames (default {LATENT_FRAMES // 2}): latent frames each window keeps from the "
                        f"previous one, 0 to {LATENT_FRAMES - 1} (see videogpt-fast sample --help)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic videos, training and sampling")
    p.add_argument("--no_progress", action="store_true", help="no tqdm bars (training and sampling)")
    return p


def _stage_args(stage: str, flags: List[str], steps: int, out: Path, opts: argparse.Namespace,
                extra: Sequence[str] = ()) -> argparse.Namespace:
    argv = ["--data_path", "<in-memory moving shapes>", "--sequence_length", str(SEQUENCE_LENGTH),
            "--resolution", str(RESOLUTION), "--num_workers", "0", "--max_steps", str(steps),
            "--save_every", "0", "--val_every", str(max(steps // 4, 10)), "--limit_val_batches", "2",
            "--log_every", "5", "--device", "cpu", "--seed", str(opts.seed + 1234), "--output", str(out), "--lr", str(opts.lr),
            *flags, *extra] + (["--no_progress"] if opts.no_progress else [])
    args = train.build_parser(stage).parse_args(argv)
    args.stage = stage
    return args


def plot_losses(runs: Dict[str, Path], fname: Path) -> Path:
    """Training and validation losses of the runs' ``metrics.jsonl`` files, one panel per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.5), squeeze=False)
    for ax, (name, folder) in zip(axes[0], runs.items()):
        records = train.read_metrics(folder / "metrics.jsonl")
        tr = [(r["step"], r["loss"]) for r in records if "loss" in r]
        ax.plot(*zip(*tr), label="train loss", lw=1)
        for key in ("val/recon_loss", "val/loss"):
            va = [(r["step"], r[key]) for r in records if key in r]
            if va:
                ax.plot(*zip(*va), "o-", label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(fname, dpi=100)
    plt.close(fig)
    return fname


def _save_frame_strip(video: torch.Tensor, fname: Path, max_frames: int = 64) -> None:
    """Frames of the first 4 videos (B, C, T, H, W) in [0, 1] as one PNG, scaled 3x (rows: videos,
    columns: time); of a long video every ceil(T / max_frames)-th frame, so the strip stays viewable."""
    from PIL import Image
    step = -(-video.shape[2] // max_frames)
    v = video[:4, :, ::step].clamp(0, 1).permute(0, 3, 2, 4, 1)  # B H T W C
    b, h, t, w, c = v.shape
    img = (v.reshape(b * h, t * w, c).numpy() * 255).astype("uint8")
    Image.fromarray(img).resize((t * w * 3, b * h * 3), Image.NEAREST).save(fname)


def foreground_area(video: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """Fraction of pixels (B, T) float of videos (B, 3, T, H, W) in [0, 1] whose brightest channel
    exceeds ``threshold``: the area of the moving shape on the black background (constant within a
    training video: the shape neither grows nor leaves the frame)."""
    return (video.amax(dim=1) > threshold).float().mean(dim=(-2, -1))


def foreground_colour(video: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """Mean colour (B, T, 3) of the :func:`foreground_area` pixels of videos (B, 3, T, H, W) in [0, 1]
    (0 where a frame has none): the moving shape's colour, constant within a training video."""
    mask = (video.amax(dim=1) > threshold).float()
    total = (video * mask.unsqueeze(1)).sum(dim=(-2, -1))
    return (total / mask.sum(dim=(-2, -1)).clamp_min(1).unsqueeze(1)).transpose(1, 2)


def long_video_report(gpt, frames: int, n: int, seed: int = 0, progress: bool = False,
                      n_real: int = 32, handover: Optional[str] = None, context_frames: Optional[int] = None) -> Dict:
    """Sample ``n`` videos of ``frames`` frames from the demo's prior by sliding windows and measure
    (issue 16, must-have 4):

    * ``area_per_window``: the shape's mean :func:`foreground_area` in each window of the trained
      length (8 frames), against ``area_training`` (the same over ``n_real`` training-distribution
      videos). A long sample that dissolves into noise or loses its shape drifts away from it.
    * ``area_change``: mean |area(f) - area(f-1)| / area(f-1) between consecutive frames (the
      shape's area is constant in a training video; ``area_change_training`` is that of their
      VQ-VAE reconstructions, the floor a perfect prior would reach).
    * ``colour_change``: mean over consecutive frames of the largest channel change of the shape's
      :func:`foreground_colour` (``colour_change_training``: the reconstructions'), and
      ``colour_drift_per_window``: the same difference between each window's mean colour and the
      first window's (a shape that keeps its colour stays near 0).
    * ``recon_mse``: on ``n_real`` real ``frames``-frame clips, encoded in one pass, the MSE against
      the clip (videos in [0, 1]) of the one-pass and of the windowed decode
      (:func:`videogpt_fast.long_video.decode_latents`), and of the trained-length clips' own
      reconstruction (``trained_length``) for scale.

    Returns a dict of those numbers (floats, per-window lists) and ``samples`` (n, 3, frames, H, W)
    in [0, 1]. ``frames`` > 8; the prior samples ceil(frames / 2) latent frames and the extra frame
    of an odd ``frames`` is cut. ``handover`` and ``context_frames`` (default: half the prior's
    latent frames): how windows hand frames over (:func:`videogpt_fast.sample.sample_codes`).
    """
    from .long_video import decode_latents
    T, ds = int(gpt.shape[0]), int(gpt.vqvae.downsample[0])
    handover = handover or default_handover(gpt.vqvae)
    latent = -(-frames // ds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one position at a time: one thread is faster (see main)
    try:
        samples = gpt.sample(n, latent_frames=latent, generator=torch.Generator().manual_seed(seed),
                             progress=progress, handover=handover, context_frames=context_frames)[:, :, :frames]
    finally:
        torch.set_num_threads(threads)
    real = MovingShapesDataset(n_real, latent * ds, RESOLUTION, seed=seed + 20_000).videos
    with torch.no_grad():
        codes = gpt.vqvae.encode(real)
        recon = {mode: decode_latents(gpt.vqvae, codes, mode, window=T) for mode in ("one_pass", "windows")}
        short = real[:, :, :T * ds]
        recon_short = decode_latents(gpt.vqvae, gpt.vqvae.encode(short))
    real01 = real + 0.5
    win = T * ds
    area = foreground_area(samples)

    def change(a: torch.Tensor) -> float:
        return float(((a[:, 1:] - a[:, :-1]).abs() / a[:, :-1].clamp_min(1e-3)).mean())

    def colour_change(v: torch.Tensor) -> float:
        c = foreground_colour(v)
        return float((c[:, 1:] - c[:, :-1]).abs().amax(-1).mean())

    colour = foreground_colour(samples)
    first = colour[:, :win].mean(1)

    return {
        "frames": frames, "latent_frames": latent, "window_frames": win,
        "area_per_window": [round(float(area[:, i:i + win].mean()), 4) for i in range(0, frames, win)],
        "area_training": round(float(foreground_area(real01).mean()), 4),
        "area_change": round(change(area), 4),
        "area_change_per_window": [round(change(area[:, i:i + win]), 4) for i in range(0, frames, win)
                                   if area[:, i:i + win].shape[1] > 1],
        "area_change_training": round(change(foreground_area(recon["one_pass"])), 4),
        "colour_change": round(colour_change(samples), 4),
        "colour_change_training": round(colour_change(recon["one_pass"]), 4),
        "colour_drift_per_window": [round(float((colour[:, i:i + win].mean(1) - first).abs().amax(-1).mean()), 4)
                                    for i in range(0, frames, win)],
        "handover": handover, "context_frames": T // 2 if context_frames is None else context_frames,
        "recon_mse": {mode: round(float(((v - real01) ** 2).mean()), 5) for mode, v in recon.items()}
        | {"trained_length": round(float(((recon_short - (short + 0.5)) ** 2).mean()), 5)},
        "samples": samples,
    }


def format_long_video_report(r: Dict) -> str:
    """The lines the demo prints for :func:`long_video_report`'s numbers."""
    fmt = lambda xs: " ".join(f"{x:.3f}" for x in xs)  # noqa: E731
    return (f"[demo] long samples: {r['frames']} frames ({r['latent_frames']} latent frames, windows of "
            f"{r['window_frames']} frames)\n"
            f"[demo]   shape area per {r['window_frames']}-frame window: {fmt(r['area_per_window'])} "
            f"(training videos: {r['area_training']:.3f})\n"
            f"[demo]   frame-to-frame area change: {r['area_change']:.3f}, "
            f"per window {fmt(r['area_change_per_window'])} "
            f"(training reconstructions: {r['area_change_training']:.3f})\n"
            f"[demo]   shape colour: frame-to-frame change {r['colour_change']:.3f} (training reconstructions: "
            f"{r['colour_change_training']:.3f}), drift from the first window {fmt(r['colour_drift_per_window'])} "
            f"(context handed over: {r['context_frames']} latent frames, {r['handover']})\n"
            f"[demo]   real {r['frames']}-frame clips, reconstruction MSE: one-pass decode "
            f"{r['recon_mse']['one_pass']:.5f}, windowed decode {r['recon_mse']['windows']:.5f} "
            f"(trained-length clips: {r['recon_mse']['trained_length']:.5f})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    if opts.frames is not None and opts.frames <= SEQUENCE_LENGTH:
        parser.error(f"argument --frames: must exceed the trained {SEQUENCE_LENGTH} frames, got {opts.frames}")
    if opts.handover is not None and opts.frames is None:
        parser.error("argument --handover: only used with --frames (long samples); add --frames N")
    if opts.context_frames is not None and opts.frames is None:
        parser.error("argument --context_frames: only used with --frames (long samples); add --frames N")
    if opts.context_frames is not None and not 0 <= opts.context_frames < LATENT_FRAMES:
        parser.error(f"argument --context_frames: must be in [0, {LATENT_FRAMES - 1}] (the prior has "
                     f"{LATENT_FRAMES} latent frames), got {opts.context_frames}")
    out = Path(opts.output)
    lock = OutputLock(out)
    try:
        lock.acquire()  # a second demo writing into the same folder stops here
        check_fresh_output(out, advice="choose a new --output, or delete that folder (an earlier demo's?)")
    except ValueError as e:
        lock.release()
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    try:
        return _run(opts, out)
    finally:
        lock.release()


def _run(opts: argparse.Namespace, out: Path) -> int:
    gpt_steps = opts.gpt_steps if opts.gpt_steps is not None else max(1, round(2.5 * opts.steps))
    t0 = time.time()
    print(f"[demo] {opts.n_videos} synthetic moving-shape videos of {SEQUENCE_LENGTH}x{RESOLUTION}x{RESOLUTION}; "
          f"training on CPU ({torch.get_num_threads()} threads)", flush=True)
    train_set = MovingShapesDataset(opts.n_videos, SEQUENCE_LENGTH, RESOLUTION, seed=opts.seed)
    val_set = MovingShapesDataset(32, SEQUENCE_LENGTH, RESOLUTION, seed=opts.seed + 10_000)

    # stage 1: VQ-VAE
    vq_args = _stage_args("vqvae", VQVAE_FLAGS + ["--temporal_padding", opts.temporal_padding], opts.steps,
                          out / "vqvae", opts)
    train.Trainer(vq_args, train_set, val_set, progress_desc="1/2 VQ-VAE").fit()
    vq_ckpt = out / "vqvae" / "last.ckpt"

    # stage 2: the prior over the VQ-VAE's codes
    gpt_args = _stage_args("gpt", GPT_FLAGS, gpt_steps, out / "gpt", opts, ["--vqvae", str(vq_ckpt)])
    trainer = train.Trainer(gpt_args, train_set, val_set, progress_desc="2/2 VideoGPT prior")
    trainer.fit()
    gpt = trainer.model.eval()

    from .utils import save_video_grid
    with torch.no_grad():
        real = torch.stack([val_set[i]["video"] for i in range(8)])
        recon = gpt.vqvae.decode(gpt.vqvae.encode(real)).clamp(-0.5, 0.5)
        pairs = torch.cat([real, recon], dim=-1) + 0.5  # side by side along the width
        torch.manual_seed(opts.seed)
        print("[demo] sampling from the prior", flush=True)
        # one position at a time is a chain of tiny matmuls: one thread is faster than several
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            samples = gpt.sample(opts.n_samples, progress=not opts.no_progress)
        finally:
            torch.set_num_threads(threads)
    files = []
    for ext in ("mp4", "gif"):
        files.append(save_video_grid(pairs, str(out / f"reconstructions.{ext}"), nrow=2))
        files.append(save_video_grid(samples, str(out / f"samples.{ext}")))
    if opts.frames is not None:
        report = long_video_report(gpt, opts.frames, opts.n_samples, opts.seed, progress=not opts.no_progress,
                                   handover=opts.handover, context_frames=opts.context_frames)
        long = report.pop("samples")
        for ext in ("mp4", "gif"):
            files.append(save_video_grid(long, str(out / f"long_samples.{ext}")))
        _save_frame_strip(long, out / "long_samples.png")
        files.append(str(out / "long_samples.png"))
        print(format_long_video_report(report), flush=True)
    _save_frame_strip(pairs, out / "reconstructions.png")
    _save_frame_strip(samples, out / "samples.png")
    plot_losses({"VQ-VAE": out / "vqvae", "VideoGPT prior": out / "gpt"}, out / "losses.png")
    summary = {"seconds": round(time.time() - t0, 1), "vqvae_steps": opts.steps, "gpt_steps": gpt_steps,
               **({"long_video": report} if opts.frames is not None else {}),
               "files": [str(Path(f)) for f in files] + [str(out / n) for n in
                                                         ("reconstructions.png", "samples.png", "losses.png")]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"[demo] done in {summary['seconds']:.0f} s. Wrote to {os.path.abspath(out)}:")
    for f in summary["files"]:
        print("   ", f)
    print(f"    checkpoints: {vq_ckpt} and {out / 'gpt' / 'last.ckpt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
