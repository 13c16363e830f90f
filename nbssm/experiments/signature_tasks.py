"""Experiment A of the paper: predicting anti-symmetric signature terms with random features.

"Theoretical Foundations of Deep Selective State-Space Models" (Muca Cirone, Orvieto, Walker,
Salvi, Lyons; NeurIPS 2024), Figure 1; ``paper/notes.md`` section 5 has the protocol and the
numbers recovered from the official logs.

Data (the paper's protocol): ``n_paths`` paths of 100 samples in ``d`` dimensions; each sample
is the cumulative sum of i.i.d. N(0, 1) draws rounded to the nearest integer; all paths are
divided by their global max ``|value|``. Labels: the depth-4 signature term ``S^{(1,2)}``
(``d = 2``, "area") or ``S^{(1,2,3)}`` (``d = 3``, "volume"), divided by their global max
``|value|``. First 80% train, last 20% validation.

Models: frozen random recurrences producing ``N = 256`` features from their final state, each
followed by an ordinary least-squares readout with intercept (float64); the metric is the
validation RMSE. Common to all: times ``t_k = k / 99``; gates ``omega = xi = (t, X)`` unless
said otherwise; initial state ``Z_0 = W x_0 + b`` with ``W, b ~ N(0, 1)``.

- ``dense``: random dense linear CDE, ``A_i`` entries ``N(0, 1/N)``, ``B`` entries ``N(0, 1)``;
- ``diagonal``: ``A_i = diag(a_i)``, ``a_i ~ N(0, 1)``;
- ``mamba``: ``nbssm.selective_scan`` (16 channels x 16 states = 256 features) with a random
  input projection ``u_k = W_u x_k``, ``A = -exp(N(0, 1))``, ``delta_k = softplus(W_delta x_k +
  b_delta)``, ``B_k = W_B x_k``: an input-dependent clock, no raw-increment gate;
- ``s4``: time-invariant diagonal, ``omega = t`` only, ``A`` diagonal ``N(0, 1)``,
  ``xi = (t, X)``;
- ``two_layer``: a diagonal layer as ``diagonal``, then a second diagonal layer whose gates and
  inputs are ``(t, X, P Z^1)`` with ``P`` a random ``8 x N`` projection of the first layer's
  state, scaled per channel to max ``|value|`` = 0.1 (measured on the first training paths).
  Unit variance would be the textbook choice; with it the second layer's features reach ~1e40
  and the readout fails (``scale="unit", proj_scale=1`` keeps that variant for the record).

Trained rows (opt-in, ``trained=("mamba_1", "mamba_2")``; torch, ``pip install nbssm[torch]``):
one- and two-block Mamba-style stacks (the block of :mod:`nbssm.experiments.state_tracking`)
on the tokens ``(t_k, X_k)``, a linear head on the last token, mean-squared error, AdamW, with a
reduced budget (``train_steps`` / ``train_seconds``, stated in the table's footer) instead of
the paper's ~1M steps at width 256.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np

from ._outputs import write_result_files

LENGTH = 100
DEPTH = 4
N_FEATURES = 256
TASKS = {"area": 2, "volume": 3}
MODELS = ("dense", "diagonal", "mamba", "s4", "two_layer")
#: trained Mamba-style stacks (torch; opt-in): name -> number of blocks
TRAINED_MODELS = {"mamba_1": 1, "mamba_2": 2}
MODEL_LABELS = {
    "zero": "predicting zero",
    "dense": "random dense linear CDE + least squares",
    "diagonal": "random diagonal linear CDE + least squares",
    "mamba": "random Mamba-style (selective_scan) + least squares",
    "s4": "random S4-style (time-invariant) + least squares",
    "two_layer": "two random diagonal layers + least squares",
    "mamba_1": "Mamba-style, 1 block (trained, reduced budget)",
    "mamba_2": "Mamba-style, 2 blocks (trained, reduced budget)",
}
#: validation RMSE from the official logs (paper/notes.md section 5); trained models
PAPER_RESULTS = {
    "predicting zero": {"area": 0.1120, "volume": 0.0585},
    "random linear CDE + least squares": {"area": 0.00021, "volume": 0.0069},
    "Mamba, 1 layer (trained)": {"area": 0.0217, "volume": 0.0347},
    "Mamba, 2 layers (trained)": {"area": 0.0016, "volume": 0.0042},
    "S4, 1 layer / 2 linear layers (trained)": {"area": 0.1120, "volume": 0.0585},
    "S4, 2 layers with GELU (trained)": {"area": 0.0146, "volume": 0.0197},
}
TRAIN_FRACTION = 0.8


# --------------------------------------------------------------------------- data
def make_data(dim: int, n_paths: int, seed: int, length: int = LENGTH):
    """Paths and labels of the signature task.

    Parameters
    ----------
    dim : int
        2 (area, label ``S^{(1,2)}``) or 3 (volume, label ``S^{(1,2,3)}``).
    n_paths : int
    seed : int
    length : int, default 100

    Returns
    -------
    paths : (n_paths, length, dim) float64
        Globally normalised (max ``|value|`` = 1).
    labels : (n_paths,) float64
        Globally normalised (max ``|value|`` = 1).
    """
    from nbssm.signatures import signature, word_index

    rng = np.random.default_rng([seed, dim, 0])
    x = np.rint(rng.standard_normal((n_paths, length, dim)))
    np.cumsum(x, axis=1, out=x)
    x /= np.abs(x).max()
    sig = signature(x, DEPTH)  # (n, siglen)
    labels = sig[:, word_index(tuple(range(dim)), dim)].copy()
    labels /= np.abs(labels).max()
    return x, labels


def _gates(paths):
    """Increments of the gate ``(t, X)``: (b, T, 1 + d)."""
    b, length, d = paths.shape
    T = length - 1
    dt = np.full((b, T, 1), 1.0 / T)
    return np.concatenate([dt, np.diff(paths, axis=1)], axis=2)


def _z0(paths, rng, n):
    """``Z_0 = W x_0 + b`` with ``W`` (n, d), ``b`` (n,) N(0, 1): (b, n)."""
    d = paths.shape[2]
    W = rng.standard_normal((n, d))
    bias = rng.standard_normal(n)
    return paths[:, 0, :] @ W.T + bias


def _blocks(n, block):
    return [(s, min(n, s + block)) for s in range(0, n, block)]


# --------------------------------------------------------------------------- models
def features_dense(paths, rng, n=N_FEATURES, order=2, compute_dtype=np.float32, block=4096, progress=None):
    """Final states of the random dense linear CDE: (b, n) float64."""
    from nbssm.cde import linear_cde_scan

    d = paths.shape[2]
    A = rng.standard_normal((d + 1, n, n)) / math.sqrt(n)
    B = rng.standard_normal((n, d + 1))
    z0 = _z0(paths, rng, n)
    out = np.empty((paths.shape[0], n))
    for s, e in _blocks(paths.shape[0], block):
        g = _gates(paths[s:e])
        method = "euler" if order == 0 else "taylor"
        out[s:e] = linear_cde_scan(A, B, g, g, z0[s:e], method=method, order=max(order, 1),
                                   backend="blas", block_size=block, compute_dtype=compute_dtype)
        if progress is not None:
            progress(e - s)
    return out


def features_diagonal(paths, rng, n=N_FEATURES, block=8192, progress=None):
    """Final states of the random diagonal linear CDE, ``omega = xi = (t, X)``: (b, n)."""
    from nbssm.cde import diagonal_cde_scan

    d = paths.shape[2]
    a = rng.standard_normal((d + 1, n))
    B = rng.standard_normal((n, d + 1))
    z0 = _z0(paths, rng, n)
    out = np.empty((paths.shape[0], n))
    for s, e in _blocks(paths.shape[0], block):
        g = _gates(paths[s:e])
        out[s:e] = diagonal_cde_scan(a, B, g, g, z0[s:e])
        if progress is not None:
            progress(e - s)
    return out


def features_s4(paths, rng, n=N_FEATURES, block=8192, progress=None):
    """Final states of a time-invariant diagonal linear CDE, ``omega = t``, ``xi = (t, X)``."""
    from nbssm.cde import diagonal_cde_scan

    d = paths.shape[2]
    a = rng.standard_normal((1, n))
    B = rng.standard_normal((n, d + 1))
    z0 = _z0(paths, rng, n)
    out = np.empty((paths.shape[0], n))
    for s, e in _blocks(paths.shape[0], block):
        xi = _gates(paths[s:e])
        out[s:e] = diagonal_cde_scan(a, B, xi[:, :, :1], xi, z0[s:e])
        if progress is not None:
            progress(e - s)
    return out


def features_two_layer(paths, rng, n=N_FEATURES, n_proj=8, block=2048, n_train=None, scale="maxabs", proj_scale=0.1, progress=None):
    """Final states of two stacked random diagonal linear CDEs (see module docstring)."""
    from nbssm.cde import diagonal_cde_scan

    b, length, d = paths.shape
    a1 = rng.standard_normal((d + 1, n))
    B1 = rng.standard_normal((n, d + 1))
    z01 = _z0(paths, rng, n)
    P = rng.standard_normal((n, n_proj)) / math.sqrt(n)  # (n, 8)
    dw2 = 1 + d + n_proj
    a2 = rng.standard_normal((dw2, n))
    B2 = rng.standard_normal((n, dw2))
    z02 = _z0(paths, rng, n)

    def layer1(s, e):
        g = _gates(paths[s:e])
        _, states = diagonal_cde_scan(a1, B1, g, g, z01[s:e], return_states=True)  # (bs, L, n)
        return states @ P  # (bs, L, 8)

    # scale of P Z^1 per channel, measured on the first training paths: max |value| =
    # proj_scale (scale="maxabs", default) or standard deviation proj_scale (scale="unit").
    # Unit variance (scale="unit", proj_scale=1) makes the second layer's features reach ~1e40
    # and the readout fail; max |value| 1 gives features ~1e3-1e5 and a poor fit; 0.1 was
    # chosen from {1, 0.3, 0.1} on 20k paths, seeds 0 and 1 (README, section cde).
    n_cal = min(b if n_train is None else n_train, block)
    cal = layer1(0, n_cal)
    flat = cal.reshape(-1, n_proj)
    spread = np.abs(flat).max(axis=0) if scale == "maxabs" else flat.std(axis=0)
    scale_v = proj_scale / np.maximum(spread, 1e-300)  # (8,)
    out = np.empty((b, n))
    for s, e in _blocks(b, block):
        pz = (cal[: e - s] if s == 0 and cal.shape[0] >= e else layer1(s, e)) * scale_v  # (bs, L, 8)
        g = np.concatenate([_gates(paths[s:e]), np.diff(pz, axis=1)], axis=2)  # (bs, T, 1+d+8)
        out[s:e] = diagonal_cde_scan(a2, B2, g, g, z02[s:e])
        if progress is not None:
            progress(e - s)
    return out


def features_mamba(paths, rng, channels=16, state=16, block=8192, progress=None):
    """Final states of a random Mamba-style selective scan: (b, channels * state)."""
    from nbssm.ops import selective_scan

    b, length, d = paths.shape
    W_u = rng.standard_normal((d, channels))
    W_delta = rng.standard_normal((d, channels))
    b_delta = rng.standard_normal(channels)
    A = -np.exp(rng.standard_normal((channels, state)))
    W_B = rng.standard_normal((d, state))
    W_C = rng.standard_normal((d, state))
    z0 = _z0(paths, rng, channels * state).reshape(b, channels, state)
    out = np.empty((b, channels * state))
    for s, e in _blocks(b, block):
        x = paths[s:e]  # (bs, L, d)
        u = x @ W_u  # (bs, L, channels)
        delta = x @ W_delta  # (bs, L, channels), softplus inside the kernel
        Bk = x @ W_B  # (bs, L, state)
        Ck = x @ W_C  # (bs, L, state)
        _, h = selective_scan(u, delta, A, Bk, Ck, delta_bias=b_delta, delta_softplus=True,
                              initial_state=z0[s:e], return_final_state=True)
        out[s:e] = np.asarray(h, dtype=np.float64).reshape(e - s, channels * state)
        if progress is not None:
            progress(e - s)
    return out


FEATURES = {
    "dense": features_dense,
    "diagonal": features_diagonal,
    "mamba": features_mamba,
    "s4": features_s4,
    "two_layer": features_two_layer,
}


# --------------------------------------------------------------------------- readout
def ols_rmse(features, labels, n_train):
    """Validation RMSE of an ordinary least-squares readout with intercept (float64).

    Parameters
    ----------
    features : (b, f) array
    labels : (b,) array
    n_train : int
        The first ``n_train`` rows train, the rest validate.

    Returns
    -------
    float
        ``sqrt(mean((y_val - F_val w - c)**2))``. Features are centred and scaled with the
        training statistics first (an invertible affine map: the least-squares fit is the same,
        the conditioning better); the solve is ``numpy.linalg.lstsq`` (SVD).
    """
    F = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    Ft, yt = F[:n_train], y[:n_train]
    mu = Ft.mean(axis=0)
    sd = Ft.std(axis=0)
    sd[sd == 0] = 1.0
    Xt = np.empty((n_train, F.shape[1] + 1))
    Xt[:, :-1] = (Ft - mu) / sd
    Xt[:, -1] = 1.0
    w, *_ = np.linalg.lstsq(Xt, yt, rcond=None)
    pred = ((F[n_train:] - mu) / sd) @ w[:-1] + w[-1]
    return float(np.sqrt(np.mean((y[n_train:] - pred) ** 2)))


# --------------------------------------------------------------------------- trained rows
def train_mamba(paths, labels, n_train, n_blocks, seed, steps=2000, seconds=300.0, batch=64, lr=2e-3,
                d_model=32, state=16, eval_every=250, threads=1, progress=None):
    """Train a Mamba-style stack to regress ``labels`` from ``paths``; its validation RMSE.

    Parameters
    ----------
    paths : (b, L, d) array
    labels : (b,) array
    n_train : int
        The first ``n_train`` paths train, the rest validate.
    n_blocks : int
    seed : int
    steps, seconds : int, float
        Budget: at most ``steps`` AdamW steps and about ``seconds`` of training.
    threads : int
        torch threads while training (restored afterwards).

    Returns
    -------
    dict
        ``rmse`` (validation, at the end), ``best_rmse`` (best of the evaluations every
        ``eval_every`` steps), ``steps``, ``train_seconds``, ``n_params``.
    """
    from nbssm.experiments import state_tracking as sx

    torch = sx._torch()
    nn = torch.nn
    b, length, d = paths.shape
    scan = "torch" if sx._bridge_scan() is None else "nbssm"  # resolved once for the whole training
    mc = sx.ModelConfig(d_model=d_model, state=state, expand=2, conv=4, scan_backend=scan)
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(1 + d, d_model)
            self.blocks = sx.build_blocks("mamba", n_blocks, mc)
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, 1)

        def forward(self, x):
            v = self.inp(x)
            for blk in self.blocks:
                v = blk(v)
            return self.head(self.norm(v[:, -1])).squeeze(-1)

    t = np.broadcast_to(np.linspace(0.0, 1.0, length)[None, :, None], (b, length, 1))
    X = torch.from_numpy(np.concatenate([t, paths], axis=2).astype(np.float32))
    Y = torch.from_numpy(np.asarray(labels, dtype=np.float32))
    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng([seed, d, n_blocks, 99])

    def val_rmse():
        with torch.no_grad():
            err = [(net(X[s:s + 1024]) - Y[s:s + 1024]).square().sum().item() for s in range(n_train, b, 1024)]
        return math.sqrt(sum(err) / max(b - n_train, 1))

    best = float("inf")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    step = 0
    while step < steps and time.perf_counter() - t0 < seconds:
        idx = torch.from_numpy(rng.integers(0, n_train, size=batch))
        loss = (net(X[idx]) - Y[idx]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        if step % eval_every == 0:
            best = min(best, val_rmse())
        if progress is not None:
            progress(1)
    train_s = time.perf_counter() - t0
    rmse = val_rmse()
    torch.set_num_threads(old_threads)
    return {"rmse": rmse, "best_rmse": min(best, rmse), "steps": step, "train_seconds": train_s,
            "n_params": int(sum(p.numel() for p in net.parameters())), "scan_backend": scan}


# --------------------------------------------------------------------------- driver
@dataclass
class Config:
    seed: int = 0
    n_paths: int = 100_000
    models: tuple = MODELS
    tasks: tuple = tuple(TASKS)
    dense_order: int = 2
    dense_dtype: str = "float32"
    dense_seeds: int = 1  # extra dense-only seeds seed+1, ... for the 3-seed target
    progress: bool = True
    trained: tuple = ()  # subset of TRAINED_MODELS (torch)
    train_steps: int = 2000
    train_seconds: float = 300.0
    train_batch: int = 64
    train_threads: int = 1


def _model_rng(seed, dim, model):
    return np.random.default_rng([seed, dim, 1 + MODELS.index(model)])


def _all_models():
    return MODELS + tuple(TRAINED_MODELS)


def run(config: Config):
    """Run the experiment; returns a results dict (JSON-serialisable)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the experiments extra
        tqdm = None
    seeds_for = {m: [config.seed] for m in config.models}
    if "dense" in config.models:
        seeds_for["dense"] = [config.seed + k for k in range(max(1, config.dense_seeds))]
    n_train = int(round(TRAIN_FRACTION * config.n_paths))
    total = sum(len(seeds_for[m]) for m in config.models) * config.n_paths * len(config.tasks)
    bar = tqdm(total=total, unit="path", disable=not config.progress, smoothing=0.05) if tqdm else None
    rows = []
    t_start = time.perf_counter()
    for task in config.tasks:
        dim = TASKS[task]
        data_cache = {}
        for model in config.models:
            for seed in seeds_for[model]:
                if seed not in data_cache:
                    t0 = time.perf_counter()
                    data_cache[seed] = make_data(dim, config.n_paths, seed)
                    data_s = time.perf_counter() - t0
                    paths, labels = data_cache[seed]
                    rows.append({"task": task, "model": "zero", "seed": seed,
                                 "rmse": float(np.sqrt(np.mean(labels[n_train:] ** 2))), "seconds": data_s})
                paths, labels = data_cache[seed]
                if bar is not None:
                    bar.set_description(f"{task}/{model}/seed {seed}")
                progress = bar.update if bar is not None else None
                rng = _model_rng(seed, dim, model)
                t0 = time.perf_counter()
                if model == "dense":
                    F = features_dense(paths, rng, order=config.dense_order,
                                       compute_dtype=np.dtype(config.dense_dtype), progress=progress)
                elif model == "two_layer":
                    F = features_two_layer(paths, rng, n_train=n_train, progress=progress)
                else:
                    F = FEATURES[model](paths, rng, progress=progress)
                feat_s = time.perf_counter() - t0
                rmse = ols_rmse(F, labels, n_train)
                rows.append({"task": task, "model": model, "seed": seed, "rmse": rmse,
                             "seconds": time.perf_counter() - t0, "feature_seconds": feat_s})
            # keep only the main seed's data between models
            for s in list(data_cache):
                if s != config.seed:
                    del data_cache[s]
        for model in config.trained:
            if config.seed not in data_cache:
                t0 = time.perf_counter()
                data_cache[config.seed] = make_data(dim, config.n_paths, config.seed)
                labels = data_cache[config.seed][1]
                rows.append({"task": task, "model": "zero", "seed": config.seed,
                             "rmse": float(np.sqrt(np.mean(labels[n_train:] ** 2))),
                             "seconds": time.perf_counter() - t0})
            paths, labels = data_cache[config.seed]
            if bar is not None:
                bar.set_description(f"{task}/{model} (training)")
            t0 = time.perf_counter()
            tr = train_mamba(paths, labels, n_train, TRAINED_MODELS[model], config.seed, steps=config.train_steps,
                             seconds=config.train_seconds, batch=config.train_batch, threads=config.train_threads)
            rows.append({"task": task, "model": model, "seed": config.seed, "rmse": tr["rmse"],
                         "seconds": time.perf_counter() - t0, **{k: v for k, v in tr.items() if k != "rmse"}})
    if bar is not None:
        bar.close()
    total_s = time.perf_counter() - t_start
    import numba

    results = {
        "config": {"seed": config.seed, "n_paths": config.n_paths, "models": list(config.models),
                   "tasks": list(config.tasks), "dense_order": config.dense_order,
                   "dense_dtype": config.dense_dtype, "dense_seeds": config.dense_seeds,
                   "trained": list(config.trained), "train_steps": config.train_steps,
                   "train_seconds": config.train_seconds, "train_batch": config.train_batch,
                   "length": LENGTH, "depth": DEPTH, "n_features": N_FEATURES,
                   "train_fraction": TRAIN_FRACTION},
        "environment": {"cpu_count": os.cpu_count(), "numba_threads": numba.get_num_threads(),
                        "numpy": np.__version__, "numba": numba.__version__},
        "total_seconds": total_s,
        "rows": rows,
        "paper": PAPER_RESULTS,
    }
    results["table"] = summarize(results)
    results["one_seed_seconds"] = float(sum(r["seconds"] for r in rows if r["seed"] == config.seed))
    return results


def summarize(results):
    """Table ``model -> task -> {mean, std, n_seeds, rel_mean, seconds}`` from the rows.

    ``rel_mean`` is the mean of ``rmse / rmse(predicting zero)`` over seeds, each seed against
    its own data (label normalisation depends on the sample's max). The ``zero`` row uses the
    main seed only, like every model but the multi-seed dense one.
    """
    seed0 = results["config"]["seed"]
    rows = results["rows"]
    zero = {(r["task"], r["seed"]): r["rmse"] for r in rows if r["model"] == "zero"}
    groups = {}
    for r in rows:
        if r["model"] == "zero" and r["seed"] != seed0:
            continue
        groups.setdefault((r["task"], r["model"]), []).append(r)
    table = {}
    for (task, model), rs in groups.items():
        vals = [r["rmse"] for r in rs]
        rel = [r["rmse"] / zero[(task, r["seed"])] for r in rs]
        table.setdefault(model, {})[task] = {
            "mean": float(np.mean(vals)), "std": float(np.std(vals)), "n_seeds": len(vals),
            "rel_mean": float(np.mean(rel)), "seconds": float(np.mean([r["seconds"] for r in rs]))}
    return table


def _fmt(x):
    return "n/a" if x is None else (f"{x:.5f}" if x >= 1e-4 else f"{x:.2e}")


def markdown_table(results):
    """Results (ours next to the paper's) as a Markdown string."""
    tasks = results["config"]["tasks"]
    head = [f"{t} {TASKS[t]}D" for t in tasks] + [f"{t} ÷ zero" for t in tasks]
    lines = ["| model | " + " | ".join(head) + " | source |", "|---|" + "---|" * len(head) + "---|"]
    order = ["zero"] + [m for m in _all_models() if m in results["table"]]
    for m in order:
        if m not in results["table"]:
            continue
        cells, rel = [], []
        for t in tasks:
            c = results["table"][m].get(t)
            if c is None:
                cells.append("n/a")
                rel.append("n/a")
                continue
            if c["n_seeds"] > 1:
                cells.append(f"{_fmt(c['mean'])} ± {_fmt(c['std'])} ({c['n_seeds']} seeds)")
            else:
                cells.append(_fmt(c["mean"]))
            rel.append(f"{c.get('rel_mean', float('nan')):.2g}")
        lines.append(f"| {MODEL_LABELS[m]} | " + " | ".join(cells + rel) + " | nbssm |")
    pz = results["paper"]["predicting zero"]
    for name, vals in results["paper"].items():
        rel = [f"{vals[t] / pz[t]:.2g}" if vals.get(t) is not None else "n/a" for t in tasks]
        lines.append(f"| {name} | " + " | ".join([_fmt(vals.get(t)) for t in tasks] + rel) + " | paper |")
    cfg = results["config"]
    foot = (f"\n{cfg['n_paths']} paths per task, seed {cfg['seed']}, dense Taylor order {cfg['dense_order']} "
            f"({cfg['dense_dtype']} GEMMs). Time: {results['total_seconds']:.0f} s in all")
    if "one_seed_seconds" in results:
        foot += f", {results['one_seed_seconds']:.0f} s for one seed of every model (both tasks)"
    if cfg.get("trained"):
        steps = {r["model"] + "/" + r["task"]: r.get("steps") for r in results["rows"] if r["model"] in TRAINED_MODELS}
        foot += (f". Trained rows: Mamba-style blocks (d_model 32, d_inner 64, state 16, conv 4), AdamW 2e-3, batch "
                 f"{cfg['train_batch']}, at most {cfg['train_steps']} steps or {cfg['train_seconds']:.0f} s each "
                 f"(steps done: {', '.join(f'{k} {v}' for k, v in steps.items())}); the paper trains ~1M steps at width 256")
    env = results.get("environment", {})
    foot += f"; {env.get('cpu_count')} CPUs, numpy {env.get('numpy')}, numba {env.get('numba')}.\n"
    return "\n".join(lines) + "\n" + foot


def plot(results, path):
    """Bar chart (log scale) of our validation RMSE next to the paper's, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = results["config"]["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.8), squeeze=False)
    ours = ["zero"] + [m for m in _all_models() if m in results["table"]]
    for ax, t in zip(axes[0], tasks):
        names, vals, errs, colors = [], [], [], []
        for m in ours:
            c = results["table"].get(m, {}).get(t)
            if c is None:
                continue
            names.append(f"{m} (nbssm)")
            vals.append(c["mean"])
            errs.append(c["std"])
            colors.append("tab:blue")
        for name, v in results["paper"].items():
            if v.get(t) is not None:
                names.append(name.replace(" + least squares", "") + " (paper)")
                vals.append(v[t])
                errs.append(0.0)
                colors.append("tab:orange")
        y = np.arange(len(names))
        for yi, v, e, c in zip(y, vals, errs, colors):
            ax.hlines(yi, 0, v, color=c, alpha=0.35, lw=4)
            ax.errorbar([v], [yi], xerr=[[min(e, 0.99 * v)], [e]] if e else None, fmt="o", color=c, capsize=3)
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        lo = 10 ** math.floor(math.log10(max(min(vals), 1e-12)))
        hi = 10 ** math.ceil(math.log10(max(vals)))
        ax.set_xlim(lo / 2, hi)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(axis="x", which="major", alpha=0.3)
        ax.set_xlabel("validation RMSE (log scale)")
        ax.set_title(f"{t} ({TASKS[t]}-D): S^{{{''.join(str(i + 1) for i in range(TASKS[t]))}}}")
    fig.suptitle(f"Signature prediction, {results['config']['n_paths']} paths: nbssm random features + "
                 "least squares (blue) vs the paper's numbers (orange)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results, out_dir):
    """Write ``results.json``, ``results.md`` and ``results.png`` into ``out_dir``."""
    return write_result_files(results, out_dir, markdown_table, plot)
