"""Tasks on Dask: 1 vs N workers give identical bytes, a failed task is retried, a crashed run resumes
without redoing finished micrographs or chunks, and an existing scheduler can be joined."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_extract_core import make_dataset

from cryomap.errors import BadInputError
from cryomap.io.mrc import read_stack
from cryomap.particles.extract import extract_particles
from cryomap.tasks import TaskRunner


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mics") / "10999"
    make_dataset(root, n_mics=5, with_star=True)
    return root


def test_one_and_two_dask_workers_write_identical_bytes(dataset, tmp_path):
    one = extract_particles(dataset, tmp_path / "one", box=32, progress=False)
    two = extract_particles(dataset, tmp_path / "two", box=32, workers=2, progress=False)
    assert one.n_particles == two.n_particles > 0
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_one_and_two_inline_threads_write_identical_bytes(dataset, tmp_path, monkeypatch):
    """Two micrographs at a time in one process (the default) write what one at a time writes, phase-flipped too."""
    import cryomap.particles.extract as extract_module

    monkeypatch.setattr(extract_module, "INLINE_THREADS", 1)
    one = extract_particles(dataset, tmp_path / "one", box=32, phase_flip=True, progress=False)
    monkeypatch.setattr(extract_module, "INLINE_THREADS", 2)
    two = extract_particles(dataset, tmp_path / "two", box=32, phase_flip=True, progress=False)
    assert one.n_particles == two.n_particles > 0
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def _slow_square(context, x: int) -> int:
    import time

    time.sleep(0.02 * (5 - x % 5))  # later tasks finish first: the order must come from submission
    return x * x


def test_threaded_inline_tasks_come_back_in_order_and_retry(tmp_path):
    with TaskRunner(1, threads=3) as runner:
        assert list(runner.map(_slow_square, [(i,) for i in range(10)])) == [i * i for i in range(10)]
    with TaskRunner(1, threads=2, retries=2) as runner:
        assert list(runner.map(_flaky, [(i,) for i in range(6)], context=str(tmp_path))) == [0, 2, 4, 6, 8, 10]
    with pytest.raises(BadInputError, match="not a micrograph"):
        list(TaskRunner(1, threads=2).map(_bad_input, [(1,)]))


def test_a_running_scheduler_can_be_joined(dataset, tmp_path):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        res = extract_particles(dataset, tmp_path / "joined", box=32, scheduler=cluster.scheduler_address,
                                progress=False)
    ref = extract_particles(dataset, tmp_path / "ref", box=32, progress=False)
    assert res.n_particles == ref.n_particles and _files(tmp_path / "joined") == _files(tmp_path / "ref")


def _flaky(marker_dir: str, x: int) -> int:
    """Fails the first time it sees each x (a marker file remembers), then returns 2x."""
    marker = Path(marker_dir) / f"{x}.seen"
    if not marker.exists():
        marker.write_text("1")
        raise RuntimeError(f"transient failure for {x}")
    return 2 * x


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_task_is_retried(tmp_path, workers):
    with TaskRunner(workers, retries=2) as runner:
        out = list(runner.map(_flaky, [(i,) for i in range(6)], context=str(tmp_path)))
    assert out == [0, 2, 4, 6, 8, 10]


def _bad_input(context, x: int) -> int:
    raise BadInputError("not a micrograph", f"/data/{x}.mrc")


def test_bad_input_is_not_retried(tmp_path):
    with pytest.raises(BadInputError, match="not a micrograph"):
        list(TaskRunner(1).map(_bad_input, [(1,)]))


def test_a_crashed_extraction_resumes_without_redoing_finished_micrographs(dataset, tmp_path, monkeypatch):
    import cryomap.particles.extract as ex

    real = ex.extract_micrograph
    seen: list[str] = []

    def crash_on_third(p, path, *args):
        seen.append(Path(path).name)
        if Path(path).name == "mic_2.mrc":  # fails on every retry: not bad input, so the run can be resumed
            raise MemoryError("node lost")
        return real(p, path, *args)

    monkeypatch.setattr(ex, "extract_micrograph", crash_on_third)
    with pytest.raises(MemoryError):
        extract_particles(dataset, tmp_path / "out", box=32, progress=False)
    assert not (tmp_path / "out").exists() and (tmp_path / ".out.partial").is_dir()
    assert seen.count("mic_2.mrc") == 3  # tried three times (two retries)
    # two micrographs run at a time: mic_3 may have started beside mic_2, but results are journaled in order
    assert {"mic_0.mrc", "mic_1.mrc"} <= set(seen) <= {"mic_0.mrc", "mic_1.mrc", "mic_2.mrc", "mic_3.mrc"}
    seen.clear()
    monkeypatch.setattr(ex, "extract_micrograph", lambda p, path, *a: (seen.append(Path(path).name), real(p, path, *a))[1])
    res = extract_particles(dataset, tmp_path / "out", box=32, progress=False, resume=True)
    assert sorted(seen) == ["mic_2.mrc", "mic_3.mrc", "mic_4.mrc"]  # only the three unfinished micrographs ran
    ref = extract_particles(dataset, tmp_path / "ref", box=32, progress=False)
    assert _files(tmp_path / "out") == _files(tmp_path / "ref") and res.n_particles == ref.n_particles


def test_resume_with_other_parameters_starts_again(dataset, tmp_path, monkeypatch):
    import cryomap.particles.extract as ex

    real = ex.extract_micrograph
    calls = []

    def crash(p, path, *args):
        calls.append(path)
        if Path(path).name == "mic_1.mrc":
            raise OSError("disk full")
        return real(p, path, *args)

    monkeypatch.setattr(ex, "extract_micrograph", crash)
    with pytest.raises(OSError):
        extract_particles(dataset, tmp_path / "out", box=32, progress=False)
    monkeypatch.setattr(ex, "extract_micrograph", real)
    res = extract_particles(dataset, tmp_path / "out", box=24, progress=False, resume=True)  # another box
    assert res.out_box == 24 and read_stack(res.stack_path).data.shape[-1] == 24


def test_phase_flip_at_extraction_matches_the_preprocess_op(dataset, tmp_path):
    from cryomap.particles.source import open_particles
    from cryomap.preprocess.chain import apply_chain

    flipped = extract_particles(dataset, tmp_path / "flip", box=32, phase_flip=True, progress=False)
    plain = extract_particles(dataset, tmp_path / "plain", box=32, progress=False)
    src = open_particles(flipped.star_path)
    assert (src.table.rlnCtfDataArePhaseFlipped == 1).all()
    # flip then normalise (extraction) equals normalise, flip, normalise again (the op on plain particles)
    ref = apply_chain(open_particles(plain.star_path), [{"step": "phase-flip"}, {"step": "standardize", "region": "ring"}])
    np.testing.assert_allclose(src.images(np.arange(8)), ref.images(np.arange(8)), atol=2e-4)
