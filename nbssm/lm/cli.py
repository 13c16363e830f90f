"""``nbssm generate MODEL_DIR --prompt TEXT`` (or ``--ids``): stream tokens from a local checkpoint.

Every option is validated by the argument parser before the checkpoint is read (a bad value
exits with status 2 and an argparse-style message). Exit status: 0 done, 2 bad arguments or a
checkpoint that cannot be used (the message names the file), 1 generation failed midway (e.g.
non-finite logits), 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import sys
import time


def _finite_nonneg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _ids(text: str) -> list[int]:
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas or spaces, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("expected at least one token id")
    if min(ids) < 0:
        raise argparse.ArgumentTypeError(f"expected token ids >= 0, got {min(ids)}")
    return ids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="checkpoint directory: config.json + model.safetensors (or shards with an index)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (needs tokenizer.json and the 'tokenizers' package)")
    src.add_argument("--ids", type=_ids, help="prompt token ids, comma- or space-separated, e.g. '1,2,3'")
    parser.add_argument("--max-new-tokens", "-n", type=_int_at_least(0), default=32, help="tokens to generate (default 32)")
    parser.add_argument("--temperature", "-t", type=_finite_nonneg, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-k", type=_int_at_least(1), default=None, help="sample among the k most likely tokens")
    parser.add_argument("--seed", type=_int_at_least(0), default=None, help="random seed for sampling")
    parser.add_argument("--stop-at-eos", action="store_true", help="stop at the config's eos_token_id")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="compute dtype (default float32)")
    parser.add_argument("--weights", choices=("float32", "bf16", "fp16", "int8"), default=None,
                        help="storage of the decode weights (default: the compute dtype; int8 for an int8 checkpoint)")
    parser.add_argument("--print-ids", action="store_true", help="print token ids even when a tokenizer is present")


def _parse_ids(text: str) -> list[int]:
    """Token ids from ``--ids`` text (kept for callers of the previous version)."""
    try:
        return _ids(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"--ids: {exc}") from None


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .config import UnsupportedConfigError
    from .loading import CheckpointError
    from .model import MambaLM
    from .sampling import check_sampling_args

    out, err = sys.stdout, sys.stderr
    prog = "nbssm generate"
    ids_arg = args.ids
    if isinstance(ids_arg, str):  # a Namespace built by hand
        try:
            ids_arg = _parse_ids(ids_arg)
        except ValueError as exc:
            print(f"{prog}: error: {exc}", file=err)
            return 2
    try:
        check_sampling_args(args.temperature, args.top_k, args.seed, where=prog)
    except (TypeError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=err)
        return 2
    try:
        t0 = time.perf_counter()
        model = MambaLM.from_pretrained(args.model_dir, dtype=np.dtype(args.dtype), weights=getattr(args, "weights", None))
        load_s = time.perf_counter() - t0
        tok = model.tokenizer
        if args.prompt is not None:
            if tok is None:
                print(f"{prog}: error: {args.model_dir} has no usable tokenizer (tokenizer.json + the 'tokenizers' "
                      "package); use --ids", file=err)
                return 2
            ids = tok.encode(args.prompt)
            if ids.size == 0:
                print(f"{prog}: error: --prompt: the prompt encodes to no tokens", file=err)
                return 2
        else:
            ids = np.asarray(ids_arg, dtype=np.int64)
            V = model.config.vocab_size
            if ids.max() >= V:
                print(f"{prog}: error: --ids: token ids must lie in [0, {V}), got {int(ids.max())}", file=err)
                return 2
        eos = model.config.eos_token_id if args.stop_at_eos else None
        t1 = time.perf_counter()
        gen = model.generate(ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             seed=args.seed, eos_token_id=eos)
        prefill_s = time.perf_counter() - t1
    except (CheckpointError, UnsupportedConfigError, FileNotFoundError, ValueError, TypeError, ImportError) as exc:
        print(f"{prog}: error: {exc}", file=err)
        return 2
    except MemoryError:
        print(f"{prog}: error: {args.model_dir}: not enough memory to load and run this checkpoint", file=err)
        return 1
    as_text = tok is not None and not args.print_ids
    if tok is not None and as_text:
        out.write(args.prompt if args.prompt is not None else tok.decode(ids))
    else:
        out.write(" ".join(str(int(i)) for i in ids) + " |")
    out.flush()
    produced: list[int] = []
    shown = ""
    try:
        for token in gen:
            produced.append(token)
            if tok is not None and as_text:
                text = tok.decode(produced)  # decode the whole tail: multi-token characters come out whole
                out.write(text[len(shown):])
                shown = text
            else:
                out.write(f" {token}")
            out.flush()
            if eos is not None and token == eos:
                break
    except (ValueError, MemoryError) as exc:
        out.write("\n")
        out.flush()
        print(f"{prog}: error after {len(produced)} generated tokens: {exc}", file=err)
        return 1
    out.write("\n")
    out.flush()
    print(f"[nbssm] {len(produced)} tokens in {gen.decode_seconds:.3f} s decode: {gen.tokens_per_second:.1f} tokens/s "
          f"(prompt {ids.size} tokens, prefill {prefill_s:.3f} s, load {load_s:.2f} s)", file=err)
    return 0
