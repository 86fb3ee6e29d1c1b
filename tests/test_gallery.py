"""The gallery: one image per cluster and an index page, on a tiny real artifact and real drawings."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sketchserve.artifact import read_manifest, write_manifest
from sketchserve.training.clustering import cluster_main
from sketchserve.training.gallery import CELL_PX, FAR_BG, PROTOTYPE_BG, gallery_main


@pytest.fixture(scope="module")
def clustered_model(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    from sketchserve.training.export import make_random_artifact

    torch.set_num_threads(1)
    model = tmp_path_factory.mktemp("gallery") / "model"
    make_random_artifact(model, seed=0, tiny=True)
    faces = str(data_dir / "sketchrnn" / "face.npz")
    if cluster_main([str(model), "--data", faces, "--split", "test", "--k", "3", "--no-progress"]) != 0:
        raise RuntimeError("cluster failed while setting up the gallery tests")
    return model


def _cards(index: Path) -> list[tuple[int, int]]:
    return [(int(c), int(n)) for c, n in re.findall(r"<b>cluster (\d+)</b> &middot; (\d+) drawings", index.read_text())]


def test_gallery_writes_one_image_per_cluster_and_an_index(
    clustered_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gallery"
    faces = str(data_dir / "sketchrnn" / "face.npz")
    assert (
        gallery_main([str(clustered_model), "--data", faces, "--split", "test", "--out", str(out), "--no-progress"])
        == 0
    )
    doc = json.loads((clustered_model / "clusters.json").read_text())
    cards = _cards(out / "index.html")
    assert [c for c, _ in cards] == list(range(doc["k"]))
    assert [n for _, n in cards] == doc["sizes"]  # same data: same assignment as the clustering
    for c, n in cards:
        image = np.asarray(Image.open(out / f"cluster_{c:02d}.png").convert("RGB"))
        assert image.shape[1] >= 4 * CELL_PX
        assert (image == PROTOTYPE_BG).all(axis=-1).any()  # the prototype band
        assert (image == FAR_BG).all(axis=-1).any() == (n > 16)  # far members only when beyond the 16 nearest
        assert (image.min(axis=-1) < 100).any()  # ink
        svg = (out / f"cluster_{c:02d}_prototype.svg").read_text()
        assert svg.lstrip().startswith("<") and "svg" in svg


def test_gallery_of_an_unseen_category_shows_every_drawing_and_empty_clusters(
    clustered_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(clustered_model, model)
    doc = json.loads((model / "clusters.json").read_text())
    far_away = (np.asarray(doc["centroids"][0]) + 1e6).tolist()  # no drawing is nearest to it
    doc["k"] += 1
    doc["centroids"].append(far_away)
    doc["sizes"].append(0)
    doc["exemplars"].append([])
    doc["prototypes"].append(doc["prototypes"][0])
    (model / "clusters.json").write_text(json.dumps(doc))
    write_manifest(model, read_manifest(model))
    out = tmp_path / "gallery"
    radios = str(data_dir / "simplified" / "radio.ndjson")  # a category the model never saw
    assert gallery_main([str(model), "--data", radios, "--out", str(out), "--no-progress"]) == 0
    cards = _cards(out / "index.html")
    assert len(cards) == doc["k"] and sum(n for _, n in cards) == 25 and cards[-1] == (doc["k"] - 1, 0)
    assert "no drawing of this data falls in this cluster" in (out / "index.html").read_text()
    assert (out / f"cluster_{doc['k'] - 1:02d}.png").is_file()


def test_gallery_without_clusters_says_how_to_make_them(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sketchserve.training.export import make_random_artifact

    model = tmp_path / "model"
    make_random_artifact(model, seed=1, tiny=True)
    faces = str(data_dir / "simplified" / "face.ndjson")
    assert gallery_main([str(model), "--data", faces, "--out", str(tmp_path / "g"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "sketchserve cluster" in err and err.count("\n") == 1
