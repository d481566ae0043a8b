"""Tests for esper_lab.data on real data: sklearn digits, the pydoc corpus, generated CIFAR-10 batches."""

from __future__ import annotations

import io
import pickle
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from esper_lab import data
from esper_lab.data import (
    CIFAR10_FILES,
    classification_batches,
    data_root,
    lm_batches,
    load_cifar10,
    load_digits,
    load_pydoc_corpus,
    write_cifar10_batches,
)

CIFAR_PER_BATCH = 20  # small generated batches: 90 train, 10 validation and 20 test images


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- digits ---------------------------------------------------------------------------------


def test_digits_shapes_dtypes_and_standardisation():
    split = load_digits()
    assert split.name == "digits" and split.num_classes == 10 and split.input_shape == (1, 8, 8)
    assert len(split.train_x) + len(split.val_x) + len(split.test_pixels) == 1797
    assert len(split.val_x) == len(split.test_pixels) == 360  # ceil(0.2 * 1797) each
    assert split.train_x.dtype == split.val_x.dtype == torch.float32
    assert split.train_y.dtype == split.val_y.dtype == torch.int64
    assert abs(split.train_x.mean().item()) < 1e-5
    assert split.train_x.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)
    # validation uses the train statistics: undoing them gives pixels back in [0, 1]
    pixels = split.val_x * split.std[0] + split.mean[0]
    assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5


def test_digits_split_is_seeded_and_stratified():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.val_y, c.val_y)
    val_share = torch.bincount(a.val_y, minlength=10) / len(a.val_y)
    train_share = torch.bincount(a.train_y, minlength=10) / len(a.train_y)
    assert (val_share - train_share).abs().max() < 0.02


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1}, "val_fraction"),
        ({"val_fraction": 0.001}, "val_fraction"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_digits_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        load_digits(**kwargs)


# ---- pydoc corpus ---------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path))
    return tmp_path


def test_data_root_is_the_checkout_or_the_working_folder_never_the_installation(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    assert data_root() == Path(data.__file__).resolve().parents[1] / "data"  # this source checkout
    installed = tmp_path / "site-packages" / "esper_lab"  # an installed package: no pyproject.toml beside it
    installed.mkdir(parents=True)
    monkeypatch.setattr(data, "__file__", str(installed / "data.py"))
    monkeypatch.chdir(tmp_path)
    assert data_root() == tmp_path / "data"
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "mine"))
    assert data_root() == tmp_path / "mine"


def test_pydoc_corpus_is_cached_printable_and_round_trips(data_dir):
    corpus = load_pydoc_corpus()
    cache = data_dir / "cache" / data.CORPUS_FILE
    assert cache.is_file() and cache.read_text() == corpus.text
    assert sorted(data_dir.joinpath("cache").iterdir()) == [cache]  # no temp file left behind
    assert len(corpus.text) > 100_000
    assert set(corpus.text) <= set(string.printable[:95]) | {"\n"}  # printable ASCII minus \t etc.
    assert list(corpus.vocab) == sorted(set(corpus.text)) and corpus.vocab_size == len(corpus.vocab)
    ids = torch.cat([corpus.train_ids, corpus.val_ids, corpus.test_ids])
    assert ids.dtype == torch.int64 and torch.equal(ids, corpus.encode(corpus.text))
    assert (len(corpus.train_ids), len(corpus.train_ids) + len(corpus.val_ids)) == (int(len(corpus.text) * 0.8), int(len(corpus.text) * 0.9))
    assert corpus.decode(ids[:5000]) == corpus.text[:5000]
    assert corpus.decode(corpus.encode("")) == ""


def test_pydoc_corpus_reuses_the_cache(data_dir):
    cache = data_dir / "cache" / data.CORPUS_FILE
    cache.parent.mkdir()
    cache.write_text("abc\nabc\nxyz!")
    corpus = load_pydoc_corpus(val_fraction=0.25, test_fraction=0.25)
    assert corpus.text == "abc\nabc\nxyz!" and corpus.vocab == ("\n", "!", "a", "b", "c", "x", "y", "z")
    assert (corpus.decode(corpus.val_ids), corpus.decode(corpus.test_ids)) == ("c\nx", "yz!")  # the last 25%: 3 of 12 characters


def test_pydoc_corpus_max_chars_keeps_the_full_vocabulary(data_dir):
    full, small = load_pydoc_corpus(), load_pydoc_corpus(max_chars=1000)
    assert small.text == full.text[:1000] and small.vocab == full.vocab
    assert (len(small.train_ids), len(small.val_ids), len(small.test_ids)) == (800, 100, 100)


def test_pydoc_corpus_rejects_bad_input(data_dir):
    corpus = load_pydoc_corpus(max_chars=100)
    with pytest.raises(ValueError, match="vocabulary"):
        corpus.encode("caf\u00e9")
    with pytest.raises(ValueError, match="decode"):
        corpus.decode(torch.tensor([corpus.vocab_size]))
    with pytest.raises(ValueError, match="decode"):
        corpus.decode(torch.tensor([-1]))
    for kwargs, name in [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"max_chars": 1}, "max_chars"),
        ({"max_chars": 3, "val_fraction": 0.6}, "val_fraction"),
        ({"test_fraction": 0.0}, "test_fraction"),
    ]:
        with pytest.raises(ValueError, match=name):
            load_pydoc_corpus(**kwargs)


# ---- CIFAR-10 -------------------------------------------------------------------------------


def _write_cifar(folder):
    """Small generated batches in the official format; returns {file: (images uint8 [N, 3072], labels)}."""
    write_cifar10_batches(folder, CIFAR_PER_BATCH)
    batches = {}
    for name in CIFAR10_FILES:
        batch = pickle.loads((folder / name).read_bytes(), encoding="bytes")
        batches[name] = (batch[b"data"], batch[b"labels"])
    return batches


def test_cifar10_loads_generated_batches_as_compact_pixels(data_dir):
    batches = _write_cifar(data_dir / "cifar")
    split = load_cifar10(data_dir / "cifar")
    assert split.name == "cifar10" and split.num_classes == 10 and split.input_shape == (3, 32, 32)
    # test is the official test batch; validation a seeded stratified tenth of the training batches
    assert split.train_pixels.shape == (4.5 * CIFAR_PER_BATCH, 3, 32, 32) and split.train_pixels.dtype == torch.uint8
    assert split.val_pixels.shape == (CIFAR_PER_BATCH / 2, 3, 32, 32) and split.test_pixels.shape == (CIFAR_PER_BATCH, 3, 32, 32)
    train_labels = sum((batches[name][1] for name in CIFAR10_FILES[:5]), [])
    assert sorted(split.train_y.tolist() + split.val_y.tolist()) == sorted(train_labels) and split.train_y.dtype == torch.int64
    assert split.test_y.tolist() == batches["test_batch"][1]
    # a row is 1024 red, 1024 green, 1024 blue bytes
    assert split.test_pixels[0].flatten().tolist() == batches["test_batch"][0][0].tolist()
    x = split.train_x  # standardised with the train statistics, computed exactly from histograms
    assert x.dtype == torch.float32 and x.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert torch.allclose(x.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    mean, std = torch.tensor(split.mean).view(3, 1, 1), torch.tensor(split.std).view(3, 1, 1)
    raw = torch.from_numpy(batches["test_batch"][0][0]).view(3, 32, 32).float() / 255
    assert torch.allclose(split.standardise(split.test_pixels[:1])[0] * std + mean, raw, atol=1e-5)


def test_cifar10_is_decoded_once_into_a_byte_cache_that_later_loads_map(data_dir, monkeypatch):
    _write_cifar(data_dir / "cifar")
    first = load_cifar10(data_dir / "cifar")
    cache = data.cifar10_cache(data_dir / "cifar")
    assert sorted(p.name for p in cache.iterdir()) == sorted(data.CIFAR10_CACHE_FILES)
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp folder left behind

    def no_decoding(path):
        raise AssertionError(f"{path} decoded again")

    with monkeypatch.context() as patch:
        patch.setattr(data, "_read_cifar_batch", no_decoding)
        again = load_cifar10(data_dir / "cifar")
    assert torch.equal(again.train_pixels, first.train_pixels) and torch.equal(again.val_y, first.val_y)
    write_cifar10_batches(data_dir / "cifar", CIFAR_PER_BATCH, seed=1)  # a changed copy gets its own cache
    changed = load_cifar10(data_dir / "cifar")
    assert not torch.equal(changed.train_pixels, first.train_pixels)
    assert len(list(cache.parent.iterdir())) == 2


def test_cifar10_val_fraction_splits_the_training_batches(data_dir):
    _write_cifar(data_dir)
    split = load_cifar10(data_dir, val_fraction=0.2, seed=3)
    assert (len(split.train_y), len(split.val_y)) == (80, 20)
    assert torch.bincount(split.val_y, minlength=10).tolist() == [2] * 10


def test_split_batches_standardise_the_rows_they_draw(data_dir):
    _write_cifar(data_dir / "cifar")
    split = load_cifar10(data_dir / "cifar")
    rows = torch.tensor([3, 17, 42, 64, 89, 5, 8])
    batches = list(split.batches(rows, 3, _generator(0)))
    order = data.batch_indices(len(rows), 3, _generator(0))
    assert [len(y) for _, y in batches] == [3, 3, 1]
    for (x, y), i in zip(batches, order):
        assert torch.equal(y, split.train_y[rows[i]])
        assert torch.equal(x, split.standardise(split.train_pixels[rows[i]])) and x.dtype == torch.float32
    assert torch.equal(split.standardise(split.train_pixels[rows]), split.train_x[rows])


def test_cifar10_missing_folder_names_folder_and_files(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(folder)
    message = str(err.value)
    assert str(folder) in message and "CIFAR-10 python version" in message
    assert all(name in message for name in CIFAR10_FILES)


def test_cifar10_missing_batch_names_it(data_dir):
    _write_cifar(data_dir)
    (data_dir / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3\\.") as err:
        load_cifar10(data_dir)
    assert str(data_dir) in str(err.value)


class _Shell:
    """Pickles as a call to os.system: a loader must refuse it, not run it."""

    def __reduce__(self):
        import os

        return os.system, ("true",)


@pytest.mark.parametrize(
    "payload",
    [
        b"not a pickle",
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})[:-20],
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}),
        pickle.dumps({b"labels": [0, 1]}),
        pickle.dumps(_Shell()),
    ],
    ids=["garbage", "truncated", "wrong-shape", "bad-label", "no-data", "code"],
)
def test_cifar10_corrupt_batch_names_the_file(data_dir, payload):
    _write_cifar(data_dir)
    (data_dir / "data_batch_2").write_bytes(payload)
    with pytest.raises(ValueError, match="data_batch_2"):
        load_cifar10(data_dir)


def test_cifar10_reads_python2_pickles():
    """The download was written by Python 2's cPickle: numpy.core globals and str (= bytes) data."""
    image = bytes(range(6))
    blob = (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        b"(K\x01K\x02K\x03\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xff"
        b"J\xff\xff\xff\xffK\x00tb\x89U\x06" + image + b"tb."
    )
    array = data._NumpyOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
    assert array.dtype == np.uint8 and array.tolist() == [[0, 1, 2], [3, 4, 5]]


# ---- minibatch iterators --------------------------------------------------------------------


def test_classification_batches_are_seeded_and_cover_the_data():
    x, y = torch.randn(23, 1, 8, 8), torch.arange(23)
    first = list(classification_batches(x, y, 5, _generator(0)))
    again = list(classification_batches(x, y, 5, _generator(0)))
    other = list(classification_batches(x, y, 5, _generator(1)))
    assert [len(yb) for _, yb in first] == [5, 5, 5, 5, 3]
    order = torch.cat([yb for _, yb in first])
    assert sorted(order.tolist()) == list(range(23))
    assert all(torch.equal(xb, x[yb]) for xb, yb in first)
    assert torch.equal(order, torch.cat([yb for _, yb in again]))
    assert not torch.equal(order, torch.cat([yb for _, yb in other]))
    assert len(list(classification_batches(x, y, 5, _generator(0), max_batches=2))) == 2


def test_lm_batches_are_seeded_shifted_and_cover_the_offsets():
    ids, context = torch.arange(40), 8
    batches = list(lm_batches(ids, context, 16, _generator(0), max_batches=20))
    again = list(lm_batches(ids, context, 16, _generator(0), max_batches=20))
    assert len(batches) == 20 and all(inp.shape == target.shape == (16, context) for inp, target in batches)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    for inp, target in batches:
        assert torch.equal(target, inp + 1) and target.is_contiguous()
        assert torch.equal(inp, inp[:, :1] + torch.arange(context))  # windows are contiguous runs
    starts = torch.cat([inp[:, 0] for inp, _ in batches])
    assert set(starts.tolist()) == set(range(len(ids) - context))  # every offset whose target fits


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda x, g: classification_batches(x, x, 0, g), "batch_size"),
        (lambda x, g: classification_batches(x, x, 4, g, max_batches=0), "max_batches"),
        (lambda x, g: classification_batches(x, x[:3], 4, g), "x and y"),
        (lambda x, g: lm_batches(x, 10, 4, g, 1), "context"),
        (lambda x, g: lm_batches(x, 4, 4, g, 0), "max_batches"),
        (lambda x, g: lm_batches(x.view(2, 5), 4, 4, g, 1), "ids"),
    ],
)
def test_iterators_reject_bad_arguments_at_the_call(call, name):
    with pytest.raises(ValueError, match=name):
        call(torch.arange(10), _generator(0))


def test_iterators_require_a_generator():
    with pytest.raises(TypeError, match="generator"):
        classification_batches(torch.arange(4), torch.arange(4), 2, 0)
