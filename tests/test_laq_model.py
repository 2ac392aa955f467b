"""LAQ model and quantizers (src/hlrp/laq): shapes, size, gradients, quantizers, overfitting."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hlrp.common.config import LAQModelConfig, load
from hlrp.laq.model import LAQ, action_grid, maybe_compile
from hlrp.laq.quantizers import NSVQ, EMAVectorQuantizer, FSQQuantizer, build_quantizer

TINY = load(["model=laq_tiny"], stage="laq").laq.model  # config/model/laq_tiny.yaml
FULL = load(["model=laq"], stage="laq").laq.model  # config/model/laq.yaml: LAPA's published size


def tiny(**kw) -> LAQModelConfig:
    return dataclasses.replace(TINY, **kw)


def moving_square_pairs(b: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """(b, 2, 3, size, size) pairs: a coloured square on a gradient, moved between frames."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    background = torch.stack(
        [
            ramp[None].expand(size, size),
            ramp[:, None].expand(size, size),
            torch.full((size, size), 0.3),
        ]
    )  # (3, H, W)
    frames = background.repeat(b, 2, 1, 1, 1).clone()  # (b, 2, 3, H, W)
    s = size // 4
    for i in range(b):
        y, x = torch.randint(0, size - 2 * s, (2,), generator=g).tolist()
        dy, dx = torch.randint(-s, s + 1, (2,), generator=g).tolist()
        color = torch.rand(3, 1, 1, generator=g)
        frames[i, 0, :, y : y + s, x : x + s] = color
        y2, x2 = min(max(y + dy, 0), size - s), min(max(x + dx, 0), size - s)
        frames[i, 1, :, y2 : y2 + s, x2 : x2 + s] = color
    return frames


@pytest.fixture
def model() -> LAQ:
    torch.manual_seed(0)
    return LAQ(TINY)


def test_tiny_shapes(model):
    frames = moving_square_pairs(4)
    out = model(frames)
    assert out.recon.shape == (4, 3, 64, 64)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert out.indices.shape == (4, 2) and out.indices.dtype == torch.long
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < TINY.codebook_size
    assert out.z_pre.shape == (4, 2, 16)
    assert float(out.quant_loss) == 0.0  # NSVQ has no auxiliary loss
    assert 1.0 <= float(out.perplexity) <= TINY.codebook_size
    assert 0.0 < float(out.used_fraction) <= 1.0
    indices, z_pre = model.eval().encode_actions(frames)
    assert indices.shape == (4, 2) and z_pre.shape == (4, 2, 16)
    assert model.decode_with_indices(frames[:, 0], indices).shape == (4, 3, 64, 64)


def test_full_size_parameter_count_matches_lapa():
    with torch.device("meta"):
        m = LAQ(FULL)
    n = m.num_params()
    print(f"laq_full parameters: {n:,}")  # 343,746,928
    assert abs(n - 344e6) / 344e6 < 0.10
    assert next(m.parameters()).device.type == "meta"


def test_gradients_reach_encoder_through_nsvq(model):
    out = model.train()(moving_square_pairs(4))
    out.loss.backward()
    for name in [
        "patch_embed.1.weight",
        "spatial.0.attn.qkv.weight",
        "temporal.0.ff.fc.weight",
        "action.proj_in.weight",
        "quantizer.codebook",
        "decoder.0.cross.kv.weight",
    ]:
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_eval_is_deterministic_and_consistent(model):
    model.eval()
    frames = moving_square_pairs(3)
    with torch.no_grad():
        a, b = model(frames), model(frames)
        assert torch.equal(a.recon, b.recon) and torch.equal(a.indices, b.indices)
        indices, z_pre = model.encode_actions(frames)
        assert torch.equal(indices, a.indices) and torch.allclose(z_pre, a.z_pre)
        # decoding a pair's own codes reproduces forward's reconstruction
        recon = model.decode_with_indices(frames[:, 0], indices)
        torch.testing.assert_close(recon, a.recon)


def test_decode_with_other_pairs_indices_differs(model):
    model.eval()
    frames = moving_square_pairs(2)
    with torch.no_grad():
        own, _ = model.encode_actions(frames)
        other = own.flip(0)  # each pair gets the other pair's codes
        if torch.equal(other[0], own[0]):  # both pairs happen to share codes: take new ones
            other = (own + 1) % TINY.codebook_size
        a = model.decode_with_indices(frames[:, 0], own)
        b = model.decode_with_indices(frames[:, 0], other)
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["nsvq", "fsq", "vq_ema"])
def test_each_quantizer(name):
    torch.manual_seed(0)
    cfg = tiny(quantizer=name, fsq_levels=[8])
    q = build_quantizer(cfg)
    assert q.codebook_size == 8
    x = torch.randn(16, 4, cfg.quant_dim, requires_grad=True)
    out = q.train()(x)
    assert out.quantized.shape == x.shape and out.indices.shape == (16, 4)
    assert out.indices.dtype == torch.long
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < 8
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert 1.0 <= float(out.perplexity) <= 8 and 0 < float(out.used_fraction) <= 1
    (out.quantized.sum() + out.loss).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    ev = q.eval()(x.detach())
    torch.testing.assert_close(ev.quantized, q.indices_to_codes(ev.indices))
    # the whole model trains with it
    m = LAQ(cfg)
    out = m(moving_square_pairs(4))
    (out.loss + out.quant_loss).backward()
    assert out.indices.shape == (4, 2)


def test_fsq_levels_must_match_codebook_size():
    with pytest.raises(ValueError, match=r"prod\(fsq_levels\)=40.*codebook_size=8"):
        FSQQuantizer(dim=16, levels=[8, 5], codebook_size=8)
    with pytest.raises(ValueError, match="codebook_size=8"):
        LAQ(tiny(quantizer="fsq", fsq_levels=[4, 4]))
    assert FSQQuantizer(dim=16, levels=[8, 5], codebook_size=40).codebook_size == 40
    assert isinstance(build_quantizer(tiny(quantizer="vq_ema")), EMAVectorQuantizer)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="patch_size"):
        LAQ(tiny(patch_size=7))
    with pytest.raises(ValueError, match="quantizer='vqvae'"):
        LAQ(tiny(quantizer="vqvae"))
    assert [action_grid(n) for n in (1, 2, 4, 8, 16)] == [(1, 1), (2, 1), (2, 2), (4, 2), (4, 4)]


def test_dead_code_replacement_revives_unused_codes():
    torch.manual_seed(0)
    q = NSVQ(codebook_size=8, dim=4).train()
    with torch.no_grad():
        q.codebook[1:] += 100.0  # only code 0 is near the data
    data = lambda: torch.randn(32, 2, 4) * 0.5  # noqa: E731
    for _ in range(5):
        assert q(data()).indices.unique().tolist() == [0]
    assert q.code_usage.tolist() == [5 * 64] + [0] * 7
    assert {"codebook", "code_usage", "recent_inputs", "has_recent"} <= set(q.state_dict())
    assert q.replace_unused_codebooks(num_batches=5) == 7
    assert int(q.code_usage.sum()) == 0
    assert q.codebook[1:].abs().max() < 10  # restarted among the data
    assert len(q(data()).indices.unique()) > 1
    # a resumed quantizer (state_dict) picks exactly the same codes
    r = NSVQ(codebook_size=8, dim=4)
    r.load_state_dict(q.state_dict())
    x = data()
    assert torch.equal(r.eval()(x).indices, q.eval()(x).indices)


@pytest.mark.parametrize("residual", [False, True])
def test_tiny_model_overfits_one_pair(residual):
    torch.manual_seed(0)
    m = LAQ(tiny(decode_residual=residual)).train()
    frames = moving_square_pairs(1, seed=3)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(150):
        loss = m(frames).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = sum(losses[-10:]) / 10
    assert final < 0.05 * losses[0], (losses[0], final)


def test_bf16_autocast_on_cpu(model):
    frames = moving_square_pairs(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(frames)
    assert out.recon.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.spatial[0].attn.qkv.weight.grad is not None


def test_state_dict_round_trip(model):
    model.train()(moving_square_pairs(2))  # updates NSVQ buffers
    fresh = LAQ(TINY)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.quantizer.code_usage, model.quantizer.code_usage)
    frames = moving_square_pairs(2, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(frames).recon, model.eval()(frames).recon)


def test_maybe_compile_off_returns_same_module(model):
    assert maybe_compile(model, tiny(compile=False)) is model


def test_residual_decoder_starts_at_copy_of_frame_t():
    torch.manual_seed(0)
    m = LAQ(tiny(decode_residual=True)).eval()
    frames = moving_square_pairs(3)
    with torch.no_grad():
        out = m(frames)
        indices, _ = m.encode_actions(frames)
        recon = m.decode_with_indices(frames[:, 0], indices)
    # zero-initialised head: the untrained model predicts "nothing moved"
    torch.testing.assert_close(out.recon, frames[:, 0])
    torch.testing.assert_close(recon, out.recon)
    # the first step trains the head; once it moved, gradients reach the encoder
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        m.train()(frames).loss.backward()
        assert m.to_pixels.weight.grad.abs().sum() > 0
        opt.step()
    for name in ["action.proj_in.weight", "spatial.0.attn.qkv.weight"]:
        grad = m.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
