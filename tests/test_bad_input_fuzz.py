"""Property-based bad input (issue 10): mutated STAR, MRC, CSV, .cs, YAML and safetensors files reach the
readers. Every failure must be a :class:`~cryomap.errors.CryomapError` (never another exception, never a
hang: each example runs under an alarm), and every file a reader accepts must round-trip through
cryomap's writer to the same values.

Repeatable in CI: ``derandomize=True`` and no example database, so the same examples run every time.
``CRYOMAP_FUZZ_EXAMPLES`` (default 500) sets the examples per reader.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryomap.errors import CryomapError

N_EXAMPLES = int(os.environ.get("CRYOMAP_FUZZ_EXAMPLES", "500"))
FUZZ = settings(max_examples=N_EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
TIMEOUT_S = 10  # one example (a small file) taking this long counts as a hang

#: Values a hostile user (or a broken writer) puts in a field.
NASTY = ["nan", "NaN", "inf", "-inf", "-1", "0", "-0", "1e400", "-1e400", "1e20", "abc", "''", '"', "#", "data_",
         "loop_", "_rlnFoo", "\t", "000000@x.mrcs", "2@", "@x.mrcs", "99999@stack.mrcs", "1.5", "3", "~", "{", "[",
         "- a", ": b", "null", "true", "0x10", "１", "é", "\\", "9" * 40]


@contextlib.contextmanager
def no_hang(seconds: int = TIMEOUT_S):
    """Raise ``TimeoutError`` (a test failure) if the block runs longer than ``seconds``."""
    def on_alarm(signum, frame):  # pragma: no cover - only on a hang
        raise TimeoutError(f"reader ran for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def accept_or_refuse(read, *args, **kwargs):
    """``read(*args)``; a CryomapError means refused (returns None); any other exception fails the test."""
    with no_hang():
        try:
            return read(*args, **kwargs)
        except CryomapError as err:
            assert str(err).strip() and "\n" not in str(err).strip(), repr(str(err))
            return None


# ---------------------------------------------------------------------------- mutations

@st.composite
def text_mutation(draw, seed: str) -> str:
    """``seed`` with 1–3 token or line edits: replace/drop/duplicate a token, drop/duplicate/swap lines, cut."""
    lines = seed.split("\n")
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["token", "token", "token", "drop_token", "dup_token", "drop_line", "dup_line",
                                   "swap_lines", "cut", "indent", "garbage"]))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        toks = lines[i].split() if lines else []
        if op in ("token", "drop_token", "dup_token") and toks:
            j = draw(st.integers(0, len(toks) - 1))
            if op == "token":
                toks[j] = draw(st.sampled_from(NASTY) | st.text(max_size=6))
            elif op == "drop_token":
                del toks[j]
            else:
                toks.insert(j, toks[j])
            lines[i] = " ".join(toks)
        elif op == "drop_line" and lines:
            del lines[i]
        elif op == "dup_line" and lines:
            lines.insert(i, lines[i])
        elif op == "swap_lines" and len(lines) > 1:
            k = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[k] = lines[k], lines[i]
        elif op == "cut":
            text = "\n".join(lines)
            lines = text[: draw(st.integers(0, len(text)))].split("\n")
        elif op == "indent" and lines:
            lines[i] = draw(st.sampled_from(["  ", "\t", "- "])) + lines[i]
        elif op == "garbage" and lines:
            lines.insert(i, draw(st.text(max_size=12)))
    return "\n".join(lines)


@st.composite
def byte_mutation(draw, seed: bytes, header: int = 256) -> bytes:
    """``seed`` with 1–3 byte edits: overwrite a header word with a nasty number, flip bytes, cut, insert."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["word", "word", "flip", "cut", "insert", "delete"]))
        if op == "word" and len(data) >= 4:
            pos = 4 * draw(st.integers(0, min(header, len(data)) // 4 - 1))
            kind = draw(st.sampled_from(["i4", "f4"]))
            if kind == "i4":
                value = np.int32(draw(st.sampled_from([0, 1, -1, 2, 3, 4, 7, 101, 2**31 - 1, -2**31, 1 << 20])))
            else:
                value = np.float32(draw(st.sampled_from([0.0, -1.0, np.nan, np.inf, -np.inf, 1e30, 1e-30, 2.5])))
            data[pos:pos + 4] = value.tobytes()
        elif op == "flip" and data:
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "insert":
            pos = draw(st.integers(0, len(data)))
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            pos = draw(st.integers(0, len(data) - 1))
            del data[pos:pos + draw(st.integers(1, 8))]
    return bytes(data)


# ---------------------------------------------------------------------------- seeds

WORK = Path(tempfile.mkdtemp(prefix="cryomap_fuzz_"))


def _particle_table(n: int = 3, stack: str = "stack.mrcs") -> pd.DataFrame:
    """A small particle table: one column of each kind the readers check (names, px, °, Å, CTF, optics)."""
    return pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@{stack}" for i in range(n)],
        "rlnCoordinateX": [10.0, 11.5, 12.0][:n], "rlnAngleRot": [10.0, 200.0, -30.5][:n],
        "rlnAngleTilt": [90.0, 12.0, 170.0][:n], "rlnOriginXAngst": [0.0, 1.5, -2.0][:n],
        "rlnDefocusU": [12000.0, 15000.0, 9000.5][:n], "rlnOpticsGroup": [1] * n, "rlnVoltage": [300.0] * n,
        "rlnAmplitudeContrast": [0.1] * n, "rlnImagePixelSize": [2.0] * n, "rlnImageSize": [8] * n,
    })


def _seeds() -> dict[str, object]:
    from cryomap.io.coords import write_cryoppp_csv
    from cryomap.io.mrc import write_mrc
    from cryomap.io.star import write_star

    seeds: dict[str, object] = {}
    write_star(WORK / "seed31.star", _particle_table())
    seeds["star31"] = (WORK / "seed31.star").read_text()
    t30 = _particle_table().drop(columns=["rlnImagePixelSize", "rlnOriginXAngst"])
    t30["rlnOriginX"] = [0.0, 1.0, -1.0]
    t30["rlnDetectorPixelSize"], t30["rlnMagnification"] = 5.0, 25000.0
    seeds["star30"] = "data_\n\nloop_\n" + "".join(f"_{c} #{i + 1}\n" for i, c in enumerate(t30.columns)) + "".join(
        " ".join(str(v) for v in row) + "\n" for row in t30.itertuples(index=False))
    rng = np.random.default_rng(0)
    write_mrc(WORK / "seed.mrc", rng.normal(size=(6, 6, 6)).astype(np.float32), 2.0, origin=(1.0, 2.0, 3.0))
    seeds["mrc"] = (WORK / "seed.mrc").read_bytes()
    write_mrc(WORK / "seed.mrcs", rng.normal(size=(3, 8, 8)).astype(np.float32), 2.0)
    seeds["mrcs"] = (WORK / "seed.mrcs").read_bytes()
    write_cryoppp_csv(WORK / "seed.csv", pd.DataFrame({"x": [10, 20.5, 30], "y": [5, 6, 7], "diameter": [20, 20, 20]}))
    seeds["csv"] = (WORK / "seed.csv").read_text()
    seeds["cs"] = _cs_seed()
    return seeds


def _cs_seed() -> np.ndarray:
    dtype = [("uid", "<u8"), ("blob/path", "S20"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
             ("blob/psize_A", "<f4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"),
             ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"),
             ("ctf/exp_group_id", "<u4"), ("alignments3D/pose", "<f4", (3,)), ("alignments3D/shift", "<f4", (2,)),
             ("location/micrograph_path", "S20"), ("location/center_x_frac", "<f4"),
             ("location/center_y_frac", "<f4"), ("location/micrograph_shape", "<u4", (2,))]
    arr = np.zeros(3, dtype=dtype)
    arr["uid"] = [11, 12, 13]
    arr["blob/path"] = b"stack.mrcs"
    arr["blob/idx"] = [0, 1, 2]
    arr["blob/shape"] = 8
    arr["blob/psize_A"] = 2.0
    arr["ctf/accel_kv"], arr["ctf/cs_mm"], arr["ctf/amp_contrast"] = 300.0, 2.7, 0.1
    arr["ctf/df1_A"], arr["ctf/df2_A"] = [12000.0, 15000.0, 9000.0], [11000.0, 14500.0, 9000.0]
    arr["ctf/df_angle_rad"] = [0.1, 0.0, 1.0]
    arr["alignments3D/pose"] = [[0.1, 0.2, 0.3], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]
    arr["alignments3D/shift"] = [[0.5, -1.0], [0.0, 0.0], [2.0, 1.0]]
    arr["location/micrograph_path"] = b"mic_0.mrc"
    arr["location/center_x_frac"], arr["location/center_y_frac"] = [0.1, 0.5, 0.9], [0.2, 0.4, 0.6]
    arr["location/micrograph_shape"] = [[100, 200]] * 3
    return arr


SEEDS = _seeds()
with mrcfile.open(WORK / "seed.mrcs") as _m:
    SEED_STACK = np.array(_m.data)
_counter = iter(range(10**9))


def fresh(suffix: str) -> Path:
    """A new file path in the fuzz work folder (files are small; the folder goes with the process)."""
    folder = WORK / f"ex{next(_counter)}"
    folder.mkdir()
    return folder / f"input{suffix}"


def frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same columns and values: numbers to 1e-6 (STAR text keeps 6 decimals), anything else as text
    (a STAR has no types: a cryoSPARC uid written as text reads back as a number)."""
    assert sorted(map(str, a.columns)) == sorted(map(str, b.columns)), (list(a.columns), list(b.columns))
    assert len(a) == len(b)
    for col in a.columns:
        x, y = a[col].reset_index(drop=True), b[col].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            np.testing.assert_allclose(x.to_numpy(float), y.to_numpy(float), rtol=1e-6, atol=1e-6, err_msg=str(col))
        else:
            assert list(x.astype(str)) == list(y.astype(str)), col


# ---------------------------------------------------------------------------- STAR

def test_seeds_are_accepted():
    """The unmutated seeds read, so a mutation that is refused is refused for what it changed."""
    from cryomap.io.coords import read_coordinates
    from cryomap.io.cs import read_cs
    from cryomap.io.mrc import read_mrc, read_stack
    from cryomap.io.star import read_star

    assert len(read_star(WORK / "seed31.star")) == 3
    p = fresh(".star")
    p.write_text(SEEDS["star30"])
    t = read_star(p)
    np.testing.assert_allclose(t.particles["rlnImagePixelSize"], 2.0)  # 5 µm × 1e4 / 25000
    np.testing.assert_allclose(t.particles["rlnOriginXAngst"], [0.0, 2.0, -2.0])
    assert read_mrc(WORK / "seed.mrc").apix == 2.0 and read_stack(WORK / "seed.mrcs").data.shape == (3, 8, 8)
    assert len(read_coordinates(WORK / "seed.csv")) == 3
    cs = fresh(".cs")
    with open(cs, "wb") as fh:
        np.save(fh, SEEDS["cs"])
    assert len(read_cs(cs)) == 3


def _star_round_trip(text: str) -> None:
    from cryomap.io.star import read_star, write_star

    p = fresh(".star")
    p.write_text(text)
    table = accept_or_refuse(read_star, p)
    if table is None:
        return
    out = p.with_name("again.star")
    if not len(table.particles.columns):
        return
    write_star(out, table.particles)
    again = read_star(out)
    frames_equal(table.particles, again.particles)


@FUZZ
@given(st.sampled_from(["star31", "star30"]).flatmap(lambda k: text_mutation(SEEDS[k])))
def test_read_star_refuses_or_round_trips(text):
    _star_round_trip(text)


# ---------------------------------------------------------------------------- MRC

@pytest.mark.filterwarnings("ignore:Data array contains NaN")  # a memory-mapped stack is finite-checked per read, not here
@pytest.mark.filterwarnings("ignore:overflow encountered")  # mrcfile's header rms of values near float32's maximum
@pytest.mark.filterwarnings("ignore:invalid value encountered")  # mrcfile's header statistics of such a stack
@FUZZ
@given(st.sampled_from(["mrc", "mrcs"]).flatmap(lambda k: st.tuples(st.just(k), byte_mutation(SEEDS[k]))))
def test_read_mrc_refuses_or_round_trips(case):
    from cryomap.io.mrc import read_mrc, read_stack, write_mrc

    kind, data = case
    p = fresh("." + kind)
    p.write_bytes(data)
    if kind == "mrc":
        m = accept_or_refuse(read_mrc, p)
    else:
        m = accept_or_refuse(read_stack, p)
    if m is None:
        return
    assert np.isfinite(m.apix) and m.apix > 0 and all(np.isfinite(m.origin))
    arr = np.array(m.data)
    out = p.with_name("again" + p.suffix)
    write_mrc(out, arr, m.apix, origin=m.origin)
    again = read_mrc(out) if kind == "mrc" else read_stack(out)
    np.testing.assert_array_equal(np.array(again.data).reshape(arr.shape), arr)
    assert np.isclose(again.apix, m.apix, rtol=1e-6)
    np.testing.assert_allclose(again.origin, m.origin, rtol=1e-6)


# ---------------------------------------------------------------------------- coordinates

@FUZZ
@given(text_mutation(SEEDS["csv"]))
def test_read_coordinates_refuses_or_round_trips(text):
    from cryomap.io.coords import read_coordinates, write_cryoppp_csv

    p = fresh(".csv")
    p.write_text(text)
    df = accept_or_refuse(read_coordinates, p)
    if df is None:
        return
    assert np.isfinite(df[["x", "y"]].to_numpy()).all()
    out = p.with_name("again.csv")
    write_cryoppp_csv(out, df)
    again = read_coordinates(out)
    cols = [c for c in ("x", "y", "diameter") if c in df]
    frames_equal(df[cols], again[cols])


# ---------------------------------------------------------------------------- cryoSPARC .cs

_CS_FIELDS = [n for n in SEEDS["cs"].dtype.names if SEEDS["cs"].dtype[n].kind in "fiu"]


@st.composite
def cs_mutation(draw):
    arr = SEEDS["cs"].copy()
    if draw(st.booleans()):  # a value: NaN, inf, negative, huge
        field = draw(st.sampled_from(_CS_FIELDS))
        row = draw(st.integers(0, len(arr) - 1))
        value = draw(st.sampled_from([np.nan, np.inf, -1.0, 0.0, 1e30, 7.0]))
        with np.errstate(all="ignore"):
            if arr.dtype[field].kind in "iu" and not np.isfinite(value):
                value = 0
            arr[field][row] = np.asarray(value).astype(arr.dtype[field].base)
    buf = _npy_bytes(arr)
    if draw(st.booleans()):  # the file: header text and data bytes
        buf = draw(byte_mutation(buf, header=128))
    return buf


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    b = io.BytesIO()
    np.save(b, arr)
    return b.getvalue()


@FUZZ
@given(cs_mutation())
def test_read_cs_refuses_or_round_trips(data):
    from cryomap.io.cs import read_cs
    from cryomap.io.star import read_star, write_star

    p = fresh(".cs")
    p.write_bytes(data)
    df = accept_or_refuse(read_cs, p)
    if df is None:
        return
    if not len(df.columns) or not len(df):
        return
    out = p.with_name("again.star")
    write_star(out, df)
    again = read_star(out).particles
    frames_equal(df, again[[c for c in df.columns]])  # the STAR adds rlnOpticsGroupName


# ---------------------------------------------------------------------------- particle source

@st.composite
def particle_files(draw):
    """A STAR + stack pair with either file mutated."""
    which = draw(st.sampled_from(["star", "star", "stack"]))
    star_text = SEEDS["star31"]
    stack = SEEDS["mrcs"]
    if which == "star":
        star_text = draw(text_mutation(star_text))
    else:
        stack = draw(byte_mutation(stack))
    return star_text, stack


@FUZZ
@given(particle_files())
def test_open_particles_refuses_or_round_trips(files):
    """Images as read are finite; an accepted stack round-trips through the writer (an accepted STAR's
    table round-trips in :func:`test_read_star_refuses_or_round_trips`)."""
    from cryomap.particles.source import open_particles
    from cryomap.particles.writer import write_particles

    star_text, stack = files
    p = fresh(".star")
    p.write_text(star_text)
    (p.parent / "stack.mrcs").write_bytes(stack)

    def read_all():
        src = open_particles(p)
        return src, src.images()

    got = accept_or_refuse(read_all)
    if got is None:
        return
    src, images = got
    assert np.isfinite(images).all() and images.shape == src.shape
    if star_text == SEEDS["star31"] and stack == SEEDS["mrcs"]:
        return
    if stack == SEEDS["mrcs"]:  # the STAR was mutated: its images are the seed's (finite, known)
        assert np.isin(images.reshape(len(images), -1)[:, 0], np.asarray(SEED_STACK)[:, 0, 0]).all()
        return
    out = p.parent / "out"
    write_particles(src, out)
    again = open_particles(out / "particles.star")
    np.testing.assert_array_equal(again.images(), images)
    assert np.isclose(again.pixel_size, src.pixel_size)
    if src.has_poses:
        a, b = src.poses(), again.poses()
        np.testing.assert_allclose([a.rot, a.tilt, a.psi], [b.rot, b.tilt, b.psi], rtol=1e-6)
        np.testing.assert_allclose(a.shifts_A, b.shifts_A, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- YAML configs

DATASET_YAML = """\
seed: 0
label: {apix: 1.0, box: 64, threshold: null}
condition:
  mode: stack
  n_images: 8
  storage: resized
split:
  by: targets
  val_targets: [b]
  particle_holdout: 0.1
targets:
  - name: a
    particles: a/particles.star
    map: a/map.mrc
  - name: b
    particles: b/particles.star
    map: b/map.mrc
    map_apix: 1.5
"""

TRAIN_YAML = """\
model: {name: unet3d, widths: [4, 8], bottleneck: 16}
data:
  synthetic: {n: 4, depth: 16, channels: 1, val_n: 1}
  batch_size: 2
optim: {lr: 1.0e-3, weight_decay: 0.0}
trainer: {max_steps: 5, accelerator: cpu, seed: 0}
loss: {kind: dice_bce}
diffusion: {schedule: cosine, steps: 100}
"""


def _yaml_case(seed: str):
    return text_mutation(seed) | st.binary(max_size=64).map(lambda b: b.decode("latin-1"))


def _config_round_trip(load, text: str, name: str) -> None:
    import yaml

    p = fresh(".yaml")
    p.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    cfg = accept_or_refuse(load, p)
    if cfg is None:
        return
    out = p.with_name(f"again_{name}.yaml")
    out.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    again = load(out)
    assert again.model_dump(mode="json") == cfg.model_dump(mode="json")


@FUZZ
@given(_yaml_case(DATASET_YAML))
def test_dataset_load_config_refuses_or_round_trips(text):
    from cryomap.datasets.config import load_config

    _config_round_trip(load_config, text, "dataset")


@FUZZ
@given(_yaml_case(TRAIN_YAML))
def test_train_load_config_refuses_or_round_trips(text):
    from cryomap.train.config import load_config

    _config_round_trip(load_config, text, "train")


# ---------------------------------------------------------------------------- trained models

def _model_seed() -> tuple[bytes, str]:
    import torch
    from safetensors.torch import save_file

    from cryomap.train.config import config_from_dict
    from cryomap.train.modules import build_network

    cfg = config_from_dict({"model": {"name": "unet3d", "widths": [2], "bottleneck": 4},
                            "data": {"synthetic": {"n": 2, "depth": 8}}})
    hp = cfg.model_dump(mode="json")
    hp["meta"] = {"channels": 1, "depth": 8, "label_apix": 1.0, "label_origin": [0.0, 0.0, 0.0]}
    torch.manual_seed(0)
    net = build_network(hp, 1)
    path = WORK / "seed_model" / "model.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    info = json.dumps({"config": hp, "in_channels": 1, "weights": "model.safetensors"}, indent=1)
    return path.read_bytes(), info


MODEL_WEIGHTS, MODEL_JSON = _model_seed()


@st.composite
def model_files(draw):
    if draw(st.booleans()):
        return draw(byte_mutation(MODEL_WEIGHTS, header=512)), MODEL_JSON
    return MODEL_WEIGHTS, draw(text_mutation(MODEL_JSON))


@FUZZ
@given(model_files())
def test_load_model_refuses_or_round_trips(files):
    import torch
    from safetensors.torch import load_file, save_file

    from cryomap.train.predict import load_model

    weights, info = files
    run_dir = fresh("").parent
    (run_dir / "model.safetensors").write_bytes(weights)
    (run_dir / "model.json").write_text(info)
    loaded = accept_or_refuse(load_model, run_dir)
    if loaded is None:
        return
    state = {k: v.detach().contiguous() for k, v in loaded.net.state_dict().items()}
    stored = load_file(str(run_dir / "model.safetensors"))
    assert set(stored) <= set(state)
    for k, v in stored.items():
        assert torch.equal(state[k], v.to(state[k].dtype)), k
    again_dir = run_dir / "again"
    again_dir.mkdir()
    save_file(state, str(again_dir / "model.safetensors"))
    (again_dir / "model.json").write_text(info)
    again = load_model(again_dir)
    for k, v in again.net.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.fixture(autouse=True, scope="module")
def _cleanup():
    yield
    import shutil

    shutil.rmtree(WORK, ignore_errors=True)
