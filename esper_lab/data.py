"""Data: digits (CNN default), a pydoc character corpus (char LM), CIFAR-10 from the user's copy,
and the training loop's minibatch iterators. Deterministic given the arguments (design rule 7):
splits take a seed, iterators a `torch.Generator`.

Every task has three parts (DESIGN rule 10): **train** (the host's batches), **validation** (the
reward and every decision signal read it) and **test** (only the reported final metric reads it;
no reward, observation or decision ever does)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics as PYDOC_TOPICS

import numpy as np
import torch

DATA_ENV_VAR = "ESPER_LAB_DATA"  # overrides the data root, e.g. a shared cache or a test folder
SEED_LIMIT = 2**32  # numpy's RandomState, which drives sklearn's split, takes seeds below 2**32
DIGITS_MAX_PIXEL = 16.0  # a sklearn digits pixel counts the set bits of a 4x4 block: 0..16
DIGITS_CLASSES = 10
CORPUS_FILE = "pydoc_topics.txt"
# ASCII bytes outside printable 32..126, but newline: the corpus vocabulary is printable ASCII + "\n"
DROPPED_BYTES = bytes(b for b in range(128) if b != ord("\n") and not 32 <= b <= 126)
CIFAR10_DIR = "cifar-10-batches-py"  # the folder the official python archive unpacks to
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_CLASSES = 10
CIFAR10_IMAGE = (3, 32, 32)  # a batch row is 1024 red, 1024 green, then 1024 blue bytes
CIFAR10_CACHE_FILES = ("train_images.u8", "train_labels.u8", "test_images.u8", "test_labels.u8")
PIXEL_MAX = 255.0  # uint8 pixels
# (top module, name) of every global a pickled numpy array names in numpy 1.x/2.x (protocol 2 wraps
# bytes in _codecs.encode); a batch file may name nothing else.
NUMPY_NAMES = ("_reconstruct", "_frombuffer", "ndarray", "dtype", "scalar")
PICKLE_GLOBALS = frozenset({("numpy", name) for name in NUMPY_NAMES} | {("_codecs", "encode")})
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value
class Split:
    """A classification train/validation/test split kept compact: raw pixels (uint8) and labels,
    with the per-channel standardisation of the training pixels, applied per batch (`standardise`).

    One copy serves every environment of a process (CIFAR-10's 50k images are 150 MiB as bytes,
    600 MiB as floats); an environment keeps row indices into it, never a copy."""

    train_pixels: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N]
    val_pixels: torch.Tensor
    val_y: torch.Tensor
    test_pixels: torch.Tensor  # read only for reported metrics (module docstring)
    test_y: torch.Tensor
    num_classes: int
    name: str
    pixel_max: float  # the raw value of a full pixel: x = pixels / pixel_max is in [0, 1]
    mean: tuple[float, ...]  # per channel, of the train images x, subtracted from both parts
    std: tuple[float, ...]  # per channel (population std) of the train images x, divided out

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (1, 8, 8), for building a host."""
        return tuple(self.train_pixels.shape[1:])

    def standardise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float inputs for the host from raw pixels [B, C, H, W] of this split."""
        shape = (1, -1) + (1,) * (pixels.ndim - 2)
        mean = torch.tensor(self.mean, device=pixels.device).view(shape)
        std = torch.tensor(self.std, device=pixels.device).view(shape)
        return pixels.float().div_(self.pixel_max).sub_(mean).div_(std)

    @property
    def train_x(self) -> torch.Tensor:
        """Every training image standardised: a float copy (fine for digits; envs never make one)."""
        return self.standardise(self.train_pixels)

    @property
    def val_x(self) -> torch.Tensor:
        """Every validation image standardised: a float copy."""
        return self.standardise(self.val_pixels)

    def batches(self, rows: torch.Tensor, batch_size: int, generator: torch.Generator, max_batches: int | None = None) -> Iterator[Batch]:
        """Standardised training batches over `rows` (indices into the training pixels), in an
        order drawn from `generator` at the call, as `classification_batches` draws it."""
        picks = [rows[i.to(rows.device)] for i in batch_indices(len(rows), batch_size, generator, max_batches)]
        return ((self.standardise(self.train_pixels[r]), self.train_y[r]) for r in picks)

    def to(self, device: torch.device | str) -> Split:
        """The same split with its tensors on `device`."""
        moved = {f: getattr(self, f).to(device) for f in ("train_pixels", "train_y", "val_pixels", "val_y", "test_pixels", "test_y")}
        return dataclasses.replace(self, **moved)


@dataclass(frozen=True, eq=False)
class CharCorpus:
    """A character corpus with a fixed vocabulary and a fixed train (first) / val / test (last) id split."""

    text: str
    vocab: tuple[str, ...]  # sorted characters; a token id is an index into it
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    test_ids: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, s: str) -> torch.Tensor:
        """Token ids (int64, 1-D) of `s`; a character outside the vocabulary is a ValueError."""
        return _encode(s, self.vocab)

    def decode(self, ids: torch.Tensor) -> str:
        """The text of a 1-D tensor of token ids."""
        if ids.ndim != 1 or (ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < self.vocab_size):
            shape = tuple(ids.shape)
            raise ValueError(f"decode: ids must be 1-D in [0, {self.vocab_size}), got shape {shape}")
        return "".join(self.vocab[i] for i in ids.tolist())


def data_root() -> Path:
    """The data folder (CIFAR-10's default folder and the caches): $ESPER_LAB_DATA when set, else
    `data/` of the source checkout this package runs from, else `data/` in the working folder;
    never inside an installed package (site-packages may be read-only, and is not the user's)."""
    override = os.environ.get(DATA_ENV_VAR)
    if override:
        return Path(override).expanduser()
    checkout = Path(__file__).resolve().parents[1]
    return checkout / "data" if (checkout / "pyproject.toml").is_file() else Path.cwd() / "data"


def load_digits(seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2) -> Split:
    """The 8x8 sklearn digits (1797 images, shipped with sklearn): seeded stratified train,
    validation and test parts (each fraction of all the images)."""
    _check_int("seed", seed, 0, SEED_LIMIT)
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction = {val_fraction + test_fraction} must be below 1: nothing would be left to train on")
    from sklearn import datasets  # imported here: sklearn costs ~1.4 s, and only digits needs it

    bunch = datasets.load_digits()
    pixels = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)  # whole counts 0..16
    y = torch.from_numpy(bunch.target).long()
    rest, test = _stratified_split(y, test_fraction, seed)
    train, val = (rest[i] for i in _stratified_split(y[rest], val_fraction / (1 - test_fraction), seed))
    return _split(pixels[train], y[train], pixels[val], y[val], pixels[test], y[test], DIGITS_CLASSES, "digits", DIGITS_MAX_PIXEL)


def load_pydoc_corpus(val_fraction: float = 0.1, test_fraction: float = 0.1, max_chars: int | None = None) -> CharCorpus:
    """The pydoc topics text of this Python (cached under data/cache), as a character corpus:
    train is the first part, then validation, then test (contiguous, so no window spans two).

    `max_chars` keeps the first characters only (smoke presets); the vocabulary still comes
    from the whole text, so a model's vocabulary size does not depend on the preset.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if max_chars is not None:
        _check_int("max_chars", max_chars, minimum=3)
    full = _pydoc_text()
    text, vocab = full[:max_chars], tuple(sorted(set(full)))
    val_at, test_at = int(len(text) * (1 - val_fraction - test_fraction)), int(len(text) * (1 - test_fraction))
    if not 0 < val_at < test_at < len(text):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} leave a part of {len(text)} characters empty")
    ids = _encode(text, vocab)
    return CharCorpus(text, vocab, ids[:val_at], ids[val_at:test_at], ids[test_at:])


def check_cifar10_folder(folder: str | Path | None = None) -> Path:
    """The CIFAR-10 folder (default data/cifar-10-batches-py) if every batch file is there;
    otherwise a FileNotFoundError naming the folder, the missing files and where to get them.
    Cheap, so configs call it before any compute."""
    folder = Path(folder) if folder is not None else data_root() / CIFAR10_DIR
    missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
    if missing:
        where = f"{folder} lacks {', '.join(missing)}" if folder.is_dir() else f"{folder} does not exist"
        raise FileNotFoundError(
            f"CIFAR-10 not found: {where}. Expected files: {', '.join(CIFAR10_FILES)}. Download the "
            f'"CIFAR-10 python version" from {CIFAR10_URL} and extract it so these files sit directly '
            f"in {folder} (the archive unpacks to a folder named {CIFAR10_DIR})."
        )
    return folder


def load_cifar10(folder: str | Path | None = None, val_fraction: float = 0.1, seed: int = 0) -> Split:
    """CIFAR-10 from the official python batches in `folder` (default data/cifar-10-batches-py).

    Test is `test_batch`; validation is a seeded stratified `val_fraction` of the training
    batches (so model selection and rewards never look at the test set). The batches are
    decoded once into a byte cache under the data root (`cifar10_cache`); every later load, in
    any process, maps that cache instead of decoding. The test pixels stay mapped (shared through
    the page cache); the training rows left once validation is drawn are a copy per process.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_int("seed", seed, 0, SEED_LIMIT)
    cache = cifar10_cache(folder)
    pixels, labels, test_x, test_y = (_map_bytes(cache / name) for name in CIFAR10_CACHE_FILES)
    pixels, test_x, labels = pixels.view(-1, *CIFAR10_IMAGE), test_x.view(-1, *CIFAR10_IMAGE), labels.long()
    train, val = _stratified_split(labels, val_fraction, seed)
    return _split(pixels[train], labels[train], pixels[val], labels[val], test_x, test_y.long(), CIFAR10_CLASSES, "cifar10", PIXEL_MAX)


def cifar10_cache(folder: str | Path | None = None) -> Path:
    """The byte cache of the CIFAR-10 batches in `folder`, built (atomically) when missing: raw
    uint8 images and labels, one file each for train and test. Its name hashes the folder and
    each batch file's size and modification time, so a changed copy gets a new cache."""
    folder = check_cifar10_folder(folder).resolve()
    stamp = [[name, (folder / name).stat().st_size, (folder / name).stat().st_mtime_ns] for name in CIFAR10_FILES]
    key = hashlib.sha256(json.dumps([str(folder), stamp]).encode()).hexdigest()[:16]
    cache = data_root() / "cache" / f"cifar10-{key}"
    if all((cache / name).is_file() for name in CIFAR10_CACHE_FILES):
        return cache
    parts = [_read_cifar_batch(folder / name) for name in CIFAR10_FILES]
    train_x, train_y = map(torch.cat, zip(*parts[:-1]))
    arrays = (train_x, train_y, *parts[-1])
    cache.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=cache.parent, prefix=cache.name, suffix=".tmp"))
    try:
        for name, array in zip(CIFAR10_CACHE_FILES, arrays):
            (building / name).write_bytes(array.to(torch.uint8).numpy().tobytes())
        os.replace(building, cache)
    except OSError:
        if not all((cache / name).is_file() for name in CIFAR10_CACHE_FILES):
            raise
    finally:  # another process finished first (its cache stands), or this one failed
        if building.exists():
            for part in building.iterdir():
                part.unlink()
            building.rmdir()
    return cache


def _map_bytes(path: Path) -> torch.Tensor:
    """A file of bytes as a uint8 tensor mapped copy-on-write: pages come from the page cache,
    shared by every process that maps the same file, and are read only when touched."""
    return torch.from_file(str(path), shared=False, size=path.stat().st_size, dtype=torch.uint8)


def write_cifar10_batches(folder: str | Path, per_batch: int, seed: int = 0) -> None:
    """Write CIFAR-shaped random batches in the official python format to `folder` (a pickled dict
    with bytes keys per file): test and benchmark data where the real download is absent."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(CIFAR10_FILES):
        images = rng.integers(0, 256, size=(per_batch, math.prod(CIFAR10_IMAGE)), dtype=np.uint8)
        batch = {
            b"batch_label": name.encode(),
            b"labels": [(i + j) % CIFAR10_CLASSES for j in range(per_batch)],
            b"data": images,
            b"filenames": [f"{j}.png".encode() for j in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def batch_indices(n: int, batch_size: int, generator: torch.Generator, max_batches: int | None = None) -> list[torch.Tensor]:
    """One pass over n samples in an order drawn from `generator`: the index tensor of each
    batch (the last may be short), at most `max_batches` of them."""
    _check_int("batch_size", batch_size, minimum=1)
    if max_batches is not None:
        _check_int("max_batches", max_batches, minimum=1)
    _check_generator(generator)
    return list(torch.randperm(n, generator=generator, device=generator.device).split(batch_size)[:max_batches])


def classification_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator, max_batches: int | None = None
) -> Iterator[Batch]:
    """One pass over (x, y) in an order drawn from `generator`; the last batch may be short.
    Checked and drawn at the call (not lazily), so bad input fails here."""
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
        shapes = f"{tuple(x.shape)} and {tuple(y.shape)}"
        raise ValueError(f"x and y must hold the same number >= 1 of samples, got {shapes}")
    order = batch_indices(len(x), batch_size, generator, max_batches)
    return ((x[i.to(x.device)], y[i.to(x.device)]) for i in order)


def lm_batches(ids: torch.Tensor, context: int, batch_size: int, generator: torch.Generator, max_batches: int) -> Iterator[Batch]:
    """`max_batches` batches of (inp [B,T], target [B,T] = inp shifted by one) at offsets drawn from
    `generator` at the call; both are contiguous gathers, ready for `.view(-1)`."""
    if ids.ndim != 1:
        raise ValueError(f"ids must be a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
    _check_int("context", context, minimum=1)
    if context >= len(ids):
        raise ValueError(f"context must be in [1, len(ids) - 1] = [1, {len(ids) - 1}], got {context}")
    _check_int("batch_size", batch_size, minimum=1)
    _check_int("max_batches", max_batches, minimum=1)
    _check_generator(generator)
    # len(ids) - context offsets: a window and its shifted target both fit
    shape = (max_batches, batch_size, 1)
    starts = torch.randint(len(ids) - context, shape, generator=generator, device=generator.device)
    windows = starts.to(ids.device) + torch.arange(context, device=ids.device)
    return ((ids[window], ids[window + 1]) for window in windows)


def _stratified_split(y: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation indices with the class proportions of `y` kept in both."""
    n, classes = len(y), len(torch.unique(y))
    n_val = math.ceil(n * val_fraction)  # sklearn's own rounding of test_size
    if not classes <= n_val <= n - classes:
        raise ValueError(
            f"val_fraction={val_fraction} must leave each of the {classes} classes in both parts of "
            f"{n} samples: use a value in [{classes / n:.4f}, {1 - classes / n:.4f}]"
        )
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(np.arange(n), test_size=val_fraction, stratify=y.numpy(), random_state=seed)
    return torch.from_numpy(train), torch.from_numpy(val)


def _split(train_pixels, train_y, val_pixels, val_y, test_pixels, test_y, num_classes: int, name: str, pixel_max: float) -> Split:
    """A split standardised per channel with train statistics only (no val or test leakage), computed
    exactly from each channel's pixel histogram (no float copy of the images is ever made)."""
    means, stds = [], []
    for channel in train_pixels.unbind(1):
        counts = torch.bincount(channel.flatten(), minlength=256).double()
        values = torch.arange(len(counts), dtype=torch.float64) / pixel_max
        mean = float((counts * values).sum() / counts.sum())
        means.append(mean)
        stds.append(math.sqrt(float((counts * (values - mean) ** 2).sum() / counts.sum())))
    return Split(train_pixels, train_y, val_pixels, val_y, test_pixels, test_y, num_classes, name, pixel_max, tuple(means), tuple(stds))


def _pydoc_text() -> str:
    """The cleaned pydoc topics text, built once and cached (atomically) under the data root."""
    path = data_root() / "cache" / CORPUS_FILE
    if not path.is_file():
        raw = "\n".join(PYDOC_TOPICS[key] for key in sorted(PYDOC_TOPICS))
        _write_atomic(path, raw.encode("ascii", errors="ignore").translate(None, DROPPED_BYTES))
    try:
        return path.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"corpus cache {path} is not ASCII text; delete it to rebuild it") from None


def _encode(text: str, vocab: tuple[str, ...]) -> torch.Tensor:
    """Token ids by binary search: a sorted vocabulary of characters is sorted by code point."""
    unknown = set(text).difference(vocab)
    if unknown:
        raise ValueError(f"encode: characters {sorted(unknown)[:5]} are not in the corpus vocabulary")
    codes = torch.from_numpy(np.frombuffer(bytearray(text.encode("ascii")), dtype=np.uint8)).long()
    return torch.searchsorted(torch.tensor([ord(c) for c in vocab]), codes)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a temp file in the same folder and os.replace: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers only, so a batch file cannot run code."""

    def find_class(self, module: str, name: str):
        if (module.split(".")[0], name) in PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 [N,3,32,32]) and labels (int64 [N]) of one python batch file."""
    with path.open("rb") as f:
        try:  # any failure inside the pickle means the file is not a batch
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
            data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
        except Exception as exc:
            raise ValueError(f"{path} is not a CIFAR-10 python batch: {exc!r}") from exc
    row = math.prod(CIFAR10_IMAGE)
    if not (
        data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == row
        and len(data) >= 1
        and labels.shape == (len(data),)
        and np.issubdtype(labels.dtype, np.integer)
        and 0 <= labels.min()
        and labels.max() < CIFAR10_CLASSES
    ):
        got = f"data {data.dtype} {data.shape}, labels {labels.dtype} {labels.shape}"
        raise ValueError(f"{path} is not a CIFAR-10 python batch: want uint8 [N, {row}], N labels; got {got}")
    return torch.from_numpy(data).reshape(-1, *CIFAR10_IMAGE), torch.from_numpy(labels).long()


def _check_int(name: str, value, minimum: int, limit: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not minimum <= value < limit:
        allowed = f">= {minimum}" if limit == math.inf else f"in [{minimum}, {limit})"
        raise ValueError(f"{name} must be an int {allowed}, got {value!r}")


def _check_fraction(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")


def _check_generator(generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
