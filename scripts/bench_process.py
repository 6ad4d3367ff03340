"""Child processes of scripts/bench.py: running one with its output in files and a time limit, and watching
the GPU's memory while it runs. Standard library only."""

import os
import shutil
import signal
import subprocess
import threading


class MemoryPoller:
    """Largest nvidia-smi memory.used (bytes) of one GPU while a run is going; None without nvidia-smi."""

    def __init__(self, gpu_index, interval=0.5):
        self.gpu_index = gpu_index
        self.interval = interval
        self.peak = None
        self._stop = threading.Event()
        self._thread = None

    def read(self):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                  f"--id={self.gpu_index}"], capture_output=True, text=True, timeout=10)
            return int(out.stdout.strip().splitlines()[0]) * 2**20 if out.returncode == 0 else None
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _loop(self):
        while not self._stop.wait(self.interval):
            used = self.read()
            if used is not None:
                self.peak = used if self.peak is None else max(self.peak, used)

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()


def visible_gpu_index():
    """nvidia-smi's index of CUDA device 0 (the first CUDA_VISIBLE_DEVICES entry when that is a number)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return first if first.isdigit() else "0"


def run_process(cmd, stdout_path, stderr_path, timeout, env=None):
    """Runs cmd with output to files; returns (exit code, timed out). On timeout the process group is
    sent SIGTERM, then SIGKILL 15 s later."""
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
        except OSError as e:
            err.write(f"error: cannot start {cmd[0]}: {e.strerror}\n")
            return 127, False
        try:
            return proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            return proc.wait(), True
