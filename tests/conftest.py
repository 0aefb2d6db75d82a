"""Test-session set-up: offline Hub, one thread. Shared helpers live in ``tests/helpers``."""

from __future__ import annotations

import os

import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models gain nothing from threads, and OpenMP spinning makes them many times slower on a busy 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
