"""Load mutants of a real EDM snapshot and say how each ended (run by test_trust in a child process,
so its peak memory is its own). Usage: python fuzz_pickles.py FOLDER COUNT [SEED]

The snapshot's bytes do not depend on FOLDER (its hostile marker is named relative to it), so a
seed gives the same mutants on every machine."""

from __future__ import annotations

import json
import os
import pickletools
import random
import resource
import warnings
import sys
from pathlib import Path

import torch
from conftest import TINY_NET
from edm_pickle_writer import write_edm_snapshot

from skipsearch.errors import CheckpointError
from skipsearch.models.edm import EDMPrecond
from skipsearch.models.loading import load_network

OPCODES = [op.code.encode("latin-1") for op in pickletools.opcodes]


def mutants(good: bytes, count: int, rng: random.Random) -> list[bytes]:
    out = []
    for i in range(count):
        data = bytearray(good)
        kind = i % 4
        if kind == 0:  # random byte flips
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:  # an opcode where another was (found by scanning for opcode bytes)
            positions = [j for j in range(len(data)) if bytes(data[j:j + 1]) in OPCODES]
            for j in rng.sample(positions, k=min(3, len(positions))):
                data[j] = rng.choice(OPCODES)[0]
        elif kind == 2:  # truncation
            data = data[: rng.randrange(1, len(data))]
        else:  # a length field (4 or 8 little-endian bytes) made huge
            j = rng.randrange(len(data) - 8)
            data[j:j + 8] = rng.choice([2**31 - 1, 2**40, 3 << 30, 2**63 - 1]).to_bytes(8, "little")
        out.append(bytes(data))
    return out


def main() -> None:
    folder, count = Path(sys.argv[1]), int(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    os.chdir(folder)
    torch.manual_seed(0)
    good = write_edm_snapshot(EDMPrecond(**TINY_NET), TINY_NET, Path("good.pkl"), Path("marker")).read_bytes()
    report: dict[str, object] = {"mutants": 0, "loaded": 0, "refused": 0, "other": [], "warned": []}
    for i, data in enumerate(mutants(good, count, random.Random(seed))):
        path = Path(f"mutant-{i}.pkl")
        path.write_bytes(data)
        report["mutants"] += 1  # type: ignore[operator]
        with warnings.catch_warnings(record=True) as caught:  # a warning on stderr breaks the one-line error
            warnings.simplefilter("always")
            try:
                load_network(path)
                report["loaded"] += 1  # type: ignore[operator]
            except CheckpointError as e:
                assert "\n" not in str(e), str(e)
                report["refused"] += 1  # type: ignore[operator]
            except BaseException as e:  # noqa: BLE001 - what the test is looking for
                report["other"].append(f"mutant {i}: {type(e).__name__}: {str(e)[:200]}")  # type: ignore[union-attr]
        if caught:
            report["warned"].append(f"mutant {i}: {str(caught[0].message)[:200]}")  # type: ignore[union-attr]
        path.unlink()
    report["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    report["executed"] = Path("marker").exists()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
