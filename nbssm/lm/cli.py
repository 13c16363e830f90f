"""``nbssm generate MODEL_DIR --prompt TEXT`` (or ``--ids``): stream tokens from a local checkpoint.

Every option is validated by the argument parser before the checkpoint is read (a bad value
exits with status 2 and an argparse-style message). Exit status: 0 done, 2 bad arguments or a
checkpoint that cannot be used (the message names the file), 1 generation failed midway (e.g.
non-finite logits), 130 interrupted.

On stderr: one line ``compiling kernels, first run only; ...`` when the kernel cache holds no
compiled kernels of those the run needs for the model's dtype (checked cheaply from the cache's
index files, before anything compiles), and at the end the decode rate with the time to the
first token split into Python imports, checkpoint load, kernels (compiled, or loaded from the
cache) and prefill; ``--timings`` adds the same as one JSON line (``[nbssm] timings: {...}``).

Cold start: a prompt of at most :data:`nbssm.lm.model.STEP_PREFILL_MAX_TOKENS` tokens is
prefilled by the decode kernel, so the run needs that one kernel only; longer prompts also need
the prefill path's scan and convolution kernels. When the decode kernel is not in the cache, a
child process starts compiling it (into the cache) before the checkpoint is read, so compiling
and reading overlap (:func:`nbssm._warmup.compile_decode_aside`); when it is in the cache, a
thread loads it while the checkpoint is read (:func:`nbssm._warmup.preload_decode`). "kernels"
in the timings is what is left of either after the load, plus the prefill kernels of a long
prompt. Warm start: the checkpoint's read starts in a thread before Numba and the kernels'
modules are imported (:func:`start_early`, :func:`nbssm.lm.loading.prefetch_checkpoint`), so
"checkpoint load" is what is left of the read after the imports.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

COMPILING_MESSAGE = "compiling kernels, first run only; later runs load them from the cache"


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
    parser.add_argument("--timings", action="store_true",
                        help="also print the time to the first token, split into imports, checkpoint load, kernels "
                             "(compile or cache load) and prefill, as one JSON line on stderr")


class _EarlyParser(argparse.ArgumentParser):
    """A parser that raises instead of printing and exiting (the early look at the arguments)."""

    def error(self, message):
        raise ValueError(message)


def start_early(argv: list[str]) -> None:
    """Work started before the command's parser and Numba are imported (``nbssm.cli`` calls it):
    the checkpoint named by ``argv`` is read in a thread during the imports
    (:func:`nbssm.lm.loading.prefetch_checkpoint`; the load takes its result). Arguments this
    look cannot parse start nothing: the real parser reports them."""
    parser = _EarlyParser(add_help=False)
    add_arguments(parser)
    parser.add_argument("--threads")  # the command's option, added with Numba's thread policy later
    try:
        args, _ = parser.parse_known_args(argv)
    except (ValueError, TypeError, SystemExit):
        return
    if not _loadable(args.model_dir, args.dtype, args.weights):
        return  # the load itself reports it
    from .loading import kept_format, prefetch_checkpoint

    prefetch_checkpoint(args.model_dir, args.dtype, keep=kept_format(args.weights))


def _loadable(model_dir: str, dtype: str, weights: str | None) -> bool:
    """A plausible checkpoint (``config.json`` present) and a dtype/weights pair the load
    accepts: the runs worth starting work for before the load."""
    return os.path.isfile(os.path.join(model_dir, "config.json")) and (
        weights in (None, dtype) or (dtype == "float32" and weights in ("bf16", "fp16", "int8")))


def _since_process_start() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime, field 22
        with open("/proc/uptime") as f:
            return max(float(f.read().split()[0]) - start, 0.0)
    except (OSError, ValueError, IndexError, AttributeError):  # pragma: no cover - not Linux
        return None


def kernel_cache_state(dtype, prefill: bool = True) -> str:
    """``"cached"``, ``"cold"`` (the first call compiles) or ``"no cache"`` for generate's kernels.

    Reads the kernel cache's index files of the decode step and (``prefill``: the kernels of
    :meth:`MambaLM.forward`, which prefills prompts longer than
    :data:`~nbssm.lm.model.STEP_PREFILL_MAX_TOKENS`) the prefill scan and convolution (no
    compiling, no loading): cold when one of them holds no compilation for ``dtype``.
    """
    import numpy as np

    from .._kernels._jit import cached_signatures
    from .._kernels.decode import decode_step

    kernels = [decode_step]
    if prefill:
        from .._kernels.conv import causal_conv1d_kernel
        from .._kernels.selective_scan import selective_scan_kernel

        kernels += [selective_scan_kernel, causal_conv1d_kernel]
    name = np.dtype(dtype).name
    state = "cached"
    for disp in kernels:
        sigs = cached_signatures(disp)
        if sigs is None:
            return "no cache"
        if not any(name in sig for sig in sigs):
            state = "cold"
    return state


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
    from .._warmup import compile_decode_aside, preload_decode, stop_aside, warmup_generate
    from .model import STEP_PREFILL_MAX_TOKENS

    reported: set = set()  # cache states already reported (each message at most once)

    def announce(state: str) -> None:
        if state == "cold" and state not in reported:
            print(f"[nbssm] {COMPILING_MESSAGE}", file=err, flush=True)
        elif state == "no cache" and state not in reported:
            print("[nbssm] compiling kernels (no kernel cache here: every run compiles; set NBSSM_CACHE_DIR to a "
                  "writable directory)", file=err, flush=True)
        reported.add(state)

    dtype = np.dtype(args.dtype)
    weights = getattr(args, "weights", None)
    aside = preload = None
    # every run needs the decode kernel: when the cache lacks it, a child compiles it while the
    # checkpoint is read, else a thread loads it from the cache meanwhile (only for a plausible
    # checkpoint and a valid dtype/weights pair)
    if _loadable(args.model_dir, dtype.name, weights):
        decode_state = kernel_cache_state(dtype, prefill=False)
        announce(decode_state)
        if decode_state == "cold":
            aside = compile_decode_aside(dtype, weights)
        elif decode_state == "cached":
            preload = preload_decode(dtype, weights)
    t_import = _since_process_start()  # imports, and the cache check above
    try:
        t0 = time.perf_counter()
        model = MambaLM.from_pretrained(args.model_dir, dtype=dtype, weights=weights)
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
        announce(kernel_cache_state(model.dtype, prefill=ids.size > STEP_PREFILL_MAX_TOKENS))
        cache_state = "no cache" if "no cache" in reported else "cold" if "cold" in reported else "cached"
        t1 = time.perf_counter()
        # compile or load exactly what generate calls, so the prefill is timed alone
        warmup_generate(model, aside, prompt_length=int(ids.size), preload=preload)
        kernels_s = time.perf_counter() - t1
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
    finally:
        stop_aside(aside)  # on an error before the kernels were ready (waited for otherwise)
    as_text = tok is not None and not args.print_ids
    if tok is not None and as_text:
        out.write(args.prompt if args.prompt is not None else tok.decode(ids))
    else:
        out.write(" ".join(str(int(i)) for i in ids) + " |")
    out.flush()
    produced: list[int] = []
    shown = ""
    first_s = None
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
            if first_s is None:
                first_s = time.perf_counter() - t0
            if eos is not None and token == eos:
                break
    except (ValueError, MemoryError) as exc:
        out.write("\n")
        out.flush()
        print(f"{prog}: error after {len(produced)} generated tokens: {exc}", file=err)
        return 1
    out.write("\n")
    out.flush()
    kernels = {"cached": "from cache", "cold": "compiled", "no cache": "compiled, no cache"}[cache_state]
    first = "" if first_s is None else f"; first token {first_s + (t_import or 0.0):.2f} s after start"
    print(f"[nbssm] {len(produced)} tokens in {gen.decode_seconds:.3f} s decode: {gen.tokens_per_second:.1f} tokens/s "
          f"(prompt {ids.size} tokens, imports {t_import or float('nan'):.2f} s, load {load_s:.2f} s, kernels "
          f"{kernels_s:.2f} s {kernels}, prefill {prefill_s:.3f} s{first})", file=err)
    if getattr(args, "timings", False):
        timings = {"import_s": t_import, "load_s": load_s, "kernels_s": kernels_s, "kernels": kernels,
                   "prefill_s": prefill_s, "first_token_after_load_s": first_s,
                   "first_token_s": None if first_s is None else first_s + (t_import or 0.0),
                   "decode_s": gen.decode_seconds, "tokens": len(produced), "prompt_tokens": int(ids.size)}
        print(f"[nbssm] timings: {json.dumps(timings)}", file=err)
    return 0
