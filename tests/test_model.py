"""The Sketch-RNN model: encoder = packed BiLSTM, mixture likelihood, sampling, schedules, config checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from test_strokes import stroke3s
from torch import nn

from sketchserve.data import iter_drawings
from sketchserve.strokes import CANONICAL_SIZE, drawing_to_stroke3, pad_stroke5, stroke3_to_drawing
from sketchserve.training.config import ConfigError, ModelConfig, TrainConfig
from sketchserve.training.export import script_module
from sketchserve.training.model import (
    REMAINING_SCALE,
    Decoder,
    Encoder,
    SketchRNN,
    at_step,
    canonical_positions,
    normalize,
    oriented_strokes,
    remaining_inputs,
    reverse_within,
    split_params,
    step_losses,
    teacher_remaining,
)
from sketchserve.training.train import kl_weight_at, lr_at

TINY = ModelConfig(enc_hidden=12, dec_hidden=16, latent_size=6, num_mixtures=3, max_seq_len=40)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def buffer(module: nn.Module, name: str) -> torch.Tensor:
    """A module's buffer, typed (``nn.Module.__getattr__`` says ``Tensor | Module``)."""
    return cast(torch.Tensor, getattr(module, name))


def random_stroke5(batch: int, steps: int) -> torch.Tensor:
    x = torch.randn(batch, steps, 5) * 20
    x[..., 2:] = torch.eye(3)[torch.randint(0, 2, (batch, steps))]
    return x


def test_encoder_equals_a_bidirectional_lstm_over_packed_sequences() -> None:
    enc = Encoder(TINY)
    buffer(enc, "scale").fill_(20.0)
    bi = nn.LSTM(5, TINY.enc_hidden, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(bi, name).copy_(getattr(enc.forward_lstm, name))
            getattr(bi, name + "_reverse").copy_(getattr(enc.backward_lstm, name))
    x, lengths = random_stroke5(4, 15), torch.tensor([15, 3, 9, 1])
    packed = nn.utils.rnn.pack_padded_sequence(
        normalize(x, buffer(enc, "scale")), lengths, batch_first=True, enforce_sorted=False
    )
    _, (h, _) = bi(packed)
    xn = normalize(x, buffer(enc, "scale"))
    ours = torch.cat(
        [
            at_step(enc.forward_lstm(xn)[0], lengths - 1),
            at_step(enc.backward_lstm(reverse_within(xn, lengths))[0], lengths - 1),
        ],
        dim=-1,
    )
    assert torch.allclose(torch.cat([h[0], h[1]], dim=-1), ours, atol=1e-6)
    mu, sigma = enc(x, lengths)
    assert mu.shape == (4, TINY.latent_size) and bool((sigma > 0).all())


def test_mixture_nll_matches_torch_distributions() -> None:
    m = 3
    out = torch.randn(2, 6 * m + 3)
    p = split_params(out, m)
    dx, dy, pen = torch.randn(2), torch.randn(2), torch.tensor([0, 2])
    losses = step_losses(p, dx, dy, pen)
    for b in range(2):
        comps = []
        for k in range(m):
            sx, sy, rho = p.sigma_x[b, k], p.sigma_y[b, k], p.rho[b, k]
            cov = torch.stack([torch.stack([sx * sx, rho * sx * sy]), torch.stack([rho * sx * sy, sy * sy])])
            dist = torch.distributions.MultivariateNormal(torch.stack([p.mu_x[b, k], p.mu_y[b, k]]), cov)
            comps.append(p.log_pi[b, k] + dist.log_prob(torch.stack([dx[b], dy[b]])))
        assert math.isclose(float(losses.offset[b]), -float(torch.logsumexp(torch.stack(comps), 0)), rel_tol=1e-4)
        expected_pen = -float(torch.log_softmax(p.pen_logits[b], -1)[pen[b]])
        assert math.isclose(float(losses.pen[b]), expected_pen, rel_tol=1e-5)


def test_greedy_sampling_ignores_noise_and_ends_with_end_rows() -> None:
    dec = Decoder(TINY).eval()
    buffer(dec, "scale").fill_(20.0)
    z = torch.randn(3, TINY.latent_size)
    a, la = dec.sample(z, torch.rand(3, 25, 4), 0.0)
    b, lb = dec.sample(z, torch.rand(3, 25, 4), 0.0)
    assert torch.equal(a, b) and torch.equal(la, lb)
    for i, n in enumerate(la.tolist()):
        assert bool((a[i, n:, 4] == 1).all()) and bool((a[i, n:, :2] == 0).all())
        assert bool((a[i, :n, 2:].sum(-1) == 1).all()) and bool((a[i, :n, 4] == 0).all())


def test_nll_ignores_what_padding_rows_hold() -> None:
    model = SketchRNN(TINY).eval()
    model.set_scale(20.0)
    x, lengths = random_stroke5(2, 12), torch.tensor([12, 5])
    z = torch.randn(2, TINY.latent_size)
    noisy = x.clone()
    noisy[1, 5:] = torch.randn(7, 5)
    assert torch.allclose(model.decoder.nll(z, x, lengths), model.decoder.nll(z, noisy, lengths), atol=1e-6)
    terms = model(x, lengths, torch.zeros(2, TINY.latent_size))
    assert terms.kl.item() >= 0.0 and bool(torch.isfinite(terms.recon))


def test_schedules_follow_the_paper() -> None:
    cfg = TrainConfig()
    assert lr_at(0, cfg) == pytest.approx(cfg.learning_rate)
    assert lr_at(10**7, cfg) == pytest.approx(cfg.min_lr)
    assert kl_weight_at(0, cfg) == pytest.approx(cfg.kl_weight_start)
    assert kl_weight_at(10**7, cfg) == pytest.approx(cfg.kl_weight)
    assert kl_weight_at(100, cfg) < kl_weight_at(1000, cfg)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (lambda: ModelConfig(dec_hidden=0), "dec_hidden must be >= 1"),
        (lambda: ModelConfig(cell="gru"), "cell must be one of"),
        (lambda: ModelConfig(recurrent_dropout=0.1), "needs cell 'layer_norm'"),
        (lambda: TrainConfig(min_lr=1.0), "min_lr"),
        (lambda: TrainConfig(kl_decay_rate=1.5), "kl_decay_rate"),
    ],
)
def test_impossible_hyperparameters_are_rejected(cfg, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg().validate()


def test_layer_norm_cell_with_recurrent_dropout_trains_and_is_deterministic_in_eval() -> None:
    cfg = ModelConfig(**{**TINY.__dict__, "cell": "layer_norm", "recurrent_dropout": 0.1}).validate()
    model = SketchRNN(cfg)
    model.set_scale(20.0)
    x, lengths = random_stroke5(2, 8), torch.tensor([8, 4])
    terms = model(x, lengths, torch.randn(2, cfg.latent_size))
    (terms.recon + terms.kl).backward()
    assert all(p.grad is not None for p in model.decoder.rnn.parameters())
    model.eval()
    z = torch.randn(2, cfg.latent_size)
    assert torch.equal(model.decoder.nll(z, x, lengths), model.decoder.nll(z, x, lengths))
    scripted = script_module(model.decoder)
    assert torch.allclose(scripted.nll(z, x, lengths), model.decoder.nll(z, x, lengths), atol=1e-5)


def assert_encoder_ignores_padding_and_scripts(cfg: ModelConfig) -> Encoder:
    """Junk in padding rows, or no padding at all, gives the same mu; so does the scripted encoder."""
    enc = Encoder(cfg.validate())
    buffer(enc, "scale").fill_(20.0)
    batch, lengths = random_stroke5(3, 12), torch.tensor([12, 5, 8])
    mu, _ = enc(batch, lengths)
    junk = batch.clone()
    junk[1, 5:] = 1e3
    assert torch.allclose(enc(junk, lengths)[0], mu, atol=1e-6)
    assert torch.allclose(enc(batch[1:2, :5], lengths[1:2])[0], mu[1:2], atol=1e-6)
    assert torch.allclose(script_module(enc)(batch, lengths)[0], mu, atol=1e-6)
    return enc


def test_position_input_is_the_canonical_frame_and_ignores_padding() -> None:
    # Two strokes: (0,0) -> (10,-20) -> (30,-20), lift, -> (30,5): top-left is (0,-20), so x spans 0..30, y 0..25.
    rows = torch.tensor([[10.0, -20.0, 1, 0, 0], [20.0, 0.0, 0, 1, 0], [0.0, 25.0, 1, 0, 0]])
    x = torch.cat([rows, torch.full((2, 5), 99.0)]).unsqueeze(0)  # two padding rows of junk
    pos = canonical_positions(x, torch.tensor([3]))
    expected = torch.tensor([[10.0, 0.0], [30.0, 0.0], [30.0, 25.0]]) * (2.0 / CANONICAL_SIZE) - 1.0
    assert torch.allclose(pos[0, :3], expected)
    assert_encoder_ignores_padding_and_scripts(ModelConfig(**{**TINY.__dict__, "encoder_input": "offsets+positions"}))
    with pytest.raises(ConfigError, match="encoder_input must be one of"):
        ModelConfig(encoder_input="pixels").validate()


def test_mean_pooled_encoder_ignores_padding_and_scripts() -> None:
    enc = assert_encoder_ignores_padding_and_scripts(ModelConfig(**{**TINY.__dict__, "encoder_pool": "last+mean"}))
    assert enc.mu.in_features == 4 * TINY.enc_hidden
    with pytest.raises(ConfigError, match="encoder_pool must be one of"):
        ModelConfig(encoder_pool="max").validate()


def test_length_inputs_count_the_points_left_down_to_the_end_step() -> None:
    inputs = remaining_inputs(teacher_remaining(torch.tensor([3, 1]), 5))
    left = torch.tensor([[3, 2, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(inputs[..., 0], left / REMAINING_SCALE)
    assert torch.equal(inputs[..., 1], (left == 0).to(torch.float32))


def test_length_conditioned_decoder_ignores_padding_scripts_and_draws_its_target() -> None:
    cfg = ModelConfig(**{**TINY.__dict__, "decoder_condition": "latent+length"}).validate()
    model = SketchRNN(cfg).eval()
    model.set_scale(20.0)
    model.set_typical_length(7.4)
    assert cast(nn.LSTM, model.decoder.rnn.lstm).input_size == 5 + 2 + cfg.latent_size
    x, lengths = random_stroke5(2, 12), torch.tensor([12, 5])
    noisy = x.clone()
    noisy[1, 5:] = torch.randn(7, 5)
    z = torch.randn(2, cfg.latent_size)
    assert torch.allclose(model.decoder.nll(z, x, lengths), model.decoder.nll(z, noisy, lengths), atol=1e-6)
    dec = script_module(model.decoder)
    assert int(dec.typical_length) == 7
    assert torch.allclose(dec.nll(z, x, lengths), model.decoder.nll(z, x, lengths), atol=1e-6)
    noise = torch.rand(2, 30, 4)
    default = dec.sample(z, noise, 0.7)
    for got, want in zip(default, dec.sample(z, noise, 0.7, torch.tensor([7, 7]))):
        assert torch.equal(got, want)
    other = dec.sample(z, noise, 0.7, torch.tensor([20, 3]))
    assert not torch.equal(other[0], default[0])
    with pytest.raises(ConfigError, match="decoder_condition must be one of"):
        ModelConfig(decoder_condition="length").validate()


def _oriented_s3(s3: np.ndarray) -> np.ndarray:
    padded = pad_stroke5([s3])
    out = oriented_strokes(torch.from_numpy(padded.x), torch.from_numpy(padded.lengths))
    return np.column_stack([out[0, :, :2].numpy(), out[0, :, 3].numpy()])


def _from_corner(drawing: list[np.ndarray]) -> list[np.ndarray]:
    corner = np.concatenate(drawing).min(axis=0)
    return [stroke - corner for stroke in drawing]


@settings(max_examples=60, deadline=None)
@given(stroke3s())
def test_oriented_strokes_keep_every_stroke_or_reverse_it_and_are_idempotent(s3: np.ndarray) -> None:
    oriented = _oriented_s3(s3)
    assert oriented.shape == s3.shape and np.array_equal(oriented[:, 2], s3[:, 2])
    before, after = _from_corner(stroke3_to_drawing(s3)), _from_corner(stroke3_to_drawing(oriented))
    assert len(before) == len(after)
    for drawn, redrawn in zip(before, after):
        assert np.allclose(redrawn, drawn, atol=1e-2) or np.allclose(redrawn, drawn[::-1], atol=1e-2)
    np.testing.assert_allclose(_oriented_s3(oriented), oriented, atol=1e-2)


def test_oriented_encoder_reads_real_drawings_the_same_whichever_way_each_stroke_was_drawn(data_dir: Path) -> None:
    rng = np.random.default_rng(0)
    paths = [data_dir / "sketchrnn" / f"{c}.npz" for c in ("face", "radio")]
    drawn = [r.stroke3 for r in iter_drawings(paths, split="valid")]
    flipped = [drawing_to_stroke3([s[::-1] if rng.random() < 0.5 else s for s in stroke3_to_drawing(d)]) for d in drawn]
    assert sum(not np.array_equal(a, b) for a, b in zip(drawn, flipped)) > 300
    a, b = pad_stroke5(drawn), pad_stroke5(flipped)
    lengths = torch.from_numpy(a.lengths)
    oriented_a = oriented_strokes(torch.from_numpy(a.x), lengths)
    oriented_b = oriented_strokes(torch.from_numpy(b.x), lengths)
    assert torch.allclose(oriented_a, oriented_b, atol=1e-3)
    cfg = ModelConfig(
        **{**TINY.__dict__, "encoder_strokes": "oriented", "encoder_input": "offsets+positions"}
    ).validate()
    enc = Encoder(cfg).eval()
    buffer(enc, "scale").fill_(20.0)
    scripted = script_module(enc)
    mu_a, _ = scripted(torch.from_numpy(a.x), lengths)
    mu_b, _ = scripted(torch.from_numpy(b.x), lengths)
    assert torch.allclose(mu_a, mu_b, atol=1e-5) and torch.allclose(
        mu_a, enc(torch.from_numpy(a.x), lengths)[0], atol=1e-5
    )
    plain = Encoder(ModelConfig(**{**cfg.__dict__, "encoder_strokes": "drawn"})).eval()
    plain.load_state_dict(enc.state_dict())
    assert not torch.allclose(
        plain(torch.from_numpy(a.x), lengths)[0], plain(torch.from_numpy(b.x), lengths)[0], atol=1e-3
    )
    with pytest.raises(ConfigError, match="encoder_strokes must be one of"):
        ModelConfig(encoder_strokes="sorted").validate()
