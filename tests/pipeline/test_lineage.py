import subprocess

import numpy as np

from pipeline.lineage import content_hash, data_lineage, git_lineage, weights_sha256


def test_data_hash_comes_from_data_dvc_when_present(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("x")
    computed = data_lineage(tmp_path / "data")
    assert computed["medpipe.data_source"] == "computed"
    assert computed["medpipe.data_files"] == "1"
    (tmp_path / "data.dvc").write_text("outs:\n- md5: abc.dir\n  nfiles: 7\n  path: data\n")
    assert data_lineage(tmp_path / "data") == {
        "medpipe.data_md5": "abc.dir",
        "medpipe.data_files": "7",
        "medpipe.data_source": "dvc",
    }


def test_content_hash_tracks_bytes_and_names(tmp_path):
    (tmp_path / "a").write_text("1")
    first = content_hash(tmp_path)
    (tmp_path / "a").write_text("2")
    assert content_hash(tmp_path) != first
    (tmp_path / "a").rename(tmp_path / "b")
    assert content_hash(tmp_path)[1] == 1


def test_git_commit_and_dirty_flag(tmp_path):
    assert git_lineage(tmp_path)["medpipe.git_commit"] == "unknown"
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / "f.py").write_text("a = 1\n")
    run("add", "f.py")
    run("commit", "-qm", "x")
    clean = git_lineage(tmp_path)
    assert len(clean["medpipe.git_commit"]) == 40
    assert clean["medpipe.git_dirty"] == "false"
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    run("add", "dvc.lock")
    run("commit", "-qm", "lock")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert git_lineage(tmp_path)["medpipe.git_dirty"] == "false"  # outputs record, not an input
    (tmp_path / "f.py").write_text("a = 2\n")
    assert git_lineage(tmp_path)["medpipe.git_dirty"] == "true"


def test_weights_hash_depends_on_values_and_shapes():
    w = [np.zeros((2, 3), np.float32), np.ones(3, np.float32)]
    assert weights_sha256(w) == weights_sha256([a.copy() for a in w])
    assert weights_sha256(w) != weights_sha256([w[0].reshape(3, 2), w[1]])
    assert weights_sha256(w) != weights_sha256([w[0] + 1e-7, w[1]])


def test_up_to_date_only_for_the_same_data_params_and_committed_code(tmp_path):
    import mlflow

    from pipeline.config import Params, Workspace
    from pipeline.lineage import LINEAGE_KEYS, SameLineage, init_weights, lineage_tags, up_to_date

    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.png").write_bytes(b"x")
    (tmp_path / "code.py").write_text("a = 1\n")
    params = Params.model_validate({"register": {"tracking_uri": f"sqlite:///{tmp_path}/m.db"}})
    ws = Workspace(base=tmp_path, data_root=tmp_path / "data", out=tmp_path / "outputs")
    assert up_to_date(params, ws) is None  # no git: code unknown
    run("init", "-q")
    run("add", "code.py")
    run("commit", "-qm", "x")
    assert up_to_date(params, ws) is None  # no registered model yet
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db", registry_uri=f"sqlite:///{tmp_path}/m.db")
    client.create_registered_model("medpipe-classifier")
    tags = {
        **{k: v for k, v in lineage_tags(params, ws).items() if k in LINEAGE_KEYS},
        "medpipe.weights_sha256": "w",
        "medpipe.classes": "[]",
        "medpipe.promotion": "challenger",
    }
    client.create_model_version("medpipe-classifier", "file:///nowhere", tags=tags)
    client.create_model_version("medpipe-classifier", "file:///nowhere", tags={**tags, "medpipe.params_md5": "0"})
    assert up_to_date(params, ws) == SameLineage(1, gated=True)
    client.create_model_version("medpipe-classifier", "file:///nowhere", tags={**tags, "medpipe.promotion": "pending"})
    assert up_to_date(params, ws) == SameLineage(3, gated=False)  # a crash left it ungated: gate it
    partial = {k: v for k, v in tags.items() if k != "medpipe.weights_sha256"}
    client.create_model_version("medpipe-classifier", "file:///nowhere", tags=partial)
    assert up_to_date(params, ws) == SameLineage(3, gated=False)  # an incomplete version is ignored
    other = Params.model_validate({**params.model_dump(by_alias=True), "train": {"epochs": 3}})
    assert up_to_date(other, ws) is None  # other params
    (tmp_path / "data" / "b.png").write_bytes(b"y")
    assert up_to_date(params, ws) is None  # other data
    (tmp_path / "data" / "b.png").unlink()
    (tmp_path / "start.weights.h5").write_bytes(b"one")  # model.weights: the same path, another file
    started = Params.model_validate({**params.model_dump(by_alias=True), "model": {"weights": "start.weights.h5"}})
    with_file = {**tags, **{k: v for k, v in lineage_tags(started, ws).items() if k in LINEAGE_KEYS}}
    client.create_model_version(
        "medpipe-classifier", "file:///nowhere", tags={**with_file, **init_weights(started, tmp_path)}
    )
    assert up_to_date(started, ws) == SameLineage(5, gated=True)
    (tmp_path / "start.weights.h5").write_bytes(b"two")
    assert up_to_date(started, ws) is None  # the file changed
    (tmp_path / "code.py").write_text("a = 2\n")
    assert up_to_date(params, ws) is None  # uncommitted code


def test_label_sources_tag_counts_the_labelled_images_by_provenance(tmp_path):
    from pipeline.lineage import label_sources

    assert label_sources(tmp_path) == {}  # no manifest
    (tmp_path / "manifest.csv").write_text("path,label\na.png,x\n")
    assert label_sources(tmp_path) == {}  # provenance not recorded
    (tmp_path / "manifest.csv").write_text(
        "path,label,label_source\na.png,x,data\nb.png,x,expert\nc.png,y,expert\nd.png,,\ne.png,y,\n"
    )
    assert label_sources(tmp_path) == {"medpipe.label_sources": "data=1,expert=2,unknown=1"}  # d: unlabelled
