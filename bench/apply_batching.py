"""Why updates are integrated in batches: yrs's cost per transaction grows with the length of
the run an author typed without interruption (it copies the merged block).

    .venv/bin/python bench/apply_batching.py     # one JSON line per run length
"""

from __future__ import annotations

import json
import time
from typing import Any

from pycrdt import Doc, Text, merge_updates


def main() -> None:
    source: Doc[Any] = Doc()
    text = source.get("t", type=Text)
    updates: list[bytes] = []
    source.observe(lambda event: updates.append(event.update))
    for _ in range(20_000):
        text.insert(len(text), "x" * 50)  # one author appending: one growing run
    for done in (1_000, 10_000, 19_000):
        row: dict[str, Any] = {"run_chars": done * 50}
        for batch in (1, 10, 100):
            doc: Doc[Any] = Doc()
            doc.apply_update(merge_updates(*updates[:done]))
            sample = updates[done:done + 1000]
            started = time.perf_counter()
            for index in range(0, len(sample), batch):
                chunk = sample[index:index + batch]
                doc.apply_update(chunk[0] if batch == 1 else merge_updates(*chunk))
            row[f"us_per_update_batch_{batch}"] = round(
                (time.perf_counter() - started) / len(sample) * 1e6, 1)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
