"""Sketch-RNN VAE (Ha & Eck 2017), after magenta's ``sketch_rnn/model.py``.

``Encoder`` and ``Decoder`` are the two TorchScript modules of the artifact
(docs/contracts.md): they take and give stroke-5 in canonical 0-255 units and
normalize internally with the ``scale`` buffer (the training set's offset std).
``SketchRNN`` joins them for training; its forward returns the loss terms.

Loss, as magenta computes it: ``L_R`` is the offset mixture NLL over the real
points plus the pen cross-entropy (in evaluation over the real points, as magenta
reports it), summed and divided by ``batch * max_seq_len``; ``KL`` is the mean over
batch and latent dimensions. One departure: the training pen term covers the real
points and the end step, not every padding step up to ``max_seq_len`` (those only
teach the decoder to stay ended, which sampling never asks of it).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sketchserve.strokes import CANONICAL_SIZE
from sketchserve.training.config import ModelConfig

STROKE5 = 5
POSITION_FEATURES = 2  # x, y of each point in the canonical frame (encoder_input 'offsets+positions')
# Decoder inputs with decoder_condition 'latent+length': the points still to draw over REMAINING_SCALE,
# and 1 once none remain (so the end is a step the decoder is told of, not one it must count to).
LENGTH_FEATURES = 2
# oriented_strokes: a stroke with |signed area| / path length^2 above this encloses area (a circle: 1/(4 pi),
# a straight line: 0; a quarter of a circle's ratio leaves arcs and hooks to the left-end rule).
CURVED_RATIO = 0.02
# oriented_strokes: an open stroke runs from its left end; a vertical one (equal x) from its upper end.
TIE_WEIGHT = 1e-3
# A typical drawing's point count: keeps the remaining-points input within about [0, 2.5].
REMAINING_SCALE = 100.0
PEN_STATES = 3
PEN_END = 2
# Each mixture component has pi, mu_x, mu_y, log sigma_x, log sigma_y, rho.
PARAMS_PER_COMPONENT = 6
# tanh(rho) may round to exactly +-1 in float32; this keeps 1 - rho^2 positive.
RHO_LIMIT = 0.99999
LOG_2PI = math.log(2.0 * math.pi)
# magenta's LSTM cells start with forget-gate bias 1 so that early gradients flow.
FORGET_BIAS = 1.0


class MixtureParams(NamedTuple):
    log_pi: Tensor
    mu_x: Tensor
    mu_y: Tensor
    sigma_x: Tensor
    sigma_y: Tensor
    rho: Tensor
    pen_logits: Tensor


class StepLosses(NamedTuple):
    offset: Tensor
    pen: Tensor


class Targets(NamedTuple):
    dx: Tensor
    dy: Tensor
    pen: Tensor


class Moments(NamedTuple):
    mu: Tensor
    presig: Tensor


class LSTMState(NamedTuple):
    h: Tensor
    c: Tensor


class CellOutput(NamedTuple):
    out: Tensor
    h: Tensor
    c: Tensor


class LossTerms(NamedTuple):
    recon: Tensor
    kl: Tensor
    offset: Tensor
    pen: Tensor


def split_params(out: Tensor, num_mixtures: int, rho_limit: float = RHO_LIMIT) -> MixtureParams:
    """Head output ``[..., 6M + 3]`` -> mixture parameters (log-softmaxed pi, exp sigma, tanh rho)."""
    m = num_mixtures
    return MixtureParams(
        log_pi=F.log_softmax(out[..., 0:m], dim=-1),
        mu_x=out[..., m : 2 * m],
        mu_y=out[..., 2 * m : 3 * m],
        sigma_x=torch.exp(out[..., 3 * m : 4 * m]),
        sigma_y=torch.exp(out[..., 4 * m : 5 * m]),
        rho=torch.tanh(out[..., 5 * m : 6 * m]).clamp(-rho_limit, rho_limit),
        pen_logits=out[..., 6 * m :],
    )


def step_losses(p: MixtureParams, dx: Tensor, dy: Tensor, pen: Tensor, log_2pi: float = LOG_2PI) -> StepLosses:
    """Per-step offset NLL under the mixture and pen cross-entropy; ``pen`` holds class indices."""
    dx = dx.unsqueeze(-1)
    dy = dy.unsqueeze(-1)
    zx = (dx - p.mu_x) / p.sigma_x
    zy = (dy - p.mu_y) / p.sigma_y
    one_minus_rho2 = 1.0 - p.rho * p.rho
    quad = (zx * zx + zy * zy - 2.0 * p.rho * zx * zy) / (2.0 * one_minus_rho2)
    log_norm = -log_2pi - torch.log(p.sigma_x) - torch.log(p.sigma_y) - 0.5 * torch.log(one_minus_rho2)
    offset = -torch.logsumexp(p.log_pi + log_norm - quad, dim=-1)
    pen_nll = -torch.gather(F.log_softmax(p.pen_logits, dim=-1), -1, pen.unsqueeze(-1)).squeeze(-1)
    return StepLosses(offset=offset, pen=pen_nll)


def normalize(x: Tensor, scale: Tensor) -> Tensor:
    return torch.cat([x[..., 0:2] / scale, x[..., 2:]], dim=-1)


def real_rows(lengths: Tensor, steps: int) -> Tensor:
    """``[B, steps]`` bool: True on each sketch's first ``lengths[b]`` rows (its real points), False on padding."""
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def remaining_inputs(remaining: Tensor, scale: float = REMAINING_SCALE) -> Tensor:
    """Points still to draw ``[...]`` (negative counts as 0) -> the decoder's length inputs ``[..., 2]``."""
    left = remaining.clamp(min=0).to(torch.float32)
    return torch.stack([left / scale, (left == 0.0).to(torch.float32)], dim=-1)


def teacher_remaining(lengths: Tensor, steps: int) -> Tensor:
    """``[B, steps]``: points still to draw at each teacher-forced step (``lengths - t``; 0 at the end step)."""
    return lengths.unsqueeze(1) - torch.arange(steps, device=lengths.device).unsqueeze(0)


def targets(x: Tensor, lengths: Tensor, pen_end: int = PEN_END) -> Targets:
    """Normalized stroke-5 ``x [B,T,5]`` -> per-step targets over ``T + 1`` steps (the last is the end).

    Rows at or after ``lengths`` are treated as the end state whatever they hold.
    """
    b, t = x.shape[0], x.shape[1]
    real = real_rows(lengths, t + 1)
    dx = F.pad(x[..., 0], (0, 1)) * real
    dy = F.pad(x[..., 1], (0, 1)) * real
    pen_real = F.pad(torch.argmax(x[..., 2:], dim=-1), (0, 1))
    pen = torch.where(real, pen_real, torch.full((b, t + 1), pen_end, dtype=torch.long, device=x.device))
    return Targets(dx=dx, dy=dy, pen=pen)


def teacher_inputs(x: Tensor) -> Tensor:
    """Normalized stroke-5 ``x [B,T,5]`` -> decoder inputs ``[B,T+1,5]``: start token then ``x``."""
    start = torch.zeros_like(x[:, 0:1])
    start[:, :, 2] = 1.0
    return torch.cat([start, x], dim=1)


class FusedLSTM(nn.Module):
    """One LSTM layer on torch's fused kernel: ``(x [B,T,I], h, c) -> (out [B,T,H], h, c)``."""

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden, batch_first=True)
        bias_hh, bias_ih = cast(Tensor, self.lstm.bias_hh_l0), cast(Tensor, self.lstm.bias_ih_l0)
        with torch.no_grad():
            bias_hh.zero_()
            bias_ih.zero_()
            bias_ih[hidden : 2 * hidden].fill_(FORGET_BIAS)

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> CellOutput:
        # cuDNN wants contiguous states; h and c are often views (halves of the decoder's initial state).
        out, (h2, c2) = self.lstm(x, (h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()))
        return CellOutput(out=out, h=h2.squeeze(0), c=c2.squeeze(0))


class LayerNormLSTM(nn.Module):
    """magenta's LayerNormLSTMCell with recurrent dropout on the cell input (Semeniuta et al. 2016)."""

    def __init__(self, input_size: int, hidden: int, recurrent_dropout: float) -> None:
        super().__init__()
        self.hidden = hidden
        self.recurrent_dropout = recurrent_dropout
        self.wx = nn.Linear(input_size, 4 * hidden, bias=False)
        self.wh = nn.Linear(hidden, 4 * hidden, bias=False)
        self.gamma = nn.Parameter(torch.ones(4, hidden))
        self.beta = nn.Parameter(torch.zeros(4, hidden))
        with torch.no_grad():
            self.beta[2].fill_(FORGET_BIAS)
        self.ln_c = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> CellOutput:
        b, steps = x.shape[0], x.shape[1]
        xw = self.wx(x)
        outs: list[Tensor] = []
        for t in range(steps):
            gates = (xw[:, t] + self.wh(h)).view(b, 4, self.hidden)
            gates = F.layer_norm(gates, [self.hidden]) * self.gamma + self.beta
            i, g, f, o = gates.unbind(1)
            g = torch.tanh(g)
            if self.training and self.recurrent_dropout > 0.0:
                g = F.dropout(g, self.recurrent_dropout, True)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * g
            h = torch.sigmoid(o) * torch.tanh(self.ln_c(c))
            outs.append(h)
        return CellOutput(out=torch.stack(outs, dim=1), h=h, c=c)


def reverse_within(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence's first ``lengths[b]`` rows in place of them; padding rows stay after."""
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    last = lengths.unsqueeze(1) - 1
    index = torch.where(steps <= last, last - steps, steps)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))


def at_step(out: Tensor, step: Tensor) -> Tensor:
    """``out[b, step[b]]`` for every ``b``."""
    return out.gather(1, step.view(-1, 1, 1).expand(-1, 1, out.shape[2])).squeeze(1)


def canonical_positions(x: Tensor, lengths: Tensor, span: float = CANONICAL_SIZE) -> Tensor:
    """``[B, T, 2]``: where each row's offset lands in the canonical frame, scaled to about [-1, 1].

    Row ``t`` of stroke-5 moves from point ``t`` to point ``t + 1`` (point 0 is the origin),
    so the cumulative sum is each point's place relative to the first; shifting by the
    minimum over the real points (and the origin) puts the drawing's top-left at 0, which
    is the canonical frame (longer side 0..255). Padding rows never reach the minimum.
    """
    pos = torch.cumsum(x[..., 0:2], dim=1)
    real = real_rows(lengths, x.shape[1]).unsqueeze(-1)
    lowest = torch.where(real, pos, torch.full_like(pos, math.inf)).amin(dim=1, keepdim=True).clamp(max=0.0)
    return (pos - lowest) * (2.0 / span) - 1.0


def _first_at_or_after(flags: Tensor) -> Tensor:
    """``[B, T]`` bool -> for each ``t``, the first index ``>= t`` where ``flags`` holds (``T`` if none)."""
    steps = flags.shape[1]
    index = torch.arange(steps, device=flags.device).unsqueeze(0).expand_as(flags)
    marked = torch.where(flags, index, torch.full_like(index, steps))
    return torch.cummin(marked.flip(1), dim=1).values.flip(1)


def _stroke_sum(per_row: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Sum of ``per_row [B, T]`` over rows ``start..end - 1`` (both ``[B, T]`` indices), by prefix sums."""
    prefix = F.pad(torch.cumsum(per_row, dim=1), (1, 0))
    return prefix.gather(1, end) - prefix.gather(1, start)


def oriented_strokes(x: Tensor, lengths: Tensor, curved: float = CURVED_RATIO, tie: float = TIE_WEIGHT) -> Tensor:
    """Stroke-5 ``x [B,T,5]`` with each stroke redrawn in one canonical direction; same points, same lengths.

    People draw a circle clockwise or anticlockwise and a line either way; the encoder of an
    ``encoder_strokes='oriented'`` model reads every stroke in one direction, so its codes cannot
    depend on which. A stroke that encloses area (|signed area| / path length^2 above ``curved``;
    a circle has 1/(4 pi)) runs anticlockwise in screen coordinates (positive shoelace area, y down);
    any other runs from its left end (then upper end). Stroke order, pen states and padding are kept.

    Points as in ``canonical_positions``: ``len + 1`` of them, point 0 the origin, row ``t`` the move
    from point ``t`` to ``t + 1``; a row whose pen state is "lifted" ends its stroke at point ``t + 1``.
    The redrawn points are shifted so that the first is the origin again.
    """
    b, steps = x.shape[0], x.shape[1]
    real = real_rows(lengths, steps)
    index = torch.arange(steps + 1, device=x.device).unsqueeze(0).expand(b, -1)
    lifted = F.pad((x[..., 3] > 0.5) & real, (1, 0), value=False)  # point j ends a stroke (j = t + 1)
    real_point = index <= lengths.unsqueeze(1)
    ends = (lifted | (index == lengths.unsqueeze(1))) & real_point
    starts = F.pad(ends[:, :-1], (1, 0), value=True) & real_point
    start = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=1).values
    end = _first_at_or_after(ends).clamp(max=steps)
    offsets = x[..., 0:2] * real.unsqueeze(-1).to(x.dtype)
    points = F.pad(torch.cumsum(offsets, dim=1), (0, 0, 1, 0))
    px, py = points[..., 0], points[..., 1]
    nx, ny = F.pad(px[:, 1:], (0, 1)), F.pad(py[:, 1:], (0, 1))
    inside = (index < end).to(x.dtype)  # points j and j + 1 in the same stroke
    area2 = _stroke_sum((px * ny - nx * py) * inside, start, end)
    sx, sy, ex, ey = px.gather(1, start), py.gather(1, start), px.gather(1, end), py.gather(1, end)
    area2 = area2 + ex * sy - sx * ey  # close the polygon
    path = _stroke_sum(torch.sqrt((nx - px) ** 2 + (ny - py) ** 2) * inside, start, end)
    encloses = area2.abs() > 2.0 * curved * path * path
    backwards = torch.where(encloses, area2 < 0.0, (ex - sx) + tie * (ey - sy) < 0.0)
    source = torch.where(backwards & real_point, start + end - index, index)
    redrawn = points.gather(1, source.unsqueeze(-1).expand(-1, -1, 2))
    moves = redrawn[:, 1:] - redrawn[:, :-1]
    moves = torch.where(real.unsqueeze(-1), moves, x[..., 0:2])
    return torch.cat([moves, x[..., 2:]], dim=-1)


class Encoder(nn.Module):
    """Bidirectional LSTM over stroke-5 -> ``(mu, sigma)``; padding never changes a result.

    Equivalent to a bidirectional LSTM over packed sequences: the forward LSTM's state
    after point ``len - 1`` has seen only real points, and the backward LSTM reads each
    sketch reversed within its own length (padding after), so its state at step
    ``len - 1`` has too. Two padded kernels, because on CPU torch's packed LSTM is
    3-4x slower than its padded one.
    """

    if TYPE_CHECKING:  # buffers, declared for the type checker only (TorchScript infers their types)
        scale: Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.with_positions = cfg.encoder_input == "offsets+positions"
        self.oriented = cfg.encoder_strokes == "oriented"
        width = STROKE5 + (POSITION_FEATURES if self.with_positions else 0)
        self.with_mean = cfg.encoder_pool == "last+mean"
        self.forward_lstm = nn.LSTM(width, cfg.enc_hidden, batch_first=True)
        self.backward_lstm = nn.LSTM(width, cfg.enc_hidden, batch_first=True)
        features = (4 if self.with_mean else 2) * cfg.enc_hidden
        self.mu = nn.Linear(features, cfg.latent_size)
        self.presig = nn.Linear(features, cfg.latent_size)
        self.register_buffer("scale", torch.ones(()))

    @torch.jit.export
    def moments(self, x: Tensor, lengths: Tensor) -> Moments:
        """``(mu, presig)`` with ``sigma = exp(presig / 2)``; ``x`` in canonical units."""
        lengths = lengths.to(x.device)
        if self.oriented:
            x = oriented_strokes(x, lengths)
        xn = normalize(x, self.scale)
        if self.with_positions:
            xn = torch.cat([xn, canonical_positions(x, lengths)], dim=-1)
        last = lengths - 1
        out_f, _ = self.forward_lstm(xn)
        out_b, _ = self.backward_lstm(reverse_within(xn, lengths))
        feat = torch.cat([at_step(out_f, last), at_step(out_b, last)], dim=-1)
        if self.with_mean:
            real = real_rows(lengths, x.shape[1]).to(out_f.dtype).unsqueeze(-1)
            count = lengths.to(out_f.dtype).clamp(min=1.0).unsqueeze(-1)
            feat = torch.cat([feat, (out_f * real).sum(dim=1) / count, (out_b * real).sum(dim=1) / count], dim=-1)
        return Moments(mu=self.mu(feat), presig=self.presig(feat))

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        mu, presig = self.moments(x, lengths)
        return mu, torch.exp(presig / 2.0)


class Decoder(nn.Module):
    """Autoregressive LSTM decoder conditioned on ``z``; initial ``(h, c) = tanh(W z + b)``.

    With ``decoder_condition`` 'latent+length' each step's input also says how many points
    remain (``remaining_inputs``): in training the drawing's own count, in sampling the
    caller's ``target`` (default: the ``typical_length`` buffer, the training median).
    """

    __constants__ = ["num_mixtures", "dec_hidden", "pen_states", "pen_end", "with_length"]
    if TYPE_CHECKING:  # buffers, declared for the type checker only (TorchScript infers their types)
        scale: Tensor
        typical_length: Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pen_states = PEN_STATES
        self.pen_end = PEN_END
        self.num_mixtures = cfg.num_mixtures
        self.dec_hidden = cfg.dec_hidden
        self.with_length = cfg.decoder_condition == "latent+length"
        self.init_state = nn.Linear(cfg.latent_size, 2 * cfg.dec_hidden)
        width = STROKE5 + (LENGTH_FEATURES if self.with_length else 0) + cfg.latent_size
        self.rnn = (
            LayerNormLSTM(width, cfg.dec_hidden, cfg.recurrent_dropout)
            if cfg.cell == "layer_norm"
            else FusedLSTM(width, cfg.dec_hidden)
        )
        self.head = nn.Linear(cfg.dec_hidden, PARAMS_PER_COMPONENT * cfg.num_mixtures + PEN_STATES)
        self.register_buffer("scale", torch.ones(()))
        if self.with_length:
            self.register_buffer("typical_length", torch.full((), REMAINING_SCALE))

    def initial_state(self, z: Tensor) -> LSTMState:
        hc = torch.tanh(self.init_state(z))
        return LSTMState(h=hc[:, : self.dec_hidden], c=hc[:, self.dec_hidden :])

    def forward(self, z: Tensor, inputs: Tensor) -> Tensor:
        """Teacher-forced head outputs ``[B,T,6M+3]`` for normalized inputs ``[B,T,5]`` (start token first;
        ``[B,T,7]`` with the length inputs appended when ``with_length``).

        Padded, not packed: the decoder is causal, so padding cannot reach a real step, and on CPU
        the padded kernel is ~2x faster than the packed one despite the extra steps."""
        h, c = self.initial_state(z)
        zs = z.unsqueeze(1).expand(-1, inputs.shape[1], -1)
        out, _, _ = self.rnn(torch.cat([inputs, zs], dim=-1), h, c)
        return self.head(out)

    @torch.jit.export
    def teacher_losses(self, z: Tensor, x: Tensor, lengths: Tensor) -> StepLosses:
        """Per-step losses ``[B, T+1]`` of canonical stroke-5 ``x`` (no start token); ``T+1`` is the end step."""
        xn = normalize(x, self.scale)
        inputs = teacher_inputs(xn)
        if self.with_length:
            inputs = torch.cat(
                [inputs, remaining_inputs(teacher_remaining(lengths, inputs.shape[1])).to(inputs.dtype)], dim=-1
            )
        params = split_params(self.forward(z, inputs), self.num_mixtures)
        dx, dy, pen = targets(xn, lengths, self.pen_end)
        return step_losses(params, dx, dy, pen)

    @torch.jit.export
    def nll(self, z: Tensor, x: Tensor, lengths: Tensor) -> Tensor:
        """Per-sketch mean NLL per step: offsets on real points, pen on real points and the end step."""
        losses = self.teacher_losses(z, x, lengths)
        steps = losses.offset.shape[1]
        real = real_rows(lengths, steps).to(losses.offset.dtype)
        counted = real_rows(lengths + 1, steps).to(losses.offset.dtype)
        total = (losses.offset * real).sum(1) + (losses.pen * counted).sum(1)
        return total / (lengths.to(total.dtype) + 1.0)

    @torch.jit.export
    def sample(
        self, z: Tensor, noise: Tensor, temperature: float, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Decode up to ``L = noise.shape[1]`` steps; returns canonical stroke-5 ``[B,L,5]`` and lengths.

        ``target [B]``: the point count to draw, for a decoder ``with_length`` (ignored otherwise);
        ``None`` draws ``typical_length`` points."""
        b, steps = noise.shape[0], noise.shape[1]
        goal = torch.zeros(b, dtype=torch.long, device=z.device)
        if self.with_length:
            if target is None:
                goal = torch.full((b,), int(self.typical_length), dtype=torch.long, device=z.device)
            else:
                goal = target.to(device=z.device, dtype=torch.long)
        greedy = temperature <= 0.0
        temp = 1.0 if greedy else temperature
        sqrt_temp = math.sqrt(temp)
        out = torch.zeros(b, steps, 2 + self.pen_states, dtype=z.dtype, device=z.device)
        out[:, :, 4] = 1.0
        lengths = torch.full((b,), steps, dtype=torch.long, device=z.device)
        ended = torch.zeros(b, dtype=torch.bool, device=z.device)
        prev = torch.zeros(b, 2 + self.pen_states, dtype=z.dtype, device=z.device)
        prev[:, 2] = 1.0
        h, c = self.initial_state(z)
        m = self.num_mixtures
        for t in range(steps):
            step_in = prev
            if self.with_length:
                step_in = torch.cat([prev, remaining_inputs(goal - t).to(z.dtype)], dim=-1)
            o, h, c = self.rnn(torch.cat([step_in, z], dim=-1).unsqueeze(1), h, c)
            p = split_params(self.head(o.squeeze(1)), m)
            if greedy:
                k = torch.argmax(p.log_pi, dim=-1, keepdim=True)
                pen = torch.argmax(p.pen_logits, dim=-1)
            else:
                cdf = torch.cumsum(torch.softmax(p.log_pi / temp, dim=-1), dim=-1)
                k = (cdf < noise[:, t, 0:1]).sum(-1, keepdim=True).clamp(max=m - 1)
                pen_cdf = torch.cumsum(torch.softmax(p.pen_logits / temp, dim=-1), dim=-1)
                pen = (pen_cdf < noise[:, t, 3:4]).sum(-1).clamp(max=self.pen_states - 1)
            mx = p.mu_x.gather(1, k).squeeze(1)
            my = p.mu_y.gather(1, k).squeeze(1)
            if greedy:
                dx, dy = mx, my
            else:
                sx = p.sigma_x.gather(1, k).squeeze(1) * sqrt_temp
                sy = p.sigma_y.gather(1, k).squeeze(1) * sqrt_temp
                rho = p.rho.gather(1, k).squeeze(1)
                n1, n2 = noise[:, t, 1], noise[:, t, 2]
                dx = mx + sx * n1
                dy = my + sy * (rho * n1 + torch.sqrt(1.0 - rho * rho) * n2)
            stop = ended | (pen == self.pen_end)
            lengths = torch.where(stop & ~ended, torch.full_like(lengths, t), lengths)
            live = (~stop).to(z.dtype)
            row = out[:, t]
            row[:, 0] = dx * live * self.scale
            row[:, 1] = dy * live * self.scale
            row[:, 2:] = F.one_hot(torch.where(stop, torch.full_like(pen, self.pen_end), pen), self.pen_states).to(
                z.dtype
            )
            ended = stop
            if bool(ended.all()):
                break
            prev = torch.cat([torch.stack([dx, dy], dim=1), row[:, 2:]], dim=1)
        return out, lengths


class SketchRNN(nn.Module):
    """Encoder + decoder for training; ``forward`` returns the (unweighted) loss terms."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def set_scale(self, scale: float) -> None:
        self.encoder.scale.fill_(scale)
        self.decoder.scale.fill_(scale)

    def set_typical_length(self, points: float) -> None:
        """What a length-conditioned decoder draws when no target is given (the training median)."""
        if self.decoder.with_length:
            self.decoder.typical_length.fill_(round(points))

    @property
    def scale_factor(self) -> float:
        return float(self.encoder.scale)

    def forward(self, x: Tensor, lengths: Tensor, eps: Tensor) -> LossTerms:
        """``x`` canonical stroke-5 ``[B,T,5]`` (no start token), ``eps`` standard normal ``[B, Nz]``."""
        mu, presig = self.encoder.moments(x, lengths)
        z = mu + torch.exp(presig / 2.0) * eps
        losses = self.decoder.teacher_losses(z, x, lengths)
        steps = losses.offset.shape[1]
        real = real_rows(lengths, steps).to(losses.offset.dtype)
        denom = float(x.shape[0] * self.cfg.max_seq_len)
        offset = (losses.offset * real).sum() / denom
        pen_mask = real if not self.training else real_rows(lengths + 1, steps).to(real.dtype)
        pen = (losses.pen * pen_mask).sum() / denom
        kl = -0.5 * torch.mean(1.0 + presig - mu * mu - torch.exp(presig))
        return LossTerms(recon=offset + pen, kl=kl, offset=offset, pen=pen)
