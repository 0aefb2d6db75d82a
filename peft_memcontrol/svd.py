"""Singular value decompositions of base weights, keyed by the weight's content.

SVDiff needs ``W = U diag(s) V^T`` of every targeted weight. Computing it is the expensive part of setting the
method up, so decompositions are shared: every request for a weight whose bytes (and shape, dtype and layout) equal
an earlier one's gets the same `SpectralFactors`. The key is a SHA-256 of the weight's bytes, so a weight changed in
place (a merge writes through ``.data`` and leaves ``tensor._version`` alone) can never be matched to the
decomposition of what it held before.

The factors are computed in float32 (from float64 Gram matrices for large weights). ``U`` and ``Vh`` may be stored in
float16 or bfloat16 (``s`` stays float32): their rounding then reaches an adapted weight only through the change
``U diag(change) Vh``, so it scales with the shifts (``benchmarks/results/factor_dtype.md``: about 3e-4 of the change
in float16, 2.3e-3 in bfloat16, well below what rounding the adapted weight to that dtype costs at realistic shifts).
Factors stored in different dtypes are distinct entries, in memory and on disk.

Each SVDiff layer holds its factors itself (they describe the weight the adapter was created on, move with the
layer's ``.to()`` and are freed with the layer). The shared index here only holds them weakly; a search that wraps one
base model with many candidates keeps them alive between candidates with a `SpectralFactorPool`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


@dataclass(frozen=True, eq=False)
class SpectralFactors:
    """The reduced SVD ``(U, s, Vh)`` of one weight matrix; unpacks as ``u, s, vh = factors``.

    ``s`` is float32; ``U`` and ``Vh`` are float32 or the half-precision dtype they were requested in (users upcast
    them to float32 to compute with them)."""

    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.u, self.s, self.vh))

    @property
    def device(self) -> torch.device:
        return self.s.device

    @property
    def nbytes(self) -> int:
        """Bytes the three factors occupy."""
        return sum(factor.numel() * factor.element_size() for factor in self)

    def stored_in(self, dtype: torch.dtype) -> SpectralFactors:
        """These factors with ``U`` and ``Vh`` rounded to ``dtype`` (``s`` kept); themselves where nothing changes."""
        if self.u.dtype == dtype and self.vh.dtype == dtype:
            return self
        return SpectralFactors(self.u.to(dtype), self.s, self.vh.to(dtype))

    def to(self, device: torch.device | str) -> SpectralFactors:
        """The same factors on ``device``, in the same dtypes (never cast to a model's precision)."""
        if torch.device(device) == self.device:
            return self
        return SpectralFactors(*(factor.to(device) for factor in self))


class SpectralFactorPool:
    """Keeps the decompositions made or looked up inside its ``with`` blocks, so that they outlive the layers using
    them.

    The shared index holds decompositions weakly: when the last SVDiff layer of a weight is unloaded, its factors are
    freed. A search wraps the same base model with one candidate after another; its worker creates each candidate's
    adapter inside ``with pool:``, so that each weight is decomposed once for the whole search, and frees them all by
    dropping (or `clear`-ing) the pool. Decompositions made outside the block (another model in the same process) are
    not held.

    Args:
        cache_dir: a folder where decompositions made inside the block are also written (one safetensors file per
            weight, named by its content key) and where later requests look first: the workers of a search, a
            restarted search and every later run on the same base model then decompose each weight once. A file
            that cannot be read or does not match its weight is recomputed (and rewritten) with a warning.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self._held: dict[str, SpectralFactors] = {}
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        _ALL_POOLS.add(self)

    def __enter__(self) -> SpectralFactorPool:
        _ACTIVE_POOLS.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        _ACTIVE_POOLS.remove(self)

    def _hold(self, key: str, factors: SpectralFactors) -> None:
        self._held[key] = factors

    def __len__(self) -> int:
        return len(self._held)

    @property
    def nbytes(self) -> int:
        """Bytes of the factors this pool holds."""
        return sum(factors.nbytes for factors in self._held.values())

    def clear(self) -> None:
        """Stop holding the factors (layers still using them keep theirs)."""
        self._held.clear()


_INDEX: weakref.WeakValueDictionary[str, SpectralFactors] = weakref.WeakValueDictionary()
_ACTIVE_POOLS: list[SpectralFactorPool] = []
_ALL_POOLS: weakref.WeakSet[SpectralFactorPool] = weakref.WeakSet()


def weight_matrix(weight: torch.Tensor, as_row: bool = False) -> torch.Tensor:
    """The 2-D matrix SVDiff decomposes: ``out x (in * kh * kw)``, or ``1 x C`` for a norm's scale vector."""
    return weight.reshape(1, -1) if as_row else weight.reshape(weight.shape[0], -1)


def weight_key(weight: torch.Tensor, as_row: bool = False) -> str:
    """A key equal for two weights exactly when their decompositions are: SHA-256 of the bytes, plus shape and dtype.

    Hashes at about 1.8 GB/s on one CPU core (2 s for SD-1.5's float32 UNet); a weight on a GPU is copied to the CPU
    for it, one at a time.
    """
    data = weight.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
    digest = hashlib.sha256(data).hexdigest()
    return f"{digest}:{tuple(weight.shape)}:{weight.dtype}:{'row' if as_row else 'matrix'}"


FACTOR_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""The dtypes ``U`` and ``Vh`` can be stored in."""


def spectral_factors(
    weight: torch.Tensor, as_row: bool = False, dtype: torch.dtype = torch.float32
) -> SpectralFactors:
    """The reduced SVD of `weight_matrix(weight)`, computed in float32, with ``U`` and ``Vh`` stored in ``dtype``
    (one of `FACTOR_DTYPES`; ``s`` stays float32), on the weight's device; shared with every earlier request for a
    weight of the same content and the same ``dtype``."""
    if dtype not in FACTOR_DTYPES:
        raise ValueError(f"SVD factors can be stored in {', '.join(map(str, FACTOR_DTYPES))}, not {dtype}.")
    key = _factor_key(weight_key(weight, as_row), dtype)
    factors = _INDEX.get(key)
    cache_dirs = [pool.cache_dir for pool in _ACTIVE_POOLS if pool.cache_dir is not None]
    if factors is None:
        read = (_read_factors(folder, key, weight, as_row, dtype) for folder in cache_dirs)
        factors = next(filter(None, read), None)
    if factors is None:
        factors = _decompose(weight, as_row).stored_in(dtype)
    _INDEX[key] = factors
    for folder in cache_dirs:
        _write_factors(folder, key, factors)
    for pool in _ACTIVE_POOLS:
        pool._hold(key, factors)
    return factors.to(weight.device)


def _factor_key(key: str, dtype: torch.dtype) -> str:
    """The key of the factors of the weight with `weight_key` ``key``, stored in ``dtype`` (float32 factors keep the
    weight's key, so that existing cache folders stay valid)."""
    return key if dtype == torch.float32 else f"{key}:factors {dtype}"


def _decompose(weight: torch.Tensor, as_row: bool) -> SpectralFactors:
    with torch.no_grad(), _threads_for(weight.numel()):
        matrix = weight_matrix(weight.detach(), as_row).float()
        found = _gram_svd(matrix) if matrix.numel() >= SMALL_MATRIX else None
        if found is None:
            found = torch.linalg.svd(matrix, full_matrices=False)
    return SpectralFactors(*(factor.contiguous() for factor in found))


def _cache_path(folder: str, key: str) -> str:
    return os.path.join(folder, hashlib.sha256(key.encode()).hexdigest() + ".safetensors")


def _read_factors(
    folder: str, key: str, weight: torch.Tensor, as_row: bool, dtype: torch.dtype
) -> SpectralFactors | None:
    """The factors cached for ``key`` in ``folder``, or ``None`` (no file, or one that is unreadable, written for
    another key, or of the wrong shapes or dtypes: then with a warning, and the caller recomputes and rewrites it)."""
    path = _cache_path(folder, key)
    if not os.path.exists(path):
        return None
    rows, columns = weight_matrix(weight, as_row).shape
    rank = min(rows, columns)
    expected = {"u": ((rows, rank), dtype), "s": ((rank,), torch.float32), "vh": ((rank, columns), dtype)}
    try:
        with safe_open(path, framework="pt") as handle:
            if (handle.metadata() or {}).get("key") != key:
                raise ValueError("it was written for another weight")
            tensors = {name: handle.get_tensor(name) for name in expected}
        for name, (shape, stored) in expected.items():
            if tuple(tensors[name].shape) != shape or tensors[name].dtype != stored:
                found = f"{tuple(tensors[name].shape)} {tensors[name].dtype}"
                raise ValueError(f"{name} is {found}, expected {shape} {stored}")
            if not torch.isfinite(tensors[name]).all():
                raise ValueError(f"{name} holds NaN or inf")
        _check_decomposition(weight_matrix(weight.detach(), as_row).float().cpu(), *tensors.values())
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        warnings.warn(f"Ignoring the cached SVD {path} ({error}); decomposing the weight again.", stacklevel=3)
        os.remove(path)  # rewritten with the new decomposition
        return None
    return SpectralFactors(tensors["u"], tensors["s"], tensors["vh"])


CHECK_PROBES = 8
"""Random vectors the check of cached factors multiplies with (`_check_decomposition`)."""


def _check_decomposition(matrix: torch.Tensor, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> None:
    """Refuse factors that do not decompose ``matrix``, to the accuracy of a float32 SVD stored in the factors' dtype:
    on `CHECK_PROBES` random vectors ``x`` and ``y`` (a seeded Freivalds check), ``U diag(s) Vh x`` must equal
    ``matrix x`` within 1e-4 of its norm, and ``U``, ``Vh`` must be orthonormal (``U^T U y = y`` and ``Vh Vh^T y = y``
    within 1e-3); half-precision factors within 4 units of their rounding instead (3.9e-3 in float16, 3.1e-2 in
    bfloat16; measured errors are about 13x smaller). Matrix-vector products only: forming ``U diag(s) Vh`` and the
    Gram matrices costs ``size x rank`` per weight, which made loading the cached factors of SD-1.5 take a minute;
    factors wrong anywhere change these products (with probability one)."""
    rounding = 4 * torch.finfo(u.dtype).eps
    u, vh = u.float(), vh.float()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(matrix.shape[1], CHECK_PROBES, generator=generator)
    expected = matrix @ x
    if (u @ (s[:, None] * (vh @ x)) - expected).norm() > max(1e-4, rounding) * expected.norm():
        raise ValueError("its factors do not rebuild the weight")
    y = torch.randn(s.shape[0], CHECK_PROBES, generator=generator)
    limit = max(1e-3, rounding) * y.norm()
    if (u.T @ (u @ y) - y).norm() > limit or (vh @ (vh.T @ y) - y).norm() > limit:
        raise ValueError("its singular vectors are not orthonormal")


def _write_factors(folder: str, key: str, factors: SpectralFactors) -> None:
    """Write ``factors`` to ``folder`` unless already there; atomically (a temporary file renamed), so that a killed
    process or a concurrent worker never leaves a partial file under the final name."""
    path = _cache_path(folder, key)
    if os.path.exists(path):
        return
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(handle)
    try:
        tensors = {"u": factors.u.cpu().contiguous(), "s": factors.s.cpu(), "vh": factors.vh.cpu().contiguous()}
        save_file(tensors, temporary, metadata={"key": key})
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


SMALL_MATRIX = 1 << 20
CONDITION_LIMIT = 1e6


def _gram_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Reduced SVD through the eigendecomposition of the smaller Gram matrix, in float64.

    For the large, wide conv kernels of a real UNet (1280 x 11520 on SD-1.5) this is about 7x faster than LAPACK's
    SVD on the CPU (2.9 s vs 22 s on 2 cores) and, in float64, as accurate for well-conditioned weights (singular
    values to 2e-6 relative). Returns ``None`` for ill-conditioned matrices, which then take the plain SVD.
    """
    wide = matrix.shape[0] <= matrix.shape[1]
    data = matrix.double() if wide else matrix.double().T
    eigenvalues, vectors = torch.linalg.eigh(data @ data.T)
    eigenvalues, vectors = eigenvalues.flip(0), vectors.flip(1)
    if eigenvalues[-1] <= 0 or eigenvalues[0] / eigenvalues[-1] > CONDITION_LIMIT**2:
        return None
    singular_values = eigenvalues.sqrt()
    other = (vectors.T @ data) / singular_values[:, None]
    if wide:
        u, vh = vectors, other
    else:
        u, vh = other.T, vectors.T
    return u.float().contiguous(), singular_values.float(), vh.float().contiguous()


@contextmanager
def _threads_for(numel: int) -> Iterator[None]:
    """Run small decompositions on one thread: LAPACK's threading makes them many times slower (18 s vs 0.8 s to
    set up SVDiff on the tiny test UNet on a busy 2-core machine), while large ones gain from threads."""
    if numel >= SMALL_MATRIX or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def clear_svd_cache() -> None:
    """Forget every shared decomposition and empty every pool; layers keep the factors they hold."""
    _INDEX.clear()
    for pool in list(_ALL_POOLS):
        pool.clear()
