"""Train the VQ-VAE or the VideoGPT prior, in one process or under ``torchrun`` (DDP).

    # one GPU (or CPU)
    python -m videogpt_fast.train vqvae --data_path bair.hdf5 --resolution 64 --downsample 4 4 4
    # 8 GPUs of one machine (DDP over NCCL; gloo on CPU)
    torchrun --nproc_per_node=8 -m videogpt_fast.train gpt --data_path bair.hdf5 --vqvae vq.ckpt \\
        --max_steps 200000 --precision bf16
    # 2 machines x 8 GPUs: run on each node, with its --node_rank
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=HOST0 --master_port=29500 \\
        -m videogpt_fast.train gpt ...

``--batch_size`` is per process, as with the original's Lightning DDP.

The flags keep the original ``scripts/train_vqvae.py`` / ``scripts/train_videogpt.py`` names and
defaults (``--max_steps`` defaults to the VQ-VAE script's 200000 and is required for the prior, whose
cosine schedule needs it). Optimisation follows the original: Adam(lr=3e-4, betas=(0.9, 0.999)) -- run
as torch's (fused on CUDA) AdamW with weight_decay=0, which is the same update -- plus, for the prior,
``CosineAnnealingLR(max_steps)`` stepped every optimiser step; ``--gradient_clip_val`` clips the global
gradient norm as Lightning does (after unscaling under fp16).

Checkpoints (``last.ckpt`` plus ``epoch=E-step=S.ckpt`` every ``--save_every`` steps) are written
atomically in the original Lightning layout, so ``load_vqvae`` / ``load_videogpt`` and the original's
``load_from_checkpoint`` read them. They also hold the optimiser (``optimizer_states``), the schedule
(``lr_schedulers``) and, under ``videogpt_fast``, the GradScaler, every rank's RNG states and the data
position, so ``--resume`` continues exactly: the same batches, the same random crops and dropout masks,
the same losses as an uninterrupted run (bitwise on CPU in fp32 with the same world size).

Exact data order: a :class:`ResumableSampler` draws each epoch's permutation, and one seed per sample,
from ``seed + epoch``; every item is loaded with NumPy / ``random`` / torch seeded from its own seed,
so the random crop of a sample depends neither on the number of workers nor on where a run resumed.

One module per job:

========================  ==========================================================================
``train.args``            the flags (``build_parser``, ``parse_args``), their checks, and
                          ``complete_args``, the one function that fills in / changes ``args``
``train.trainer``         :class:`Trainer`, the loop (step, validation, fit)
``train.command``         :func:`main`, the ``train`` command (output lock, one-line errors)
``train.distributed``     torchrun process group, barrier / gather, RNG states
``train.sampling``        :class:`ResumableSampler`, :class:`SeededDataset`, ``seeded_loader``
``train.models``          ``build_model``, :class:`LossModule` (each model's ``compute_loss``)
``train.metrics``         run-start messages, :class:`MetricsWriter`, :func:`read_metrics`
``train.resume``          checkpoints and ``--resume`` (``save``, ``restore``, ``retarget_cosine``)
========================  ==========================================================================

The datasets and the DALI-or-PyTorch loader choice are :mod:`videogpt_fast.data`'s
(``open_datasets``, ``choose_loader``).
"""
from .args import (MODEL_ARGS, STAGES, VAL_BATCHES, VQVAE_MAX_STEPS, build_parser, complete_args, default_num_workers,
                   parse_args)
from .command import main
from .metrics import MetricsWriter, read_metrics
from .models import LossModule, build_model, model_namespace
from .resume import retarget_cosine
from .sampling import ResumableSampler, SeededDataset, seeded_loader
from .trainer import Trainer, TrainingDivergedError

__all__ = ["main", "parse_args", "build_parser", "complete_args", "default_num_workers", "Trainer", "TrainingDivergedError", "LossModule",
           "build_model", "model_namespace", "MetricsWriter", "read_metrics", "ResumableSampler", "SeededDataset",
           "seeded_loader", "retarget_cosine", "STAGES", "MODEL_ARGS", "VAL_BATCHES", "VQVAE_MAX_STEPS"]
