"""``nbssm generate MODEL_DIR --prompt TEXT`` (or ``--ids``): stream tokens from a local checkpoint."""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="checkpoint directory: config.json + model.safetensors (or shards with an index)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (needs tokenizer.json and the 'tokenizers' package)")
    src.add_argument("--ids", help="prompt token ids, comma- or space-separated, e.g. '1,2,3'")
    parser.add_argument("--max-new-tokens", "-n", type=int, default=32, help="tokens to generate (default 32)")
    parser.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    parser.add_argument("--stop-at-eos", action="store_true", help="stop at the config's eos_token_id")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="compute dtype (default float32)")
    parser.add_argument("--print-ids", action="store_true", help="print token ids even when a tokenizer is present")


def _parse_ids(text: str) -> list[int]:
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--ids must be integers separated by commas or spaces, got {text!r}") from None
    if not ids:
        raise ValueError("--ids needs at least one token id")
    return ids


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .config import UnsupportedConfigError
    from .loading import CheckpointError
    from .model import MambaLM

    out, err = sys.stdout, sys.stderr
    try:
        t0 = time.perf_counter()
        model = MambaLM.from_pretrained(args.model_dir, dtype=np.dtype(args.dtype))
        load_s = time.perf_counter() - t0
        tok = model.tokenizer
        if args.prompt is not None:
            if tok is None:
                print(f"error: {args.model_dir} has no usable tokenizer (tokenizer.json + the 'tokenizers' package); "
                      "use --ids", file=err)
                return 2
            ids = tok.encode(args.prompt)
            if ids.size == 0:
                print("error: the prompt encodes to no tokens", file=err)
                return 2
        else:
            ids = np.asarray(_parse_ids(args.ids), dtype=np.int64)
        eos = model.config.eos_token_id if args.stop_at_eos else None
        t1 = time.perf_counter()
        gen = model.generate(ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             seed=args.seed, eos_token_id=eos)
        prefill_s = time.perf_counter() - t1
    except (CheckpointError, UnsupportedConfigError, FileNotFoundError, ValueError, TypeError, ImportError) as exc:
        print(f"error: {exc}", file=err)
        return 2
    as_text = tok is not None and not args.print_ids
    if as_text:
        out.write(args.prompt if args.prompt is not None else tok.decode(ids))
    else:
        out.write(" ".join(str(int(i)) for i in ids) + " |")
    out.flush()
    produced: list[int] = []
    shown = ""
    for token in gen:
        produced.append(token)
        if as_text:
            text = tok.decode(produced)  # decode the whole tail: multi-token characters come out whole
            out.write(text[len(shown):])
            shown = text
        else:
            out.write(f" {token}")
        out.flush()
        if eos is not None and token == eos:
            break
    out.write("\n")
    out.flush()
    print(f"[nbssm] {len(produced)} tokens in {gen.decode_seconds:.3f} s decode: {gen.tokens_per_second:.1f} tokens/s "
          f"(prompt {ids.size} tokens, prefill {prefill_s:.3f} s, load {load_s:.2f} s)", file=err)
    return 0
