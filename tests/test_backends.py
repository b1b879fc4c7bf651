"""The backend switch: selection, context manager, no silent fallback, logging."""
import logging

import pytest
import torch

from videogpt_fast import backends, ops
from videogpt_fast.backends import BackendUnavailableError, get_backend, use_backend
from videogpt_fast.kernels import reference as R


def test_default_and_env(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert get_backend() == "auto"
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    assert get_backend() == "torch"
    monkeypatch.setenv(backends.ENV_VAR, "TRITON ")
    assert get_backend() == "triton"
    monkeypatch.setenv(backends.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="must be one of"):
        get_backend()


def test_context_manager_nests_and_restores(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "auto")
    with use_backend("torch"):
        assert get_backend() == "torch"
        with use_backend("cuda"):
            assert get_backend() == "cuda"
        assert get_backend() == "torch"
    assert get_backend() == "auto"
    with pytest.raises(ValueError):
        with use_backend("nope"):
            pass


def test_auto_on_cpu_is_torch():
    with use_backend("auto"):
        assert backends.resolve("codebook_nearest", torch.device("cpu"), ("triton", "cuda")) == "torch"


def test_cuda_backend_without_extension_raises():
    q, k = torch.randn(1, 2, 8), torch.randn(1, 2, 16, 8)
    with use_backend("cuda"):
        with pytest.raises(BackendUnavailableError, match="cuda"):
            ops.decode_attention(q, k, k, torch.tensor(3))


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 1, 3, 4, 8)
    with use_backend("triton"):
        with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET|triton"):
            ops.axial_attention(q, q, q, 2)


def test_backend_without_implementation_raises():
    with pytest.raises(BackendUnavailableError, match="no implementation"):
        with use_backend("triton"):
            backends.resolve("some_op", torch.device("cpu"), ("cuda",))


def test_cuda_backend_delegates_ops_the_extension_lacks_and_says_so(caplog, monkeypatch):
    """Backend cuda covers the extension's ops; the others (axial attention...) run as under auto,
    logged once per op, so a whole model (VQ-VAE decode, sampling) runs under backend cuda."""
    monkeypatch.setattr(backends, "_SAID", set())
    q = torch.randn(1, 2, 3, 4, 5, 8)
    with caplog.at_level(logging.INFO, logger="videogpt_fast.backends"), use_backend("cuda"):
        assert backends.resolve("axial_attention", torch.device("cpu"), ("triton",)) == "torch"
        torch.testing.assert_close(ops.axial_attention(q, q, q, 3), R.axial_attention_reference(q, q, q, 3))
        ops.axial_attention(q, q, q, 2)
    said = [r.getMessage() for r in caplog.records if "has no axial_attention" in r.getMessage()]
    assert len(said) == 1 and "runs on torch" in said[0]
    with use_backend("cuda"), pytest.raises(BackendUnavailableError, match="not built|CUDA tensor"):
        ops.decode_attention(torch.randn(1, 2, 8), torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8),
                             torch.tensor(3))  # an op it has: no silent fallback


def test_which_backend_ran_is_logged(caplog):
    x, e = torch.randn(5, 4), torch.randn(3, 4)
    with caplog.at_level(logging.DEBUG, logger="videogpt_fast.backends"), use_backend("torch"):
        ops.codebook_nearest(x, e)
    assert any("codebook_nearest: backend torch" in r.getMessage() for r in caplog.records)


def test_auto_takes_the_first_usable_backend_in_the_ops_order(monkeypatch):
    """On CUDA tensors ``auto`` follows each op's order (ops.REGISTRY[op].auto: decode attention
    prefers the CUDA op, an order of Triton first is honoured too) and skips an unusable backend;
    torch elsewhere."""
    from videogpt_fast import ops
    usable = {"triton": None, "cuda": None}
    monkeypatch.setattr(backends, "triton_usable", lambda device: usable["triton"])
    monkeypatch.setattr(backends, "cuda_usable", lambda device, op: usable["cuda"])
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    with use_backend("auto"):
        assert backends.resolve("decode_attention", gpu, ops.backends_of("decode_attention")) == "cuda"
        assert backends.resolve("decode_attention", gpu, ("triton", "cuda")) == "triton"
        assert backends.resolve("codebook_nearest", gpu, ops.backends_of("codebook_nearest")) == "triton"
        assert backends.resolve("decode_attention", cpu, ops.backends_of("decode_attention")) == "torch"
        usable["cuda"] = "the CUDA extension videogpt_fast._C is not built"
        assert backends.resolve("decode_attention", gpu, ops.backends_of("decode_attention")) == "triton"
        usable["triton"] = "Triton is not installed"
        assert backends.resolve("decode_attention", gpu, ops.backends_of("decode_attention")) == "torch"


def test_auto_leaves_out_a_backend_measured_slower_for_the_dtype(monkeypatch):
    """Axial attention in fp32: auto takes torch (SDPA measured faster than the Triton kernel on an
    H200), in bf16 the Triton kernel; a backend named explicitly still runs."""
    from videogpt_fast import ops
    monkeypatch.setattr(backends, "triton_usable", lambda device: None)
    gpu = torch.device("cuda", 0)
    entry = ops.REGISTRY["axial_attention"]
    with use_backend("auto"):
        assert backends.resolve("axial_attention", gpu, entry.backends, entry.auto_order(torch.float32)) == "torch"
        assert backends.resolve("axial_attention", gpu, entry.backends, entry.auto_order(torch.bfloat16)) == "triton"
    with use_backend("triton"):
        assert backends.resolve("axial_attention", gpu, entry.backends, entry.auto_order(torch.float32)) == "triton"
    with use_backend("cuda"):  # the extension lacks it: as under auto
        assert backends.resolve("axial_attention", gpu, entry.backends, entry.auto_order(torch.float32)) == "torch"


def test_auto_order_outside_the_implementations_is_refused(monkeypatch):
    """An auto order naming a backend the op lacks was taken when usable (Triton for an op without a
    kernel: AttributeError on None later); an Op whose ``auto`` leaves out an implementation made it
    unreachable even by name (VIDEOGPT_FAST_BACKEND=cuda ran it 'as under auto')."""
    monkeypatch.setattr(backends, "triton_usable", lambda device: None)
    with use_backend("auto"), pytest.raises(ValueError, match="outside available"):
        backends.resolve("codebook_nearest_with_stats", torch.device("cuda", 0), (), ("triton",))
    with pytest.raises(ValueError, match="each implemented backend"):
        ops.Op(R.codebook_nearest_reference, "codebook.codebook_nearest", "codebook_nearest", auto=("triton",))
    with pytest.raises(ValueError, match="each implemented backend"):
        ops.Op(R.codebook_nearest_reference, auto=("triton", "cudaa"))
    assert ops.Op(R.codebook_nearest_reference, "codebook.codebook_nearest", auto=("triton",)).backends == ("triton",)


def test_triton_refuses_devices_the_interpreter_cannot_read(monkeypatch):
    """Under TRITON_INTERPRET=1 Triton counted as usable on any device: meta tensors failed inside the
    interpreter (NotImplementedError: Cannot copy out of meta tensor)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backends.triton_usable(torch.device("cpu")) is None or not backends.triton_available()
    m = torch.device("meta")
    x, e = torch.randn(5, 4, device=m), torch.randn(3, 4, device=m)
    with use_backend("triton"), pytest.raises(BackendUnavailableError, match="got device meta"):
        ops.codebook_nearest(x, e)
