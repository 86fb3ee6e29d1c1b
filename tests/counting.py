"""A hand-set length-conditioned artifact for tests: its decoder ends exactly when told no points remain."""

from __future__ import annotations

from pathlib import Path

import torch

from sketchserve.training.export import make_random_artifact
from sketchserve.training.model import SketchRNN

# Long enough for every drawing of the sketch-rnn files (the longest has fewer points).
MAX_POINTS = 250
# Gate pre-activations and logits this large saturate: the hand-set unit is fully on or off.
STRONG = 20.0
# Decoder input column of the "no points left" flag: stroke-5, then points left, then the flag.
NONE_LEFT = 6


def count_to_the_end(model: SketchRNN) -> None:
    """LSTM unit 0 forgets at once and copies the "none left" input (through its input, cell and
    output gates), and the head turns that unit into the end logit; every other pen logit is fixed."""
    lstm, hidden = model.decoder.rnn.lstm, model.cfg.dec_hidden
    with torch.no_grad():
        for gate, bias in ((0, STRONG), (1, -STRONG), (3, STRONG)):  # input gate open, forget gate shut, output open
            lstm.bias_ih_l0[gate * hidden] = bias
        lstm.weight_ih_l0[2 * hidden].zero_()
        lstm.weight_hh_l0[2 * hidden].zero_()
        lstm.weight_ih_l0[2 * hidden, NONE_LEFT] = STRONG  # cell input: the "none left" flag
        model.decoder.head.weight[-3:].zero_()
        model.decoder.head.bias[-3:] = torch.tensor([1.0, 0.0, -STRONG])
        model.decoder.head.weight[-1, 0] = 2 * STRONG  # end logit: +20 once no points remain


def counting_artifact(out: Path) -> Path:
    """A tiny length-conditioned artifact whose decoder ends exactly when told that no points remain."""
    return make_random_artifact(
        out, decoder_condition="latent+length", max_seq_len=MAX_POINTS, prepare=count_to_the_end
    )
