"""Multi-host training: the runlocal VAE run across 2 processes on localhost (4 CPU devices each,
gloo collectives) equals the 1-process run on 8 devices; its checkpoint restores in one process;
a killed peer, a missing coordinator or a stuck collective ends the run instead of hanging.

Every subprocess is `python -m phrase_jax.main`, exactly as a user launches one process per host.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import types

import grain
import jax
import numpy as np
import pytest

from phrase_jax import config_lib, main
from phrase_jax.models import vae
from phrase_jax.stages import train_vae
from phrase_jax.training import checkpointing, distributed, metrics, sharding, train_state

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
PROCESSES = 2
RUN_TIMEOUT_S = 300  # per multi-process run; a hang fails the test instead of blocking CI
CONFIG = "runlocal,init_from=,log_every_steps=1"


def load_config(arg: str):
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))  # experiment files import `experiments.vae_common`
        return config_lib.load_experiment(f"{REPO}/experiments/vae.py:{arg}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(process_id: int, port: int, workdir, config_arg: str, log_dir, *flags: str):
    """One process of the run, as on a host: its own 4 CPU devices, stdout+stderr to a file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_"))}
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    command = [
        sys.executable, "-m", "phrase_jax.main",
        f"--config=experiments/vae.py:{config_arg}", f"--workdir={workdir}",
        f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={PROCESSES}",
        f"--process_id={process_id}", "--heartbeat_timeout=5", "--initialization_timeout=120",
        *flags,
    ]  # fmt: skip
    log = open(pathlib.Path(log_dir) / f"process_{process_id}.log", "w")  # noqa: SIM115
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log_path = log.name
    log.close()  # the child holds its own descriptor
    return process


def tail(process, lines: int = 30) -> str:
    text = pathlib.Path(process.log_path).read_text(errors="replace").splitlines()
    return f"--- {process.log_path} ---\n" + "\n".join(text[-lines:])


def wait_all(processes, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=max(deadline - time.monotonic(), 1)))
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            pytest.fail(f"run did not finish in {timeout_s}s\n" + "\n".join(map(tail, processes)))
    return codes


@pytest.fixture(scope="module")
def data_dir(chorales_data) -> str:
    """The session's prepared chorales: what is compared is the process layout, not the data, so
    one dataset that needs no download serves (the VAE stage's own tests also run on POP909)."""
    return chorales_data


@pytest.fixture(scope="module")
def two_process_run(data_dir, tmp_path_factory) -> pathlib.Path:
    """The runlocal VAE (4 steps, checkpoints at 2 and 4, eval at 4) on 2 processes x 4 devices."""
    root = tmp_path_factory.mktemp("two_process")
    port = free_port()
    processes = [
        launch(i, port, root / "run", f"{CONFIG},data.dir={data_dir}", root)
        for i in range(PROCESSES)
    ]
    codes = wait_all(processes, RUN_TIMEOUT_S)
    assert codes == [0] * PROCESSES, "\n".join(map(tail, processes))
    logs = [pathlib.Path(p.log_path).read_text() for p in processes]
    # Logs once: process 0 logs the run, process 1 only warnings and errors.
    assert "PhraseVAE mode vae" in logs[0] and "PhraseVAE mode vae" not in logs[1]
    return root / "run"


@pytest.fixture(scope="module")
def one_process_run(data_dir, tmp_path_factory) -> pathlib.Path:
    """The same run in this process (8 devices): the stock pipeline's global batches do not
    depend on the process count, so nothing is patched."""
    workdir = tmp_path_factory.mktemp("one_process") / "run"
    main.run(load_config(f"{CONFIG},data.dir={data_dir}"), str(workdir))
    return workdir


def test_two_processes_match_one_process_step_by_step(two_process_run, one_process_run):
    two = metrics.read_jsonl(two_process_run / "metrics.jsonl")
    one = metrics.read_jsonl(one_process_run / "metrics.jsonl")
    assert [(r["step"], r["split"]) for r in two] == [(r["step"], r["split"]) for r in one]
    assert [r["step"] for r in two if r["split"] == "train"] == [1, 2, 3, 4]
    for a, b in zip(two, one, strict=True):
        valid = a["split"] == "valid"
        keys = ("loss", "ce", "kl") + (("f1_op", "phrases") if valid else ("grad_norm",))
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=2e-5, abs=1e-6), (a["step"], key)
    # Only process 0 wrote the run's files, each once.
    assert len(list(two_process_run.glob("metrics.jsonl*"))) == 1
    assert (two_process_run / "best" / "best.json").exists()


def restore_params(workdir, step, mesh_shape, preset):
    config = load_config(CONFIG)
    config.sharding.preset = preset
    spec, _, _ = train_vae.build_state_spec(config, sharding.make_mesh({"shape": mesh_shape}))
    restored = checkpointing.Checkpointer(workdir, async_save=False).restore(step, spec)
    model, optimizer, _ = train_state.unpack(spec, restored.state)
    return jax.device_get(vae.param_dict(model)), int(optimizer.step.get_value())


def test_two_process_checkpoint_restores_in_one_process(two_process_run, one_process_run):
    iterator_dir = two_process_run / "checkpoints" / "4" / "data_iterator"
    assert sorted(p.name for p in iterator_dir.glob("process_*.json")) == [
        "process_0-of-2.json", "process_1-of-2.json"
    ]  # fmt: skip
    # Onto another layout than it was saved from: FSDP + tensor parallel on a 4x2 mesh.
    params, step = restore_params(two_process_run, 4, (4, 2), "fsdp_tensor_parallel")
    reference, _ = restore_params(one_process_run, 4, (-1, 1), "data_parallel")
    assert step == 4 and set(params) == set(reference)
    for key, value in reference.items():
        np.testing.assert_allclose(params[key], value, rtol=1e-5, atol=1e-6, err_msg=str(key))
    # Resuming the data position needs the same process count: a clear error, not a new order.
    config = load_config(CONFIG)
    spec, _, _ = train_vae.build_state_spec(config, sharding.make_mesh(config.mesh))
    iterator = iter(grain.MapDataset.range(4).to_iter_dataset())
    with pytest.raises(checkpointing.CheckpointError, match="saved by 2 processes"):
        checkpointing.Checkpointer(two_process_run, async_save=False).restore(
            4, spec, data_iterator=iterator
        )


def test_killed_process_ends_the_run_instead_of_hanging(data_dir, tmp_path):
    long_run = (f"{CONFIG},data.dir={data_dir},total_steps=100000,eval.every_steps=100000,"
                "checkpoint.every_steps=100000")  # fmt: skip
    port = free_port()
    processes = [launch(i, port, tmp_path / "run", long_run, tmp_path) for i in range(PROCESSES)]
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):  # both are training
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            for p in processes:
                p.kill()
            pytest.fail("the long run did not start training\n" + "\n".join(map(tail, processes)))
        time.sleep(0.5)
    processes[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    code = wait_all(processes[:1], 60)[0]
    processes[1].wait(timeout=10)
    assert code != 0
    assert time.monotonic() - killed_at < 60
    assert "another task died" in pathlib.Path(processes[0].log_path).read_text(), tail(
        processes[0]
    )


def test_missing_coordinator_gives_a_clear_error_in_bounded_time(tmp_path):
    started = time.monotonic()
    process = launch(1, free_port(), tmp_path / "run", CONFIG, tmp_path,
                     "--initialization_timeout=3")  # fmt: skip
    code = wait_all([process], 60)[0]
    text = pathlib.Path(process.log_path).read_text()
    assert code == distributed.EXIT_JOIN_TIMEOUT, tail(process)
    assert "process 1 of 2" in text and "nothing answers at the coordinator address" in text
    assert time.monotonic() - started < 60


def test_settings_from_flags_and_environment():
    assert distributed.resolve_settings({}) is None
    assert distributed.resolve_settings({"SLURM_NTASKS": "1"}) is None
    assert distributed.resolve_settings({"JAX_NUM_PROCESSES": "1"}) is None
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "3"}  # fmt: skip
    settings = distributed.resolve_settings(env, heartbeat_timeout_s=7)
    assert (settings.coordinator_address, settings.num_processes, settings.process_id) == (
        "10.0.0.1:1234", 4, 3
    )  # fmt: skip
    assert settings.heartbeat_timeout_s == 7
    assert distributed.resolve_settings(env, process_id=0).process_id == 0  # flags win
    # SLURM / Open MPI / TPU: JAX detects everything, we pass None through.
    auto = distributed.resolve_settings({"SLURM_NTASKS": "8"})
    assert auto is not None and auto.coordinator_address is None and auto.process_id is None
    assert distributed.resolve_settings({}, multi_host=True).num_processes is None
    assert main.wants_multi_host({"JAX_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="needs all of .*JAX_PROCESS_ID \\(got None\\)"):
        distributed.resolve_settings({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="JAX_PROCESS_ID=2: must be in \\[0, 2\\)"):
        distributed.resolve_settings({}, coordinator_address="h:1", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="give host:port"):
        distributed.resolve_settings({}, coordinator_address="h", num_processes=2, process_id=0)
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two': give a whole number"):
        distributed.resolve_settings({"JAX_NUM_PROCESSES": "two"})
    with pytest.raises(ValueError, match="--heartbeat_timeout=0"):
        distributed.resolve_settings(env, heartbeat_timeout_s=0)


def test_stall_watchdog_fires_only_without_progress():
    stalls = []
    watchdog = distributed.start_stall_watchdog(0.4, on_stall=stalls.append)
    try:
        for _ in range(8):  # 0.8 s of steady progress: no alarm
            time.sleep(0.1)
            distributed.note_progress()
        assert not stalls
        time.sleep(1.0)  # then nothing moves
        assert watchdog.expired and len(stalls) == 1
        assert "made no progress" in stalls[0] and "--stall_timeout" in stalls[0]
    finally:
        distributed.stop_stall_watchdog()
    assert distributed.start_stall_watchdog(0) is None  # 0 turns it off
    distributed.note_progress()  # harmless without a watchdog


def test_global_batch_needs_whole_data_rows_per_process():
    def fake_mesh(process_of_device, shape):
        devices = np.array([types.SimpleNamespace(process_index=p) for p in process_of_device])
        return types.SimpleNamespace(devices=devices.reshape(shape), axis_names=("data", "model"),
                                     shape={"data": shape[0], "model": shape[1]})  # fmt: skip

    one_host = fake_mesh([0] * 8, (4, 2))
    assert sharding.data_rows_per_process(one_host) == {0: [0, 1, 2, 3]}
    # A `model` group split across hosts would need the same data on both: rejected.
    with pytest.raises(ValueError, match="data row 0 spans processes \\[0, 1\\]"):
        sharding.data_rows_per_process(fake_mesh([0, 1] * 4, (4, 2)))
    mesh = sharding.make_mesh({"shape": (-1, 1)})
    batch = sharding.make_global_batch({"x": np.arange(16).reshape(8, 2)}, mesh)
    assert batch["x"].shape == (8, 2) and batch["x"].sharding.spec[0] == "data"
