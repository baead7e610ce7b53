"""Check data files against ``checksums.sha256``: ``python datasets/verify.py <data folder>``."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

CHECKSUMS = Path(__file__).with_name("checksums.sha256")


def verify(root: Path) -> list[str]:
    """Return one line per file: ``ok``, ``MISSING`` or ``MISMATCH`` and its path."""
    lines = []
    for entry in CHECKSUMS.read_text().splitlines():
        expected, name = entry.split(maxsplit=1)
        path = root / name
        if not path.is_file():
            lines.append(f"MISSING  {name}")
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{'ok' if digest == expected else 'MISMATCH':<8} {name}")
    return lines


if __name__ == "__main__":
    results = verify(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"))
    print("\n".join(results))
    sys.exit(any(not line.startswith("ok") for line in results))
