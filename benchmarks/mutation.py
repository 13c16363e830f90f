"""Mutation test of nbssm's evidence: do ``nbssm verify`` and the tests catch plausible bugs?

Each mutant in :data:`MUTANTS` is one plausible bug, written as exact text substitutions
(``file``, ``old`` -> ``new``; a few bugs need two edits of one file). The script checks
that every ``old`` snippet occurs exactly once in its file, so the list cannot silently rot:
a snippet that no longer matches is an error, not a skipped mutant.

For each mutant, in a throwaway copy of the working tree (tracked and untracked,
non-ignored files; ``nbssm`` and ``nbssm.spec`` are redirected into the copy by a
``sitecustomize`` that rewrites the editable install's mapping, and every run checks that
``nbssm.__file__`` and ``nbssm.spec.__file__`` point into the copy):

* ``nbssm verify --json`` (a failing row or a non-zero exit: caught; the failing rows are
  recorded). A ``spec/`` mutant runs every row; any other mutant runs the verify groups whose
  code lies outside ``nbssm.spec`` (kernel refinement, LM): the spec-level rows import nothing
  of nbssm above the spec (``tests/test_import_contract.py``), so they cannot change and the
  baseline proved them. ``--full-verify`` runs every row for every mutant.
* a pytest subset chosen for the mutated file (``-x -q``, with a timeout). A subset that runs
  past its timeout counts as caught-by-timeout only because the unmutated tree passed the same
  subset quickly; it is recorded as ``timeout``. ``--tests missed`` runs the subsets only for
  the mutants verify missed (enough for the survivor count), ``--tests none`` never.

Numba cache: every mutant gets its own new cache directory (``NBSSM_CACHE_DIR`` and
``NUMBA_CACHE_DIR``). nbssm's cache key is a hash of every file in ``nbssm/_kernels``
(:func:`nbssm._kernels._jit.source_key`). A mutant of a kernel file changes the key: its
directory starts empty, except that the baseline's entries of kernel modules that neither are
nor (transitively) import the mutated module are copied in, re-stamped with the new key (the
import closure is read from the kernel sources; ``--cold`` skips this, so that everything is
compiled from the mutant's sources). The script checks that the mutant's key differs from the
baseline's and that its directory was empty before. Any other mutant leaves every kernel
source byte-identical: its directory is a copy of the baseline's, and the script checks that
the key is the baseline's. ``nbssm/_config.py`` (whose values are frozen into compiled code)
counts as a kernel file.

The unmutated baseline runs first: it must pass ``nbssm verify`` and every test subset used,
otherwise the table is meaningless and the script stops. The tables are rewritten after every
mutant (a run cut short says how many mutants it did).

Usage::

    python benchmarks/mutation.py --list
    python benchmarks/mutation.py                    # all mutants; writes benchmarks/results/mutation.{md,json}
    python benchmarks/mutation.py --only sel_tile_carry,conv_tap_order --skip-tests --out /tmp/m
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --------------------------------------------------------------------------- test subsets
#: pytest arguments per subset name (node ids and -k filters)
G = "tests/test_mutation_guards.py"
NEW = "new_refinement_rows"
SUBSETS = {
    "selective": [G, "tests/test_ops_refinement.py", "tests/test_ops_extreme.py", "-k",
                  f"{NEW} or selective_float64_bitwise or selective_chunked_float64 or selective_vs_naive "
                  "or selective_without or selective_chunked_overflow or selective_float32 or float64_softplus"],
    "linear": [G, "tests/test_ops_refinement.py", "tests/test_ops_extreme.py", "-k",
               f"{NEW} or linear_float64 or linear_chunked or linear_float32 or linear_auto"],
    "conv": [G, "tests/test_ops_refinement.py", "tests/test_ops_reference.py", "-k",
             f"{NEW} or (conv and not refinement_checks)"],
    "fastmath": [G, "tests/test_ops_fastmath.py", "tests/test_ops_extreme.py", "tests/test_ops_refinement.py", "-k",
                 f"{NEW} or exp32 or softplus or sigmoid or special or selective_float32 or conv_silu"],
    "ops": ["tests/test_ops_refinement.py", "tests/test_ops_reference.py", "-k", "not refinement_checks"],
    "models": [G, "tests/test_models.py", "-k", f"{NEW} or refines or agree or continuation or projection_kernel"],
    "dense": [G, "tests/test_models.py", "-k", f"{NEW} or float64_refines or projection_kernel"],
    "lm": [G, "tests/test_lm_model.py", "tests/test_lm_loading.py", "tests/test_lm_spec.py", "-k",
           "naive or chunked_prefill or mixer_refines or tied or head or ragged or mamba_ssm_naming"],
    "decode": ["tests/test_lm_model.py", "tests/test_lm_spec.py", "-k", "naive or decode or ragged or mixer_refines"],
    "spec": ["tests/test_spec_foundation.py", "tests/test_spec_properties.py"],
    "score": ["tests/test_dask_score.py"],
    "cde": [G, "tests/test_cde.py", "-k", f"{NEW} or refines or pieces"],
    "signature": [G, "tests/test_signature.py", "-k", f"{NEW} or chen or batch_rows or paper"],
}


def _m(id, file, old, new, description, tests, extra=()):
    """One mutant: ``file``'s ``old`` -> ``new`` (plus ``extra`` (old, new) edits of the same file)."""
    return {"id": id, "file": file, "edits": [(old, new), *extra], "description": description,
            "tests": list(tests)}


K = "nbssm/_kernels/"
SEL = K + "selective_scan.py"

MUTANTS = [
    # ---------------------------------------------------------------- selective scan kernel
    _m("sel_tile_carry", SEL,
       "state = H[bi, k, blk]  # (n, W)", "state = H[bi, k, blk].copy()  # (n, W)",
       "state not carried across the 128-token tiles of a chunk", ["selective"]),
    _m("sel_tile_bound", SEL,
       "tb = min(ta + _TILE, t1)", "tb = min(ta + _TILE - 1, t1)",
       "off-by-one tile end: the last token of every 128-token tile skipped", ["selective"]),
    _m("sel_chunk_carry_skipped", SEL,
       "H[bi, k + 1, blk, n, j] = c", "H[bi, k + 1, blk, n, j] = hk",
       "chunk carry skipped: every chunk starts from the initial state", ["selective"]),
    _m("sel_seed_zero", SEL,
       "yy[j] = Dl[j] * uv if has_D else 0", "yy[j] = 0",
       "readout fold seeded with 0 instead of D*u (skip dropped)", ["selective"]),
    _m("sel_seed_added_last", SEL,
       "yy[j] = Dl[j] * uv if has_D else 0", "yy[j] = 0",
       "D*u added after the C-sum instead of seeding it (fold order)", ["selective"],
       [("            if last:\n                if has_z:",
         "            if last:\n                if has_D:\n                    for j in range(W):\n"
         "                        yy[j] = yy[j] + Dl[j] * uu[j]\n                if has_z:")]),
    _m("sel_delta_bias_ignored", SEL,
       "dv = dv + bl[j]\n        if delta_softplus:\n            dv = softplus_(dv)\n        dl2[r, j] = dv",
       "dv = dv\n        if delta_softplus:\n            dv = softplus_(dv)\n        dl2[r, j] = dv",
       "delta_bias ignored in the readout pass", ["selective"]),
    _m("sel_softplus_twice", SEL,
       "dv = softplus_(dv)\n        dl2[r, j] = dv",
       "dv = softplus_(softplus_(dv))\n        dl2[r, j] = dv",
       "softplus applied twice in the readout pass", ["selective"]),
    _m("sel_gate_sigmoid", SEL,
       "gz2[r, j] = zv * sigmoid_(zv)", "gz2[r, j] = sigmoid_(zv)",
       "gate sigmoid(z) instead of silu(z)", ["selective"]),
    _m("sel_initial_state_ignored", SEL,
       "H[bi, 0, blk, n, j] = h0[bi, d0 + j, n]", "H[bi, 0, blk, n, j] = 0",
       "initial_state ignored (zeros)", ["selective"]),
    _m("sel_final_state_first_chunk", SEL,
       "if k == nchunks - 1:", "if k == 0:",
       "final state taken after the first chunk instead of the last", ["selective"]),
    _m("sel_summary_P", SEL,
       "P[n, j] = at * P[n, j]", "P[n, j] = at",
       "chunk summary's transition product not accumulated", ["selective"]),
    _m("sel_rerun_short", SEL,
       "k * chunk_length, (k + 1) * chunk_length, hk)", "k * chunk_length, (k + 1) * chunk_length - 1, hk)",
       "carry fallback re-runs one token too few (overflow/underflow path)", ["selective"]),
    _m("sel_decay_sign", SEL,
       "hv = exp_(dv * At[n, j]) * h[n, j]", "hv = exp_(-(dv * At[n, j])) * h[n, j]",
       "A sign: exp(-delta*A) with the runtime's negative A (growth instead of decay)", ["selective"]),
    _m("carry_ok_underflow", K + "chunking.py",
       "(ap < tiny and ah <= 4503599627370496.0)", "(ap < tiny)",
       "carry rule trusts an underflowed summary whatever the state (huge states lose their decay)",
       ["selective", "linear"]),
    # ---------------------------------------------------------------- activations
    _m("softplus64_threshold_20", K + "fastmath.py",
       "    if x > _LOG_DBL_MAX:\n        res = x", "    if x > 20.0:\n        res = x",
       "float64 softplus threshold moved to 20 (PyTorch's float32 threshold)", ["fastmath"]),
    _m("softplus64_branches_swapped", K + "fastmath.py",
       "    res = math.log(1.0 + math.exp(x))\n    if x > _LOG_DBL_MAX:\n        res = x",
       "    res = x\n    if x > _LOG_DBL_MAX:\n        res = math.log(1.0 + math.exp(x))",
       "float64 softplus branches swapped (x below the threshold, inf above)", ["fastmath"]),
    _m("softplus64_no_overflow_branch", K + "fastmath.py",
       "    if x > _LOG_DBL_MAX:\n        res = x", "    if x > 2.0 * _LOG_DBL_MAX:\n        res = x",
       "float64 softplus overflow branch too late: inf between 709.78 and 1419.6", ["fastmath"]),
    _m("softplus32_threshold_2", K + "fastmath.py",
       "_SOFTPLUS_THRESHOLD32 = _f32(20.0)", "_SOFTPLUS_THRESHOLD32 = _f32(2.0)",
       "float32 softplus threshold moved from 20 to 2", ["fastmath"]),
    _m("sigmoid64_branched_rewrite", K + "fastmath.py",
       'return 1.0 / (1.0 + math.exp(-x))\n\n\n# ---',
       'return 1.0 - 1.0 / (1.0 + math.exp(x))\n\n\n# ---',
       "float64 sigmoid rewritten as 1 - 1/(1+exp(x)) (equal over the reals, not the spec's bits)",
       ["fastmath"]),
    _m("exp32_cody_waite_sign", K + "fastmath.py",
       "_LN2_LO = _f32(-2.12194440e-4)", "_LN2_LO = _f32(2.12194440e-4)",
       "float32 exp: wrong sign of the low part of ln2 (Cody-Waite reduction)", ["fastmath"]),
    # ---------------------------------------------------------------- convolution
    _m("conv_bias_added_last", K + "conv.py",
       "acc[j] = bias[d0 + j]", "acc[j] = 0",
       "conv fold seeded with 0 and the bias added last (fold order)", ["conv"],
       [("            orow = np.uint64((bi * length + t) * channels + d0)\n",
         "            orow = np.uint64((bi * length + t) * channels + d0)\n            if has_bias:\n"
         "                for j in range(nd):\n                    acc[j] = acc[j] + bias[d0 + j]\n")]),
    _m("conv_tap_order", K + "conv.py",
       "for k in range(width):", "for k in range(width - 1, -1, -1):",
       "conv taps folded oldest first instead of newest first", ["conv"]),
    _m("conv_history_offset", K + "conv.py",
       "row = np.uint64((bi * nhist + nhist + p) * channels + d0)",
       "row = np.uint64((bi * nhist + nhist + p + 1) * channels + d0)",
       "conv history read one position off (off-by-one at the sequence start)", ["conv"]),
    # ---------------------------------------------------------------- linear scan kernel
    _m("lin_chunk_carry_skipped", K + "linear_scan.py",
       "            c = a[bi, t, j] * c + b[bi, t, j]\n    return c\n",
       "            c = a[bi, t, j] * c + b[bi, t, j]\n    return hk\n",
       "linear scan: chunk carry skipped", ["linear"]),
    _m("lin_group_tail", K + "linear_scan.py",
       "        for g in range(ng - 1):", "        for g in range(ng - 2):",
       "linear scan: the tail of the second-to-last chunk of a group skipped when the last chunk is short",
       ["linear"]),
    _m("lin_rerun_short", K + "linear_scan.py",
       "for t in range(k * chunk_length, (k + 1) * chunk_length):",
       "for t in range(k * chunk_length, (k + 1) * chunk_length - 1):",
       "linear scan: carry fallback re-runs one step too few", ["linear"]),
    # ---------------------------------------------------------------- dense projections
    _m("dense_fold_reversed", K + "dense.py",
       "    for i in range(k):\n        wrow = w[i, c0:c0 + nc]",
       "    for i in range(k - 1, -1, -1):\n        wrow = w[i, c0:c0 + nc]",
       "vec_mat (matmul_fold) folds from the last row (right fold)", ["dense"]),
    _m("dense_sigmoid_rewrite", K + "dense.py",
       "out[r, j] = 1.0 / (1.0 + math.exp(-x[r, j]))", "out[r, j] = 1.0 - 1.0 / (1.0 + math.exp(x[r, j]))",
       "sigmoid_rows rewritten as 1 - 1/(1+exp(x)) (compact gate not the spec's bits)", ["dense"]),
    # ---------------------------------------------------------------- LM decode kernel
    _m("decode_conv_shift", K + "decode.py",
       "hist[bb, k, d] = hist[bb, k + 1, d]", "hist[bb, k + 1, d] = hist[bb, k, d]",
       "decode: conv history shifted the wrong way", ["decode"]),
    _m("decode_A_sign", K + "decode.py",
       "_exp(dt * A_neg[d, un])", "_exp(-dt * A_neg[d, un])",
       "decode: exp(+exp(A_log) dt) instead of exp(-exp(A_log) dt)", ["decode"]),
    _m("decode_D_dropped", K + "decode.py",
       "y[bb, d] = (acc + ud * Dskip[d])", "y[bb, d] = (acc)",
       "decode: D skip dropped", ["decode"]),
    _m("decode_rmsnorm_eps", K + "decode.py",
       "math.sqrt(ss / n + eps)", "(math.sqrt(ss / n) + eps)",
       "decode: RMSNorm eps added outside the square root", ["decode"]),
    # ---------------------------------------------------------------- CDE and signature kernels
    _m("cde_horner_factorial", K + "cde.py",
       "r[q] = z[q] * invfact[order] + v[q] * invfact[order + 1]",
       "r[q] = z[q] * invfact[order] + v[q] * invfact[order]",
       "dense CDE step: wrong factorial on the input term of the Taylor step", ["cde"]),
    _m("signature_level_coefficient", K + "signature.py",
       "            inv = 1.0 / (m - k + 1)\n            base = offsets[k]\n            for i in range(d):",
       "            inv = 1.0 / (m - k)\n            base = offsets[k]\n            for i in range(d):",
       "signature kernel: wrong Horner coefficient for levels >= 3", ["signature"]),
    # ---------------------------------------------------------------- ops
    _m("ops_threads_chunk_length", "nbssm/ops.py",
       "        return default_chunk_length(kind, batch, channels)\n",
       "        return max(default_chunk_length(kind, batch, channels) // numba.get_num_threads(), 1)\n",
       "default chunk length depends on the thread count (chunked results depend on the threads)", ["ops"]),
    _m("ops_linear_initial_state_dropped", "nbssm/ops.py",
       "linear_scan_kernel(a_, b_, h0, h, hT, cl)", "linear_scan_kernel(a_, b_, np.zeros_like(h0), h, hT, cl)",
       "ops: linear_scan drops initial_state", ["ops"]),
    _m("ops_softplus_flag_dropped", "nbssm/ops.py",
       "bool(delta_softplus), h0, y, hT, cl, width, group)", "False, h0, y, hT, cl, width, group)",
       "ops: delta_softplus not passed to the kernel", ["ops"]),
    _m("ops_final_state_padded_channels", "nbssm/ops.py",
       "hT = np.ascontiguousarray(hT[:, :channels, :])", "hT = np.ascontiguousarray(hT[:, -channels:, :])",
       "ops: final state of padded (narrow) inputs sliced from the wrong end", ["ops"]),
    # ---------------------------------------------------------------- runtime models
    _m("models_s4_readout_state", "nbssm/models.py",
       "y_s = self.C * h + self.D * s", "y_s = self.C * h + self.D * h",
       "S4/compact readout uses D*h instead of D*s", ["models"]),
    _m("models_s4_input_B", "nbssm/models.py",
       "linear_scan(a, self.B * s, initial_state=h0", "linear_scan(a, s, initial_state=h0",
       "S4/compact step drops B (h = A*h + s)", ["models"]),
    _m("models_compact_gate_input", "nbssm/models.py",
       "g = _sigmoid(_project(x, self.gate_proj))", "g = _sigmoid(_project(y_s, self.gate_proj[:y_s.shape[-1]]))",
       "compact gate computed from the readout instead of the raw token", ["models"]),
    _m("models_selective_initial_conv", "nbssm/models.py",
       "initial_state=conv0,\n", "initial_state=None,\n",
       "selective model ignores the carried conv history", ["models"]),
    # ---------------------------------------------------------------- LM
    _m("lm_untied_head_embedding", "nbssm/lm/model.py",
       'q["head"] = q["embed"] if c.tie_embeddings else stored("lm_head.weight")',
       'q["head"] = q["embed"]',
       "untied checkpoint uses the embedding as its LM head", ["lm"]),
    _m("lm_tie_check_dropped", "nbssm/lm/loading.py",
       "        if not np.array_equal(head, embed):\n", "        if False and not np.array_equal(head, embed):\n",
       "tied checkpoint with a different stored head accepted silently", ["lm"]),
    _m("lm_rmsnorm_eps", "nbssm/lm/model.py",
       "np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + x.dtype.type(eps))",
       "(np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True)) + x.dtype.type(eps))",
       "prefill RMSNorm eps added outside the square root", ["lm"]),
    _m("lm_last_only_first", "nbssm/lm/model.py",
       "hidden = hidden[:, -1:]", "hidden = hidden[:, :1]",
       "prefill last_only keeps the first position instead of the last", ["lm"]),
    _m("lm_score_lse_rescale_dropped", "nbssm/lm/model.py",
       "s[r0:r1] = s[r0:r1] * np.exp(m[r0:r1] - new) + t.sum(axis=1, dtype=np.float64)",
       "s[r0:r1] = s[r0:r1] + t.sum(axis=1, dtype=np.float64)",
       "tiled scoring keeps the old tiles' exp sums without rescaling to the new maximum", ["score"]),
    _m("lm_score_picked_after_exp", "nbssm/lm/model.py",
       "            picked[r0 + sel] = t[sel, tg[sel] - v0]\n", "",
       "tiled scoring picks the target from the tile after it was overwritten by its exponentials",
       ["score"], extra=[("            np.exp(t, out=t)\n",
                          "            np.exp(t, out=t)\n            picked[r0 + sel] = t[sel, tg[sel] - v0]\n")]),
    _m("mixer_dt_bias_dropped", "nbssm/models.py",
       "delta_bias=self.dt_proj_bias,", "delta_bias=None,",
       "Mamba mixer ignores dt_proj.bias", ["lm"]),
    _m("mixer_conv_history_ignored", "nbssm/models.py",
       "initial_state=conv_history,", "initial_state=None,",
       "Mamba mixer ignores the carried conv history (chunked prefill / decode continuation wrong)", ["lm"]),
    # ---------------------------------------------------------------- spec
    _m("spec_vec_mat_right_fold", "spec/models.py",
       "        for i in range(len(v)):\n            acc = ctx.add(acc, ctx.mul(v[i], W[i][j]))",
       "        for i in reversed(range(len(v))):\n            acc = ctx.add(acc, ctx.mul(v[i], W[i][j]))",
       "spec vecMat folds from the right", ["spec"]),
    _m("spec_conv_seed_zero", "spec/models.py",
       "        acc = bias[d]\n        for k in range(width):",
       "        acc = ctx.zero\n        for k in range(width):",
       "spec conv fold seeded with 0 (bias dropped)", ["spec"]),
    _m("spec_conv_skip_missing_tap", "spec/models.py",
       "            v = history[k][d] if k < len(history) else ctx.zero\n"
       "            acc = ctx.add(acc, ctx.mul(v, kernel[k][d]))",
       "            if k >= len(history):\n                continue\n            v = history[k][d]\n"
       "            acc = ctx.add(acc, ctx.mul(v, kernel[k][d]))",
       "spec conv skips missing taps instead of multiplying zeros", ["spec"]),
    _m("spec_y_seed_zero", "spec/models.py",
       "        acc = ctx.mul(d_skip[d], u[d])\n", "        acc = ctx.zero\n",
       "spec selective readout seeded with 0 instead of D*u", ["spec"]),
    _m("spec_array_history_w_plus_1", "spec/models.py",
       "history = ([p] + list(L))[: self.conv_width]", "history = ([p] + list(L))[: self.conv_width + 1]",
       "spec Array history truncated to convWidth + 1", ["spec"]),
    _m("spec_compact_gate_silu", "spec/models.py",
       "g = [ctx.sigmoid(v) for v in vec_mat(ctx, x, self.gate_proj, self.state_dim)]",
       "g = [ctx.silu(v) for v in vec_mat(ctx, x, self.gate_proj, self.state_dim)]",
       "spec compact block gated with SiLU instead of sigmoid", ["spec"]),
    _m("spec_s4_readout_old_state", "spec/models.py",
       "o = vec_mat(ctx, self.ssm.readout(ctx, h1, s), self.out_proj, self.output_dim)",
       "o = vec_mat(ctx, self.ssm.readout(ctx, h, s), self.out_proj, self.output_dim)",
       "spec S4 step reads out the old state", ["spec"]),
    _m("spec_softplus_branches_swapped", "spec/context.py",
       "        return self.ite(self.gt(x, self.zero), positive, other)\n\n    def silu",
       "        return self.ite(self.gt(x, self.zero), other, positive)\n\n    def silu",
       "spec branched softplus: branches swapped", ["spec"]),
    _m("spec_sigmoid_threshold", "spec/context.py",
       "        return self.ite(self.gt(x, self.zero), positive, other)\n\n    def softplus",
       "        return self.ite(self.gt(x, self.one), positive, other)\n\n    def softplus",
       "spec branched sigmoid: branch threshold moved from 0 to 1", ["spec"]),
    _m("spec_compose_order", "spec/scan.py",
       "b = [ctx.add(ctx.mul(a2, b1), b2) for a2, b1, b2 in zip(t2.a, t1.b, t2.b)]",
       "b = [ctx.add(ctx.mul(a1, b2), b1) for a1, b1, b2 in zip(t1.a, t1.b, t2.b)]",
       "spec DiagonalTransition.compose in the wrong order", ["spec"]),
]


# --------------------------------------------------------------------------- the copy


def _tree_files(root):
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                         capture_output=True).stdout.decode()
    return [p for p in out.split("\0") if p]


_SITECUSTOMIZE = '''\
import os, sys
_tree = os.environ.get("NBSSM_MUTATION_TREE")
if _tree:
    for _name, _mod in list(sys.modules.items()):
        _map = getattr(_mod, "MAPPING", None)
        if _name.startswith("__editable__") and isinstance(_map, dict) and "nbssm" in _map:
            _map["nbssm"] = os.path.join(_tree, "nbssm")
            _map["nbssm.spec"] = os.path.join(_tree, "spec")
'''

_PROBE = ("import json, nbssm, nbssm.spec, nbssm._kernels._jit as j; "
          "print(json.dumps([nbssm.__file__, nbssm.spec.__file__, j.cache_directory()]))")


#: run in the mutant's tree: copy the baseline entries of every kernel module that neither is nor
#: (transitively) imports the mutated module into the mutant's own cache directory, re-stamped
#: with the mutant's source key. Prints the number of entries seeded and the modules recompiled.
_SEED = r'''
import json, os, pickle, re, shutil, sys
from numba.core.serialize import dumps
import nbssm._kernels._jit as j
src, mutated = sys.argv[1], sys.argv[2]
dst = j.cache_directory()
kdir = os.path.dirname(j.__file__)
deps = {}
for name in os.listdir(kdir):
    if name.endswith(".py"):
        with open(os.path.join(kdir, name)) as f:
            text = f.read()
        deps[name[:-3]] = set(re.findall(r"^\s*from \.(\w+) import", text, re.M))
        if re.search(r"^\s*from \. import", text, re.M):
            deps[name[:-3]] = set(deps)  # an unparsed import: depend on everything
hit = {mutated}
changed = True
while changed:
    changed = False
    for mod, ds in deps.items():
        if mod not in hit and ds & hit:
            hit.add(mod)
            changed = True
os.makedirs(dst, exist_ok=True)
n = 0
for name in sorted(os.listdir(src)):
    if name.split(".")[0] in hit:
        continue
    path = os.path.join(src, name)
    if name.endswith(".nbi"):
        with open(path, "rb") as f:
            version, stamp, overloads = pickle.loads(j._unseal(f.read()))
        with open(os.path.join(dst, name), "wb") as f:
            f.write(j._seal(dumps((version, os.path.basename(dst), overloads))))
        n += 1
    else:
        shutil.copy2(path, os.path.join(dst, name))
print(json.dumps([n, sorted(hit)]))
'''


class Sandbox:
    """A copy of the working tree under a temporary directory, and how to run Python in it."""

    def __init__(self, root, python, work):
        self.root, self.python, self.work = root, python, work
        self.tree = os.path.join(work, "tree")
        self.boot = os.path.join(work, "boot")
        for rel in _tree_files(root):
            src = os.path.join(root, rel)
            if not os.path.isfile(src):
                continue
            dst = os.path.join(self.tree, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)
        os.makedirs(self.boot)
        with open(os.path.join(self.boot, "sitecustomize.py"), "w") as f:
            f.write(_SITECUSTOMIZE)
        self.pristine = {}

    def env(self, cache):
        e = dict(os.environ)
        for k in ("NBSSM_CACHE", "COVERAGE_PROCESS_START"):
            e.pop(k, None)
        e.update(PYTHONPATH=self.boot, NBSSM_MUTATION_TREE=self.tree, NBSSM_CACHE_DIR=cache,
                 NUMBA_CACHE_DIR=cache, PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0")
        return e

    def clean(self):
        for dirpath, dirnames, _ in os.walk(self.tree):
            for d in list(dirnames):
                if d in ("__pycache__", ".hypothesis", ".pytest_cache"):
                    shutil.rmtree(os.path.join(dirpath, d), ignore_errors=True)
                    dirnames.remove(d)

    def read(self, rel):
        if rel not in self.pristine:
            with open(os.path.join(self.tree, rel)) as f:
                self.pristine[rel] = f.read()
        return self.pristine[rel]

    def apply(self, mutant):
        text = self.read(mutant["file"])
        for old, new in mutant["edits"]:
            if text.count(old) != 1:
                raise RuntimeError(f"{mutant['id']}: snippet occurs {text.count(old)} times in {mutant['file']}")
            text = text.replace(old, new)
        with open(os.path.join(self.tree, mutant["file"]), "w") as f:
            f.write(text)

    def restore(self, mutant):
        with open(os.path.join(self.tree, mutant["file"]), "w") as f:
            f.write(self.pristine[mutant["file"]])

    def run(self, args, cache, timeout):
        t0 = time.perf_counter()
        try:
            p = subprocess.run([self.python, *args], cwd=self.tree, env=self.env(cache), capture_output=True,
                               text=True, timeout=timeout)
            return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0
        except subprocess.TimeoutExpired as exc:
            def text(b):
                return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
            return None, text(exc.stdout), text(exc.stderr), time.perf_counter() - t0

    def probe(self, cache):
        rc, out, err, _ = self.run(["-c", _PROBE], cache, 600)
        if rc != 0:
            raise RuntimeError(f"probe failed: {err[-2000:]}")
        mod, spec, cdir = json.loads(out.strip().splitlines()[-1])
        for path in (mod, spec):
            if not os.path.realpath(path).startswith(os.path.realpath(self.tree) + os.sep):
                raise RuntimeError(f"the copy is not the code that runs: {path} is outside {self.tree}")
        return cdir


# --------------------------------------------------------------------------- runs


def _verify(box, cache, timeout, full=True):
    # no per-check budget: on a loaded machine a slow check would read "unknown" (a false catch);
    # the script's own timeout bounds a mutant that hangs
    argv = ["nbssm", "verify", "--json", "--no-progress", "--budget", "inf"]
    # not full: no registry check, and the external groups whose code lies outside nbssm.spec
    # (a mutant outside spec/ cannot change a spec-level row: the spec imports nothing above it)
    keep = "" if full else ("import nbssm.spec.checks as K; K.select = lambda only, kinds: []; "
                            "from nbssm.verify import external as E; "
                            "E.GROUPS[:] = [g for g in E.GROUPS if not g[1].startswith('nbssm.spec')]; ")
    args = ["-c", f"import sys; {keep}from nbssm.cli import main; sys.argv = {argv!r}; sys.exit(main())"]
    rc, out, err, secs = box.run(args, cache, timeout)
    res = {"rc": rc, "seconds": round(secs, 1), "rows_run": "all" if full else "external groups outside nbssm.spec"}
    if rc is None:  # not counted as caught: on a loaded machine compiling alone can take this long
        res.update(caught=False, how="timeout", rows=[f"timeout after {secs:.0f} s (not counted)"])
        return res
    try:
        rows = json.loads(out)
    except ValueError:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        res.update(caught=rc != 0, how="crash", rows=[f"crash: {tail[:160]}"])
        return res
    if isinstance(rows, dict):
        res.update(caught=rc != 0, how="error", rows=[str(rows.get("error"))[:160]])
        return res
    if not rows:
        res.update(caught=False, how="no rows", rows=["verify ran no row (not counted)"])
        return res
    bad = [r["name"] for r in rows
           if (r["kind"] == "control" and r["verdict"] != "refuted")
           or (r["kind"] != "control" and r["verdict"] != "proved")]
    res.update(caught=rc != 0, how="rows" if bad else ("exit" if rc else ""), rows=bad, n_rows=len(rows))
    return res


_FAILED = re.compile(r"^(FAILED|ERROR) (\S+)")


def _tests(box, cache, subset, timeout):
    args = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *SUBSETS[subset]]
    rc, out, err, secs = box.run(args, cache, timeout)
    res = {"subset": subset, "rc": rc, "seconds": round(secs, 1)}
    if rc is None:
        res.update(caught=True, how="timeout", failed=[])
        return res
    failed = [m.group(2) for m in map(_FAILED.match, out.splitlines()) if m]
    res.update(caught=rc != 0, how="failed" if failed else (f"rc {rc}" if rc else ""), failed=failed[:2])
    if rc not in (0, 1):
        res["tail"] = (out + err).strip().splitlines()[-3:]
    return res


def _affects_kernels(mutant):
    return mutant["file"].startswith(K) or mutant["file"] == "nbssm/_config.py"


def run_one(box, mutant, base_cache, base_key, work, args, baseline_tests):
    cache = tempfile.mkdtemp(prefix=f"cache-{mutant['id']}-", dir=work)
    kernel = _affects_kernels(mutant)
    if not (args.cold or kernel):
        shutil.rmtree(cache)
        shutil.copytree(base_cache, cache)
    t0 = time.perf_counter()
    box.apply(mutant)
    try:
        box.clean()
        cdir = box.probe(cache)
        key = os.path.basename(cdir or "")
        if args.cold or kernel:
            if kernel and key == base_key:
                raise RuntimeError(f"{mutant['id']}: kernel source key unchanged by a kernel mutant")
            if cdir and os.path.isdir(cdir) and os.listdir(cdir):
                raise RuntimeError(f"{mutant['id']}: cache directory {cdir} is not empty")
            how = "empty"
            if kernel and not args.cold and mutant["file"].startswith(K):
                module = os.path.splitext(os.path.basename(mutant["file"]))[0]
                rc, out, err, _ = box.run(["-c", _SEED, os.path.join(base_cache, base_key), module], cache, 600)
                if rc != 0:
                    raise RuntimeError(f"{mutant['id']}: seeding failed: {err[-1500:]}")
                n, hit = json.loads(out.strip().splitlines()[-1])
                how = (f"new key; {n} baseline entries of modules not importing {module} re-stamped, "
                       f"{', '.join(hit)} compiled afresh")
        elif key != base_key:
            raise RuntimeError(f"{mutant['id']}: kernel source key changed ({key} != {base_key}); seeding refused")
        else:
            how = "baseline copy (same kernel sources, same key)"
        rec = {"id": mutant["id"], "file": mutant["file"], "description": mutant["description"],
               "cache": how, "cache_key": key}
        full = args.full_verify or mutant["file"].startswith("spec/")
        rec["verify"] = _verify(box, cache, args.verify_timeout, full)
        if args.tests == "none" or (args.tests == "missed" and rec["verify"]["caught"]):
            rec["tests"] = None
        else:
            runs = []
            for subset in mutant["tests"]:
                base_secs = baseline_tests(subset)["seconds"]
                limit = max(60.0, 4 * base_secs) + (300 if (kernel or args.cold) else 0)
                r = _tests(box, cache, subset, limit)
                r["baseline_seconds"] = base_secs
                runs.append(r)
                if r["caught"]:
                    break
            rec["tests"] = runs
    finally:
        box.restore(mutant)
        shutil.rmtree(cache, ignore_errors=True)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def _caught_tests(rec):
    return bool(rec["tests"]) and any(r["caught"] for r in rec["tests"])


def _tests_cell(rec):
    if rec["tests"] is None:
        return ("not run (caught by verify)" if rec["verify"]["caught"] else "skipped"), ""
    for r in rec["tests"]:
        if r["caught"]:
            if r["how"] == "timeout":
                return f"timeout ({r['subset']})", f"timeout after {r['seconds']} s (baseline {r['baseline_seconds']} s)"
            return f"yes ({r['subset']})", ", ".join(r["failed"]) or r["how"]
    return "**no**", ""


def write_tables(records, meta, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    n = len(records)
    by_verify = sum(r["verify"]["caught"] for r in records)
    tested = [r for r in records if r["tests"] is not None]
    survivors = [r["id"] for r in records if not r["verify"]["caught"] and not _caught_tests(r)]
    untested_missed = [r["id"] for r in records if not r["verify"]["caught"] and r["tests"] is None]
    summary = {"mutants": n, "caught_by_verify": by_verify,
               "fraction_caught_by_verify": round(by_verify / n, 4) if n else None,
               "caught_by_tests": sum(_caught_tests(r) for r in tested) if tested else None,
               "survivors_of_verify_and_tests": None if untested_missed else survivors,
               "verify_missed": [r["id"] for r in records if not r["verify"]["caught"]]}
    with open(os.path.join(out_dir, "mutation.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "mutants": records}, f, indent=1)
        f.write("\n")
    lines = ["# Mutation test of `nbssm verify` and the tests", "",
             "Generated by `benchmarks/mutation.py` (see [the README](../README.md#mutation-test)); "
             "do not edit by hand.", "",
             f"- run: {meta['date']}, {meta['commit']}, {meta['machine']}"
             + ("" if meta.get("complete", True) else f" (**partial: {meta.get('done')} mutants done**)"),
             f"- baseline (unmutated): `nbssm verify` {meta['baseline']['verify']['seconds']} s "
             f"({meta['baseline']['verify'].get('n_rows', '?')} rows, all passed), test subsets all passed",
             f"- mutants: {n}; caught by `nbssm verify` alone: {by_verify}/{n} "
             f"({100.0 * by_verify / n:.0f}%)" if n else "- mutants: 0"]
    if not untested_missed:
        lines.append(f"- test subsets run on {len(tested)} mutants (`--tests {meta.get('tests')}`), caught "
                     f"{summary['caught_by_tests']}; survivors of verify + tests: {len(survivors)}"
                     + (f" ({', '.join(survivors)})" if survivors else ""))
    else:
        lines.append(f"- tests not run on mutants verify missed ({', '.join(untested_missed)}): no survivor count")
    lines.append("- verify rows: every row for `spec/` mutants; for the others the groups outside "
                 "`nbssm.spec` (refinement, LM), the spec-level rows being unable to change")
    lines += [f"- total time {meta['seconds']} s", "",
              "| id | file | description | verify? | failing verify rows (first 3) | tests? | failing tests "
              "(first 2) | s |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        v = r["verify"]
        vcell = ("yes" if v["caught"] else "**no**") + (f" ({v['how']})" if v["how"] in ("timeout", "crash") else "")
        rows = ", ".join(f"`{x}`" for x in v["rows"][:3]) + (f" (+{len(v['rows']) - 3})" if len(v["rows"]) > 3 else "")
        tcell, tfail = _tests_cell(r)
        lines.append(f"| {r['id']} | `{r['file']}` | {r['description']} | {vcell} | {rows} | {tcell} | "
                     f"{tfail} | {r['seconds']} |")
    with open(os.path.join(out_dir, "mutation.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return summary


def merge(paths, out_dir):
    """One table from several runs of the same commit (each with its own passing baseline)."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    commits = {r["meta"]["commit"].removesuffix("-dirty") for r in runs}
    if len(commits) != 1:
        print(f"runs of different trees: {sorted(commits)}", file=sys.stderr)
        return 2
    by_id = {}
    for r in runs:
        for rec in r["mutants"]:
            by_id.setdefault(rec["id"], rec)
    records = [by_id[m["id"]] for m in MUTANTS if m["id"] in by_id]
    first = runs[0]["meta"]
    meta = dict(first, commit=" / ".join(sorted({r["meta"]["commit"] for r in runs})), seconds=max(r["meta"]["seconds"] for r in runs),
                machine="; ".join(r["meta"]["machine"] for r in runs) + f" ({len(runs)} runs at once, merged)",
                done=f"{len(records)} of {len(MUTANTS)}", complete=len(records) == len(MUTANTS),
                baselines=[r["meta"]["baseline"] for r in runs],
                date=" / ".join(sorted({r["meta"]["date"] for r in runs})))
    print(json.dumps(write_tables(records, meta, out_dir)))
    return 0


def check_list(mutants, root):
    """Every snippet occurs exactly once in its (unmutated) file; ids unique; subsets known."""
    seen = set()
    problems = []
    for m in mutants:
        if m["id"] in seen:
            problems.append(f"duplicate id {m['id']}")
        seen.add(m["id"])
        if m["file"] == "nbssm/reference.py":
            problems.append(f"{m['id']}: nbssm/reference.py is the oracle, not a target")
        for s in m["tests"]:
            if s not in SUBSETS:
                problems.append(f"{m['id']}: unknown test subset {s}")
        with open(os.path.join(root, m["file"])) as f:
            text = f.read()
        for old, new in m["edits"]:
            c = text.count(old)
            if c != 1:
                problems.append(f"{m['id']}: snippet occurs {c} times in {m['file']}: {old[:60]!r}")
            elif old == new:
                problems.append(f"{m['id']}: edit changes nothing")
            else:
                text = text.replace(old, new)
    return problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated mutant ids, run in the order given")
    ap.add_argument("--list", action="store_true", help="list the mutants and check their snippets; run nothing")
    ap.add_argument("--skip-tests", action="store_true", help="run nbssm verify only (same as --tests none)")
    ap.add_argument("--tests", choices=["all", "missed", "none"], default="all",
                    help="which mutants also run their test subset: all (default), those verify missed, none")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    ap.add_argument("--cold", action="store_true", help="every mutant starts from an empty Numba cache")
    ap.add_argument("--full-verify", action="store_true",
                    help="run every row of nbssm verify for every mutant (default: all rows for spec/ mutants, "
                         "the external groups for the others, whose registry rows cannot change)")
    ap.add_argument("--base-cache", metavar="DIR",
                    help="keep the baseline's Numba cache in DIR between runs (entries live under the hash of "
                         "every kernel source, so only those of identical sources are ever loaded)")
    ap.add_argument("--verify-timeout", type=float, default=3600.0,
                    help="seconds; a verify run past it is recorded as a timeout, not as caught")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="combine the mutation.json files of runs of the same tree on disjoint mutant lists "
                         "(e.g. two processes run at once) into one table in --out; runs nothing")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.skip_tests:
        args.tests = "none"

    problems = check_list(MUTANTS, ROOT)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    mutants = MUTANTS
    if args.only:
        ids = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(ids) - {m["id"] for m in MUTANTS})
        if unknown:
            print(f"unknown mutant ids: {', '.join(unknown)}", file=sys.stderr)
            return 2
        by_id = {m["id"]: m for m in MUTANTS}
        mutants = [by_id[i] for i in dict.fromkeys(ids)]  # in the order given
    if args.list:
        for m in mutants:
            print(f"{m['id']:34s} {m['file']:32s} [{','.join(m['tests'])}] {m['description']}")
        print(f"{len(mutants)} mutants; every snippet occurs exactly once")
        return 0

    t_start = time.perf_counter()
    work = tempfile.mkdtemp(prefix="nbssm-mutation-")
    try:
        boxes = [Sandbox(ROOT, args.python, os.path.join(work, f"box{i}")) for i in range(max(args.jobs, 1))]
        box = boxes[0]
        base_cache = os.path.join(work, "base-cache")
        if args.base_cache and os.path.isdir(args.base_cache):
            # entries compiled earlier; only those under the current sources' key can be loaded
            shutil.copytree(args.base_cache, base_cache)
        else:
            os.makedirs(base_cache)
        box.clean()
        base_dir = box.probe(base_cache)
        base_key = os.path.basename(base_dir or "")
        print(f"baseline: tree {box.tree}, cache {base_dir}", flush=True)
        baseline = {"verify": _verify(box, base_cache, args.verify_timeout), "tests": {}}
        print(f"baseline verify: {baseline['verify']['seconds']} s, failed rows {baseline['verify']['rows']}",
              flush=True)
        if baseline["verify"]["caught"]:
            print("the unmutated tree fails nbssm verify: the table would be meaningless", file=sys.stderr)
            return 1
        lock = threading.Lock()
        base_box = Sandbox(ROOT, args.python, os.path.join(work, "box-baseline")) if args.jobs > 1 else box

        def baseline_tests(subset):
            """The unmutated tree's run of a subset (run once, when first needed); it must pass."""
            with lock:
                if subset not in baseline["tests"]:
                    base_box.clean()
                    r = _tests(base_box, base_cache, subset, 1800)
                    baseline["tests"][subset] = r
                    print(f"baseline tests {subset}: {r['seconds']} s "
                          f"{'FAILED ' + str(r['failed']) if r['caught'] else 'ok'}", flush=True)
                    if r["caught"]:
                        raise SystemExit(f"the unmutated tree fails test subset {subset}: {r}")
                return baseline["tests"][subset]

        if args.tests == "all":
            for subset in sorted({s for m in mutants for s in m["tests"]}):
                baseline_tests(subset)
        for b in boxes[1:]:
            b.clean()
        records = [None] * len(mutants)
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
                "machine": "", "baseline": baseline, "seconds": 0.0, "cold": args.cold,
                "tests": args.tests, "full_verify": args.full_verify, "complete": False}

        def flush():
            meta["seconds"] = round(time.perf_counter() - t_start, 1)
            meta["machine"] = f"{os.cpu_count()} cores (shared), load {os.getloadavg()[0]:.1f}, jobs {args.jobs}"
            done = [r for r in records if r is not None]
            meta["complete"] = len(done) == len(mutants)
            meta["done"] = f"{len(done)} of {len(mutants)}"
            return write_tables(done, meta, args.out)

        def task(i, b):
            rec = run_one(b, mutants[i], base_cache, base_key, work, args, baseline_tests)
            tcell, tfail = _tests_cell(rec)
            v = rec["verify"]
            print(f"[{i + 1}/{len(mutants)}] {rec['id']}: verify {'caught' if v['caught'] else 'MISSED'} "
                  f"{v['rows'][:3]} ({v['seconds']} s); tests {tcell} {tfail}; {rec['seconds']} s", flush=True)
            return i, rec

        if len(boxes) == 1:
            for i in range(len(mutants)):
                records[i] = task(i, box)[1]
                flush()
        else:
            free = list(boxes)
            with concurrent.futures.ThreadPoolExecutor(len(boxes)) as pool:
                pending = {}
                queue = list(range(len(mutants)))
                while queue or pending:
                    while queue and free:
                        b = free.pop()
                        pending[pool.submit(task, queue.pop(0), b)] = b
                    done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                    for fut in done:
                        free.append(pending.pop(fut))
                        i, rec = fut.result()
                        records[i] = rec
                        flush()
        if args.base_cache:
            shutil.rmtree(args.base_cache, ignore_errors=True)
            shutil.copytree(base_cache, args.base_cache)
        summary = flush()
        print(json.dumps(summary), flush=True)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
