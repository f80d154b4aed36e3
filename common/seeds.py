"""Seeds: every random draw in fedcmr starts from a seed derived from recorded inputs (the
run seed, the fold, the round, the site, the sample), never from what ran before it."""

from __future__ import annotations

import random
import zlib

import numpy as np


def derive_seed(*parts: object) -> int:
    """A 32-bit seed from its parts: CRC-32 of their text joined by ':'."""
    return zlib.crc32(":".join(str(p) for p in parts).encode())


def seed_run(seed: int):
    """Seed every RNG from the run's seed (not the process's history), and return a
    torch generator for data order."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
