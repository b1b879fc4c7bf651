"""Drop-in for the original's own clients (issue 18): the original's module paths, names and
signatures; ``download``/``load_*`` with ``root=`` and a positional device; ``hparams``; the
``videogpt`` -> ``videogpt_fast`` name mapping; and replays, on CPU with tiny models saved as
original-format (Lightning) checkpoints in a temporary cache, of what the original notebook,
``scripts/sample_videogpt.py`` and ``scripts/compute_fvd.py`` do."""
import argparse
import importlib
import inspect
import math
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, decode_video
from videogpt_fast import compat
from videogpt_fast.checkpoint import save_checkpoint
from videogpt_fast.gpt import VideoGPT
from videogpt_fast.utils import write_video
from videogpt_fast.vqvae import VQVAE

CPU = torch.device("cpu")

# The original package's public names per module (videogpt/*.py at wilson1yan/VideoGPT master).
ORIGINAL_NAMES = {
    "": ["VQVAE", "VideoGPT", "VideoData", "load_vqvae", "load_videogpt", "load_i3d_pretrained", "download"],
    "download": ["download", "load_vqvae", "load_videogpt", "load_i3d_pretrained", "VQVAE", "VideoGPT"],
    "data": ["VideoDataset", "preprocess", "HDF5Dataset", "VideoData"],
    "utils": ["shift_dim", "view_range", "tensor_slice", "save_video_grid"],
    "gpt": ["VideoGPT"],
    "vqvae": ["VQVAE", "AxialBlock", "AttentionResidualBlock", "Codebook", "Encoder", "Decoder", "SamePadConv3d",
              "SamePadConvTranspose3d"],
    "attention": ["AttentionStack", "AttentionBlock", "MultiHeadAttention", "FullAttention", "AxialAttention",
                  "SparseAttention", "StridedSparsityConfig", "AddBroadcastPosEmbed", "scaled_dot_product_attention",
                  "RightShift", "GeLU2", "LayerNorm"],
    "resnet": ["ChannelLayerNorm", "NormReLU", "ResidualBlock", "BlockGroup", "ResNet", "resnet34"],
    "fvd": [],
    "fvd.fvd": ["preprocess", "get_fvd_logits", "trace_sqrt_product", "cov", "frechet_distance", "get_logits"],
    "fvd.pytorch_i3d": ["MaxPool3dSamePadding", "Unit3D", "InceptionModule", "InceptionI3d"],
}
# Functions: the original's parameters in order, with their defaults where they are plain values
# (the original's device/root defaults are torch.device('cpu') and ~/.cache/videogpt: see
# test_download_and_loaders_take_root_and_positional_device for those).
ORIGINAL_SIGNATURES = {
    ("download", "download"): ["id", "fname", "root"],
    ("download", "load_vqvae"): ["model_name", "device", "root"],
    ("download", "load_videogpt"): ["model_name", "device"],
    ("data", "preprocess"): ["video", "resolution", ("sequence_length", None)],
    ("utils", "shift_dim"): ["x", ("src_dim", -1), ("dest_dim", -1), ("make_contiguous", True)],
    ("utils", "view_range"): ["x", "i", "j", "shape"],
    ("utils", "tensor_slice"): ["x", "begin", "size"],
    ("utils", "save_video_grid"): ["video", "fname", ("nrow", None)],
    ("fvd.fvd", "preprocess"): ["videos", ("target_resolution", 224)],
    ("fvd.fvd", "get_fvd_logits"): ["videos", "i3d", "device"],
    ("fvd.fvd", "frechet_distance"): ["x1", "x2"],
    ("fvd.fvd", "get_logits"): ["i3d", "videos", "device"],
    ("fvd.fvd", "cov"): ["m", ("rowvar", False)],
    ("fvd.fvd", "trace_sqrt_product"): ["sigma", "sigma_v"],
    ("resnet", "resnet34"): ["width_multiplier", "stride", ("cifar_stem", True), ("resnet_dim", 240)],
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny models run small matmuls: on a loaded CPU, OpenMP's thread hand-offs cost far more
    than the work (sampling is ~20x slower with 2 threads here), so these tests run single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _module(sub: str):
    return importlib.import_module("videogpt_fast" + (f".{sub}" if sub else ""))


@pytest.mark.parametrize("sub", sorted(ORIGINAL_NAMES))
def test_original_module_paths_and_names(sub):
    module = _module(sub)
    missing = [name for name in ORIGINAL_NAMES[sub] if not hasattr(module, name)]
    assert not missing, f"videogpt_fast.{sub} lacks {missing}"


def test_original_data_get_parent_dir():
    assert _module("data").get_parent_dir("a/b/c.mp4") == "b"


@pytest.mark.parametrize("key", sorted(ORIGINAL_SIGNATURES))
def test_original_signatures(key):
    sub, name = key
    params = list(inspect.signature(getattr(_module(sub), name)).parameters.values())
    for i, spec in enumerate(ORIGINAL_SIGNATURES[key]):
        pname, default = (spec, inspect.Parameter.empty) if isinstance(spec, str) else spec
        assert params[i].name == pname, f"{sub}.{name}: parameter {i} is {params[i].name}, not {pname}"
        if default is not inspect.Parameter.empty:
            assert params[i].default == default, f"{sub}.{name}({pname}=...) default"
    extra = params[len(ORIGINAL_SIGNATURES[key]):]
    assert all(p.default is not inspect.Parameter.empty or p.kind is p.VAR_KEYWORD for p in extra)


def test_download_name_stays_the_function():
    """As in the original, ``videogpt.download`` is the function even after ``videogpt.download``
    (the module) is imported; the module stays importable by name."""
    import videogpt_fast
    from videogpt_fast.download import load_i3d_pretrained  # noqa: F401  (imports the submodule)
    assert inspect.isfunction(videogpt_fast.download)
    assert sys.modules["videogpt_fast.download"].download is videogpt_fast.download
    assert "download" in dir(videogpt_fast)


# ------------------------------------------------------------------------------------------------
# tiny models as original checkpoints
# ------------------------------------------------------------------------------------------------
def _vqvae(downsample, resolution=16, seed=0) -> VQVAE:
    torch.manual_seed(seed)
    args = argparse.Namespace(embedding_dim=8, n_codes=16, n_hiddens=16, n_res_layers=1, downsample=list(downsample),
                              data_path="unused.hdf5", sequence_length=16, resolution=resolution, batch_size=2,
                              num_workers=0, gpus=1, max_steps=10)
    model = VQVAE(args)
    with torch.no_grad():
        model.codebook.embeddings.normal_()
    model.codebook._need_init = False
    return model.eval()


def _gpt(vqvae: VQVAE, vqvae_name: str, data_path: Path, n_cond_frames: int = 0, seed: int = 1) -> VideoGPT:
    torch.manual_seed(seed)
    args = argparse.Namespace(vqvae=vqvae_name, n_cond_frames=n_cond_frames, class_cond=False, hidden_dim=24,
                              heads=2, layers=1, dropout=0.0, attn_type="full", attn_dropout=0.0,
                              data_path=str(data_path), sequence_length=16, resolution=vqvae.args.resolution,
                              batch_size=8, num_workers=0, gpus=1, max_steps=10)
    model = VideoGPT(args, vqvae=vqvae)
    with torch.no_grad():
        model.fc_out.weight.normal_(std=0.3)  # zero at init: give the logits something to say
    return model.eval()


def _hdf5(path: Path, n_videos: int = 2, frames: int = 18, size: int = 20) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for split in ("train", "test"):
            f.create_dataset(f"{split}_data", data=rng.integers(0, 256, (n_videos * frames, size, size, 3), dtype=np.uint8))
            f.create_dataset(f"{split}_idx", data=np.arange(n_videos, dtype=np.int64) * frames)
    return path


def _same_state(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    sd, ref = model.state_dict(), reference.state_dict()
    assert list(sd) == list(ref)
    for k in sd:
        assert torch.equal(sd[k], ref[k]), k


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty $HOME and $VIDEOGPT_FAST_HOME under tmp_path: nothing from the real caches is seen."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VIDEOGPT_FAST_HOME", str(tmp_path / "fast_home"))
    return tmp_path


@pytest.fixture
def mapped():
    """``videogpt`` mapped to videogpt_fast for one test (undone afterwards)."""
    assert not compat.is_installed()
    compat.install()
    try:
        yield importlib.import_module("videogpt")
    finally:
        compat.uninstall()
    assert "videogpt" not in sys.modules


# ------------------------------------------------------------------------------------------------
# download / loaders
# ------------------------------------------------------------------------------------------------
def test_download_returns_cached_path_or_says_where(home):
    from videogpt_fast import download
    with pytest.raises(FileNotFoundError) as err:
        download("1AbC_d-E", "clip.mp4", root=home / "my root")
    msg = str(err.value)
    target = home / "my root" / "clip.mp4"
    assert str(target) in msg and "never downloads" in msg and "1AbC_d-E" in msg
    # the suggested command is a current gdown call: `gdown URL -O PATH` (gdown >= 5 has no --id)
    command = shlex.split(msg.split("`")[1])
    assert command == ["mkdir", "-p", str(home / "my root"), "&&", "gdown",
                       "https://drive.google.com/uc?id=1AbC_d-E", "-O", str(target)]
    target.parent.mkdir()
    target.write_bytes(b"x")
    assert download("1AbC_d-E", "clip.mp4", root=str(home / "my root")) == str(target)
    # no root: $VIDEOGPT_FAST_HOME, then the original's ~/.cache/videogpt
    with pytest.raises(FileNotFoundError, match=str(home / "fast_home" / "clip.mp4")):
        download("1AbC_d-E", "clip.mp4")
    legacy = home / "home" / ".cache" / "videogpt"
    legacy.mkdir(parents=True)
    (legacy / "clip.mp4").write_bytes(b"y")
    assert download("1AbC_d-E", "clip.mp4") == str(legacy / "clip.mp4")
    (home / "fast_home").mkdir()
    (home / "fast_home" / "clip.mp4").write_bytes(b"z")
    assert download("1AbC_d-E", "clip.mp4") == str(home / "fast_home" / "clip.mp4")


def test_download_and_loaders_take_root_and_positional_device(home):
    from videogpt_fast import load_videogpt, load_vqvae
    root = home / "pretrained_models"
    vq = _vqvae([4, 4, 4])
    assert vq.hparams == {"args": vq.args}
    with pytest.raises(FileNotFoundError, match=str(root / "ucf101_stride4x4x4")):
        load_vqvae("ucf101_stride4x4x4", CPU, root=root)
    save_checkpoint(root / "ucf101_stride4x4x4", vq)
    loaded = load_vqvae("ucf101_stride4x4x4", CPU, root)  # all three positional, as the original's signature
    _same_state(loaded, vq)
    assert loaded.hparams["args"].downsample == [4, 4, 4] and not loaded.training
    with pytest.raises(FileNotFoundError):  # root given: only root is searched ...
        load_vqvae("ucf101_stride4x4x4", root=home / "elsewhere")
    with pytest.raises(FileNotFoundError):  # ... and without it, the caches
        load_vqvae("ucf101_stride4x4x4")
    gpt = _gpt(vq, "ucf101_stride4x4x4", home / "unused.hdf5")
    save_checkpoint(root / "ucf101_uncond_gpt", gpt)
    loaded = load_videogpt("ucf101_uncond_gpt", CPU, root)  # positional device; its VQ-VAE found in root too
    _same_state(loaded, gpt)
    assert loaded.hparams["args"].vqvae == "ucf101_stride4x4x4"


# ------------------------------------------------------------------------------------------------
# the name mapping
# ------------------------------------------------------------------------------------------------
def test_mapping_shares_modules(mapped):
    import videogpt_fast
    import videogpt.fvd.pytorch_i3d
    import videogpt.vqvae
    from videogpt.download import load_i3d_pretrained
    assert mapped is videogpt_fast
    assert compat.find_original() is None  # the mapping itself is not an original installation
    assert videogpt.vqvae is importlib.import_module("videogpt_fast.vqvae")
    assert videogpt.vqvae.VQVAE is VQVAE and videogpt.vqvae.__spec__.name == "videogpt_fast.vqvae"
    assert videogpt.fvd.pytorch_i3d.InceptionI3d is importlib.import_module("videogpt_fast.fvd.i3d").InceptionI3d
    assert load_i3d_pretrained is importlib.import_module("videogpt_fast.fvd").load_i3d_pretrained
    assert inspect.isfunction(videogpt.download)
    assert mapped.resnet is importlib.import_module("videogpt_fast.resnet")  # as after the original's `import videogpt`
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("videogpt.no_such_module")


def test_mapping_says_so(caplog):
    with caplog.at_level("WARNING", logger="videogpt_fast.compat"):
        compat.install()
        compat.install()  # idempotent: said once
    compat.uninstall()
    said = [r.getMessage() for r in caplog.records if r.name == "videogpt_fast.compat"]
    assert len(said) == 1 and "mapped to videogpt_fast" in said[0] and "not installed" in said[0]


def test_mapping_refuses_to_shadow_a_real_installation(tmp_path, monkeypatch, capsys):
    real = tmp_path / "site" / "videogpt"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    with pytest.raises(compat.ShadowingError, match=str(real)):
        compat.install()
    assert not compat.is_installed() and "videogpt" not in sys.modules
    script = tmp_path / "s.py"
    script.write_text("raise SystemExit('must not run')\n")
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert compat.main([str(script)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "will not shadow" in err[0] and str(real) in err[0]
    # an already imported videogpt is refused too
    monkeypatch.setitem(sys.modules, "videogpt", type(sys)("videogpt"))
    with pytest.raises(compat.ShadowingError):
        compat.install()


def test_runner_command_line(tmp_path):
    """``python -m videogpt_fast.compat SCRIPT ARGS`` runs SCRIPT as ``python SCRIPT ARGS`` would."""
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "client.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, sys, videogpt, helper

        def child(queue):  # a spawned worker (as compute_fvd.py's mp.spawn) re-imports this script
            import videogpt.compat  # (torch-free) submodules map too
            queue.put(videogpt.compat.__name__)

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            worker = ctx.Process(target=child, args=(queue,))
            worker.start()
            print(videogpt.__name__, sys.argv[1:], helper.VALUE, queue.get(timeout=60))
            worker.join()
    """))
    (tmp_path / "scripts" / "helper.py").write_text("VALUE = 7\n")  # imported from the script's folder
    (tmp_path / "tmp").mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path), "TMPDIR": str(tmp_path / "tmp")}
    done = subprocess.run([sys.executable, "-m", "videogpt_fast.compat", str(script), "--n", "3"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "videogpt_fast ['--n', '3'] 7 videogpt_fast.compat"
    assert done.stderr.count("mapped to videogpt_fast") == 1, done.stderr
    assert not list((tmp_path / "tmp").iterdir())  # the generated package for child processes is removed
    done = subprocess.run([sys.executable, "-m", "videogpt_fast.compat"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("usage:")


# ------------------------------------------------------------------------------------------------
# replays of the original's clients
# ------------------------------------------------------------------------------------------------
def test_notebook_flow(home, mapped, monkeypatch):
    """notebooks/Using_VideoGPT.ipynb: load_vqvae(name, device=, root=), download a clip, preprocess,
    encode, decode, load_videogpt(name, device=), sample(16)."""
    monkeypatch.chdir(home)
    root = "pretrained_models"  # relative, as the notebook's ROOT
    kinetics, ucf = _vqvae([2, 4, 4], seed=0), _vqvae([4, 4, 4], seed=1)
    save_checkpoint(home / root / "kinetics_stride2x4x4", kinetics)
    save_checkpoint(home / "fast_home" / "ucf101_stride4x4x4", ucf)
    prior = _gpt(ucf, "ucf101_stride4x4x4", home / "unused.hdf5")
    save_checkpoint(home / "fast_home" / "ucf101_uncond_gpt", prior)
    frames = np.random.default_rng(0).integers(0, 256, (20, 24, 30, 3), dtype=np.uint8)
    write_video(frames, str(home / "home" / ".cache" / "videogpt" / "jaywalking.mp4"))  # the original's cache

    from videogpt import download, load_videogpt, load_vqvae
    from videogpt.data import preprocess

    vqvae = load_vqvae("kinetics_stride2x4x4", device=CPU, root=root).to(CPU)
    _same_state(vqvae, kinetics)
    resolution, sequence_length = vqvae.args.resolution, 16
    video_filename = download("1UxKCVrbyXhvMz_H7dI4w5hjPpRGCAApy", "jaywalking.mp4")
    assert video_filename == str(home / "home" / ".cache" / "videogpt" / "jaywalking.mp4")
    video = torch.from_numpy(decode_video(video_filename)[:sequence_length])  # the notebook: torchvision read_video
    video = preprocess(video, resolution, sequence_length).unsqueeze(0).to(CPU)
    assert video.shape == (1, 3, 16, 16, 16) and video.min() >= -0.5 and video.max() <= 0.5
    with torch.no_grad():
        encodings = vqvae.encode(video)
        video_recon = torch.clamp(vqvae.decode(encodings), -0.5, 0.5)
        assert torch.equal(encodings, kinetics.encode(video))
        torch.testing.assert_close(video_recon, kinetics.decode(encodings).clamp(-0.5, 0.5), rtol=0, atol=0)
    assert encodings.shape == (1, 8, 4, 4) and encodings.dtype == torch.long
    assert video_recon.shape == video.shape

    gpt = load_videogpt("ucf101_uncond_gpt", device=CPU).to(CPU)
    _same_state(gpt, prior)
    _same_state(gpt.vqvae, ucf)  # the VQ-VAE named in the prior's args, found in the cache
    samples = gpt.sample(16)
    assert samples.shape == (16, 3, 16, 16, 16) and samples.min() >= 0 and samples.max() <= 1


SAMPLE_CLIENT = """
import argparse
import os
import torch
from videogpt import VideoData, VideoGPT, load_videogpt
from videogpt.utils import save_video_grid

parser = argparse.ArgumentParser()
parser.add_argument("--ckpt", type=str, default="ucf101_uncond_gpt")
parser.add_argument("--n", type=int, default=8)
opts = parser.parse_args()
if os.path.exists(opts.ckpt):
    model = VideoGPT.load_from_checkpoint(opts.ckpt)
else:
    model = load_videogpt(opts.ckpt)
model = model.to("cpu")  # the only change: the script moves the model and the batch with .cuda()
model.eval()
hp = model.hparams["args"]
hp.batch_size = opts.n
batch = next(iter(VideoData(hp).test_dataloader()))
batch = {k: v.to("cpu") for k, v in batch.items()}
torch.manual_seed(5)
samples = model.sample(opts.n, batch)
save_video_grid(samples, "samples.mp4")
torch.save(samples, "samples.pt")
"""


@pytest.mark.parametrize("ckpt", ["name", "path"])
def test_sample_script_flow(home, monkeypatch, ckpt):
    """scripts/sample_videogpt.py (a pretrained name or a checkpoint path), run unchanged through
    ``videogpt_fast.compat.main`` as ``python -m videogpt_fast.compat sample.py --ckpt C --n 3``."""
    data = _hdf5(home / "data.hdf5", n_videos=3)
    vq = _vqvae([4, 4, 4])
    save_checkpoint(home / "fast_home" / "ucf101_stride4x4x4", vq)
    prior = _gpt(vq, "ucf101_stride4x4x4", data)
    target = "ucf101_uncond_gpt" if ckpt == "name" else str(home / "runs" / "last.ckpt")
    save_checkpoint(home / "fast_home" / "ucf101_uncond_gpt" if ckpt == "name" else target, prior)
    script = home / "sample.py"
    script.write_text(SAMPLE_CLIENT)
    monkeypatch.chdir(home)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "/before")
    path_before = list(sys.path)
    try:
        assert compat.main([str(script), "--ckpt", target, "--n", "3"]) == 0
    finally:
        compat.uninstall()
    assert os.environ["PYTHONPATH"] == "/before"
    assert sys.path[0] == str(home) and sys.path[-1] == path_before[-1]  # the script's folder first, as `python SCRIPT`
    samples = torch.load(home / "samples.pt", weights_only=True)
    assert samples.shape == (3, 3, 16, 16, 16)
    torch.manual_seed(5)
    torch.testing.assert_close(samples, prior.sample(3), rtol=0, atol=0)  # the unconditional prior ignores batch
    grid = decode_video(home / "samples.mp4")
    side = (1 + 16) * math.ceil(math.sqrt(3)) + 1  # 2 x 2 tiles of 16 x 16 with 1-pixel padding
    assert grid.shape == (16, side + 1, side + 1, 3)  # H.264 pads odd sizes to even


@pytest.mark.slow
def test_fvd_script_eval_fvd_flow(home, mapped):
    """scripts/compute_fvd.py's eval_fvd on one process (all_gather is the identity): a frame-
    conditional prior, load_i3d_pretrained(device) from the cache, sample(n, batch) per chunk,
    get_reconstruction, get_fvd_logits of 16-frame uint8 clips, frechet_distance.

    Slow (~25 s on 2 CPU cores) and unavoidably so: get_fvd_logits always resizes to I3D's 224 x 224
    (the original's signature has no size, and InceptionI3d needs H, W >= 193), and the flow needs
    six 16-frame clips (two per set: a covariance needs two samples)."""
    from videogpt.fvd.pytorch_i3d import InceptionI3d
    data = _hdf5(home / "data.hdf5", n_videos=2)
    vq = _vqvae([4, 4, 4])
    save_checkpoint(home / "fast_home" / "bair_stride4x2x2", vq)
    prior = _gpt(vq, "bair_stride4x2x2", data, n_cond_frames=1)
    save_checkpoint(home / "fast_home" / "bair_gpt", prior)
    torch.manual_seed(2)
    i3d_ref = InceptionI3d(400, in_channels=3)
    for module in i3d_ref.modules():  # He init keeps the signal alive through the 60 random layers
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(i3d_ref.state_dict(), home / "fast_home" / "i3d_pretrained_400.pt")

    from videogpt import VideoData, load_videogpt
    from videogpt.download import load_i3d_pretrained
    from videogpt.fvd.fvd import frechet_distance, get_fvd_logits

    device = CPU
    gpt = load_videogpt("bair_gpt", device=device)
    _same_state(gpt, prior)
    args = gpt.hparams["args"]
    args.batch_size = 2
    loader = VideoData(args).test_dataloader()
    i3d = load_i3d_pretrained(device)  # positional device, as the script
    _same_state(i3d, i3d_ref)
    assert not i3d.training

    def to_uint8(videos):  # BCTHW in [0, 1] -> BTHWC uint8, as the script
        return (videos.permute(0, 2, 3, 4, 1).cpu().numpy() * 255).astype("uint8")

    max_batch = 1  # the script's MAX_BATCH chunks, here of one clip
    batch = {k: v.to(device) for k, v in next(iter(loader)).items()}
    assert batch["video"].shape == (2, 3, 16, 16, 16)
    fake, recon = [], []
    for i in range(0, batch["video"].shape[0], max_batch):
        chunk = {k: v[i:i + max_batch] for k, v in batch.items()}
        fake.append(get_fvd_logits(to_uint8(gpt.sample(max_batch, chunk)), i3d=i3d, device=device))
        real_recon = (gpt.get_reconstruction(chunk["video"]) + 0.5).clamp(0, 1)
        recon.append(get_fvd_logits(to_uint8(real_recon), i3d=i3d, device=device))
    fake, recon = torch.cat(fake), torch.cat(recon)
    real = get_fvd_logits(to_uint8(batch["video"] + 0.5), i3d=i3d, device=device)
    assert fake.shape == recon.shape == real.shape == (2, 400)
    fvd = frechet_distance(fake.clone(), real).item()
    fvd_star = frechet_distance(fake.clone(), recon).item()
    assert math.isfinite(fvd) and math.isfinite(fvd_star) and fvd > 0 and fvd_star > 0
    noise = abs(frechet_distance(real.clone(), real).item())
    print(f"FVD {fvd:.4g}, FVD* {fvd_star:.4g}, real vs real {noise:.3g}")
    assert noise <= 0.01 * min(fvd, fvd_star)
