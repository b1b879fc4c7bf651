"""VideoGPT: an autoregressive transformer prior over the codes of a frozen VQ-VAE.

A port of the original ``videogpt/gpt.py`` without PyTorch-Lightning: same constructor arguments,
module names and state-dict keys (``vqvae.*`` and the causal ``...attn.attn.mask`` buffers
included), same numbers. Conditioning as in the original: a class label (one-hot, through
class-conditional LayerNorms) and/or the first ``n_cond_frames`` frames (a 3D ResNet-34 whose
features every block cross-attends to).
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import AddBroadcastPosEmbed, AttentionStack, LayerNorm, MultiHeadAttention
from .resnet import resnet34
from .utils import as_namespace, shift_dim

__all__ = ["VideoGPT"]

# Attributes every VideoGPT ``args`` must have (``class_cond_dim`` may be absent when
# ``class_cond`` is False: the original training script then sets it to None).
_REQUIRED_ARGS = ("vqvae", "n_cond_frames", "class_cond", "hidden_dim", "heads", "layers",
                  "dropout", "attn_type", "attn_dropout")
RESNET_DIM = 240          # frame-conditioning feature width (the original's constant)
RESNET_STRIDE = (1, 4, 4)  # the frame encoder's downsampling; hence ``resolution // 4``
SPARSE_BLOCK = 32          # SparseAttention's default block size


class VideoGPT(nn.Module):
    """Transformer prior over VQ-VAE latents.

    Args:
        args: the original's hyper-parameters (Namespace or dict): ``vqvae`` (checkpoint path or
            pretrained name), ``n_cond_frames``, ``class_cond``, ``class_cond_dim``, ``hidden_dim``,
            ``heads``, ``layers``, ``dropout``, ``attn_type`` ('full' | 'sparse'), ``attn_dropout``,
            and ``resolution`` when ``n_cond_frames > 0``.
        vqvae: a VQ-VAE module to use as is; when None, ``videogpt_fast.checkpoint.load_vqvae(
            args.vqvae)`` loads it. Either way it is frozen (no grad, eval mode, codebook
            initialised) and stays in eval mode when the GPT trains.
    """

    def __init__(self, args: Union[argparse.Namespace, Mapping[str, Any]], vqvae: Optional[nn.Module] = None):
        super().__init__()
        args = as_namespace(args, copy=True, owner="VideoGPT")  # class_cond_dim may be filled in
        missing = [name for name in _REQUIRED_ARGS if not hasattr(args, name)]
        if missing:
            raise ValueError(f"VideoGPT args lack {missing}")
        if not hasattr(args, "class_cond_dim"):
            if args.class_cond:
                raise ValueError("VideoGPT: class_cond=True needs args.class_cond_dim (the number of classes)")
            args.class_cond_dim = None
        if args.class_cond and not args.class_cond_dim:
            raise ValueError(f"VideoGPT: class_cond=True needs a positive class_cond_dim, got {args.class_cond_dim}")
        if not args.class_cond and args.class_cond_dim is not None:
            raise ValueError(f"VideoGPT: class_cond_dim={args.class_cond_dim} is set but class_cond is False "
                             "(class-conditional norms would have no label to condition on)")
        if args.attn_type not in ("full", "sparse"):
            raise ValueError(f"VideoGPT: attn_type must be 'full' or 'sparse', got {args.attn_type!r}")
        if args.hidden_dim % args.heads != 0:
            raise ValueError(f"VideoGPT: hidden_dim={args.hidden_dim} must be divisible by heads={args.heads}")
        if args.n_cond_frames < 0:
            raise ValueError(f"VideoGPT: n_cond_frames must be >= 0, got {args.n_cond_frames}")
        self.args = args

        # Frozen VQ-VAE
        if vqvae is None:
            from .checkpoint import load_vqvae
            vqvae = load_vqvae(args.vqvae)
        self.vqvae = vqvae
        for p in self.vqvae.parameters():
            p.requires_grad = False
        self.vqvae.codebook._need_init = False
        self.vqvae.eval()
        # loading a state dict must not re-arm the codebook's data-dependent initialisation
        self.register_load_state_dict_post_hook(VideoGPT._keep_codebook_initialised)

        self.shape = tuple(int(s) for s in self.vqvae.latent_shape)
        if args.hidden_dim % len(self.shape) != 0:
            raise ValueError(f"VideoGPT: hidden_dim={args.hidden_dim} must be divisible by the number of "
                             f"latent dims {len(self.shape)} (latent shape {self.shape})")
        if args.attn_type == "sparse" and int(np.prod(self.shape)) % SPARSE_BLOCK != 0:
            raise ValueError(f"VideoGPT: sparse attention needs prod(latent_shape) = {int(np.prod(self.shape))} "
                             f"(latent shape {self.shape}) divisible by the block size {SPARSE_BLOCK}")

        # ResNet34 for frame conditioning
        self.use_frame_cond = args.n_cond_frames > 0
        if self.use_frame_cond:
            if not hasattr(args, "resolution"):
                raise ValueError("VideoGPT: n_cond_frames > 0 needs args.resolution")
            if args.resolution % 4 != 0:
                raise ValueError(f"VideoGPT: frame conditioning needs resolution divisible by 4 (the ResNet "
                                 f"downsamples H, W by 4), got {args.resolution}")
            if RESNET_DIM % args.heads != 0:
                raise ValueError(f"VideoGPT: the frame features' width {RESNET_DIM} must be divisible by "
                                 f"heads={args.heads}")
            frame_cond_shape = (args.n_cond_frames, args.resolution // 4, args.resolution // 4, RESNET_DIM)
            self.resnet = resnet34(1, RESNET_STRIDE, resnet_dim=RESNET_DIM)
            self.cond_pos_embd = AddBroadcastPosEmbed(shape=frame_cond_shape[:-1], embd_dim=frame_cond_shape[-1])
        else:
            frame_cond_shape = None
        self.frame_cond_shape = frame_cond_shape

        # Transformer
        self.fc_in = nn.Linear(self.vqvae.embedding_dim, args.hidden_dim, bias=False)
        self.fc_in.weight.data.normal_(std=0.02)
        self.attn_stack = AttentionStack(self.shape, args.hidden_dim, args.heads, args.layers, args.dropout,
                                         args.attn_type, args.attn_dropout, args.class_cond_dim,
                                         frame_cond_shape)
        self.norm = LayerNorm(args.hidden_dim, args.class_cond_dim)
        self.fc_out = nn.Linear(args.hidden_dim, self.vqvae.n_codes, bias=False)
        self.fc_out.weight.data.zero_()

    @staticmethod
    def _keep_codebook_initialised(module: "VideoGPT", incompatible_keys) -> None:
        module.vqvae.codebook._need_init = False

    # ------------------------------------------------------------------------------------------
    @property
    def hparams(self) -> Dict[str, argparse.Namespace]:
        """Lightning-style ``{'args': Namespace}`` as the original's ``save_hyperparameters``."""
        return {"args": self.args}

    def train(self, mode: bool = True) -> "VideoGPT":
        """Set train/eval mode on the prior; the frozen VQ-VAE always stays in eval mode."""
        super().train(mode)
        self.vqvae.eval()
        return self

    # ------------------------------------------------------------------------------------------
    def make_cond(self, batch: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The conditioning dict the original builds from a batch: ``class_cond`` (one-hot of
        ``batch['label']``, integer labels of any integer dtype in [0, class_cond_dim)) and
        ``frame_cond`` (``batch['video'][:, :, :n_cond_frames]``, checked as
        :meth:`frame_features` needs it). Raises ValueError naming the expected and given shapes,
        dtypes or label range."""
        cond: Dict[str, torch.Tensor] = {}
        if not (self.args.class_cond or self.use_frame_cond):
            return cond
        if "video" not in batch:
            raise ValueError("VideoGPT: a conditional model needs batch['video'] (B, C, T, H, W)")
        video = batch["video"]
        if not isinstance(video, torch.Tensor) or video.dim() != 5 or not video.is_floating_point():
            got = f"{video.dtype} of shape {tuple(video.shape)}" if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError("VideoGPT: batch['video'] must be a float (n, 3, T, H, W) tensor in [-0.5, 0.5] (as the "
                             f"data loaders give), got {got}")
        if self.args.class_cond:
            if "label" not in batch:
                raise ValueError("VideoGPT: class_cond=True needs batch['label'] (B,) integer class indices")
            label = torch.as_tensor(batch["label"])
            if label.shape != (video.shape[0],):
                raise ValueError(f"VideoGPT: batch['label'] must have shape ({video.shape[0]},), "
                                 f"got {tuple(label.shape)}")
            if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
                raise ValueError(f"VideoGPT: batch['label'] must hold integer class indices, got dtype {label.dtype}")
            # the range check reads the labels on the host: eager only (a compiled step must not break
            # its graph for it; there one_hot's own check applies)
            if (label.numel() and not torch.compiler.is_compiling()
                    and (int(label.min()) < 0 or int(label.max()) >= self.args.class_cond_dim)):
                raise ValueError(f"VideoGPT: batch['label'] must be in [0, {self.args.class_cond_dim}) "
                                 f"(class_cond_dim), got values in [{int(label.min())}, {int(label.max())}]")
            cond["class_cond"] = F.one_hot(label.long(), self.args.class_cond_dim).type_as(video)
        if self.use_frame_cond:
            if video.dim() != 5 or video.shape[2] < self.args.n_cond_frames:
                raise ValueError(f"VideoGPT: batch['video'] must be (B, C, T, H, W) with T >= n_cond_frames="
                                 f"{self.args.n_cond_frames}, got {tuple(video.shape)}")
            cond["frame_cond"] = video[:, :, :self.args.n_cond_frames]
            self._check_frames(cond["frame_cond"])
        return cond

    def _check_frames(self, frames: torch.Tensor) -> None:
        expected = (3, self.args.n_cond_frames, self.args.resolution, self.args.resolution)
        if frames.dim() != 5 or tuple(frames.shape[1:]) != expected:
            raise ValueError(f"VideoGPT: conditioning frames must be (B, {', '.join(map(str, expected))}) "
                             f"(RGB, n_cond_frames, resolution, resolution), got {tuple(frames.shape)}")

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Frame-encoder features (B, n_cond_frames, resolution/4, resolution/4, 240), position
        embeddings added, of conditioning frames (B, 3, n_cond_frames, resolution, resolution);
        ValueError for frames of another shape."""
        self._check_frames(frames)
        return self.cond_pos_embd(self.resnet(frames))

    # ------------------------------------------------------------------------------------------
    # decoding (gpt-fast style: static caches, one forward over positions)
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def setup_caches(self, batch: int, cond: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        """Prepare decoding of ``batch`` sequences: a static :class:`~videogpt_fast.attention.KVCache`
        (batch, heads, L, d) per layer, in the weights' dtype and device, and, for a
        frame-conditional prior, the frame features of ``cond['frame_cond']`` (raw frames, see
        :meth:`make_cond`) projected once into every block's cross-attention keys/values.
        Replaces any previous caches; :meth:`clear_decode_cache` frees them."""
        if batch < 1:
            raise ValueError(f"VideoGPT.setup_caches: batch must be >= 1, got {batch}")
        features = None
        if self.use_frame_cond:
            frames = (cond or {}).get("frame_cond")
            if frames is None:
                raise ValueError("VideoGPT.setup_caches: a frame-conditional prior needs cond['frame_cond'] frames")
            if frames.shape[0] != batch:
                raise ValueError(f"VideoGPT.setup_caches: cond['frame_cond'] holds {frames.shape[0]} videos, "
                                 f"batch is {batch}")
            features = self.frame_features(frames.to(self.fc_in.weight.device))
        for net in self.attn_stack.attn_nets:
            net.attn.setup_cache(batch)
            if features is not None:
                net.enc_attn.setup_cache(batch, features)

    def decode_batch(self) -> Optional[int]:
        """The batch size the caches are set up for (None when there are none)."""
        cache = self.attn_stack.attn_nets[0].attn.kv_cache
        return None if cache is None else cache.k_cache.shape[0]

    def clear_decode_cache(self) -> None:
        """Free the KV caches (and cached frame features) of :meth:`setup_caches`."""
        for module in self.modules():
            if isinstance(module, MultiHeadAttention):
                module.kv_cache = None

    def forward_positions(self, x: torch.Tensor, cond: Optional[Mapping[str, torch.Tensor]] = None,
                          input_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The transformer: logits (B, S, n_codes) of the next code at S flattened positions.

        Args:
            x: (B, S, embedding_dim) code embeddings (VQ-VAE codebook space). Without
                ``input_pos``: the codes of all S = L positions (a (B, *latent_shape, e) grid is
                flattened), shifted behind the start token here (teacher forcing). With
                ``input_pos``: the codes *fed* at those positions, i.e. at ``input_pos - 1``
                (ignored at position 0).
            cond: ``class_cond`` (B, class_cond_dim) for a class-conditional prior; without
                ``input_pos`` also ``frame_cond`` *features* (:meth:`frame_features`).
            input_pos: optional (S,) int64 positions on x's device: decode with the caches of
                :meth:`setup_caches` (their keys/values are written at these positions; every
                query sees the keys up to its position). Static shapes, no host sync: the
                sampler compiles and graph-captures this call.
        """
        cond = cond if cond is not None else {}
        h = self.fc_in(x)
        h = self.attn_stack(h, cond, input_pos)
        h = self.norm(h, cond)
        return self.fc_out(h)

    def get_reconstruction(self, videos: torch.Tensor) -> torch.Tensor:
        """VQ-VAE round trip of (B, C, T, H, W) videos."""
        return self.vqvae.decode(self.vqvae.encode(videos))

    def forward(self, x: torch.Tensor, targets: torch.Tensor, cond: Optional[Mapping[str, torch.Tensor]],
                decode_step: Optional[int] = None,
                decode_idx: Optional[Tuple[int, ...]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced (or one-position KV-cache) prediction of the next code: the original's
        API on top of :meth:`forward_positions`.

        Args:
            x: (B, *latent_shape, embedding_dim) code embeddings, or (B, 1, ..., 1, embedding_dim)
                -- the previous position's -- when decoding.
            targets: int64 codes of x's shape without the last dim.
            cond: ``class_cond`` (B, class_cond_dim) and/or ``frame_cond`` (B, 3, n_cond_frames,
                H, W) raw frames. Not modified (the original replaced ``frame_cond`` in place).
            decode_step: flattened index of the position to predict; 0 (re)starts the caches
                (:meth:`setup_caches`), a later step without them raises RuntimeError.
            decode_idx: its latent coordinates (the flattened ``decode_step`` is what is used).
        Returns:
            (cross-entropy loss, logits (*x.shape[:-1], n_codes)).
        """
        cond = dict(cond) if cond is not None else {}
        b = x.shape[0]
        if decode_step is None:
            if tuple(x.shape[1:-1]) != self.shape:
                raise ValueError(f"VideoGPT: x must be (B, *{self.shape}, {self.vqvae.embedding_dim}) code "
                                 f"embeddings for latent shape {self.shape}, got {tuple(x.shape)}")
            if self.use_frame_cond:
                cond["frame_cond"] = self.frame_features(cond["frame_cond"])
            logits = self.forward_positions(x, cond)
        else:
            if decode_step == 0:
                self.setup_caches(b, cond)
            elif self.decode_batch() != b:
                raise RuntimeError("VideoGPT: KV-cache decoding must start at decode_step=0 (no caches for "
                                   f"batch {b}: call with decode_step=0 first)")
            cond.pop("frame_cond", None)  # cached by setup_caches
            input_pos = torch.tensor([decode_step], dtype=torch.long, device=x.device)
            logits = self.forward_positions(x.reshape(b, 1, -1), cond, input_pos)
        logits = logits.view(*x.shape[:-1], logits.shape[-1])
        loss = F.cross_entropy(shift_dim(logits, -1, 1), targets)
        return loss, logits

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The original ``training_step``: encode ``batch['video']`` (B, 3, sequence_length,
        resolution, resolution) with the frozen VQ-VAE, build the conditioning from the batch
        and return the teacher-forced cross-entropy. ValueError (naming the expected and given
        shapes) for videos the VQ-VAE was not built for."""
        self.vqvae.eval()
        if not isinstance(batch, Mapping) or not isinstance(batch.get("video"), torch.Tensor):
            got = type(batch).__name__ if not isinstance(batch, Mapping) else f"keys {sorted(batch)}"
            raise ValueError("VideoGPT.compute_loss: batch must be a dict with 'video' (B, 3, T, H, W) (and 'label' "
                             f"when class_cond), as the data loaders give; got {got}")
        x = batch["video"]
        vq_args = self.vqvae.args
        expected = (3, vq_args.sequence_length, vq_args.resolution, vq_args.resolution)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"VideoGPT.compute_loss: batch['video'] must be (B, {', '.join(map(str, expected))}) "
                             f"for this VQ-VAE (sequence_length {vq_args.sequence_length}, resolution "
                             f"{vq_args.resolution}), got {tuple(x.shape)}")
        cond = self.make_cond(batch)
        with torch.no_grad():
            targets, emb = self.vqvae.encode(x, include_embeddings=True)
            emb = shift_dim(emb, 1, -1)
        loss, _ = self(emb, targets, cond)
        return loss

    @torch.no_grad()
    def sample_codes(self, n: int, batch: Optional[Mapping[str, torch.Tensor]] = None, temperature: float = 1.0,
                     top_k: Optional[int] = None, top_p: Optional[float] = None,
                     generator: Optional[torch.Generator] = None, progress: bool = True, **kwargs) -> torch.Tensor:
        """Sample codes (n, *latent_shape) int64 with the static-KV-cache decoder (CUDA graph on
        GPU). Defaults reproduce the original (multinomial at temperature 1); ``top_k=1`` is greedy;
        ``batch`` (video, label) conditions class-/frame-conditional models. See
        :func:`videogpt_fast.sample.sample_codes`."""
        from .sample import sample_codes
        return sample_codes(self, n, batch, temperature=temperature, top_k=top_k, top_p=top_p,
                            generator=generator, progress=progress, **kwargs)

    @torch.no_grad()
    def sample(self, n: int, batch: Optional[Mapping[str, torch.Tensor]] = None, temperature: float = 1.0,
               top_k: Optional[int] = None, top_p: Optional[float] = None,
               generator: Optional[torch.Generator] = None, progress: bool = True,
               latent_frames: Optional[int] = None, decode: str = "windows", **kwargs) -> torch.Tensor:
        """Sample ``n`` videos (n, C, T, H, W) float in [0, 1], as the original ``sample(n, batch)``
        does; the extra arguments are those of :meth:`sample_codes`.

        ``latent_frames`` > the prior's T latent frames samples longer codes by sliding windows
        (:func:`videogpt_fast.sample.sample_codes`, issue 16) and returns
        (n, C, latent_frames * downsample_t, H, W). ``decode`` turns them into pixels
        (:func:`videogpt_fast.long_video.decode_latents`): ``"windows"`` (default: VQ-VAE decodes
        of the trained length, cross-faded where they overlap; on the demo's data they reconstruct
        long real clips ~5% better in MSE than one pass, whose temporal attention then spans a
        length it was not trained on) or ``"one_pass"`` (the VQ-VAE has no fixed temporal length).
        Codes of the trained length are decoded in one pass either way, as the original.
        With ``handover="reencode"`` (``sample_codes``' default for the original's zero-padded
        VQ-VAE) the windowed decode decodes the windows as sampled, each with its re-encoded context.
        ValueError for a bad ``decode`` or ``latent_frames`` < T."""
        from .long_video import DECODE_MODES, decode_latents
        from .sample import default_handover
        if decode not in DECODE_MODES:  # before any sampling
            raise ValueError(f"VideoGPT.sample: decode must be one of {DECODE_MODES}, got {decode!r}")
        codes = self.sample_codes(n, batch, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                                  progress=progress, latent_frames=latent_frames, **kwargs)
        return decode_latents(self.vqvae, codes, decode, window=int(self.shape[0]),
                              context_frames=kwargs.get("context_frames"),
                              handover=kwargs.get("handover") or default_handover(self.vqvae))

    # ------------------------------------------------------------------------------------------
    @classmethod
    def load_from_checkpoint(cls, path: str, map_location=None, vqvae: Optional[nn.Module] = None) -> "VideoGPT":
        """Load an original-format (Lightning) checkpoint or pretrained name in eval mode, placed on
        ``map_location`` (a device) when given; see :func:`videogpt_fast.checkpoint.load_videogpt`."""
        from .checkpoint import load_videogpt
        return load_videogpt(path, vqvae=vqvae, device=map_location)

    @staticmethod
    def add_model_specific_args(parent_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """The original's command-line flags and defaults."""
        parser = argparse.ArgumentParser(parents=[parent_parser], add_help=False)
        parser.add_argument("--vqvae", type=str, default="kinetics_stride4x4x4",
                            help="VQ-VAE checkpoint path, or a pretrained name in the local cache (never downloaded)")
        parser.add_argument("--n_cond_frames", type=int, default=0,
                            help="condition on the first N frames of each clip (ResNet features, cross-attention)")
        parser.add_argument("--class_cond", action="store_true",
                            help="condition on the class label (video folders with class sub-folders)")
        # VideoGPT hyperparameters
        parser.add_argument("--hidden_dim", type=int, default=576,
                            help="transformer width; divisible by 3 (the latent dims) and by --heads")
        parser.add_argument("--heads", type=int, default=4, help="attention heads")
        parser.add_argument("--layers", type=int, default=8, help="transformer blocks")
        parser.add_argument("--dropout", type=float, default=0.2, help="residual dropout")
        parser.add_argument("--attn_type", type=str, default="full", choices=["full", "sparse"],
                            help="full causal or strided block-sparse attention")
        parser.add_argument("--attn_dropout", type=float, default=0.3, help="dropout on attention weights")
        return parser
