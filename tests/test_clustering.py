"""Clustering: k-means math on synthetic codes; the cluster command on tiny artifacts and real drawings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from counting import counting_artifact

from sketchserve.artifact import read_manifest, sha256_file, verify_checksums
from sketchserve.clusters import parse_clusters
from sketchserve.data import iter_drawings
from sketchserve.runtime import SketchRuntime
from sketchserve.strokes import drawing_from_xy, preprocess, stroke3_to_stroke5
from sketchserve.training.clustering import cluster_main
from sketchserve.training.kmeans import (
    ClusterError,
    choose_k,
    fit_kmeans,
    label_agreement,
    members_by_distance,
)


def _blobs(centers: int, per: int, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 10.0, size=(centers, dim))
    labels = np.repeat(np.arange(centers), per)
    return means[labels] + rng.normal(0.0, 0.5, size=(labels.size, dim)), labels


def test_choose_k_finds_the_number_of_blobs_and_says_why() -> None:
    codes, _ = _blobs(centers=4, per=30)
    selection = choose_k(codes, range(2, 8), random_state=0, n_init=4)
    assert selection.fit.k == 4
    assert [s.k for s in selection.scores] == list(range(2, 8))
    assert "k=4" in selection.reason and "silhouette" in selection.reason


def test_bad_k_is_a_clear_error() -> None:
    codes, _ = _blobs(centers=2, per=3)
    with pytest.raises(ClusterError, match="at least 2"):
        fit_kmeans(codes, 1, random_state=0, n_init=1)
    with pytest.raises(ClusterError, match="more than the number of drawings"):
        fit_kmeans(codes, 7, random_state=0, n_init=1)


def test_empty_clusters_are_dropped_and_labels_stay_dense() -> None:
    codes = np.repeat(np.eye(3), 4, axis=0)  # 3 distinct codes, asked for 5 clusters
    fit = fit_kmeans(codes, 5, random_state=0, n_init=2)
    assert fit.k == 3 and fit.dropped_empty == 2
    assert sorted(fit.sizes) == [4, 4, 4]
    assert set(fit.labels.tolist()) == {0, 1, 2}


def test_label_agreement_needs_two_categories() -> None:
    codes, truth = _blobs(centers=3, per=10)
    fit = fit_kmeans(codes, 3, random_state=0, n_init=2)
    words = [f"cat{t}" for t in truth]
    agreement = label_agreement(fit.labels, words)
    assert agreement is not None and agreement.nmi == pytest.approx(1.0) and agreement.ari == pytest.approx(1.0)
    assert label_agreement(fit.labels, ["face"] * len(words)) is None


def test_members_by_distance_and_assign() -> None:
    codes = np.array([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [10.0, 10.0]])
    labels = np.array([0, 0, 0, 1])
    order = members_by_distance(codes, labels, np.array([0.5, 0.0]), 0)
    assert order.tolist() == [0, 2, 1]
    table = parse_clusters({"centroids": [[0.0, 0.0], [9.0, 9.0]]}, latent_size=2, encoder_sha256=None)
    assert table.assign(codes).tolist() == [0, 0, 0, 1]


# --- the command, on a real (random-weight, tiny) artifact and real drawings ---


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sketchserve.training.export import make_random_artifact

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny") / "model"
    make_random_artifact(out, seed=0, tiny=True)
    return out


def _fresh_copy(model: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model, target)
    return target


def _write_ndjson(path: Path, drawings: list[list[list[list[int]]]], word: str) -> Path:
    lines = [
        json.dumps({"word": word, "key_id": str(i), "recognized": True, "drawing": d}) for i, d in enumerate(drawings)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _simplified(data_dir: Path, category: str) -> list[list[list[list[int]]]]:
    with open(data_dir / "simplified" / f"{category}.ndjson") as fh:
        return [json.loads(line)["drawing"] for line in fh]


def test_cluster_chooses_k_writes_clusters_and_checksums(
    tiny_model: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _fresh_copy(tiny_model, tmp_path)
    rc = cluster_main(
        [
            str(model),
            "--data",
            str(data_dir / "sketchrnn" / "face.npz"),
            "--split",
            "valid",
            "--k-range",
            "2:4",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "silhouette" in out and "<- chosen" in out and "highest mean silhouette" in out
    assert "NMI/ARI: n/a" in out  # one category
    doc = json.loads((model / "clusters.json").read_text())
    k = doc["k"]
    assert 2 <= k <= 4 and len(doc["centroids"]) == k and len(doc["prototypes"]) == k
    assert sum(doc["sizes"]) == 150 and doc["data"]["split"] == "valid" and doc["data"]["count"] == 150
    assert [len(e) for e in doc["exemplars"]] == [min(8, s) for s in doc["sizes"]]
    assert all(np.asarray(p).ndim == 2 and np.asarray(p).shape[1] == 3 for p in doc["prototypes"])
    assert [s["k"] for s in doc["metrics"]["k_selection"]["scores"]] == [2, 3, 4]
    verify_checksums(model)  # manifest rewritten with clusters.json's sha256
    assert "clusters.json" in read_manifest(model).files
    assert doc["encoder_sha256"] == sha256_file(model / "encoder.pt")  # made with this encoder
    runtime = SketchRuntime.load(model)
    assert runtime.clusters is not None
    codes = runtime.encode_stroke3([np.asarray(e, dtype=np.float32) for e in doc["exemplars"][0]], progress=False)
    assert (runtime.clusters.assign(codes) == 0).all()  # exemplars belong to their cluster


def test_cluster_reports_nmi_and_ari_with_category_labels(
    tiny_model: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _fresh_copy(tiny_model, tmp_path)
    files = [str(data_dir / "simplified" / f"{c}.ndjson") for c in ("face", "pig")]
    assert cluster_main([str(model), "--data", *files, "--k", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "against 2 category labels: NMI=" in out and "ARI=" in out
    doc = json.loads((model / "clusters.json").read_text())
    assert 0.0 <= doc["metrics"]["nmi"] <= 1.0 and doc["data"]["categories"] == {"face": 25, "pig": 25}


@pytest.mark.parametrize("k", ["1", "0", "51"])
def test_bad_k_is_one_clear_line_and_nonzero(
    k: str, tiny_model: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _fresh_copy(tiny_model, tmp_path)
    files = [str(data_dir / "simplified" / f"{c}.ndjson") for c in ("face", "pig")]
    assert cluster_main([str(model), "--data", *files, "--k", k, "--no-progress"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("sketchserve cluster: ") and "\n" not in err and "k" in err
    assert not (model / "clusters.json").exists()


def test_empty_clusters_are_dropped_not_stored(
    tiny_model: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _fresh_copy(tiny_model, tmp_path)
    three = _simplified(data_dir, "face")[:3]
    data = _write_ndjson(tmp_path / "dups.ndjson", three * 4, "face")  # 12 drawings, 3 distinct
    assert cluster_main([str(model), "--data", str(data), "--k", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "dropped 2 empty cluster(s)" in out
    doc = json.loads((model / "clusters.json").read_text())
    assert doc["k"] == 3 and doc["sizes"] == [4, 4, 4] and doc["metrics"]["dropped_empty_clusters"] == 2


def test_shape_not_size_copies_share_mu_and_cluster(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    with open(data_dir / "raw" / "face.ndjson") as fh:
        raw = [json.loads(line)["drawing"] for line, _ in zip(fh, range(12))]
    drawings = [drawing_from_xy([(s[0], s[1]) for s in d]) for d in raw]
    original = drawings[0]
    copies = [
        original,
        [stroke + np.array([137.25, -58.5]) for stroke in original],
        [stroke * 0.3 for stroke in original],
        [stroke * 3.0 for stroke in original],
    ]
    sketches = [preprocess(d) for d in copies]
    runtime = SketchRuntime.load(tiny_model)
    mu = runtime.encode_stroke3(sketches, progress=False)
    np.testing.assert_allclose(mu[1:], np.repeat(mu[:1], 3, axis=0), atol=1e-5, rtol=0)
    others = runtime.encode_stroke3([preprocess(d) for d in drawings[1:]], progress=False)
    fit = fit_kmeans(np.vstack([others, mu]).astype(np.float64), 3, random_state=0, n_init=4)
    assert len(set(fit.labels[-4:].tolist())) == 1


def test_from_cluster_filter_keeps_exactly_the_members_of_cluster_k(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    from sketchserve.data import iter_drawings
    from sketchserve.training.config import ConfigError
    from sketchserve.training.from_cluster import ClusterFilter, parse_cluster_ref
    from sketchserve.training.init_from import artifact_weights

    model = _fresh_copy(tiny_model, tmp_path)
    faces = data_dir / "sketchrnn" / "face.npz"
    assert cluster_main([str(model), "--data", str(faces), "--split", "valid", "--k", "3", "--no-progress"]) == 0
    sizes = json.loads((model / "clusters.json").read_text())["sizes"]
    with pytest.raises(ConfigError, match="clusters 0..2, not 3"):
        parse_cluster_ref(f"{model}:3")
    with pytest.raises(ConfigError, match="MODEL_DIR:K"):
        parse_cluster_ref(str(model))
    records = list(iter_drawings([faces], split="valid"))
    kept = [ClusterFilter(parse_cluster_ref(f"{model}:{c}"), progress=False)(records) for c in range(3)]
    assert [len(k) for k in kept] == sizes  # same data, same assignment as the clustering
    assert {id(r) for k in kept for r in k} == {id(r) for r in records}
    init = artifact_weights(model)
    assert init.model.latent_size == 8 and "encoder.mu.weight" in init.state_dict and init.scale > 0


@pytest.mark.slow
def test_train_from_cluster_fine_tunes_then_samples_new_members(
    tiny_model: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sketchserve.training.cli import export_main, sample_main, train_main
    from sketchserve.training.init_from import artifact_weights
    from sketchserve.training.model import SketchRNN

    model = _fresh_copy(tiny_model, tmp_path)
    faces = str(data_dir / "sketchrnn" / "face.npz")
    assert cluster_main([str(model), "--data", faces, "--split", "test", "--k", "2", "--no-progress"]) == 0
    init = artifact_weights(model)  # --fine-tune's starting point reproduces the artifact's encoder
    net = SketchRNN(init.model)
    net.load_state_dict(init.state_dict)
    runtime = SketchRuntime.load(model)
    sketches = [
        np.asarray(s, dtype=np.float32) for s in json.loads((model / "clusters.json").read_text())["exemplars"][0]
    ]
    expected = runtime.encode_stroke3(sketches, progress=False)
    with torch.inference_mode():
        x = torch.from_numpy(np.stack([stroke3_to_stroke5(s, max(len(t) for t in sketches)) for s in sketches]))
        mu, _ = net.encoder(x, torch.tensor([len(s) for s in sketches]))
    np.testing.assert_allclose(mu.numpy(), expected, atol=1e-5)

    run, out = tmp_path / "run", tmp_path / "group"
    small = [str(data_dir / "simplified" / f"{c}.ndjson") for c in ("face", "smiley face")]
    argv = ["--data", *small, "--from-cluster", f"{model}:1", "--fine-tune", "--out", str(run), "--threads", "1"]
    assert (
        train_main([*argv, "--max-steps", "2", "--eval-every", "2", "--checkpoint-every", "2", "--batch-size", "8"])
        == 0
    )
    assert export_main([str(run), "--out", str(out)]) == 0
    manifest = read_manifest(out)
    assert manifest.data["filter"] == f"drawings assigned to cluster 1 of {model}"
    assert manifest.scale_factor == pytest.approx(read_manifest(model).scale_factor)  # fine-tuned, not anew
    assert sample_main([str(out), "--n", "3", "--out", str(tmp_path / "new")]) == 0
    assert len((tmp_path / "new.ndjson").read_text().splitlines()) == 3
    capsys.readouterr()
    assert train_main(["--data", *small, "--from-cluster", f"{model}:7", "--out", str(tmp_path / "bad")]) == 2
    assert "clusters 0..1, not 7" in capsys.readouterr().err


def test_a_length_conditioned_model_draws_each_prototype_at_its_clusters_median_length(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = counting_artifact(tmp_path / "model")
    data = data_dir / "sketchrnn" / "face.npz"
    assert cluster_main([str(model), "--data", str(data), "--split", "valid", "--k", "3", "--no-progress"]) == 0
    capsys.readouterr()
    doc = json.loads((model / "clusters.json").read_text())
    sketches = [r.stroke3 for r in iter_drawings([data], split="valid")]
    runtime = SketchRuntime.load(model)
    assert runtime.clusters is not None
    labels = runtime.clusters.assign(runtime.encode_stroke3(sketches, progress=False))
    medians = [int(np.median([len(s) for s, c in zip(sketches, labels) if c == k])) for k in range(doc["k"])]
    assert [len(p) for p in doc["prototypes"]] == medians
