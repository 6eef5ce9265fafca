"""SLURM for real: a one-node cluster on localhost (slurm/start_local_slurm.sh) runs slurm/cpu.sh on the tiny
model; the preemption signal mid-run makes the job save, requeue itself and resume, and it ends bitwise where an
uninterrupted run ends."""
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT, call, make_rows, write_classes, write_csv
from test_resume import assert_same_run, final_state, one_thread  # noqa: F401 (one_thread: autouse fixture)

SLURM = os.path.join(ROOT, "slurm")


def install_slurm() -> str:
    """Install Debian's slurm-wlm and munge if missing; the reason they cannot be, or ''."""
    if shutil.which("slurmctld") and shutil.which("munged") and shutil.which("sbatch"):
        return ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "slurm-wlm and munge are not installed, and installing them needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:  # package lists may be empty or stale
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return f"apt-get install slurm-wlm munge failed: {done.stderr.strip().splitlines()[-1:]}"
    return ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Environment for SLURM's commands, talking to a one-node cluster that is stopped afterwards."""
    reason = install_slurm()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "SLURM_LOCAL_DIR": str(tmp_path_factory.mktemp("slurm"))}
    started = subprocess.run(["bash", os.path.join(SLURM, "start_local_slurm.sh")], env=env, capture_output=True,
                             text=True, timeout=120)
    env["SLURM_CONF"] = os.path.join(env["SLURM_LOCAL_DIR"], "etc", "slurm.conf")
    try:
        assert started.returncode == 0, started.stderr
        yield env
    finally:
        subprocess.run(["bash", os.path.join(SLURM, "stop_local_slurm.sh")], env=env, capture_output=True,
                       timeout=120)


def job_info(env, job_id: str) -> dict:
    shown = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", shown))


def wait_for(condition, seconds: float, what: str, log: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    text = open(log, encoding="utf-8", errors="replace").read()[-3000:] if os.path.exists(log) else ""
    pytest.fail(f"timed out waiting for {what}; job output:\n{text}")


def preempted_and_requeued(cluster, script: str, sbatch: list, args: list, save, log: str,
                           env: dict = None) -> str:
    """Submit `script`, send the batch shell USR1 once a checkpoint exists, release the requeued job at once and
    wait for its end; the job's output, after checking it ran twice and completed."""
    from resume import resume_root, step_folders
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={ROOT}", "--mem=2G", f"--output={log}", *sbatch,
         os.path.join(SLURM, script), *args, "--save_path", str(save)],
        env={**cluster, "PYTHON": sys.executable, **(env or {})}, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    wait_for(lambda: step_folders(resume_root(str(save))), 180, "the first resumable checkpoint", log)
    assert job_info(cluster, job)["JobState"] == "RUNNING"
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=cluster, check=True, timeout=30)
    wait_for(lambda: job_info(cluster, job).get("Restarts") == "1" and job_info(cluster, job)["JobState"] == "PENDING",
             120, "the job to requeue itself", log)
    # A requeued job waits ~120 s before it may start again. Started sooner, within the second its first run's
    # credential was revoked, slurmd refuses it ("Job credential revoked"): wait for the node, then a moment.
    wait_for(lambda: subprocess.run(["sinfo", "-h", "-o", "%t"], env=cluster, capture_output=True,
                                    text=True).stdout.strip() == "idle", 60, "the node to be idle again", log)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=cluster, check=True, timeout=30)
    wait_for(lambda: job_info(cluster, job)["JobState"] in ("COMPLETED", "FAILED", "CANCELLED"), 300,
             "the requeued job to finish", log)
    info, output = job_info(cluster, job), open(log, encoding="utf-8").read()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", output[-3000:]
    assert f"== job {job} start 0" in output and f"== job {job} start 1" in output  # one log, both runs
    assert "preemption signal: stopped after update" in output
    assert re.search(r"resumed from .*/resume/step-\d{6}: epoch 1", output)
    return output


@pytest.fixture
def job_args(tiny_bert, tmp_path) -> list:
    classes = write_classes(tmp_path / "classes.json")
    # 1,200 rows = 135 updates, a few seconds: the job must still be training when USR1 arrives after its first
    # checkpoint (step 2); with 150 rows the faster loop finished before the signal reached it
    data = write_csv(tmp_path / "train.csv", make_rows(1200))
    return ["-d", classes, "--train_path", data, "--bert_name", tiny_bert, "--n_epochs", "1", "--batch_size", "8",
            "--max_length", "32", "--lr_main", "3e-3", "--lr", "2e-2", "--precision", "fp32", "--log_every", "1000",
            "--save_every", "2"]


def test_cpu_job_preempted_requeues_itself_resumes_and_matches_an_uninterrupted_run(cluster, job_args, tmp_path):
    import train
    save = tmp_path / "job"
    output = preempted_and_requeued(cluster, "cpu.sh", ["--cpus-per-task=1"], job_args, save,
                                    str(tmp_path / "job.out"))
    assert "train.py exit code 75" in output and "train.py exit code 0" in output
    code, out, err = call(train.main, [*job_args, "-p", "False", "--device", "cpu", "--save_path",
                                       str(tmp_path / "ref")])
    assert code == 0, err
    assert_same_run(final_state(save), final_state(tmp_path / "ref"))


def test_multi_node_script_on_one_node_passes_the_signal_through_srun_and_torchrun(cluster, job_args, tmp_path):
    """slurm/multi_node.sh with one node and two CPU workers: srun -> torchrun -> workers, c10d rendezvous."""
    output = preempted_and_requeued(cluster, "multi_node.sh", ["--nodes=1", "--cpus-per-task=2", "--gpus-per-node=0"],
                                    [*job_args, "--device", "cpu"], tmp_path / "job", str(tmp_path / "job.out"),
                                    env={"NPROC_PER_NODE": "2"})
    assert "device cpu x2" in output and "Received 10 death signal" in output  # torchrun passed USR1 on
    assert "srun exit code 0" in output


def test_a_job_its_user_cancels_saves_and_stays_cancelled(cluster, job_args, tmp_path):
    """scancel sends TERM as preemption does: the job saves a resumable checkpoint and exits 75, but is not put
    back in the queue."""
    from resume import resume_root, step_folders
    save, log = tmp_path / "job", str(tmp_path / "job.out")
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={ROOT}", "--mem=2G", f"--output={log}", "--cpus-per-task=1",
         os.path.join(SLURM, "cpu.sh"), *job_args, "--save_path", str(save)],
        env={**cluster, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    wait_for(lambda: step_folders(resume_root(str(save))), 180, "the first resumable checkpoint", log)
    subprocess.run(["scancel", job], env=cluster, check=True, timeout=30)
    wait_for(lambda: "cancelled: not requeued" in open(log, encoding="utf-8").read(), 120, "the job's end", log)
    time.sleep(3)  # a requeue would show now
    info = job_info(cluster, job)
    assert info["JobState"] == "CANCELLED" and info.get("Restarts") == "0", info
    assert "train.py exit code 75" in open(log, encoding="utf-8").read()
