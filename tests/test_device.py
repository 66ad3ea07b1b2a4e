"""How a trial's process allocates: glibc keeps freed memory for the next step."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from vb_sweep.device import RETURN_FREED_MEMORY_VARIABLE

# Allocates and fills a 64 MiB tensor (an activation of the small CNN at batch 512) again and
# again, and prints the minor page faults of the last eight times: what each training step pays
# when the memory of the step before went back to the kernel. (The first few times the retained
# heap still grows: small objects land above the freed block.)
FAULTS_PER_STEP = """
import resource, sys, torch
from vb_sweep.device import retain_freed_memory
print(retain_freed_memory(), file=sys.stderr)
def step():
    torch.empty(16 << 20).fill_(1.0)
for _ in range(24):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 8)
"""


def faults_per_step(return_freed: bool) -> tuple[int, str]:
    env = {**os.environ, RETURN_FREED_MEMORY_VARIABLE: "1" if return_freed else "0"}
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP], env=env, text=True,
                          capture_output=True, check=True)
    return int(done.stdout), done.stderr.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_reused_without_new_page_faults():
    returned, took_returned = faults_per_step(return_freed=True)
    retained, took_retained = faults_per_step(return_freed=False)
    assert (took_returned, took_retained) == ("False", "True")
    assert returned >= 16  # 64 MiB of fresh pages: 16,384 of 4 KiB, 32 of 2 MiB
    assert retained < returned / 20
