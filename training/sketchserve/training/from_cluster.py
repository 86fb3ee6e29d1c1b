"""Train on the group you like: `sketchserve train --data FILES --from-cluster MODEL_DIR:K [--fine-tune]`.

`ClusterFilter` keeps only the drawings that MODEL_DIR's encoder assigns to its
stored cluster K (``ClusterTable.assign``: the nearest centroid of clusters.json, as
the server's Assign); `fine_tune_source` names that model as the start of `--fine-tune`
(`sketchserve.training.init_from` reads its config and weights).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sketchserve.artifact import ArtifactError, read_cluster_table, read_manifest
from sketchserve.clusters import CLUSTERS_FILE
from sketchserve.data import DrawingRecord
from sketchserve.training.config import ConfigError
from sketchserve.training.dataset import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterRef:
    """MODEL_DIR:K of --from-cluster."""

    model_dir: Path
    cluster: int

    def __str__(self) -> str:
        return f"{self.model_dir}:{self.cluster}"


def parse_cluster_ref(text: str) -> ClusterRef:
    """'models/face:3' -> ClusterRef; checks that the artifact has valid clusters.json with that cluster."""
    directory, sep, index = text.rpartition(":")
    if not sep or not directory or not index.strip().isdigit():
        raise ConfigError(f"--from-cluster must be MODEL_DIR:K (K a cluster index), got {text!r}")
    ref = ClusterRef(Path(directory), int(index))
    path = ref.model_dir / CLUSTERS_FILE
    if not path.is_file():
        raise ConfigError(
            f"--from-cluster: {path} does not exist (run `sketchserve cluster {ref.model_dir} --data FILES`)"
        )
    try:
        table = read_cluster_table(ref.model_dir, read_manifest(ref.model_dir))
    except ArtifactError as err:
        raise ConfigError(f"--from-cluster: {err}") from err
    k = 0 if table is None else table.k
    if ref.cluster >= k:
        raise ConfigError(f"--from-cluster: {ref.model_dir} has clusters 0..{k - 1}, not {ref.cluster}")
    return ref


@dataclass(frozen=True)
class ClusterFilter:
    """A record filter (training.dataset.RecordFilter): the records the artifact assigns to one cluster."""

    ref: ClusterRef
    progress: bool = True

    @property
    def description(self) -> str:
        return f"drawings assigned to cluster {self.ref.cluster} of {self.ref.model_dir}"

    def __call__(self, records: list[DrawingRecord]) -> list[DrawingRecord]:
        from sketchserve.runtime import SketchRuntime

        runtime = SketchRuntime.load(self.ref.model_dir, "cpu")
        if runtime.clusters is None:
            raise ConfigError(f"--from-cluster: {self.ref.model_dir / CLUSTERS_FILE} does not exist")
        codes = runtime.encode_stroke3([r.stroke3 for r in records], progress=self.progress, label="assign")
        keep = runtime.clusters.assign(codes) == self.ref.cluster
        kept = [r for r, k in zip(records, keep.tolist()) if k]
        log.info("--from-cluster %s keeps %d of %d drawings", self.ref, len(kept), len(records))
        if not kept:
            raise DataError(
                f"--from-cluster {self.ref}: none of the {len(records)} drawings falls in cluster {self.ref.cluster}"
            )
        return kept


def fine_tune_source(from_cluster: str | None, fine_tune: bool) -> Path | None:
    """The artifact --fine-tune starts from (the --from-cluster model), or None to train anew."""
    if not fine_tune:
        return None
    if from_cluster is None:
        raise ConfigError("--fine-tune needs --from-cluster MODEL_DIR:K (the model to start from)")
    return parse_cluster_ref(from_cluster).model_dir
