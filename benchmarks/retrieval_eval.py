"""Retrieval evaluation at COCO 5k-test scale: 5,000 images × 25,000 captions through the chunked
evaluation (:func:`vlkit.eval.retrieval.evaluate_retrieval`): ITC over the whole gallery, then ITM
re-ranking of each query's top ``k``, with a tiny ALBEF at random init on random images and token ids
(the figures are about memory and time, not about recall).

    python benchmarks/retrieval_eval.py                      # 5000 × 25000, k 16, chunk 1024
    python benchmarks/retrieval_eval.py --k-test 0           # ITC only

Prints one JSON line: seconds for encoding, ITC + re-ranking; the process's peak resident memory
before and after scoring (``ru_maxrss``), and the bytes one whole ``N_i × N_t`` float32 score matrix
would take (what the chunking avoids: ALBEF holds three such matrices and sorts two); appends a
section to ``benchmarks/RESULTS.md`` unless ``--no-results``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from vlkit.build import build_encoder
from vlkit.eval.retrieval import encode_gallery, evaluate_retrieval
from vlkit.recipe import load_recipe


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--k-test", type=int, default=16)
    parser.add_argument("--query-chunk", type=int, default=1024)
    parser.add_argument("--pair-batch", type=int, default=1024)
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--no-results", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    recipe = load_recipe("albef/tiny", ["encoder.attention=sdpa", "encoder.text.vocab_size=30522"])
    encoder = build_encoder(recipe.encoder).eval()
    itm_head = torch.nn.Linear(64, 2)  # the tiny fusion width
    side = recipe.encoder.input_size
    n_texts = args.images * args.captions_per_image
    img2txt = [list(range(i * args.captions_per_image, (i + 1) * args.captions_per_image)) for i in range(args.images)]
    txt2img = [i for i in range(args.images) for _ in range(args.captions_per_image)]
    ids = torch.randint(1000, 30522, (n_texts, 30))
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    start = time.perf_counter()
    images = (torch.randn(min(256, args.images - i), 3, side, side) for i in range(0, args.images, 256))
    gallery = encode_gallery(encoder, images, ids, mask, batch_size=512, device=torch.device("cpu"))
    encoded = time.perf_counter()
    before = peak_rss_bytes()
    metrics = evaluate_retrieval(encoder, gallery, img2txt, txt2img, itm_head=itm_head, k_test=args.k_test,
                                 pair_batch=args.pair_batch, query_chunk=args.query_chunk)
    scored = time.perf_counter()
    row = {
        "images": args.images, "texts": n_texts, "k_test": args.k_test, "query_chunk": args.query_chunk,
        "encode_s": round(encoded - start, 1), "score_s": round(scored - encoded, 1),
        "fused_pairs": (args.images + n_texts) * args.k_test,
        "peak_rss_before_scoring_mb": round(before / 2**20),
        "peak_rss_after_scoring_mb": round(peak_rss_bytes() / 2**20),
        "whole_score_matrix_mb": round(args.images * n_texts * 4 / 2**20),
        "r_mean": round(metrics["r_mean"], 3), "chance_r1": 100 / args.images,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__}
    print(json.dumps(row))
    if not args.no_results:
        append_results(args.results, row, "python " + " ".join(sys.argv))


def append_results(path: Path, row: dict, command: str) -> None:
    """One RESULTS.md section with the figures of ``row``."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else ""
    lines = [f"\n## Retrieval evaluation at COCO scale — {time.strftime('%Y-%m-%d')}\n",
             f"Machine: {cpu}, {row['machine']}; Python {platform.python_version()}, torch {row['torch']}.  ",
             f"Command: `{command}`  ",
             "Tiny ALBEF at random init, random images and token ids (memory and time, not recall).\n",
             "| images | texts | k_test | query chunk | fused pairs | encode | ITC + re-rank | peak RSS before → after "
             "scoring | one whole score matrix |", "|---|---|---|---|---|---|---|---|---|",
             f"| {row['images']} | {row['texts']} | {row['k_test']} | {row['query_chunk']} | {row['fused_pairs']} "
             f"| {row['encode_s']} s | {row['score_s']} s | {row['peak_rss_before_scoring_mb']} → "
             f"{row['peak_rss_after_scoring_mb']} MB | {row['whole_score_matrix_mb']} MB |"]
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
