"""The merge's faults: what can be known before the work is refused at once, what happens during it is one line
afterwards, and no signal or full disk leaves anything under OUT's name or a partial file behind."""

import errno
import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from merge.engine import merge
from merge.plan import MergeError
from tests.conftest import ROOT, cli_env, run_cli
from tests.sd_layouts import write_checkpoint


@pytest.fixture
def trio(tmp_path):
    paths = [tmp_path / f"{n}.safetensors" for n in "abc"]
    for path, variant, seed in zip(paths, ("inpaint", "normal", "normal"), (1, 2, 3), strict=True):
        write_checkpoint(path, "sd1", variant, seed)
    return paths


def _merge_cli(trio, out, *extra, **kw):
    a, b, c = trio
    return run_cli("merge", "-a", str(a), "-b", str(b), "-c", str(c), "-o", str(out), *extra, **kw)


def _leftovers(folder, out_name="o.safetensors"):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((out_name, f".{out_name}")))


@pytest.mark.parametrize("m", ["nan", "inf", "-inf", "100", "-11"])
def test_an_absurd_multiplier_is_refused_before_any_work(tmp_path, trio, m):
    result = _merge_cli(trio, tmp_path / "o.safetensors", "-m", m)
    assert result.returncode == 1 and "multiplier must be a finite number from -10 to 10" in result.stderr
    assert _leftovers(tmp_path) == []


def test_an_output_that_is_a_folder_or_on_a_pseudo_filesystem_is_refused_up_front(tmp_path, trio):
    (tmp_path / "o.safetensors").mkdir()
    assert "is a folder" in _merge_cli(trio, tmp_path / "o.safetensors").stderr
    proc = _merge_cli(trio, "/proc/self/o.safetensors")
    assert proc.returncode == 1 and "pseudo-filesystem" in proc.stderr


def test_a_read_only_output_folder_is_refused_up_front(trio, read_only_dir):
    folder = read_only_dir(lambda f: None)
    result = _merge_cli(trio, folder / "o.safetensors")
    assert result.returncode == 1 and f"cannot write in {folder}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _limited(nbytes):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return limit


def test_a_file_size_limit_is_one_line_after_the_work_and_nothing_is_left(tmp_path, trio):
    a, b, c = trio
    env = cli_env(PYTHONDONTWRITEBYTECODE="1", INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-m", "advisor", "merge", "-a", str(a), "-b", str(b), "-c", str(c),
                             "-o", str(tmp_path / "o.safetensors")], capture_output=True, text=True, env=env,
                            cwd=ROOT, preexec_fn=_limited(64 * 1024))  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "file-size limit" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert _leftovers(tmp_path) == []


def test_a_disk_that_fills_once_the_work_started_leaves_nothing(tmp_path, trio, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)  # the free-space check passed; then the disk filled
    with pytest.raises(MergeError, match="no space left for .*nothing was written"):
        merge(*trio, tmp_path / "o.safetensors")
    assert _leftovers(tmp_path) == []


@pytest.fixture
def big_trio(tmp_path):
    """Inputs of ~125 MB: a merge long enough to stop midway."""
    paths = [tmp_path / f"{n}.safetensors" for n in "abc"]
    for path, variant, seed in zip(paths, ("inpaint", "normal", "normal"), (1, 2, 3), strict=True):
        write_checkpoint(path, "sd1", variant, seed, scale=4)
    return paths


def _signals_as_in_a_terminal() -> None:
    """SIGINT at its default, as a shell in a terminal starts a command: a child inherits an ignored SIGINT (the
    test worker's can be, after some library in an earlier test), and Python then rightly leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_and_catch(big_trio, out):
    """A CLI merge, frozen (SIGSTOP) as soon as its hidden partial output appears."""
    a, b, c = big_trio
    child = subprocess.Popen([sys.executable, "-m", "advisor", "merge", "-a", str(a), "-b", str(b), "-c", str(c),
                              "-o", str(out), "--no-sync"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=cli_env(), cwd=ROOT, preexec_fn=_signals_as_in_a_terminal)  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(out.parent.glob(f".{out.name}.partial-*")):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.001)
    os.kill(child.pid, signal.SIGSTOP)
    return child


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_merge_stopped_by_a_signal_cleans_up(tmp_path, big_trio, sig):
    out = tmp_path / "o.safetensors"
    child = _start_and_catch(big_trio, out)
    os.kill(child.pid, sig)
    os.kill(child.pid, signal.SIGCONT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert "nothing was written" in stderr and "Traceback" not in stderr
    assert _leftovers(tmp_path) == [], stderr


def test_the_partial_file_of_a_killed_merge_is_removed_by_the_next_one(tmp_path, big_trio):
    out = tmp_path / "o.safetensors"
    child = _start_and_catch(big_trio, out)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    left = _leftovers(tmp_path)
    assert len(left) == 1 and left[0].startswith(".o.safetensors.partial-")  # kill -9 leaves it, nothing else
    result = _merge_cli(big_trio, out, "--no-sync")
    assert result.returncode == 0, result.stderr
    assert _leftovers(tmp_path) == ["o.safetensors"]


@pytest.mark.parametrize("where", ["past-the-end", "before-the-start"])
def test_the_c_loop_refuses_a_tensor_outside_its_file_even_when_the_reader_let_it_through(trio, tmp_path,
                                                                                        monkeypatch, where):
    """The last line of defence: a reader bug that hands the merge a range outside the file's mapping is a
    clean refusal (one MergeError, nothing written), never a read of other memory or a crash."""
    from merge import fused
    from merge.checkpoint import SafetensorsSource

    if fused.kernel() is None:
        pytest.skip("merge._fused is not built or not usable here")
    real = SafetensorsSource.segments

    def wrong(self, name):
        segments = real(self, name)
        if self.path.name != "b.safetensors" or not segments or "input_blocks.1.0" not in name:
            return segments
        mapping, start, end = segments[0]
        shift = len(mapping) if where == "past-the-end" else -(start + 64)
        return [(mapping, start + shift, end + shift)]

    monkeypatch.setattr(SafetensorsSource, "segments", wrong)
    out = tmp_path / "out.safetensors"
    with pytest.raises(MergeError, match="out-of-range access refused"):
        merge(*trio, out)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
