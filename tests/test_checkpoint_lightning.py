"""checkpoint/lightning.py: the original's Lightning 1.3 layout, written and split."""
import argparse

import pytest
import torch

from conftest import load_fixture
from videogpt_fast.checkpoint import load_vqvae, safe_load, save_checkpoint


def test_save_checkpoint_roundtrip_in_original_layout(tmp_path):
    model = load_vqvae(str(load_fixture("vqvae_lightning.ckpt")))
    path = save_checkpoint(tmp_path / "ck" / "last.ckpt", model, global_step=7, epoch=2,
                           extra={"optimizer": {"lr": torch.tensor(3e-4)}})
    raw = safe_load(path)
    assert raw["global_step"] == 7 and raw["epoch"] == 2
    assert isinstance(raw["hyper_parameters"]["args"], argparse.Namespace)
    assert set(raw["state_dict"]) == set(load_fixture("vqvae.pt")["state_dict"])
    again = load_vqvae(str(path))
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_split_checkpoint_names_the_file_and_what_is_wrong(tmp_path):
    from videogpt_fast.checkpoint import CheckpointError, split_checkpoint
    sd = {"w": torch.ones(1)}
    args, state_dict = split_checkpoint({"state_dict": sd, "hyper_parameters": {"args": {"a": 1}}}, tmp_path / "x")
    assert isinstance(args, argparse.Namespace) and vars(args) == {"a": 1} and state_dict is sd
    assert vars(split_checkpoint({"state_dict": sd, "args": argparse.Namespace(b=2)}, "y")[0]) == {"b": 2}
    for bad, match in (([1], "not a model checkpoint: expected a dict"), ({"state_dict": sd}, "no hyper_parameters"),
                       ({"state_dict": sd, "args": [1]}, "its args are a list")):
        with pytest.raises(CheckpointError, match="bad.ckpt.*" + match):
            split_checkpoint(bad, "bad.ckpt")


def test_checkpoint_kind_from_the_keys():
    from videogpt_fast.checkpoint import checkpoint_kind
    assert checkpoint_kind({"attn_stack.fc.weight": 0, "vqvae.codebook.embeddings": 0}) == "videogpt"
    assert checkpoint_kind({"codebook.embeddings": 0, "encoder.convs.0.conv.weight": 0}) == "vqvae"
    assert checkpoint_kind({"codebook.embeddings": 0}) == "unknown" and checkpoint_kind({}) == "unknown"
