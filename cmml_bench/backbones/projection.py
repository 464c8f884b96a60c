"""Closed-form ridge regression from image features to text embeddings, fitted once and cached.

The offline backbone maps each MobileNetV2 grid cell into MiniLM's embedding
space with one linear map. The map is fitted on (image, caption) pairs: the
input is an image's mean-pooled 1280-d feature, the target is an embedding
of its caption. The fit is deterministic: float64 normal equations, a
held-out split chosen by hashing, and no random numbers, so a refit on the
same inputs gives the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

# Ridge penalties tried on the held-out split, from 1e-2 to 1e4 in half decades.
# A penalty is added to the diagonal of the centred Gram matrix X^T X.
DEFAULT_PENALTIES = tuple(float(10.0**exponent) for exponent in np.arange(-2.0, 4.01, 0.5))

# One pair in HOLDOUT_MODULUS (by a hash of its group) is held out to choose the penalty.
HOLDOUT_MODULUS = 5
FIT_VERSION = 1


@dataclass(frozen=True)
class ProjectionFit:
    """A fitted linear map ``y = x @ weight + bias`` and how its penalty was chosen.

    ``heldout_r2`` maps each penalty tried to the R^2 of the held-out pairs
    (1 - residual sum of squares / total sum of squares, over all outputs).
    """

    weight: np.ndarray
    bias: np.ndarray
    penalty: float
    heldout_r2: dict[float, float]
    num_pairs: int
    num_heldout: int
    inputs_hash: str


def ridge_fits(x: np.ndarray, y: np.ndarray, penalties: Sequence[float]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Solve min ||(x - mean) W - (y - mean)||^2 + penalty ||W||^2 for each penalty; return (W, bias) in float64.

    With fewer pairs than features the equivalent dual system (pairs x pairs)
    is solved instead of the primal one (features x features). The bias is not
    penalised: it maps the mean input to the mean target.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x_mean = x.mean(axis=0)
    y_mean = y.mean(axis=0)
    centred = x - x_mean
    targets = y - y_mean
    dual = centred.shape[0] < centred.shape[1]
    gram = centred @ centred.T if dual else centred.T @ centred
    right = targets if dual else centred.T @ targets
    identity = np.eye(gram.shape[0])

    fits = []
    for penalty in penalties:
        solution = np.linalg.solve(gram + penalty * identity, right)
        weight = centred.T @ solution if dual else solution
        fits.append((weight, y_mean - x_mean @ weight))
    return fits


def ridge_fit(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the ridge (W, bias) of one penalty (see ``ridge_fits``)."""
    return ridge_fits(x, y, [penalty])[0]


def r2_score(prediction: np.ndarray, target: np.ndarray) -> float:
    """Return 1 - SSE / SST over all outputs, with SST around the target mean."""
    residual = ((target - prediction) ** 2).sum()
    total = ((target - target.mean(axis=0)) ** 2).sum()
    return float(1.0 - residual / total)


def holdout_mask(groups: Sequence[str]) -> np.ndarray:
    """Return True for pairs held out: those whose group's SHA-256 is 0 modulo HOLDOUT_MODULUS.

    Pairs of one group (for example the skin-tone variants of one emoji) fall
    on the same side, so the held-out score is not inflated by near copies.
    """
    digests = [int(hashlib.sha256(group.encode("utf-8")).hexdigest()[:8], 16) for group in groups]
    return np.array([digest % HOLDOUT_MODULUS == 0 for digest in digests], dtype=bool)


def fit_projection(
    x: np.ndarray,
    y: np.ndarray,
    groups: Sequence[str],
    *,
    penalties: Sequence[float] = DEFAULT_PENALTIES,
    inputs_hash: str = "",
) -> ProjectionFit:
    """Choose the penalty with the best held-out R^2, then refit on every pair with it."""
    held_out = holdout_mask(groups)
    if held_out.all() or not held_out.any():
        raise ValueError(f"the held-out split of {len(groups)} pairs is empty on one side; give more pairs or groups")

    scores = {}
    for penalty, (weight, bias) in zip(penalties, ridge_fits(x[~held_out], y[~held_out], penalties)):
        scores[float(penalty)] = r2_score(x[held_out] @ weight + bias, y[held_out].astype(np.float64))
    best = max(scores, key=lambda penalty: (scores[penalty], -penalty))

    weight, bias = ridge_fit(x, y, best)
    return ProjectionFit(
        weight=weight.astype(np.float32),
        bias=bias.astype(np.float32),
        penalty=best,
        heldout_r2=scores,
        num_pairs=len(x),
        num_heldout=int(held_out.sum()),
        inputs_hash=inputs_hash,
    )


def hash_inputs(x: np.ndarray, y: np.ndarray, groups: Sequence[str], penalties: Sequence[float]) -> str:
    """Return a SHA-256 of everything the fit depends on."""
    digest = hashlib.sha256()
    digest.update(f"ridge-v{FIT_VERSION}:{x.shape}:{y.shape}:{list(penalties)}".encode("utf-8"))
    digest.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(y, dtype=np.float32).tobytes())
    digest.update("\n".join(groups).encode("utf-8"))
    return digest.hexdigest()


def save_fit(fit: ProjectionFit, path: Path) -> None:
    """Write the fit as safetensors (weight, bias) with its penalty and scores in the metadata."""
    from safetensors.numpy import save_file

    metadata = {
        "penalty": repr(fit.penalty),
        "heldout_r2": json.dumps({repr(key): value for key, value in fit.heldout_r2.items()}),
        "num_pairs": str(fit.num_pairs),
        "num_heldout": str(fit.num_heldout),
        "inputs_hash": fit.inputs_hash,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    save_file({"weight": fit.weight, "bias": fit.bias}, str(temporary), metadata=metadata)
    os.replace(temporary, path)


def load_fit(path: Path) -> ProjectionFit:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata()
        weight = handle.get_tensor("weight")
        bias = handle.get_tensor("bias")
    return ProjectionFit(
        weight=weight,
        bias=bias,
        penalty=float(metadata["penalty"]),
        heldout_r2={float(key): value for key, value in json.loads(metadata["heldout_r2"]).items()},
        num_pairs=int(metadata["num_pairs"]),
        num_heldout=int(metadata["num_heldout"]),
        inputs_hash=metadata["inputs_hash"],
    )


def cached_projection(
    folder: Path,
    build_inputs: Callable[[], tuple[np.ndarray, np.ndarray, list[str]]],
    *,
    penalties: Sequence[float] = DEFAULT_PENALTIES,
) -> ProjectionFit:
    """Return the fit for the inputs that ``build_inputs`` returns, from ``folder`` when it was stored before.

    The file name is the hash of the inputs, so changed pairs, features or
    targets give a new fit and never reuse a stale one.
    """
    x, y, groups = build_inputs()
    inputs_hash = hash_inputs(x, y, groups, penalties)
    path = folder / f"projection-{inputs_hash[:24]}.safetensors"
    if path.is_file():
        return load_fit(path)

    fit = fit_projection(x, y, groups, penalties=penalties, inputs_hash=inputs_hash)
    save_fit(fit, path)
    return fit
