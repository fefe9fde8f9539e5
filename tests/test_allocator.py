"""keep_freed_memory: freed blocks are reused instead of being page-faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

import fcnseg.cli as cli

# Allocate and free a 64 MiB block twenty times and count the page faults of the last ten.
# Without the setting glibc unmaps the block on every free, so each new one faults in all
# 16,384 of its 4 KiB pages (fewer with transparent huge pages). With it, the freed block is
# reused once the heap has settled: the first reuses can miss (posix_memalign's alignment
# padding; on some hosts the first six blocks fault in anew), hence the warm-up.
PROBE = """
import resource
import torch
from fcnseg.allocator import keep_freed_memory

applied = keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(16 << 20).fill_(1.0)
before = faults()
for _ in range(10):
    torch.empty(16 << 20).fill_(1.0)
print(applied, faults() - before)
"""
PAGES_PER_BLOCK = 16384


def _probe(**env: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_reused_without_page_faults():
    applied, faults = _probe(FCNSEG_MALLOC="")
    assert applied
    assert faults < 5 * PAGES_PER_BLOCK  # 10 * 16,384 when every block is mapped anew


@pytest.mark.slow
def test_opt_out_leaves_malloc_alone():
    applied, _ = _probe(FCNSEG_MALLOC="system")
    assert not applied


def test_training_commands_apply_it_and_inference_does_not(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1))
    status = cli.main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "none"),
                       "--out", str(tmp_path / "run")])
    assert status == 2 and calls == [1]
    status = cli.main(["predict", "--checkpoint", str(tmp_path / "missing.pt"),
                       str(tmp_path / "x.png"), "--out", str(tmp_path / "out")])
    assert status == 2 and calls == [1]
