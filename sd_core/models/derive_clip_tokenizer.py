"""Derive CLIP's ``vocab.json`` and ``merges.txt`` from the BPE table that ships in the ``open_clip_torch`` wheel.

Why: no hub is reachable, yet every Stable Diffusion text encoder needs the exact OpenAI CLIP tokenizer
(49408 tokens). open_clip's ``SimpleTokenizer`` builds that vocabulary from ``bpe_simple_vocab_16e6.txt.gz``
in a fixed order: the 256 byte symbols, the same symbols with ``</w>``, one token per merge (the first
48894 merges), then ``<|startoftext|>`` and ``<|endoftext|>``. This script writes the same order in the
Hugging Face file format. Run it once; its output is committed under ``configs/clip_tokenizer``:

    python -m sd_core.models.derive_clip_tokenizer [--bpe PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
from pathlib import Path

MERGE_COUNT = 49152 - 256 - 2
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
DEFAULT_OUT = Path(__file__).parent / "configs" / "clip_tokenizer"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (same order as open_clip's)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


def default_bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise SystemExit("open_clip_torch is not installed: pass --bpe PATH to bpe_simple_vocab_16e6.txt.gz")
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


def derive(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """Return (token -> id, merge lines) exactly as CLIP's tokenizer orders them."""
    with gzip.open(bpe_path) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = lines[1 : MERGE_COUNT + 1]
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [START_TOKEN, END_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("duplicate tokens in the derived vocabulary: the BPE file is not CLIP's")
    return vocab, merges


def write(out_dir: Path, bpe_path: Path) -> None:
    vocab, merges = derive(bpe_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bpe", type=Path, default=None, help="bpe_simple_vocab_16e6.txt.gz (default: open_clip's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    write(args.out, args.bpe or default_bpe_path())


if __name__ == "__main__":
    main()
