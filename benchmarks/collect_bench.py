"""A markdown table of every ``bench.json`` under a folder (what ``vlkit bench`` wrote), for RESULTS.md.

    python benchmarks/collect_bench.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(result: dict) -> str:
    env = result["environment"]
    eff = "—" if result.get("effective_mfu") is None else f"{100 * result['effective_mfu']:.1f}%"
    return (f"| {result['recipe']} {' '.join(result.get('overrides', []))} | {env.get('gpu') or env.get('cpu')} | "
            f"{result['backend']} | {result['precision']} | {result['batch_size']} | {result['text_len_mean']:.1f} | "
            f"{result['samples_per_s']:.1f} | {result['step_ms_median']:.1f} | "
            f"{result['executed_flops_per_sample'] / 1e9:.4g} | {100 * result['mfu']:.1f}% | {eff} | "
            f"{result['peak_mem_bytes'] / 2**30:.1f} GiB |")


def main(folder: str) -> None:
    results = [json.loads(p.read_text()) for p in sorted(Path(folder).rglob("bench.json"))]
    print("| recipe | device | backend | precision | batch | text len | samples/s | step ms | GF/sample | MFU "
          "| effective MFU | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        print(row(result))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-gpu")
