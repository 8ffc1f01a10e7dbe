"""Shared test constants and helpers (no side effects: conftest.py does the isolation)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

# Tiny but real: 30 patients (~90 images) of 32x32, two epochs, 100 bootstrap resamples (not 1000: 16 test
# images give no finer interval, and 1000 cost over 10 s per evaluation, measured).
TINY_PATIENTS, TINY_SIZE = 30, 32
TINY_OVERRIDES = {
    "preprocess": {"size": TINY_SIZE},
    "train": {"epochs": 2, "batch_size": 16, "patience": 2, "min_epochs": 0},
    "evaluate": {"bootstrap": 100},
}


def write_params(folder: Path, **sections: dict) -> Path:
    """Write the repo's params.yaml, with the tiny overrides and then `sections` merged in (key by key), to folder."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name in {**TINY_OVERRIDES, **sections}:
        raw[name] = {**raw.get(name, {}), **TINY_OVERRIDES.get(name, {}), **sections.get(name, {})}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


IDENTIFIERS = {
    "PatientName": "Doe^Jane^Quincy",
    "PatientID": "MRN-99417-XQ",
    "PatientBirthDate": "19470312",
    "OtherPatientIDs": "ALT-55821-ZZ",
    "InstitutionName": "St Example Hospital",
}


def write_dicom(
    path: Path,
    pixels,
    *,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    frames: int = 1,
    with_pixels: bool = True,
    **identifiers: str,
) -> Path:
    """A real single- or multi-frame DICOM file (uncompressed, explicit VR little endian); (H, W, 3) uint8
    pixels make a colour one (`photometric` RGB, or YBR_FULL: stored as YBR)."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    for key, value in {**IDENTIFIERS, **identifiers}.items():
        setattr(ds, key, value)
    if with_pixels and pixels.ndim == 3:
        from pydicom.pixels import convert_color_space

        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 0, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        stored = convert_color_space(pixels, "RGB", photometric) if photometric.startswith("YBR") else pixels
        ds.PixelData = np.ascontiguousarray(stored, dtype=np.uint8).tobytes()
    elif with_pixels:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        bits = 16 if pixels.dtype == np.uint16 else 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if window:
            ds.WindowCenter, ds.WindowWidth = window
        if frames > 1:
            ds.NumberOfFrames = frames
            pixels = np.stack([pixels] * frames)
        ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process, seconds: int = 180) -> None:
    """Poll `url` until it answers; fail with the server's stderr if `process` dies first."""
    for _ in range(seconds):
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert process.poll() is None, stderr_tail(process)
            time.sleep(1)
    raise AssertionError(f"{url} not up within {seconds} s")


BIN = Path(sys.executable).parent  # the venv's bin/: medpipe, prefect, mlflow


def api_call(url: str, body: dict | None = None, attempts: int = 5):
    """GET (or POST `body` as JSON to) a Prefect API URL; the decoded JSON answer. A 503 (the server's
    SQLite busy under load) is retried after a pause, as Prefect's own client retries it."""
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(attempts):
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            if err.code != 503 or attempt == attempts - 1:
                raise
            time.sleep(2 * (attempt + 1))


def wait_for(check, seconds: int, what: str, *processes: subprocess.Popen):
    """Poll `check` once a second until it returns something truthy; fail if a process dies first."""
    for _ in range(seconds):
        for process in processes:
            assert process.poll() is None, f"{what}: process exited:\n{stderr_tail(process)}"
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{what}: not within {seconds} s\n{''.join(stderr_tail(p) for p in processes)}")


def start_process(args: list[str], env: dict, cwd: Path, own_session: bool = True) -> subprocess.Popen:
    """A background process (in its own session: stop it with os.killpg), its stderr kept for failures in a
    temporary file, not a pipe: a pipe nobody reads while the test waits fills at 64 KiB and then blocks the
    process (and the workers it shares its stderr with) in the middle of what the test waits for."""
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=log, text=True, start_new_session=own_session)
    process.log = log  # type: ignore[attr-defined]
    return process


def stderr_tail(process: subprocess.Popen, chars: int = 3000) -> str:
    """The last `chars` characters a process wrote to its stderr (and stdout, for start_process's ones)."""
    log = getattr(process, "log", None)
    if log is None:
        return process.stderr.read()[-chars:] if process.stderr and process.poll() is not None else ""
    log.seek(0)
    return log.read()[-chars:]


def serve_model(model_uri: str, env: dict, cwd: Path) -> tuple[subprocess.Popen, str]:
    """A real `mlflow models serve` of `model_uri` on a free 127.0.0.1 port, in this venv (env's PATH must
    start with BIN: MLflow starts its scoring server from there). Returns (the process, its base URL)."""
    port = free_port()
    args = ["models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    return start_process([str(BIN / "mlflow"), *args], env, cwd), f"http://127.0.0.1:{port}"


def stop(*processes: subprocess.Popen | None) -> None:
    """Stop background processes started by start_process (their whole sessions), in order: SIGTERM, then
    SIGKILL if one has not exited 30 s later (a Prefect worker sometimes ignores SIGTERM)."""
    for process in processes:
        if process is None or process.poll() is not None:
            continue
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def prefect_server_env(tmp_path: Path) -> tuple[str, dict]:
    """API URL and environment for a real `prefect server start` on a free 127.0.0.1 port, its DB in
    tmp_path, with the services no test here needs switched off (a 2-core box)."""
    api = f"http://127.0.0.1:{free_port()}/api"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_API_URL": api,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path}/prefect.db",
        "PREFECT_UI_ENABLED": "false",
        **{
            f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false"
            for name in (
                "CANCELLATION_CLEANUP",
                "FOREMAN",
                "LATE_RUNS",
                "PAUSE_EXPIRATIONS",
                "REPOSSESSOR",
                "TRIGGERS",
                "CLEANUP_RECONCILER",
            )
        },
    }
    return api, env


def start_prefect_server(api: str, env: dict, cwd: Path) -> subprocess.Popen:
    """`prefect server start` for `api` (see prefect_server_env), once it answers."""
    port = api.rsplit(":", 1)[1].split("/")[0]
    server = start_process([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port], env, cwd)
    wait_for(lambda: api_call(f"{api}/health") is True, 180, "prefect server", server)
    return server


def wait_for_run(api: str, run_id: str, *processes: subprocess.Popen, seconds: int = 600) -> str:
    """The final state type of a flow run (COMPLETED, FAILED or CRASHED), once it has one."""

    def final():
        state = api_call(f"{api}/flow_runs/{run_id}")["state"]
        return state["type"] if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED") else None

    return wait_for(final, seconds, "flow run", *processes)


NETGUARD = Path(__file__).resolve().parent / "netguard"  # its sitecustomize.py refuses and logs non-loopback traffic


def guarded_env(env: dict, log_path: Path) -> dict:
    """`env` for child processes with the network guard on: every Python child (and its children, as long as
    they keep PYTHONPATH) refuses non-loopback connections and lookups and logs each one to `log_path`."""
    path = os.pathsep.join(p for p in (str(NETGUARD), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "MEDPIPE_NETGUARD_LOG": str(log_path)}


def assert_offline(log_path: Path) -> None:
    """No child process guarded by `guarded_env(..., log_path)` tried to reach the network."""
    attempts = log_path.read_text() if log_path.exists() else ""
    assert attempts == "", f"child processes tried to reach the network:\n{attempts}"


def deflated_zeros(n: int, head: bytes = b"") -> bytes:
    """A raw deflate stream of `head` then `n` zero bytes, made in a few milliseconds per hundred MB:
    one megabyte of zeros compressed once with a full flush (no reference back past it), repeated."""
    import zlib

    block = 2**20
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)] if head else []
    seg = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    parts += [seg] * (n // block)
    rest = n % block
    if rest:
        parts.append(c.compress(bytes(rest)) + c.flush(zlib.Z_FULL_FLUSH))
    return b"".join(parts) + c.flush()


def bomb_png(path: Path, side: int) -> Path:
    """A valid 8-bit gray PNG of side x side black pixels, a few hundred KB on disk (a decompression bomb)."""
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    n = side * (side + 1)  # each row: filter byte 0, then `side` zero pixels
    stream = b"\x78\xda" + deflated_zeros(n) + struct.pack(">I", ((n % 65521) << 16) | 1)  # adler32 of zeros
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", stream) + chunk(b"IEND", b""))
    return path


def bomb_dicom(path: Path, rows: int, columns: int, pixel_bytes: int | None = None) -> Path:
    """A Deflated Explicit VR Little Endian DICOM of rows x columns 16-bit zeros (pixel_bytes of them when
    given, e.g. far more than rows x columns declares), tiny on disk whatever it inflates to."""
    import struct

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    ds.PatientID = "BOMB"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_file_meta_info(head, meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    n = rows * columns * 2 if pixel_bytes is None else pixel_bytes
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n)
    path.write_bytes(b"\0" * 128 + b"DICM" + head.getvalue() + deflated_zeros(n, body.getvalue() + pixel_header))
    return path


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
NO_CHROMIUM = "no Chromium on this machine (Debian: apt-get install chromium)"


def chromium_images(page: Path, screenshot: Path | None = None) -> tuple[int, int]:
    """Open a self-contained HTML page in a real headless Chromium, offline, and count its images.

    A copy of the page gets a script that, once the page has loaded, writes how many images it has and
    how many did not load; the copy's Content-Security-Policy is the page's own, plus inline scripts.

    Args:
        page: The HTML file.
        screenshot: Where to write a PNG of the page as rendered (None: no screenshot).

    Returns:
        The number of images, and how many of them failed to load.
    """
    import re
    import tempfile

    text = page.read_text()
    assert "Content-Security-Policy" in text, "the page declares no Content-Security-Policy"
    probe = text.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1).replace(
        "</body>",
        "<script>addEventListener('load',()=>{const i=[...document.images];document.body.dataset.images=i.length;"
        "document.body.dataset.broken=i.filter(x=>!x.complete||x.naturalWidth===0).length;});</script></body>",
    )
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--virtual-time-budget=10000"]  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "probe.html"
        copy.write_text(probe)
        done = subprocess.run([CHROMIUM, *flags, f"--user-data-dir={folder}/profile", "--dump-dom", copy.as_uri()],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        if screenshot is not None:
            subprocess.run([CHROMIUM, *flags, f"--user-data-dir={folder}/profile", "--hide-scrollbars",
                            "--window-size=1100,2400", f"--screenshot={screenshot}", page.resolve().as_uri()],
                           capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    found = re.search(r'<body[^>]*data-images="(\d+)"[^>]*data-broken="(\d+)"', done.stdout)
    assert found, f"the page did not finish loading: {done.stderr[-2000:]}"
    return int(found.group(1)), int(found.group(2))


def chromium_page(url: str, ready: str, value: str, seconds: int = 120, screenshot: Path | None = None):
    """Open a page served on 127.0.0.1 in a real headless Chromium (DevTools protocol), wait until the
    JavaScript expression `ready` is true there, and return the JSON value of the expression `value`.

    Args:
        url: The page (a single-page app such as MLflow's or Prefect's UI).
        ready: A JavaScript expression that is true once the page shows what the test looks at.
        value: A JavaScript expression whose value, passed through JSON, is returned.
        seconds: How long to wait for `ready`.
        screenshot: Where to write a PNG of the page as rendered (None: no screenshot).

    Returns:
        The value of `value`.
    """
    import base64
    import tempfile

    from websockets.sync.client import connect

    port = free_port()
    # Chromium's helper processes may still write its profile for a moment after it is killed
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "--window-size=1300,2200",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            targets = wait_for(lambda: api_call(f"http://127.0.0.1:{port}/json/list"), 60, "chromium")
            page = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            with connect(page, max_size=None, open_timeout=30) as ws:
                calls = iter(range(1, 1_000_000))

                def call(method: str, **params):
                    number = next(calls)
                    ws.send(json.dumps({"id": number, "method": method, "params": params}))
                    while (answer := json.loads(ws.recv(timeout=60))).get("id") != number:
                        pass  # an event
                    return answer["result"]

                def evaluate(expression: str):
                    return call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

                call("Emulation.setDeviceMetricsOverride", width=1300, height=2200, deviceScaleFactor=1, mobile=False)
                call("Page.navigate", url=url)
                deadline = time.monotonic() + seconds
                while not evaluate(f"!!({ready})"):
                    shown = "document.body && document.body.innerText.slice(0, 2000)"
                    assert time.monotonic() < deadline, f"{url} never showed {ready}: {evaluate(shown)}"
                    time.sleep(0.5)
                time.sleep(1)  # the last images decode
                found = json.loads(evaluate(f"JSON.stringify({value})"))
                if screenshot is not None:
                    screenshot.write_bytes(base64.b64decode(call("Page.captureScreenshot", format="png")["data"]))
                return found
        finally:
            os.killpg(browser.pid, signal.SIGKILL)  # the browser and its helper processes
            browser.wait(timeout=30)


IMAGES_JS = "[...document.images].map(i => [i.src.slice(0, 60), i.complete && i.naturalWidth > 0])"
