"""A hand-set length-conditioned artifact for tests: its decoder ends exactly when told no points remain."""

from __future__ import annotations

from pathlib import Path

import torch

# Long enough for every drawing of the sketch-rnn files (the longest has fewer points).
MAX_POINTS = 250


def counting_artifact(out: Path) -> Path:
    """A tiny length-conditioned artifact whose decoder ends exactly when told that no points remain.

    Hand-set weights: LSTM unit 0 forgets at once and copies the "none left" input (through
    its input, cell and output gates), and the head turns that unit into the end logit."""
    from dataclasses import replace

    from sketchserve.training.export import TINY_CONFIG, TINY_SCALE, export_artifact
    from sketchserve.training.model import SketchRNN

    cfg = replace(TINY_CONFIG, decoder_condition="latent+length", max_seq_len=MAX_POINTS).validate()
    torch.manual_seed(0)
    model = SketchRNN(cfg)
    model.set_scale(TINY_SCALE)
    lstm, hidden, none_left = model.decoder.rnn.lstm, cfg.dec_hidden, 6  # input: stroke-5, points left, none left
    strong = 20.0
    with torch.no_grad():
        for gate, bias in ((0, strong), (1, -strong), (3, strong)):  # input gate open, forget gate shut, output open
            lstm.bias_ih_l0[gate * hidden] = bias
        lstm.weight_ih_l0[2 * hidden].zero_()
        lstm.weight_hh_l0[2 * hidden].zero_()
        lstm.weight_ih_l0[2 * hidden, none_left] = strong  # cell input: the "none left" flag
        model.decoder.head.weight[-3:].zero_()
        model.decoder.head.bias[-3:] = torch.tensor([1.0, 0.0, -strong])
        model.decoder.head.weight[-1, 0] = 2 * strong  # end logit: +20 once no points remain
    extra = {"name": "counting", "version": "1", "data": {"files": [], "categories": [], "counts": {}}, "metrics": {},
             "training": {"steps": 0, "wall_seconds": 0.0, "command": "counting_artifact"}}
    return export_artifact(model, cfg, out, extra)
