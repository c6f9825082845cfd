"""Devices, processes and precision: the config's compute fields, the launch checks the app, the
command line and the engine share (core.launch), the torchrun command a run of several processes
starts with, and the GPU lines of the training screen, drawn from a fake NVML probe."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from pynvml import NVMLError_GpuIsLost
from textual.app import App, ComposeResult

from core import device_usage, launch
from core.config import RunConfig, load_config, parse_config, precision_problem, save_config
from core.errors import UserError
from core.events import StepMetrics
from core.control import Control
from core.launch import AgreedControl, Gpus, accelerator_options, launch_env, launch_problems, local_gpus
from core.device_usage import gpu_stats
from sft_tui.detach import DetachedRun, engine_command, prepare_start
from sft_tui.session import Session
from sft_tui.widgets.train.stats import RunStats

AMPERE_PAIR = Gpus({0: True, 1: True})
VOLTA = Gpus({0: False})


def config(**compute) -> RunConfig:
    return parse_config({"compute": compute})


def only_problem(config: RunConfig, gpus: Gpus) -> UserError:
    (problem,) = launch_problems(config, gpus)
    return problem


# ---- the config -------------------------------------------------------------------------------------

def test_compute_fields_default_to_one_process_on_any_device_with_ddp():
    compute = RunConfig().compute
    assert (compute.nproc, compute.devices, compute.distributed) == (1, "auto", "ddp")
    assert config(devices=" 0, 2").compute.devices == "0,2"
    assert config(devices="CPU").compute.devices == "cpu"


@pytest.mark.parametrize("devices", ["gpu0", "0,,1", "1,1", "-1", ""])
def test_a_device_list_that_names_no_gpus_is_refused_with_the_forms_allowed(devices):
    with pytest.raises(UserError) as err:
        config(devices=devices)
    assert "compute.devices" in err.value.fields
    assert "auto, cpu or distinct GPU indices" in err.value.fields["compute.devices"]
    assert "nvidia-smi" in err.value.hint


def test_nproc_and_distributed_are_checked_by_pydantic():
    with pytest.raises(UserError) as err:
        config(nproc=0)
    assert "greater than or equal to 1" in err.value.fields["compute.nproc"]
    with pytest.raises(UserError) as err:
        config(distributed="deepspeed")
    assert "'ddp' or 'fsdp'" in err.value.fields["compute.distributed"]


# ---- the launch checks ------------------------------------------------------------------------------

def test_more_processes_than_gpus_names_compute_nproc_and_the_most_it_may_be():
    problem = only_problem(config(nproc=3), AMPERE_PAIR)
    assert problem.message == "compute.nproc 3 asks for more processes than devices: the run has 2 GPU(s) (0, 1)"
    assert problem.hint == "set compute.nproc to at most 2"
    assert problem.fields == {"compute.nproc": "3 processes but 2 GPU(s) (0, 1)"}
    assert launch_problems(config(nproc=2), AMPERE_PAIR) == []
    assert "1 GPU(s) (1)" in only_problem(config(nproc=2, devices="1"), AMPERE_PAIR).message


def test_several_processes_without_a_gpu_need_devices_cpu():
    problem = only_problem(config(nproc=2), Gpus({}))
    assert "the run has no NVIDIA GPU" in problem.message and "compute.devices: cpu" in problem.hint
    assert launch_problems(config(nproc=2, devices="cpu"), Gpus({})) == []
    assert launch_problems(config(nproc=1), Gpus({})) == [], "one process trains on the CPU as ever"


def test_a_gpu_the_machine_lacks_names_compute_devices():
    problem = only_problem(config(devices="0,3"), AMPERE_PAIR)
    assert problem.message == "compute.devices names GPU 3, which this machine does not have (GPUs 0, 1)"
    assert problem.fields == {"compute.devices": "no GPU 3 here (GPUs 0, 1)"}
    assert "no NVIDIA GPU" in only_problem(config(devices="0"), Gpus({})).message


def test_bf16_on_a_gpu_without_it_names_precision_and_the_precisions_that_work():
    problem = only_problem(RunConfig(precision="bf16"), VOLTA)
    assert problem.fields == {"precision": "bf16 is not supported by the GPUs of this run"}
    assert "fp16" in problem.hint and "fp32" in problem.hint
    assert launch_problems(RunConfig(precision="bf16"), AMPERE_PAIR) == []
    assert launch_problems(RunConfig(precision="bf16", compute={"devices": "cpu"}), VOLTA) == [], "bf16 on the CPU"
    assert precision_problem("bf16", cuda_available=True, bf16_gpus=False) is not None
    assert precision_problem("bf16", cuda_available=False, bf16_gpus=False) is None


def test_fp16_on_the_cpu_is_still_refused():
    assert only_problem(RunConfig(precision="fp16"), Gpus({})).fields == {"precision": "fp16 needs a CUDA GPU"}
    assert launch_problems(RunConfig(precision="fp16"), VOLTA) == []


class FakeNvml:
    """NVML's calls that local_gpus makes, for a machine with an Ampere GPU 0 and a Volta GPU 1."""

    NVMLError = NVMLError_GpuIsLost.__mro__[1]

    @staticmethod
    def nvmlDeviceGetCount():
        return 2

    @staticmethod
    def nvmlDeviceGetHandleByIndex(i):
        return i

    @staticmethod
    def nvmlDeviceGetCudaComputeCapability(handle):
        return (8, 0) if handle == 0 else (7, 0)


def test_local_gpus_reads_nvml_and_keeps_what_cuda_visible_devices_shows(monkeypatch):
    monkeypatch.setattr(launch, "_nvml", lambda: FakeNvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert local_gpus() == Gpus({0: True, 1: False})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert local_gpus() == Gpus({1: False})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,5,1")  # CUDA stops at the first that is not there
    assert local_gpus() == Gpus({0: True})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_gpus() == Gpus({})
    monkeypatch.setattr(launch, "_nvml", lambda: None)  # no NVML library: no NVIDIA GPU
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert local_gpus() == Gpus({})


class FakeMemoryNvml(FakeNvml):
    """One GPU whose driver reserves 614 MiB, as an H200 did: NVML's first memory call counts it as
    used, nvidia-smi (the second) does not."""

    MiB = 2**20
    second_version_works = True
    nvmlMemory_v2 = 0x2000028

    @staticmethod
    def nvmlDeviceGetCount():
        return 1

    @staticmethod
    def nvmlDeviceGetName(handle):
        return "NVIDIA H200"

    @staticmethod
    def nvmlDeviceGetUtilizationRates(handle):
        return SimpleNamespace(gpu=99)

    @classmethod
    def nvmlDeviceGetMemoryInfo(cls, handle, version=None):
        if version is None:
            return SimpleNamespace(used=9689 * cls.MiB, total=143771 * cls.MiB)
        if not cls.second_version_works:
            raise NVMLError_GpuIsLost()
        return SimpleNamespace(used=9075 * cls.MiB, total=143771 * cls.MiB)


def test_gpu_memory_is_what_nvidia_smi_shows_and_older_drivers_still_report(monkeypatch):
    monkeypatch.setattr(device_usage, "_nvml", lambda: FakeMemoryNvml)
    [gpu] = gpu_stats()
    assert (gpu["memory_used"], gpu["memory_total"], gpu["utilization"]) == (9075 * 2**20, 143771 * 2**20, 99)
    monkeypatch.setattr(FakeMemoryNvml, "second_version_works", False)
    assert gpu_stats()[0]["memory_used"] == 9689 * 2**20
    monkeypatch.delattr(FakeMemoryNvml, "nvmlMemory_v2")  # a pynvml without the second version
    assert gpu_stats()[0]["memory_used"] == 9689 * 2**20


def test_the_app_lists_launch_problems_by_field():
    session = Session(RunConfig(precision="bf16", compute={"nproc": 2}), gpus=VOLTA)
    problems = session.problems()
    assert problems["compute.nproc"] == "2 processes but 1 GPU(s) (0); set compute.nproc to at most 1"
    assert problems["precision"].startswith("bf16 is not supported by the GPUs of this run; use precision: fp16")
    session.update({"compute.nproc": 1, "precision": "fp32"})
    assert session.problems() == {}


def test_in_process_runs_cannot_take_several_processes_or_a_gpu_list():
    session = Session(RunConfig(compute={"nproc": 2, "devices": "cpu"}), gpus=VOLTA, in_process=True)
    assert session.problems() == {"compute.nproc": "--in-process trains one process; set compute.nproc: 1, "
                                                   "or start sft-tui without --in-process"}
    session.update({"compute.nproc": 1, "compute.devices": "0"})
    assert list(session.problems()) == ["compute.devices"]
    session.update({"compute.devices": "auto"})
    assert session.problems() == {}
    session.in_process = False
    session.update({"compute.nproc": 2, "compute.devices": "cpu"})
    assert session.problems() == {}, "a launched run takes CPU processes"


# ---- launching -----------------------------------------------------------------------------------

def test_several_processes_start_through_torchrun_on_the_chosen_gpus():
    many = RunConfig(compute={"nproc": 4, "devices": "2,3,4,5"})
    command, env = engine_command(many, ["run.yaml", "--engine"])
    assert command == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                       "-m", "sft_tui.cli", "train", "run.yaml", "--engine"]
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3,4,5" and env["PYTHONUNBUFFERED"] == "1"
    command, env = engine_command(RunConfig(), ["-", "--engine"])
    assert command == [sys.executable, "-m", "sft_tui.cli", "train", "-", "--engine"]
    assert launch_env(RunConfig(compute={"devices": "cpu"})) == {} == launch_env(RunConfig())


def test_a_start_of_several_processes_hands_them_the_config_in_the_run_folder(tmp_path, monkeypatch):
    """torchrun's processes would share one stdin: they read the resolved config from config.yaml."""
    monkeypatch.setattr(launch, "local_gpus", lambda: Gpus({}))
    many = RunConfig(compute={"nproc": 2, "devices": "cpu"}, output={"runs_dir": str(tmp_path), "run_name": "r"})
    start = prepare_start(many)
    assert (start.args, start.stdin) == ([str(tmp_path / "r" / "config.yaml")], None)
    assert load_config(tmp_path / "r" / "config.yaml") == many == start.config
    one = prepare_start(RunConfig(output={"runs_dir": str(tmp_path), "run_name": "s"}))
    assert one.args == ["-"] and "run_name: s" in one.stdin and not (tmp_path / "s" / "config.yaml").exists()
    with pytest.raises(UserError, match="compute.nproc 2 asks for more processes than devices"):
        prepare_start(RunConfig(compute={"nproc": 2}, output={"runs_dir": str(tmp_path), "run_name": "t"}))


def test_the_engine_refuses_several_processes_it_was_not_started_as(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(UserError) as err:
        accelerator_options(RunConfig(compute={"nproc": 2, "devices": "cpu"}))
    assert err.value.fields == {"compute.nproc": "needs a torchrun launch"} and "torchrun" in err.value.hint
    assert accelerator_options(RunConfig(compute={"devices": "cpu"})) == {"cpu": True, "fsdp_plugin": None}


def test_every_process_takes_rank_0s_commands_at_each_poll(monkeypatch):
    """Rank 1's view: its own Control hears nothing; each poll hands it what rank 0 was told."""
    rank0 = Control()

    def broadcast(objects):
        objects[0] = (rank0.paused, rank0.stop_requested, rank0.take_save_request(), rank0.take_eval_request())

    monkeypatch.setattr("accelerate.utils.broadcast_object_list", broadcast)
    mine = AgreedControl(Control())
    rank0.pause()
    rank0.save_now()
    mine.poll()
    assert mine.paused and mine.take_save_request() and not mine.take_save_request()
    rank0.resume()
    rank0.eval_now()
    mine.poll()
    assert not mine.paused and mine.take_eval_request() and not mine.stop_requested
    rank0.stop()
    mine.poll()
    assert mine.stop_requested
    signalled = AgreedControl(Control())
    signalled.stop()  # a signal to this process: the loop's agreement stops the others
    assert signalled.stop_requested and signalled.local.stop_requested


def test_fsdp_on_a_model_too_small_to_shard_is_a_warning_not_a_refusal(tiny_model_factory):
    small = RunConfig(task="causal-lm", model={"name_or_path": str(tiny_model_factory("llama"))},
                      compute={"distributed": "fsdp", "nproc": 2, "devices": "0,1"})
    assert launch_problems(small, Gpus({0: True, 1: True})) == []
    warning, = launch.launch_warnings(small, cpu=False, params=lambda: launch.model_params(small))
    assert "too few to gain from sharding" in warning and "distributed: ddp" in warning
    assert launch.fsdp_plugin(small).fsdp_version == 2
    assert launch.launch_warnings(small, cpu=False, params=lambda: 10**9) == []
    assert launch.launch_warnings(small, cpu=False, params=lambda: None) == [], "not known yet: nothing to say"
    assert launch.fsdp_plugin(RunConfig()) is None
    assert launch.fsdp_plugin(small, cpu=True) is None, "accelerate shards no CPU processes"


def test_fsdp_on_cpu_processes_and_more_processes_than_cores_are_said_once_before_training(monkeypatch, caplog):
    """The engine's processes train on the CPU as DDP and share its cores: rank 0 says so in the run's
    log, the other ranks say nothing; a model that is never counted (params) costs no skeleton."""
    monkeypatch.setattr(launch, "usable_cores", lambda: 2)
    config = RunConfig(compute={"distributed": "fsdp", "nproc": 3, "devices": "cpu"})
    expected = ["compute.distributed fsdp shards across GPUs: processes on the CPU train as ddp",
                "compute.nproc 3: 3 processes share 2 CPU cores and slow each other down; 2 or fewer train faster"]
    assert launch.launch_warnings(config, cpu=True, params=lambda: pytest.fail("counted")) == expected
    assert launch.launch_warnings(config.model_copy(update={"compute": config.compute.model_copy(update={"nproc": 2})}),
                                  cpu=True, params=lambda: 0) == expected[:1]
    monkeypatch.setenv("WORLD_SIZE", "3")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="core.engine"):
            assert launch.accelerator_options(config) == {"cpu": True, "fsdp_plugin": None}
        assert [r.getMessage() for r in caplog.records] == (expected if rank == "0" else [])


def test_the_command_line_refuses_more_processes_than_devices_before_starting_any(tmp_path):
    path = tmp_path / "run.yaml"
    save_config(RunConfig(output={"runs_dir": str(tmp_path / "runs")}), path)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, whatever this machine has
    done = subprocess.run([sys.executable, "-m", "sft_tui.cli", "train", str(path), "--nproc", "2"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: compute.nproc 2 asks for more processes than devices")
    assert "hint: set compute.nproc: 1, or compute.devices: cpu" in done.stderr
    assert not (tmp_path / "runs").exists(), "nothing started"


def test_nproc_cannot_change_a_run_being_resumed(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sft_tui.cli", "train", "--resume", str(tmp_path), "--nproc", "2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--set and --nproc cannot change a run being resumed" in done.stderr


def test_a_detached_start_knows_its_engine_under_torchrun_by_its_workers():
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                               "subprocess.run([sys.executable, '-c', 'import time; time.sleep(30)'])"])
    try:
        import psutil

        from core.liveness import ProcessRecord

        while not psutil.Process(parent.pid).children():
            pass
        worker = psutil.Process(parent.pid).children()[0]
        launched = ProcessRecord.of_process(parent.pid)
        run = DetachedRun(paths=None, process=parent, launch_record=launched)
        assert not run.engine_started(None) and not run.engine_started(launched)
        assert run.engine_started(ProcessRecord.of_process(worker.pid)), "rank 0 holds the run folder"
        assert not run.engine_started(ProcessRecord.of_process(os.getpid()))
    finally:
        for child in psutil.Process(parent.pid).children():
            child.kill()
        parent.kill()
        parent.wait()


# ---- the GPU lines of the training screen -------------------------------------------------------

def two_gpus():
    return [{"index": i, "name": "NVIDIA H200", "memory_used": (i + 1) * 2**30, "memory_total": 140 * 2**30,
             "utilization": 90 + i} for i in range(2)]


class StatsApp(App):
    def compose(self) -> ComposeResult:
        yield RunStats()


async def shown(monkeypatch, probe, metrics: StepMetrics | None = None) -> str:
    monkeypatch.setattr(RunStats, "gpu_probe", staticmethod(probe))
    app = StatsApp()
    async with app.run_test() as pilot:
        stats = app.query_one(RunStats)
        if metrics is not None:
            stats.add_step(metrics)
            stats.show_last()
        await pilot.pause()
        return str(stats.render())


async def test_each_gpu_gets_a_line_with_its_memory_and_utilisation(monkeypatch):
    metrics = StepMetrics(step=3, epoch=0.1, loss=1.5, lr=1e-4, grad_norm=None, tokens_per_s=10.0, samples_per_s=1.0,
                          tokens_seen=30, elapsed_s=3.0, eta_s=None, memory={"rss_bytes": 2**30, "gpu0_allocated_bytes": 2**29,
                                                                 "gpu0_max_allocated_bytes": 2**30,
                                                                 "gpu1_allocated_bytes": 2**28})
    text = await shown(monkeypatch, two_gpus, metrics)
    assert "\nGPU 0: 1.0 GB/140.0 GB · util 90%" in text and "\nGPU 1: 2.0 GB/140.0 GB · util 91%" in text
    assert "torch cuda:0 512.0 MB, cuda:1 256.0 MB" in text
    assert "no GPU" not in text


async def test_no_gpu_and_a_gpu_that_stops_answering_are_said_in_a_line(monkeypatch):
    assert (await shown(monkeypatch, lambda: [])).endswith("\nno GPU")

    def lost():
        raise NVMLError_GpuIsLost()

    text = await shown(monkeypatch, lost)
    assert "GPU stats stopped: NVML says" in text and "no GPU" not in text
