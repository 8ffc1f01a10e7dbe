"""DICOM identifiers never reach anything medpipe writes: outputs, MLflow, Prefect logs/artifacts, console."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from tests.helpers import IDENTIFIERS, write_dicom, write_params

pytestmark = pytest.mark.slow


def _dicom_tree(tiny: Path, out: Path) -> dict[str, str]:
    """The tiny set as 16-bit DICOMs in class folders, each patient with its own known identifiers."""
    secrets = {}
    for row in pd.read_csv(tiny / "manifest.csv").itertuples():
        pixels = cv2.imread(str(tiny / row.path), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 257
        ids = {"PatientID": f"MRN-{row.patient_id}-77Q", "PatientName": f"Smith^{row.patient_id}^Anne"}
        secrets.update({v: row.patient_id for v in ids.values()})
        write_dicom(out / row.label / f"{Path(row.path).stem}.dcm", pixels, **ids)
    return secrets


def _texts(root: Path):
    for path in root.rglob("*"):
        if path.is_file():
            yield path, path.read_bytes()


def test_identifiers_never_leave_the_dicoms(prefect_harness, tmp_path, tiny_data, capfd):
    from prefect.client.orchestration import get_client

    from flows.training import training_flow

    secrets = _dicom_tree(tiny_data, tmp_path / "dicoms")
    write_params(tmp_path)
    summary = training_flow(params_file=str(tmp_path / "params.yaml"), data=str(tmp_path / "dicoms"))
    assert summary.version == 1

    splits = pd.read_csv(tmp_path / "outputs/validate/splits.csv")
    assert splits["patient_id"].str.startswith("P-").all()
    assert splits.groupby("patient_id")["split"].nunique().max() == 1  # pseudonyms still group patients
    assert splits["patient_id"].nunique() == pd.read_csv(tiny_data / "manifest.csv")["patient_id"].nunique()

    forbidden = [*secrets, *IDENTIFIERS.values(), "Smith^", "MRN-"]
    written = list(_texts(tmp_path / "outputs")) + list(_texts(tmp_path / "mlflow"))
    assert len(written) > 10
    assert any(p.suffix == ".db" for p, _ in written)
    with get_client(sync_client=True) as client:
        logs = "\n".join(log.message for log in client.read_logs())
        artifacts = "\n".join(str(a.data) for a in client.read_artifacts())
    captured = capfd.readouterr()
    for secret in forbidden:
        needle = secret.encode()
        leaks = [str(p) for p, data in written if needle in data]
        assert not leaks, f"{secret!r} written to {leaks}"
        assert secret not in logs
        assert secret not in artifacts
        assert secret not in captured.out
        assert secret not in captured.err
